"""What OME metadata say of an image, for :mod:`dsb.io.pixel_size` and :mod:`dsb.io.channel_names`:
an OME-XML document's first ``Pixels`` element, and an OME-Zarr store's attributes."""

from __future__ import annotations

from pathlib import Path

from dsb.core.errors import BadDataError

__all__ = ["first_pixels", "ngff", "open_zarr"]


def first_pixels(xml: str):
    """The ``Pixels`` element of the first image of an OME-XML document (an ``xml.etree`` element,
    its sizes as attributes and its ``Channel`` elements as children), or None."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    return next((e for e in root.iter() if local_name(e) == "Pixels"), None)


def local_name(element) -> str:
    """An element's tag without its namespace."""
    return element.tag.rsplit("}", 1)[-1]


def ngff(attrs, key: str):
    """An OME-Zarr store's metadata entry ``key`` (``multiscales``, ``omero``) from its attributes:
    at the top in OME-NGFF 0.4, under ``ome`` in 0.5; None where it has none."""
    return attrs.get(key) or attrs.get("ome", {}).get(key)


def open_zarr(path):
    """The Zarr array or group at ``path``, read-only; a :class:`BadDataError` naming it when it cannot
    be opened."""
    import zarr

    try:
        return zarr.open(store=str(Path(path)), mode="r")
    except Exception as exc:
        raise BadDataError(f"cannot open the Zarr store ({type(exc).__name__}: {exc})", path=path) from None
