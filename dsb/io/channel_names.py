"""A channel picked by its name (``--channel DAPI``), found in each file's own metadata.

Microscope software names the channels of an OME-TIFF (``Channel Name`` in its OME-XML) and of an
OME-Zarr store (``omero.channels[].label``). Picked by name, the DNA stain is found in each file
wherever it lies, so that files that keep it in different channels are segmented in one run;
picked by number (``--channel 0``), every file gives the same index. :func:`file_channel` turns
either into the index of one file, for the readers of :mod:`dsb.io.images` and
:mod:`dsb.io.bigimage`.
"""

from __future__ import annotations

from pathlib import Path

from dsb.core.errors import BadDataError
from dsb.io.channels import check_channel
from dsb.io.ome import first_pixels, local_name, ngff, open_zarr
from dsb.io.tiff_reading import open_tiff

__all__ = ["channel_names", "file_channel", "channel_words", "named_channels", "stored_channel"]


def stored_channel(channel) -> int | str | None:
    """A channel as a config keeps it: a number (also given as a string of digits), or a name, stripped.

    >>> stored_channel("2"), stored_channel(" DAPI "), stored_channel(None)
    (2, 'DAPI', None)
    """
    if isinstance(channel, str):
        text = channel.strip()
        return int(text) if text.isdigit() else text
    return check_channel(channel)


def channel_words(channel) -> str:
    """A channel as a sentence names it: ``channel 1`` (counted from 0), or ``the channel named 'DAPI'``.

    >>> channel_words(1), channel_words("DAPI")
    ('channel 1', "the channel named 'DAPI'")
    """
    return f"the channel named {channel!r}" if isinstance(channel, str) else f"channel {channel}"


def file_channel(path, channel) -> int | None:
    """The index, in the file at ``path``, of ``channel``: an int (or a string of digits) as it is, a
    name looked up among the file's channel names (case aside), None as None.

    Raises
    ------
    BadDataError
        A name the file does not hold, or holds twice, or a file that names no channels (naming the
        file, and the names it has).
    TypeError, ValueError
        As :func:`dsb.io.channels.check_channel`, for a channel that is neither.
    """
    if not isinstance(channel, str):
        return check_channel(channel)
    text = channel.strip()
    if text.isdigit():
        return int(text)
    names = channel_names(path)
    listed = named_channels(names)
    if not listed:
        raise BadDataError(f"names no channels (only OME-TIFF and OME-Zarr files do), so it has no channel "
                           f"{text!r}; give the channel's number", path=path)
    folded = [name.casefold() for name in names]
    if text.casefold() not in folded:
        raise BadDataError(f"has no channel named {text!r} (its channels: {listed})", path=path)
    if folded.count(text.casefold()) > 1:
        raise BadDataError(f"has {folded.count(text.casefold())} channels named {text!r}, case aside (its "
                           f"channels: {listed}); give the channel's number", path=path)
    return folded.index(text.casefold())


def named_channels(names) -> str:
    """A file's channel names (:func:`channel_names`) as a message lists them, each with its number;
    ``""`` where it names none.

    >>> named_channels(["GFP", "DAPI"]), named_channels(["", ""])
    ("0 'GFP', 1 'DAPI'", '')
    """
    if not any(str(n).strip() for n in names):
        return ""
    return ", ".join(f"{i} {name!r}" for i, name in enumerate(names))


def channel_names(path) -> list[str]:
    """The names of a file's channels, in order: an OME-TIFF's first image's ``Channel Name`` (an unnamed
    channel as ``""``), an OME-Zarr store's ``omero`` labels; ``[]`` for other files.

    Raises
    ------
    BadDataError
        A TIFF or Zarr store that cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        return _zarr_names(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return []
    with open_tiff(path) as tif:
        xml = tif.ome_metadata if tif.is_ome else None
    pixels = None if not xml else first_pixels(xml)
    return [] if pixels is None else [c.get("Name", "") for c in pixels if local_name(c) == "Channel"]


def _zarr_names(path: Path) -> list[str]:
    node = open_zarr(path)
    if not hasattr(node, "attrs") or hasattr(node, "shape"):  # a plain array names nothing
        return []
    attrs = node.attrs
    omero = ngff(attrs, "omero") or {}
    try:
        return [str(c.get("label", "")) for c in omero.get("channels", [])]
    except AttributeError:  # metadata not as OME-NGFF says
        return []
