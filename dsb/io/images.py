"""Reading images and instance labels, and the competition's folder layout.

A stage folder holds one folder per image::

    stage1_train/{ImageId}/images/{ImageId}.png
    stage1_train/{ImageId}/masks/{MaskId}.png    (training only, one nucleus each)

:func:`read_image` reads any PNG, TIFF, JPEG or BMP as an (H, W) or (H, W, C)
array; :func:`read_labels` turns one image's mask PNGs into one label image,
recording the overlaps and gaps it mended (:class:`MaskFixes`).
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dsb.core.errors import BadDataError
from dsb.io.channel_names import file_channel
from dsb.io.channels import FRAME_ROLES, axis_roles, page_note, pick_channel, select
from dsb.io.ome import field_name, image_level, is_plate_field, is_zarr, open_zarr
from dsb.io.tiff_reading import open_tiff

__all__ = [
    "IMAGE_SUFFIXES",
    "image_name",
    "read_image",
    "read_channels",
    "read_stack",
    "read_tiff_series",
    "image_header",
    "stack_frames",
    "tiff_page_note",
    "check_finite",
    "read_mask",
    "MaskFixWarning",
    "MaskFixes",
    "binary_mask_note",
    "read_labels",
    "list_ids",
    "image_path",
    "image_shape",
    "stack_shape",
    "image_shapes",
    "find_stage",
]


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def image_name(path) -> str:
    """The name an image's outputs take: the file name without its image suffix (or ``.zarr``), and
    without ``.ome`` of an OME-TIFF or OME-Zarr (``a.ome.tif`` and ``a.ome.zarr`` give ``a``). A field of
    an OME-Zarr plate (``plate.ome.zarr/B/03/0``) is named by its plate, well and field (``plate_B_03_0``:
    :func:`dsb.io.ome.field_name`).

    >>> image_name("plate/A1.ome.tiff"), image_name("x.png"), image_name("well.ome.zarr"), image_name("run.v2")
    ('A1', 'x', 'well', 'run.v2')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*IMAGE_SUFFIXES, ".zarr"):
        return field_name(path) if is_plate_field(path) else path.name
    name = path.stem
    if suffix in (".tif", ".tiff", ".zarr") and name.lower().endswith(".ome"):
        name = name[: -len(".ome")]
    return name


def read_image(path, channel: int | None = None) -> np.ndarray:
    """Read an image file as it is stored.

    Parameters
    ----------
    path : str or os.PathLike
        PNG (8 or 16 bits, grey, grey+alpha, RGB, RGBA or palette), TIFF, JPEG
        or BMP.
    channel : int or str, optional
        Read only this channel, counted from 0 (in RGB: 0 red, 1 green, 2
        blue), of an image of any number of channels: the DNA stain of a
        multi-channel fluorescence image; or the channel of this name in an
        OME-TIFF (:func:`dsb.io.channel_names.file_channel`). A TIFF's own axis names say which
        axis holds the channels, else the shape does
        (:func:`dsb.io.channels.axis_roles`). Channel 0 of a grey image is the
        image.

    Returns
    -------
    (H, W) or (H, W, C) ndarray, C in 1..4, usually uint8 or uint16
        Palette images come back as RGB(A); TIFFs stored channel-first are
        transposed to channel-last. With ``channel``, (H, W).

    Raises
    ------
    BadDataError
        Naming the file: missing, empty, not an image, corrupt or truncated,
        not 2-D (stacks and time series are not supported), more than 4
        channels and no ``channel``, no such channel, or a float image
        without a single finite value.

    Notes
    -----
    An OME-Zarr image (a folder; a field of a plate) is read too, its finest level whole.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadDataError("file not found", path=path) from None
    except OSError as exc:
        raise BadDataError(f"cannot read ({exc.strerror})", path=path) from None
    if path.is_dir() and not is_zarr(path):
        raise BadDataError("is a folder, expected an image file", path=path)
    if size == 0:
        raise BadDataError("empty file (0 bytes), expected an image", path=path)
    channel = file_channel(path, channel)
    image, axes = _read_stored(path)
    return _check_layout(image, path, channel, axes)


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode == "RGBa":
                im = im.convert("RGBA")
            image = np.array(im)
    except UnidentifiedImageError:
        raise BadDataError("not an image file (format not recognised)", path=path) from None
    except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as exc:
        raise BadDataError(f"corrupt or truncated image ({exc})", path=path) from None
    if image.dtype == np.int32 and image.size and image.min() >= 0 and image.max() <= 0xFFFF:
        image = image.astype(np.uint16)  # Pillow's mode "I" for 16-bit data
    return image


def _read_stored(path: Path) -> tuple[np.ndarray, str | None]:
    """An image file's pixels as stored and its axis names (a TIFF's or an OME-Zarr image's; None for other
    formats)."""
    if path.is_dir():
        return _read_zarr_level(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff_series(path)
    return _read_pillow(path), None


def _read_zarr_level(path: Path) -> tuple[np.ndarray, str | None]:
    """The finest level of an OME-Zarr image (:func:`dsb.io.ome.image_level`), or a Zarr array, whole."""
    array, axes = _zarr_level(path)
    if np.dtype(array.dtype).kind not in "biuf":
        raise BadDataError(f"holds {np.dtype(array.dtype)} values, expected an image of integers or floats", path=path)
    if 0 in array.shape:
        raise BadDataError(f"holds no pixels (shape {tuple(array.shape)})", path=path)
    try:
        pixels = np.asarray(array[...])
    except Exception as exc:  # a damaged chunk: zarr and its codecs raise many types (a missing one is zeros)
        raise BadDataError(f"cannot read its pixels ({type(exc).__name__}: {exc})", path=path) from None
    if axes is None:
        return pixels, None
    shape, axes = _named(pixels.shape, axes)
    return pixels.reshape(shape), axes


def _named(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    """The shape and axis names of an OME-Zarr image as tifffile gives a TIFF's series: an axis of length 1
    (a plate field's t, c or z) is no axis."""
    keep = [i for i, (n, a) in enumerate(zip(shape, axes)) if n > 1 or a in "YX"]
    return tuple(shape[i] for i in keep), "".join(axes[i] for i in keep)


def _zarr_level(path: Path):
    """A Zarr array, or an OME-Zarr image's finest level and its axis names in capitals (None where unnamed)."""
    node = open_zarr(path)
    if hasattr(node, "shape"):
        return node, None
    array, axes, _ = image_level(path, node)
    return array, None if axes is None else axes.upper()


def read_tiff_series(path: Path) -> tuple[np.ndarray, str | None]:
    """The first series of a TIFF and its axis names (tifffile's: ``YXS``, ``CYX``, ``TZCYX``...); a
    BadDataError naming the file for one of no pixels, or of values that are no integers or floats
    (complex numbers)."""
    with open_tiff(path) as tif:
        series = tif.series[0]
        if np.dtype(series.dtype).kind not in "biuf":
            raise BadDataError(f"holds {np.dtype(series.dtype)} values, expected an image of integers or floats",
                               path=path)
        if 0 in series.shape:
            raise BadDataError(f"holds no pixels (shape {tuple(series.shape)}, axes {series.axes})", path=path)
        return np.asarray(series.asarray()), series.axes


def _check_layout(image: np.ndarray, path: Path, channel: int | None = None, axes: str | None = None) -> np.ndarray:
    image = pick_channel(image, channel, axes=axes, path=path)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise BadDataError(f"image of shape {image.shape} has no pixels", path=path)
    check_finite(image, path)
    return image


def read_channels(path, *, frames: bool = False) -> np.ndarray:
    """Every channel of an image file, channels last (a grey image as one), to measure each nucleus in
    each channel when one of them (``--channel``) was segmented.

    Parameters
    ----------
    path : str or os.PathLike
        As for :func:`read_image` (any number of channels); with ``frames``, a stack as for :func:`read_stack`.
    frames : bool
        Keep the frames of a stack, leading.

    Returns
    -------
    (H, W, C) ndarray, or (F..., H, W, C) with ``frames``; C is 1 for a grey image

    Raises
    ------
    BadDataError
        As :func:`read_image` (and :func:`read_stack`).

    Examples
    --------
    >>> import tempfile, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "two.tif"
    >>> tifffile.imwrite(path, np.zeros((2, 40, 60), np.uint16), imagej=True, metadata={"axes": "CYX"})
    >>> read_channels(path).shape
    (40, 60, 2)
    """
    path = Path(path)
    image, axes = _read_stored(path)
    roles, channels = axis_roles(image.shape, axes, channel=0, frames=frames, path=path)
    every = select(image, roles, None)
    return every if "c" in roles else every[..., None]


def stack_frames(path, channel: int | None = None) -> str:
    """The frame axes of a TIFF or OME-Zarr image that holds a stack of images (time points, planes), from
    its header: ``"t"``, ``"z"``, ``"tz"``... (``"f"`` for an unnamed one), or ``""`` for one image or a
    file that is neither or cannot be read (whose reading then names the problem). See
    :func:`dsb.io.channels.axis_roles` for how axes are told apart.

    Raises
    ------
    BadDataError
        A readable TIFF or OME-Zarr image that is neither one image nor a stack of them, or has no channel
        ``channel``.
    """
    found = _header_roles(path, channel)
    return "" if found is None else "".join(a for a in found[1] if a in FRAME_ROLES)


class _Header(NamedTuple):
    """What a TIFF's header says: its first series' shape and axis names, and how many series it holds (an
    OME-Zarr image's: its finest level's shape and axis names, in capitals, and one series)."""

    shape: tuple[int, ...]
    axes: str
    series: int


def image_header(path) -> _Header | None:
    """A TIFF's or an OME-Zarr image's header: its shape, axis names and number of series; None for another
    file, a Zarr store without axis names, or one that cannot be read (whose reading names the problem)."""
    path = Path(path)
    if is_zarr(path):
        try:
            array, axes = _zarr_level(path)
        except BadDataError:
            return None
        if axes is None:  # a plain Zarr array, or unnamed axes: the reading (by the shape) tells
            return None
        return _Header(*_named(tuple(array.shape), axes), 1)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with open_tiff(path) as tif:
            return _Header(tuple(tif.series[0].shape), tif.series[0].axes, len(tif.series))
    except BadDataError:  # read_image names the problem
        return None


def _header_roles(path, channel: int | None = None) -> tuple[tuple[int, ...], str] | None:
    """:func:`image_header`'s shape and each axis's role (:func:`dsb.io.channels.axis_roles`);
    None as :func:`image_header`."""
    header = image_header(path)
    if header is None:
        return None
    roles, _ = axis_roles(header.shape, header.axes, channel=file_channel(path, channel), frames=True, path=path)
    return header.shape, roles


def tiff_page_note(path, channel: int | None = None) -> str:
    """:func:`dsb.io.channels.page_note` of a TIFF, from its header, and where it holds several series (the
    positions of a multi-position OME-TIFF, pages of another size or type after the first) that only the
    first was read; ``""`` for other files and for one that cannot be read (whose reading names the problem)."""
    header = image_header(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
    if header is None:
        return ""
    try:
        channel = file_channel(path, channel)
    except BadDataError:
        return ""  # the reading names the problem
    notes = [page_note(header.shape, header.axes, channel)]
    if header.series > 1:
        notes.append(f"it holds {header.series} series (image sets: positions, or pages of another size or type) and "
                     f"only the first, {' x '.join(map(str, header.shape))} ({header.axes}), was read; save each "
                     "series as a file of its own to segment the others")
    return "; ".join(note for note in notes if note)


def read_stack(path, channel: int | None = None) -> tuple[np.ndarray, str]:
    """Read a TIFF or OME-Zarr stack of 2-D images (a time series, the planes of a volume), frames first.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF or OME-Zarr image whose axes (ImageJ's, OME's or OME-Zarr's names, else the shape: see
        :func:`dsb.io.channels.axis_roles`) are rows, columns, perhaps channels, and one or
        more frame axes; any other image is read as a stack of no frames.
    channel : int, optional
        As for :func:`read_image`.

    Returns
    -------
    frames : (F..., H, W) or (F..., H, W, C) ndarray
        One leading axis per frame axis, in stored order.
    axes : str
        The frame axes' roles, one letter each: ``t``, ``z``, or ``f`` (unnamed); ``""`` for one image.

    Raises
    ------
    BadDataError
        As :func:`read_image`.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") and not is_zarr(path):
        return read_image(path, channel), ""
    channel = file_channel(path, channel)
    image, axes = _read_stored(path)
    roles, _ = axis_roles(image.shape, axes, channel=channel, frames=True, path=path)
    frames = select(image, roles, channel)
    lead = "".join(a for a in roles if a in FRAME_ROLES)
    if not frames.size:
        raise BadDataError(f"image of shape {image.shape} has no pixels", path=path)
    if np.issubdtype(frames.dtype, np.floating) and lead:
        # Each frame is segmented on its own: one of NaN alone has nothing to segment, as a 2-D image.
        finite = np.isfinite(frames).reshape(*frames.shape[: len(lead)], -1).any(axis=-1)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise BadDataError(f"frame {index if len(index) > 1 else index[0]} ({', '.join(lead)}) holds no "
                               "finite pixel value (NaN or infinite everywhere)", path=path)
    check_finite(frames, path)
    return frames, lead


def check_finite(image: np.ndarray, path, *, sampled: bool = False) -> None:
    """Refuse, naming ``path``, a float image without a single finite pixel value (a failed
    computation saved as an image): it has nothing to segment. ``sampled``: ``image`` is a sample
    of the file's pixels, and the message says so."""
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise BadDataError("holds no finite pixel value (NaN or infinite everywhere"
                           + (", as far as sampled)" if sampled else ")"), path=path)


def read_mask(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one nucleus mask (0 background, anything else nucleus).

    Parameters
    ----------
    path : str or os.PathLike
    shape : (int, int), optional
        The (H, W) the mask must have: its image's.

    Returns
    -------
    (H, W) ndarray of bool

    Raises
    ------
    BadDataError
        Unreadable mask, or a mask of another size than ``shape``.
    """
    mask = read_image(path)
    if mask.ndim == 3:
        # grey(+alpha): the grey channel; colour(+alpha): any colour channel, never alpha
        mask = mask[..., 0] if mask.shape[2] <= 2 else mask[..., :3].max(axis=-1)
    if shape is not None and mask.shape != tuple(shape):
        raise BadDataError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]} (height x width)",
            path=path,
        )
    return mask > 0


class MaskFixWarning(UserWarning):
    """The masks of one image needed fixing (overlaps, empty masks, a binary mask); see :class:`MaskFixes`."""


def binary_mask_note(objects: int) -> str:
    """What a label image that is a binary mask of ``objects`` separate objects was taken as, and what to do.

    >>> binary_mask_note(4)[:52]
    'a binary mask (one value, 4 separate objects), not a'
    """
    return (f"a binary mask (one value, {objects} separate objects), not a label image: each object taken as one "
            "nucleus; touching nuclei stay merged, give each its own value")


@dataclass(frozen=True)
class MaskFixes:
    """What :func:`read_labels` had to fix in the masks of one image.

    Attributes
    ----------
    overlapping : tuple of (str, int)
        Mask file names that overlapped earlier masks, with the number of
        pixels left to the earlier (smaller label) mask.
    empty : tuple of str
        Mask files with no nucleus pixel: skipped.
    covered : tuple of str
        Mask files lying wholly inside earlier masks: skipped.
    binary : tuple of (str, int)
        A label image that was a binary mask (one value over several separate objects), with its number
        of objects, each taken as one nucleus (:func:`dsb.io.annotations.read_label_image`).
    """

    overlapping: tuple[tuple[str, int], ...] = ()
    empty: tuple[str, ...] = ()
    covered: tuple[str, ...] = ()
    binary: tuple[tuple[str, int], ...] = ()

    @property
    def overlap_pixels(self) -> int:
        return sum(n for _, n in self.overlapping)

    def __bool__(self) -> bool:
        return bool(self.overlapping or self.empty or self.covered or self.binary)

    def __str__(self) -> str:
        parts = []
        if self.overlapping:
            parts.append(
                f"{len(self.overlapping)} mask(s) overlap earlier ones "
                f"({self.overlap_pixels} pixel(s) kept by the earlier mask, e.g. {self.overlapping[0][0]})"
            )
        if self.empty:
            parts.append(f"{len(self.empty)} empty mask(s) skipped (e.g. {self.empty[0]})")
        if self.covered:
            parts.append(f"{len(self.covered)} mask(s) inside earlier ones skipped (e.g. {self.covered[0]})")
        parts += [f"{name}: {binary_mask_note(objects)}" for name, objects in self.binary]
        return "; ".join(parts) if parts else "no fixes"

    def to_dict(self) -> dict:
        return {
            "overlapping": [list(o) for o in self.overlapping],
            "empty": list(self.empty),
            "covered": list(self.covered),
            "binary": [list(b) for b in self.binary],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MaskFixes":
        return cls(
            overlapping=tuple((str(n), int(p)) for n, p in data.get("overlapping", ())),
            empty=tuple(data.get("empty", ())),
            covered=tuple(data.get("covered", ())),
            binary=tuple((str(n), int(k)) for n, k in data.get("binary", ())),
        )


def _mask_files(masks_dir: Path) -> list[Path]:
    return sorted(
        (p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def read_labels(sample_dir, shape: tuple[int, int] | None = None, *, return_fixes: bool = False):
    """Instance labels of one image from its ``masks/`` folder.

    The masks, sorted by file name, become labels 1..N. Where two masks
    overlap, the pixels stay with the earlier (smaller) label; masks with no
    pixel left are skipped, so labels stay consecutive. Such fixes are
    returned with ``return_fixes=True``, and otherwise reported with a
    :class:`MaskFixWarning`.

    Parameters
    ----------
    sample_dir : str or os.PathLike
        ``{stage}/{ImageId}``, holding ``masks/*.png``.
    shape : (int, int), optional
        (H, W) of the image; read from ``images/`` when not given.
    return_fixes : bool
        Also return the :class:`MaskFixes`.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 background, 1..N nuclei.
    fixes : MaskFixes
        Only with ``return_fixes=True``.

    Raises
    ------
    BadDataError
        No ``masks/`` folder, an unreadable mask, or a mask of the wrong size
        (naming the mask file).
    """
    sample_dir = Path(sample_dir)
    masks_dir = sample_dir / "masks"
    if not masks_dir.is_dir():
        raise BadDataError("no masks/ folder (expected {ImageId}/masks/*.png)", path=sample_dir)
    if shape is None:
        shape = image_shape(image_path(sample_dir.parent, sample_dir.name))
    shape = (int(shape[0]), int(shape[1]))
    labels = np.zeros(shape, np.int32)
    flat = labels.reshape(-1)  # a view: writes land in labels
    overlapping, empty, covered = [], [], []
    next_label = 1
    for path in _mask_files(masks_dir):
        idx = np.flatnonzero(read_mask(path, shape))
        if idx.size == 0:
            empty.append(path.name)
            continue
        taken = flat[idx] != 0
        if taken.any():
            overlapping.append((path.name, int(taken.sum())))
            idx = idx[~taken]
            if idx.size == 0:
                covered.append(path.name)
                continue
        flat[idx] = next_label
        next_label += 1
    fixes = MaskFixes(tuple(overlapping), tuple(empty), tuple(covered))
    if return_fixes:
        return labels, fixes
    if fixes:
        warnings.warn(f"{sample_dir}: {fixes}", MaskFixWarning, stacklevel=2)
    return labels


def list_ids(stage_dir) -> list[str]:
    """Image ids of a stage folder, sorted.

    Parameters
    ----------
    stage_dir : str or os.PathLike
        A folder of ``{ImageId}/images/`` folders; hidden entries are ignored.

    Returns
    -------
    list of str

    Raises
    ------
    BadDataError
        The folder is missing or holds no image folder.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        raise BadDataError("folder not found" if not stage_dir.exists() else "not a folder", path=stage_dir)
    try:
        ids = sorted(
            e.name for e in os.scandir(stage_dir)
            if not e.name.startswith(".") and e.is_dir() and os.path.isdir(os.path.join(e.path, "images"))
        )
    except OSError as exc:
        raise BadDataError(f"cannot list ({exc.strerror})", path=stage_dir) from None
    if not ids:
        raise BadDataError("holds no images (expected {ImageId}/images/{ImageId}.png)", path=stage_dir)
    return ids


def image_path(stage_dir, image_id: str) -> Path:
    """Path of the image of ``image_id``: ``{stage_dir}/{id}/images/{id}.png``.

    Another suffix (TIFF, JPEG) is found when the PNG is absent. The path is
    returned even when no file exists; :func:`read_image` then says so.
    """
    images = Path(stage_dir) / image_id / "images"
    default = images / f"{image_id}.png"
    if default.is_file():
        return default
    for suffix in IMAGE_SUFFIXES[1:]:
        for candidate in (images / f"{image_id}{suffix}", images / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return default


def image_shape(path) -> tuple[int, int]:
    """(H, W) of an image file, from its header where possible."""
    from PIL import Image

    path = Path(path)
    found = _header_roles(path) if is_zarr(path) else None
    if found is not None:
        return tuple(n for n, role in zip(*found) if role in "yx")
    if path.suffix.lower() not in (".tif", ".tiff"):
        try:
            with Image.open(path) as im:
                if im.size[0] > 0 and im.size[1] > 0:
                    return im.size[1], im.size[0]
        except Exception:  # noqa: BLE001 - read_image below names the problem
            pass
    return read_image(path).shape[:2]


def stack_shape(path, channel: int | None = None) -> tuple[tuple[int, ...], str]:
    """The shape :func:`read_stack` gives a file (frame axes, then height and width) and its frame axes'
    roles, from its header: ``((H, W), "")`` for one image.

    Raises
    ------
    BadDataError
        As :func:`read_stack`, for a file whose header says it is neither an image nor a stack of them.
    """
    found = _header_roles(path, channel)
    if found is None:
        return image_shape(path), ""
    shape, roles = found
    sizes = {role: n for role, n in zip(roles, shape)}
    lead = "".join(role for role in roles if role in FRAME_ROLES)
    return (*(n for role, n in zip(roles, shape) if role in FRAME_ROLES), sizes["y"], sizes["x"]), lead


def image_shapes(stage_dir) -> dict[str, tuple[int, int]]:
    """(H, W) of every image of a stage folder, by id (headers only: fast).

    Returns
    -------
    dict of str to (int, int)
    """
    return {i: image_shape(image_path(stage_dir, i)) for i in list_ids(stage_dir)}


def find_stage(data_dir, stage: str = "stage1_train") -> Path:
    """The stage folder of a data folder: ``data_dir/stage``, or ``data_dir`` itself
    when it is already a stage folder (holds ``{id}/images/``).

    Raises
    ------
    BadDataError
        Neither is there.
    """
    data_dir = Path(data_dir)
    if (data_dir / stage).is_dir():
        return data_dir / stage
    if not data_dir.is_dir():
        raise BadDataError("folder not found", path=data_dir)
    try:
        list_ids(data_dir)
    except BadDataError:
        raise BadDataError(
            f"holds no {stage}/ folder (run `dsb fetch --dest {data_dir}` first, or give a stage folder)",
            path=data_dir,
        ) from None
    return data_dir
