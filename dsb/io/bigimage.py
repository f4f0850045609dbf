"""Images larger than memory: read region by region, write labels block by block.

:func:`open_source` turns a Zarr array, an OME-Zarr image (its level 0), a
TIFF or PNG file, or an in-memory NumPy, Zarr or Dask array into a
:class:`BlockSource`: its ``shape`` and ``channels`` come from metadata, and
:meth:`BlockSource.read` returns one region as ``(h, w)`` or ``(h, w, C)``.
A source opened from a path pickles as that path, so a task that carries it
to a Dask worker carries no pixels; the worker opens the file once.

:func:`create_labels` makes the label array a block-wise run fills, chunk by
chunk, under a staging folder; :func:`finish_labels` gives it the input's
kind: Zarr (``NAME_labels.zarr``), OME-Zarr labels with ``image-label``
metadata, or a tiled BigTIFF (``NAME_labels.tif``) written tile by tile.

Zarr (and, for Zarr and OME-Zarr, nothing else) is imported on first use,
so ``import dsb`` stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsb.core.errors import BadDataError
from dsb.io.channel_names import channel_names, file_channel
from dsb.io.channels import axis_roles, check_channel, select
from dsb.io.images import image_header, image_name, read_image
from dsb.io.ome import image_level, is_zarr, open_zarr
from dsb.io.tiff_reading import open_tiff
from dsb.io.writers import tiff_calibration

__all__ = [
    "LABEL_TILE",
    "BlockSource",
    "is_zarr",
    "open_source",
    "image_side",
    "labels_layout",
    "create_labels",
    "open_labels",
    "finish_labels",
    "label_target",
]

# Tiles of the label TIFF, in pixels a side (a multiple of 16, as TIFF asks).
LABEL_TILE = 256
_TIFF_SUFFIXES = (".tif", ".tiff")


def image_side(path) -> int:
    """The longer side of a TIFF or PNG file or an OME-Zarr image in pixels, from its header (the pixels are not
    read); 0 for a TIFF or OME-Zarr image whose header cannot be read (whose reading names the problem)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in _TIFF_SUFFIXES:
        header = image_header(path)
        if header is None:
            return 0
        return max((n for n, a in zip(header.shape, header.axes) if a in "YX"), default=0)  # none: reading says
    from PIL import Image

    try:
        with Image.open(path) as im:
            return max(im.size)
    except Exception:
        return 0


class BlockSource:
    """One 2-D image, read a region at a time.

    Made by :func:`open_source`. Attributes: ``path`` (None for an in-memory
    array), ``kind`` (``"zarr"``, ``"ome-zarr"``, ``"tiff"``, ``"png"`` or
    ``"array"``), ``shape`` (H, W), ``channels`` (1 when a ``channel`` is picked), ``dtype``. Pickled, a source
    read from disk keeps only where its pixels are; it opens the file again,
    once, in the process that reads.
    """

    def __init__(self, kind: str, shape, roles: str, channels: int, dtype, *, path=None, component: str = "",
                 array=None, ome: dict | None = None, channel: int | None = None):
        self.kind, self.path, self.component = kind, None if path is None else Path(path), component
        self.channel = channel  # the one channel read, of a multi-channel image
        channels = 1 if channel is not None else channels
        self.origin = self.path  # the input named in messages and output names (a PNG's Zarr copy keeps it)
        self.roles, self.channels, self.dtype, self.ome = roles, channels, np.dtype(dtype), ome
        # The file's names of its channels, where one is picked (:func:`dsb.io.channel_names.channel_names`).
        self.channel_names = channel_names(self.path) if channel is not None and self.path is not None else []
        self.stored_shape = tuple(int(n) for n in shape)
        self.shape = (self.stored_shape[roles.index("y")], self.stored_shape[roles.index("x")])
        self._array = array

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.kind != "array":
            state["_array"] = None
        return state

    def __repr__(self) -> str:
        return f"BlockSource({self.kind!r}, {str(self.path) if self.path else '<array>'!r}, shape={self.shape})"

    @property
    def name(self) -> str:
        """The name of its outputs (:func:`dsb.io.images.image_name`: ``a.ome.zarr`` -> ``a``), as of
        the other images of a run."""
        return "array" if self.origin is None else image_name(self.origin)

    def _stored(self):
        if self._array is None:
            self._array = _open_stored(self)
        return self._array

    @property
    def stored_channels(self) -> int:
        """The channels stored, whichever one is read (1 without a channel axis)."""
        return self.stored_shape[self.roles.index("c")] if "c" in self.roles else 1

    def read_channels(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` of every stored channel, ``(h, w, C)`` (C is 1 for a grey
        image): to measure each nucleus in each channel when one (``channel``) is segmented."""
        try:
            part = select(self._stored(), self.roles, None, slice(r0, r1), slice(c0, c1))
            return part if "c" in self.roles else part[..., None]
        except Exception as exc:  # stores raise many types for a damaged chunk
            raise BadDataError(f"cannot read rows {r0}:{r1}, columns {c0}:{c1} "
                               f"({type(exc).__name__}: {exc})", path=self.origin) from None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` as ``(h, w)`` (one channel) or ``(h, w, C)``."""
        try:
            part = select(self._stored(), self.roles, self.channel, slice(r0, r1), slice(c0, c1))
        except BadDataError:
            raise
        except Exception as exc:  # stores raise many types for a damaged chunk
            raise BadDataError(f"cannot read rows {r0}:{r1}, columns {c0}:{c1} "
                               f"({type(exc).__name__}: {exc})", path=self.origin) from None
        return part[:, :, 0] if part.ndim == 3 and self.channels == 1 else part


def _open_stored(source: BlockSource):
    """The stored array behind a source read from disk."""
    if source.kind == "png":
        return read_image(source.path)  # a PNG has no random access: decoded whole, once per process
    import zarr

    if source.kind == "tiff":
        import tifffile

        store = tifffile.imread(source.path, aszarr=True, level=0)
        return zarr.open_array(store=store, mode="r")
    return zarr.open_array(store=str(source.path), path=source.component or None, mode="r")


def _check_dtype(dtype, path) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool):
        raise BadDataError(f"holds {dtype} values, expected an image of integers or floats", path=path)


def open_source(image, channel: int | None = None) -> BlockSource:
    """A :class:`BlockSource` for a path (Zarr, OME-Zarr, TIFF, PNG) or an in-memory array.

    Parameters
    ----------
    image : str, os.PathLike, numpy.ndarray, zarr.Array or dask.array.Array
        A Zarr array, an OME-Zarr image group (its first multiscale level is
        read), a TIFF (its first series, level 0) or PNG file; or an
        ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` array, C in 1..4.
    channel : int or str, optional
        Read only this channel (counted from 0, or by its name in an OME-TIFF or OME-Zarr file:
        :func:`dsb.io.channel_names.file_channel`) of an image of any number of channels; the
        axes' names (TIFF, OME-Zarr) or the shape say which axis holds them
        (:func:`dsb.io.channels.axis_roles`).

    Returns
    -------
    BlockSource

    Raises
    ------
    BadDataError
        Naming the path: not found, a Zarr group that holds no image, an array
        that is not one 2-D image with 1 to 4 channels (any number with ``channel``), no such
        channel, non-numeric values.

    Examples
    --------
    >>> source = open_source(np.zeros((300, 200, 3), np.uint8))
    >>> source.shape, source.channels, source.read(0, 2, 0, 5).shape
    ((300, 200), 3, (2, 5, 3))
    """
    if not isinstance(image, (str, Path)) and hasattr(image, "shape") and hasattr(image, "dtype"):
        channel = check_channel(channel)
        roles, channels = axis_roles(tuple(image.shape), channel=channel, path="the array")
        _check_dtype(np.dtype(image.dtype), "the array")
        return BlockSource("array", image.shape, roles, channels, image.dtype, array=image, channel=channel)
    path = Path(image)
    if not path.exists():
        raise BadDataError("no such file or folder", path=path)
    channel = file_channel(path, channel)  # a name: its index in this file
    if path.is_dir():
        return _open_zarr(path, channel)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        with open_tiff(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = series.shape, series.axes, series.dtype
        roles, channels = axis_roles(shape, axes, channel=channel, path=path)
        _check_dtype(dtype, path)
        return BlockSource("tiff", shape, roles, channels, dtype, path=path, channel=channel)
    raw = read_image(path)  # decoded whole, every channel, as a worker that opens it again decodes it
    roles, channels = axis_roles(raw.shape, channel=channel, path=path)
    return BlockSource("png", raw.shape, roles, channels, raw.dtype, path=path, array=raw, channel=channel)


def _open_zarr(path: Path, channel: int | None = None) -> BlockSource:
    import zarr

    if not is_zarr(path):
        raise BadDataError("is a folder but not a Zarr store (no zarr.json, .zarray or .zgroup)", path=path)
    node = open_zarr(path)
    if isinstance(node, zarr.Array):
        roles, channels = axis_roles(node.shape, channel=channel, path=path)
        _check_dtype(node.dtype, path)
        return BlockSource("zarr", node.shape, roles, channels, node.dtype, path=path, channel=channel)
    array, axes, meta = image_level(path, node)
    component = meta["datasets"][0]["path"]
    roles, channels = axis_roles(array.shape, axes, channel=channel, path=path)
    _check_dtype(array.dtype, path)
    ome = {"axes": meta.get("axes"), "transforms": meta["datasets"][0].get("coordinateTransformations"),
           "global": meta.get("coordinateTransformations"), "zarr_format": node.metadata.zarr_format, "roles": roles}
    return BlockSource("ome-zarr", array.shape, roles, channels, array.dtype, path=path, component=component,
                       ome=ome, channel=channel)


# ---------------------------------------------------------------- writing


def label_target(source: BlockSource, out_dir) -> Path:
    """Where the labels of ``source`` go: ``NAME_labels.zarr`` for Zarr and OME-Zarr, ``NAME_labels.tif`` otherwise."""
    suffix = ".zarr" if source.kind in ("zarr", "ome-zarr", "array") else ".tif"
    return Path(out_dir) / f"{source.name}_labels{suffix}"


def labels_layout(source: BlockSource) -> tuple[str, int]:
    """Where in its store the label array of ``source`` lies (``"0"`` in an OME-Zarr group, else the
    root) and the Zarr format it is written in (the input's for OME-Zarr, else 3)."""
    if source.kind == "ome-zarr":
        return "0", source.ome["zarr_format"]
    return "", 3


def create_labels(store, shape: tuple[int, int], chunk: int, *, component: str = "", zarr_format: int = 3):
    """An empty ``uint32`` label array of ``shape`` in chunks of ``chunk`` a side, at ``store`` (a folder).

    With a ``component`` the store is a group and the array is its member of
    that name. Each block-wise task writes one chunk whole
    (:func:`open_labels`), so no two tasks write the same chunk.
    """
    import zarr

    options = dict(shape=tuple(shape), chunks=(chunk, chunk), dtype="uint32", fill_value=0, overwrite=True)
    if not component:
        return zarr.create_array(store=str(store), zarr_format=zarr_format, **options)
    group = zarr.open_group(store=str(store), mode="w", zarr_format=zarr_format)
    return group.create_array(component, **options)


def open_labels(store, component: str = ""):
    """The label array :func:`create_labels` made, opened for writing (in a worker)."""
    import zarr

    return zarr.open_array(store=str(store), path=component or None, mode="r+")


def finish_labels(staged, source: BlockSource, target: Path, count: int, *, progress=lambda rows: rows,
                  pixel_size: float | None = None) -> None:
    """Give the staged label array the kind of its input, at ``target`` (a staging name of the final path).

    A Zarr target is the staged store itself (OME-Zarr metadata added for an
    OME-Zarr input); a TIFF target is written from it tile row by tile row.

    Parameters
    ----------
    staged : path
        The store :func:`create_labels` made and the blocks filled.
    source : BlockSource
        The input, whose kind and OME-Zarr metadata the labels follow.
    target : Path
        A ``.zarr`` folder (the staged store, renamed later by the caller) or
        a ``.tif`` file name (a temporary one; the caller renames it).
    count : int
        Nuclei in the image: the TIFF is 16-bit up to 65535 of them, 32-bit above.
    progress : callable
        Wraps the iterable of tile rows (a progress bar).
    pixel_size : float, optional
        Micrometres a pixel, recorded in a TIFF (:func:`dsb.io.writers.tiff_calibration`); an OME-Zarr's
        labels keep the input's own scale.
    """
    if target.suffix == ".tif":
        _write_tiled_tiff(open_labels(staged, labels_layout(source)[0]), target, count, progress, pixel_size)
    elif source.kind == "ome-zarr":
        _ome_metadata(staged, source)


def _write_tiled_tiff(labels, path: Path, count: int, progress, pixel_size: float | None = None) -> None:
    """A tiled BigTIFF from a Zarr label array, one row of tiles in memory at a time."""
    import tifffile

    height, width = labels.shape
    dtype = np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32
    tile = LABEL_TILE

    def tiles():
        for r0 in progress(range(0, height, tile)):
            row = np.zeros((tile, -(-width // tile) * tile), dtype)
            part = labels[r0 : r0 + tile, :]
            row[: part.shape[0], :width] = part
            for c0 in range(0, width, tile):
                yield row[:, c0 : c0 + tile]

    tifffile.imwrite(path, tiles(), shape=(height, width), dtype=dtype, tile=(tile, tile), bigtiff=True,
                     photometric="minisblack", compression="zlib", **tiff_calibration(pixel_size, imagej=False))


def _ome_metadata(staged, source: BlockSource) -> None:
    """Make the staged store an OME-Zarr label image (``image-label``) of the source's y and x axes."""
    import zarr

    ome = source.ome
    keep = [i for i, a in enumerate(ome["roles"]) if a in "yx"]
    axes = [ome["axes"][i] for i in keep] if ome.get("axes") else [{"name": "y", "type": "space"},
                                                                   {"name": "x", "type": "space"}]

    def of_yx(given):
        """The transforms' values of the y and x axes."""
        kept = []
        for transform in given or []:
            values = transform.get("scale", transform.get("translation"))
            if values is not None and len(values) == len(ome["roles"]):
                key = "scale" if "scale" in transform else "translation"
                kept.append({"type": transform["type"], key: [values[i] for i in keep]})
        return kept

    transforms = of_yx(ome.get("transforms") or [{"type": "scale", "scale": [1.0] * len(ome["roles"])}])
    version = "0.5" if ome["zarr_format"] == 3 else "0.4"
    multiscale = {"version": version, "name": "nuclei", "axes": axes,
                  "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    whole = of_yx(ome.get("global"))  # the whole multiscale's, which applies after the level's
    if whole:
        multiscale["coordinateTransformations"] = whole
    meta = {
        "multiscales": [multiscale],
        # The image these labels belong to, for the reader's record.
        "image-label": {"version": version, "source": {"image": str(source.path)}},
    }
    root = zarr.open_group(store=str(staged), mode="r+")
    root.attrs.update({"ome": {"version": version, **meta}} if version == "0.5" else meta)
