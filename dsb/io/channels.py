"""Which stored axis of an image is which, and one channel picked out of many.

A microscope's file holds one 2-D image as ``(H, W)``, as ``(H, W, C)`` (RGB, and most
multi-channel PNG and JPEG files) or as ``(C, H, W)`` (multi-channel TIFF and OME-Zarr), with
axes of length 1 around it. :func:`axis_roles` says which axis is rows (``y``), columns (``x``)
and channels (``c``), from the file's own axis names when it has them (TIFF, OME-Zarr) and else
from the shape; one rule serves files read whole (:func:`dsb.io.images.read_image`) and block by
block (:func:`dsb.io.bigimage.open_source`).

Without a channel, an image may have 1 to 4 channels (grey, grey+alpha, RGB, RGBA). A
fluorescence experiment stored as several channels (a DNA stain beside other markers) is
segmented from one of them: :func:`pick_channel` takes it, and the image may then have any
number of channels.
"""

from __future__ import annotations

import numpy as np

from dsb.core.errors import BadDataError

__all__ = ["MAX_COLOURS", "FRAME_ROLES", "FRAME_WORDS", "FRAME_COLUMNS", "axis_roles", "page_note", "pick_channel",
           "select", "check_channel"]

# Channels an image may have when none is picked: grey, grey+alpha, RGB, RGBA.
MAX_COLOURS = 4
# Roles of the frame axes of a stack: named time and planes, and unnamed.
FRAME_ROLES = "tzf"
# How a stack's frame axes are named to a user.
FRAME_WORDS = {"t": "time points", "z": "planes", "f": "pages"}
# The measurement columns that hold a nucleus's frame in a stack, by frame role.
FRAME_COLUMNS = {"t": "t", "z": "z", "f": "frame"}
# How a caller picks a channel, in the messages that ask for one.
_PICK = "--channel N, or channel=N in Python"


def check_channel(channel) -> int | None:
    """``channel`` as an int, or None: a :class:`TypeError` for a non-integer, a :class:`ValueError` for a
    negative one."""
    if channel is None:
        return None
    if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"`channel` must be an int (0 for the first channel) or None, got {type(channel).__name__}")
    if channel < 0:
        raise ValueError(f"`channel` is {channel}, expected 0 or more (0 is the first channel)")
    return int(channel)


def _image_like(first: int, second: int) -> bool:
    """Whether two axes of these lengths look like an image's rows and columns (not a colour axis beside
    one side): longer than :data:`MAX_COLOURS` and no more than 16 times one another."""
    return min(first, second) > MAX_COLOURS and max(first, second) <= 16 * min(first, second)


def _guess(shape: tuple[int, ...], picked: bool, frames: bool = False) -> str | None:
    """Roles from the shape alone (None: not one image). Beyond three axes, those of length 1 are
    planes. Of three, the channels are the last axis when it has at most 4 entries, else the first
    when it has; with a channel picked, the shorter of the two ends. With ``frames``, three axes
    whose last two look like an image (:func:`_image_like`) and none picked are frames (``f``) of
    it, and of four, the first is frames and the channels the shorter of the second and the last."""
    dims = list(range(len(shape)))
    if len(shape) > 3:
        dims = [i for i in dims if shape[i] != 1] or dims[-2:]
    sizes = [shape[i] for i in dims]
    if len(dims) == 2:
        inner = "yx"
    elif len(dims) == 3:
        first, last = sizes[0], sizes[2]
        if picked:
            inner = "yxc" if last <= first else "cyx"
        elif last <= MAX_COLOURS:
            inner = "yxc"
        elif first <= MAX_COLOURS:
            inner = "cyx"
        else:
            inner = "fyx" if frames and _image_like(sizes[1], last) else None
    elif len(dims) == 4 and frames:
        if picked:
            inner = "fyxc" if sizes[3] <= sizes[1] else "fcyx"
        else:
            inner = "fyxc" if sizes[3] <= MAX_COLOURS else None
    else:
        inner = None
    if inner is None:
        return None
    roles = ["-"] * len(shape)
    for i, role in zip(dims, inner):
        roles[i] = role
    return "".join(roles)


def _named(shape: tuple[int, ...], axes: str | None) -> str | None:
    """The file's axis names, lower case (``s``, RGB samples, as ``c``), or None where they do not name
    every axis longer than 1 (tifffile's ``Q`` and ``I`` for pages it cannot place): the shape decides."""
    if axes is None:
        return None
    axes = axes.lower().replace("s", "c")
    if len(axes) != len(shape) or any(a not in "yxczt" and n != 1 for a, n in zip(axes, shape)):
        return None
    return axes


def page_note(shape, axes: str | None, channel: int | None) -> str:
    """What a user should know of how the unnamed pages of a file were read, or ``""``.

    A TIFF of several pages without axis names (a plain multi-page file) leaves the shape to decide
    (:func:`axis_roles`): with a channel picked its pages are channels, so a z-stack or time series
    of more than :data:`MAX_COLOURS` pages is cut to the one page picked; without one, more pages
    are frames, and two to four the colour channels of one image. Each is right for some files and
    wrong for others; the note says which was taken and how to have the other.

    Examples
    --------
    >>> page_note((6, 256, 256), "QYX", 0)[:55]
    'its 6 pages have no axis names and were read as 6 chann'
    >>> page_note((6, 256, 256), "ZYX", 0), page_note((3, 256, 256), "SYX", None)
    ('', '')
    """
    shape = tuple(int(n) for n in shape)
    if axes is None or _named(shape, axes) is not None or any(a in "sS" for a in axes):
        return ""  # named, or colour samples stored in each page
    kept = [n for n in shape if n != 1]
    if len(kept) != 3 or kept[0] > kept[2]:
        return ""
    pages = kept[0]
    if channel is not None and pages > MAX_COLOURS and _image_like(kept[1], kept[2]):
        return (f"its {pages} pages have no axis names and were read as {pages} channels, of which channel "
                f"{channel} was taken for the nuclei; without --channel they are read as the frames of a stack")
    if channel is None and pages > MAX_COLOURS and _image_like(kept[1], kept[2]):
        return (f"its {pages} pages have no axis names and were read as the frames of a stack; with --channel N "
                "they are read as channels, of which N is taken for the nuclei")
    if channel is None and 2 <= pages <= MAX_COLOURS:
        return (f"its {pages} pages have no axis names and were read as the colour channels of one image; "
                "if they are the frames of a stack, save the file with axis names (an ImageJ hyperstack or "
                "OME-TIFF, T or Z for frames) to have them segmented frame by frame")
    return ""


def axis_roles(shape, axes: str | None = None, *, channel: int | None = None, frames: bool = False,
               path=None) -> tuple[str, int]:
    """The role of each stored axis and the number of channels.

    Parameters
    ----------
    shape : tuple of int
    axes : str, optional
        The file's own axis names (tifffile's ``series.axes``, OME-Zarr's ``axes``): ``Y``, ``X``,
        ``C`` or ``S`` (channels), and others (``T``, ``Z``, ...) that must have length 1. Without
        them the shape decides (see the module's text).
    channel : int, optional
        The channel to be picked: the image may then have more than :data:`MAX_COLOURS`.
    frames : bool
        Take a stack of images: axes named ``T`` or ``Z`` longer than 1 are its frames, and
        without names, a first axis beside two that look like an image (see :func:`_guess`).
    path : optional
        Named in errors.

    Returns
    -------
    roles : str
        One letter per stored axis: ``y``, ``x``, ``c``, or ``-`` for an axis of length 1; with
        ``frames``, ``t`` or ``z`` for named frame axes and ``f`` for unnamed ones.
    channels : int
        The length of the channel axis; 1 without one.

    Raises
    ------
    BadDataError
        Not one 2-D image (a stack, a time series), or over 4 channels when none is picked.

    Examples
    --------
    >>> axis_roles((512, 640, 3))
    ('yxc', 3)
    >>> axis_roles((5, 512, 640), channel=0)
    ('cyx', 5)
    >>> axis_roles((1, 2, 1, 256, 256), "TCZYX")
    ('-c-yx', 2)
    >>> axis_roles((10, 2, 256, 256), "TCYX", channel=0, frames=True)
    ('tcyx', 2)
    >>> axis_roles((30, 256, 256), frames=True)
    ('fyx', 1)
    """
    shape = tuple(int(n) for n in shape)
    picked = channel is not None
    axes = _named(shape, axes)
    if axes is None:
        roles = _guess(shape, picked, frames)
    else:
        roles = "".join(a if a in "yxc" or (frames and a in "tz" and n != 1) else "-" for a, n in zip(axes, shape))
    channels = 1 if roles is None or "c" not in roles else shape[roles.index("c")]
    planes = [] if roles is None else [n for n, a in zip(shape, roles) if a == "-"]
    if roles is None or roles.count("y") != 1 or roles.count("x") != 1 or roles.count("c") > 1 \
            or any(n != 1 for n in planes):
        named = f" (axes {axes!r})" if axes else ""
        ends = [n for n in shape if n != 1]
        if roles is None and not picked and len(ends) == 3:
            n = min(ends[0], ends[-1])
            stack = "" if frames else f", or is a stack of {n} planes (stacks and time series are not supported)"
            raise BadDataError(f"image of shape {shape} is not one 2-D image: it has {n} channels, more than "
                               f"{MAX_COLOURS}{stack}; pick the channel N that holds the nuclei, 0 to {n - 1} "
                               f"({_PICK})", path=path)
        what = ("is neither one 2-D image nor a stack of them" if frames
                else "is not one 2-D image (stacks and time series are not supported)")
        raise BadDataError(f"array of shape {shape}{named} {what}", path=path)
    if not picked and channels > MAX_COLOURS:
        raise BadDataError(f"image of shape {shape} has {channels} channels; pick the channel N that holds the "
                           f"nuclei, 0 to {channels - 1} ({_PICK})", path=path)
    if picked and channel >= channels:
        what = "one channel" if channels == 1 else f"{channels} channels (0 to {channels - 1})"
        raise BadDataError(f"has {what}, so it has no channel {channel}", path=path)
    return roles, channels


def pick_channel(image: np.ndarray, channel: int | None, *, axes: str | None = None, path=None) -> np.ndarray:
    """One image as ``(H, W)`` or ``(H, W, C)``, and with ``channel`` only that channel, ``(H, W)``.

    Parameters
    ----------
    image : ndarray
        As stored: ``(H, W)``, ``(H, W, C)``, ``(C, H, W)``, with axes of length 1 around it.
    channel : int or None
        Counted from 0 (in RGB: 0 red, 1 green, 2 blue). None keeps every channel (at most 4).
    axes : str, optional
        The file's axis names, as for :func:`axis_roles`.
    path : optional
        Named in errors.

    Returns
    -------
    ndarray
        A view where possible.

    Examples
    --------
    >>> stack = np.zeros((5, 40, 60), np.uint16); stack[3] = 7
    >>> pick_channel(stack, 3).shape, int(pick_channel(stack, 3).max())
    ((40, 60), 7)
    >>> pick_channel(np.zeros((40, 60, 3)), None).shape
    (40, 60, 3)
    """
    channel = check_channel(channel)
    roles, _ = axis_roles(image.shape, axes, channel=channel, path=path)
    return select(image, roles, channel)


def select(stored, roles: str, channel: int | None, rows: slice = slice(None), cols: slice = slice(None)):
    """The ``rows`` and ``cols`` of an array stored with :func:`axis_roles`' ``roles``, as ``(h, w)`` or
    ``(h, w, C)``: only ``channel`` when given; frames (``t``, ``z``, ``f``) lead, in stored order.
    ``stored`` may be a NumPy, Zarr or Dask array; only the region (and channel) is indexed, so a
    chunked store reads only those chunks."""
    whole = slice(None) if channel is None else channel
    index = tuple(rows if a == "y" else cols if a == "x" else whole if a == "c" else slice(None) if a in FRAME_ROLES
                  else 0 for a in roles)
    part = stored[index]
    if hasattr(part, "compute"):  # a Dask array: this region only, in this thread
        part = part.compute(scheduler="sync")
    part = np.asarray(part)
    kept = [a for a in roles if a != "-" and not (a == "c" and channel is not None)]
    order = [i for i, a in enumerate(kept) if a in FRAME_ROLES] + [kept.index(a) for a in "yxc" if a in kept]
    return np.transpose(part, order)
