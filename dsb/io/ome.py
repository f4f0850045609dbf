"""What OME metadata say of an image, for :mod:`dsb.io.pixel_size`, :mod:`dsb.io.channel_names`,
:mod:`dsb.io.images` and :mod:`dsb.io.bigimage`: an OME-XML document's first ``Pixels`` element, an
OME-Zarr store's attributes, the level of an OME-Zarr image that is read, and the wells and fields of an
OME-Zarr high-content screening plate (:func:`plate_wells`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dsb.core.errors import BadDataError

__all__ = ["Well", "field_name", "first_pixels", "image_level", "is_plate", "is_plate_field", "is_zarr", "ngff",
           "open_zarr", "plate_name", "plate_wells"]

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


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
    ome = attrs.get("ome")
    return attrs.get(key) or (ome.get(key) if isinstance(ome, dict) else None)


def open_zarr(path):
    """The Zarr array or group at ``path``, read-only; a :class:`BadDataError` naming it when it cannot
    be opened."""
    import zarr

    try:
        return zarr.open(store=str(Path(path)), mode="r")
    except Exception as exc:
        raise BadDataError(f"cannot open the Zarr store ({type(exc).__name__}: {exc})", path=path) from None


def is_zarr(path) -> bool:
    """Whether ``path`` is a Zarr store on disk (an array or a group, Zarr format 2 or 3)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


def _attrs(path, strict: bool = False) -> dict:
    """The attributes of the Zarr group at ``path``; ``{}`` for an array, a store that cannot be opened
    (whose reading names the problem; with ``strict`` its :class:`BadDataError`) or no store."""
    if not is_zarr(path):
        return {}
    try:
        node = open_zarr(path)
    except BadDataError:
        if strict:
            raise
        return {}
    return {} if hasattr(node, "shape") else dict(node.attrs)


def image_level(path, node=None):
    """The level of an OME-Zarr image group that dsb reads (the first of its first multiscale, the finest)
    and its axis names (``"tczyx"``..., None where the metadata give none or not one per axis).

    Parameters
    ----------
    path : str or os.PathLike
        The image group; named in errors.
    node : zarr.Group, optional
        The group, already open.

    Returns
    -------
    array : zarr.Array
    axes : str or None
    meta : dict
        The multiscale entry the level is from (its ``axes``, ``datasets``, transformations).

    Raises
    ------
    BadDataError
        A group with no ``multiscales`` metadata (naming its arrays), or whose first level is missing.
    """
    node = open_zarr(path) if node is None else node
    multiscales = ngff(node.attrs, "multiscales")
    if not multiscales:
        if ngff(node.attrs, "well"):
            raise BadDataError("is a well of an OME-Zarr plate, not one image: give the plate, or one of the "
                               "well's fields", path=path)
        arrays = sorted(name for name, _ in node.arrays())
        raise BadDataError("is a Zarr group with no image: no OME-Zarr 'multiscales' metadata"
                           + (f" (its arrays: {', '.join(arrays)})" if arrays else " and no arrays"), path=path)
    try:
        meta = multiscales[0]
        component = meta["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError):
        raise BadDataError("its 'multiscales' metadata name no levels (a list of entries with 'datasets')",
                           path=path) from None
    try:
        array = node[component]
    except KeyError:
        raise BadDataError(f"its multiscales name level {component!r}, which the store lacks", path=path) from None
    except Exception as exc:  # damaged array metadata: zarr raises many types
        raise BadDataError(f"cannot open its level {component!r} ({type(exc).__name__}: {exc})", path=path) from None
    if not hasattr(array, "shape"):
        raise BadDataError(f"its first level {component!r} is a group, not an array", path=path)
    return array, _axis_names(meta, array.ndim), meta


def _axis_names(meta, ndim: int) -> str | None:
    """The one-letter axis names of a multiscale entry (``"tczyx"``), None where they are not one letter per
    axis of the array (NGFF before 0.4 names none)."""
    axes = meta.get("axes") if isinstance(meta, dict) else None
    names = [a.get("name") if isinstance(a, dict) else a for a in axes] if isinstance(axes, list) else []
    if len(names) != ndim or not all(isinstance(n, str) and len(n) == 1 for n in names):
        return None
    return "".join(names)


@dataclass(frozen=True)
class Well:
    """One well of an OME-Zarr plate (:func:`plate_wells`): its ``row`` and ``column`` names, the image
    groups of the fields it holds (in the order its metadata list them) and how many its metadata list
    (``listed``; 0 for a well the plate lists but does not hold)."""

    row: str
    column: str
    fields: tuple[Path, ...]
    listed: int

    @property
    def name(self) -> str:
        """Row then column: ``"B03"``."""
        return f"{self.row}{self.column}"


def is_plate(path) -> bool:
    """Whether ``path`` is an OME-Zarr high-content screening plate (a group with ``plate`` metadata)."""
    return bool(ngff(_attrs(path), "plate"))


def is_plate_field(path) -> bool:
    """Whether ``path`` is a field of an OME-Zarr plate: an image group in a group with ``well`` metadata."""
    path = Path(os.path.abspath(path))
    return is_zarr(path) and bool(ngff(_attrs(path.parent), "well"))


def field_name(path) -> str:
    """The name of a plate's field, ``PLATE_ROW_COLUMN_FIELD`` (:func:`plate_name`)."""
    path = Path(os.path.abspath(path))
    return "_".join([plate_name(path.parents[2]), *path.parts[-3:]])


def plate_name(path) -> str:
    """A plate's name: its folder's, without ``.zarr`` and ``.ome`` (``plate42.ome.zarr`` gives ``plate42``;
    ``.`` the name of the folder it is)."""
    name = Path(os.path.abspath(path)).name
    for suffix in (".zarr", ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _plain(name) -> bool:
    """Whether ``name`` (a row's, column's or field's path in its parent's metadata) is one plain name."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def plate_wells(path) -> tuple[list[Well], list[BadDataError]]:
    """The wells of an OME-Zarr plate and their fields (OME-NGFF 0.4 and 0.5 ``plate`` and ``well``
    metadata), each well once in the order listed, and a :class:`BadDataError` for each well or field listed
    that the plate does not hold or whose entry is no ``ROW/COLUMN`` (a field's: no name in its well),
    naming it. A well keeps the fields it holds; one the plate lacks has none.

    Raises
    ------
    BadDataError
        Naming the plate: ``plate`` metadata without a list of wells, or listing none.
    """
    path = Path(path)
    plate = ngff(_attrs(path), "plate")
    wells = plate.get("wells") if isinstance(plate, dict) else None
    if not isinstance(wells, list) or not wells:
        raise BadDataError("is an OME-Zarr plate whose 'plate' metadata list no wells", path=path)
    found, problems, seen = [], [], set()
    for entry in wells:
        where = entry.get("path") if isinstance(entry, dict) else None
        parts = where.split("/") if isinstance(where, str) else []
        if len(parts) != 2 or not all(map(_plain, parts)):
            problems.append(BadDataError(f"lists a well {entry!r} whose path is no ROW/COLUMN", path=path))
            continue
        if where in seen:
            continue
        seen.add(where)
        well_path = path.joinpath(*parts)
        if not well_path.is_dir():
            problems.append(BadDataError("a well the plate lists is not in it", path=well_path))
            found.append(Well(parts[0], parts[1], (), 0))
            continue
        try:
            well = ngff(_attrs(well_path, strict=True), "well")
        except BadDataError as exc:
            problems.append(exc)
            found.append(Well(parts[0], parts[1], (), 0))
            continue
        images = well.get("images") if isinstance(well, dict) else None
        if not isinstance(images, list) or not images:
            problems.append(BadDataError("has no 'well' metadata listing its fields" if not isinstance(images, list)
                                         else "its 'well' metadata list no fields", path=well_path))
            found.append(Well(parts[0], parts[1], (), 0))
            continue
        fields = []
        for image in images:
            name = image.get("path") if isinstance(image, dict) else None
            if not _plain(name):
                problems.append(BadDataError(f"lists a field {image!r} whose path is no name in the well",
                                             path=well_path))
            elif not (well_path / name).is_dir():
                problems.append(BadDataError("a field the well lists is not in it", path=well_path / name))
            elif well_path / name not in fields:
                fields.append(well_path / name)
        found.append(Well(parts[0], parts[1], tuple(fields), len(images)))
    return found, problems
