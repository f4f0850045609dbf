"""Annotated training images in the layouts that napari, Fiji, Cellpose and StarDist write.

A training folder (``dsb train --data DIR``) may hold, alone or together:

* the competition's stage layout, ``stage1_train/{id}/images/{id}.png`` with one
  mask PNG per nucleus in ``{id}/masks/`` (see :mod:`dsb.io.images`);
* layout (a), StarDist's: ``FOLDER/images/NAME.png`` and ``FOLDER/masks/NAME.tif``,
  an image and its label image with the same stem;
* layout (b), Cellpose's: ``NAME.png`` (or ``.tif``) with ``NAME_masks.tif``,
  ``NAME_labels.tif`` or ``NAME_cp_masks.png`` beside it.

``DIR`` itself may be a folder in layout (a) or (b) (or both: pairs beside its ``images/``
and ``masks/``), or hold such folders beside
``stage1_train/`` (e.g. ``DIR/stage1_train/`` and ``DIR/my_images/``). A label
image is an 8-, 16- or 32-bit integer TIFF or PNG, 0 background and one value
per nucleus (any values: training renumbers them 1..N; ``dsb measure`` keeps them); a
binary mask (one value over several separate objects) is taken object by object, with a warning.

The images of a user folder get ids ``{folder}-{stem}``, unique by
construction, and form their own imaging-experiment group ``user:{folder}``
(``user:{folder}-{type}`` when the folder holds images of several types), so
a group-held-out split and a fine-tune validation keep them apart from the
competition's images. :func:`find_samples` finds every sample of a training
folder and :func:`read_sample` reads one; :mod:`dsb.training.cache` builds its cache
from them, so user images and competition images go through one loader.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsb.core.errors import BadDataError
from dsb.core.labels import renumber
from dsb.io.channels import FRAME_WORDS
from dsb.io.geojson import read_geojson_labels
from dsb.io.images import (
    IMAGE_SUFFIXES,
    MaskFixes,
    MaskFixWarning,
    image_name,
    image_path,
    list_ids,
    read_image,
    read_labels,
    read_tiff_series,
    stack_frames,
)

__all__ = [
    "LABEL_SUFFIXES",
    "LABEL_EXTENSIONS",
    "USER_GROUP_PREFIX",
    "Sample",
    "find_samples",
    "read_sample",
    "read_label_image",
    "read_label_stack",
    "label_file",
    "label_stem",
    "user_group",
    "is_user_group",
]

#: Stem endings that mark a label image beside its image (layout (b)), longest first.
LABEL_SUFFIXES = ("_cp_masks", "_masks", "_labels")
#: File types a label image may have: images, and GeoJSON outlines (QuPath's objects,
#: :func:`dsb.io.geojson.read_geojson_labels`).
LABEL_EXTENSIONS = (".tif", ".tiff", ".png", ".geojson")
#: Group names of user images start with this.
USER_GROUP_PREFIX = "user:"
_STAGE = "stage1_train"


@dataclass(frozen=True)
class Sample:
    """One annotated training image.

    Attributes
    ----------
    id : str
        Unique in its training folder: the competition's ImageId, or
        ``{folder}-{stem}`` for a user image.
    image : Path
        The image file.
    labels : Path
        A ``masks/`` folder of one PNG per nucleus (stage layout), or one label image.
    source : str
        The folder it came from: the stage folder's or the user folder's name.
    user : bool
        Whether it is a user image (layouts (a) and (b)).
    """

    id: str
    image: Path
    labels: Path
    source: str
    user: bool = False


def user_group(folder: str, kind: str, kinds_in_folder: int = 1) -> str:
    """The group of a user image: ``user:{folder}``, or ``user:{folder}-{kind}`` in a folder of several types."""
    return f"{USER_GROUP_PREFIX}{folder}" if kinds_in_folder <= 1 else f"{USER_GROUP_PREFIX}{folder}-{kind}"


def is_user_group(group: str) -> bool:
    """Whether a group name is that of user images (see :func:`user_group`)."""
    return str(group).startswith(USER_GROUP_PREFIX)


# ---------------------------------------------------------------- finding samples


def find_samples(data_dir) -> list[Sample]:
    """Every annotated image of a training folder, in any of the layouts of this module.

    Parameters
    ----------
    data_dir : str or os.PathLike
        A folder holding ``stage1_train/`` and/or user folders, a stage folder,
        or a user folder itself.

    Returns
    -------
    list of Sample
        Stage samples first (sorted by id), then user samples (by folder, then stem).

    Raises
    ------
    BadDataError
        Naming the file or folder: no annotated image at all, an image
        without labels (or labels without an image), two images or label
        images for one stem, a file name the cache cannot hold.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise BadDataError("folder not found" if not root.exists() else "not a folder", path=root)
    if _is_user_folder(root):
        samples = _user_samples(root, _folder_name(root))
        return _check_unique(samples)
    stage = root / _STAGE if (root / _STAGE).is_dir() else (root if _holds_stage_samples(root) else None)
    samples: list[Sample] = []
    if stage is not None:
        samples += _stage_samples(stage)
    for child in _subfolders(root):
        if child == stage:
            continue
        if _is_layout_b(child) or _is_layout_a(child, strict=stage == root):
            samples += _user_samples(child, child.name)
    if stage is not None and stage != root:
        for child in _subfolders(stage):
            if _is_layout_a(child, strict=True):
                samples += _user_samples(child, child.name)
    if not samples:
        if stage is not None:
            list_ids(stage)  # says "holds no images", naming the stage folder
        raise BadDataError(
            f"holds no {_STAGE}/ folder and no annotated images of your own (expected images/ and masks/ "
            f"folders, or NAME.png with NAME_masks.tif beside it; run `dsb fetch --dest {root}` for the "
            "competition's)",
            path=root,
        )
    return _check_unique(samples)


def _folder_name(folder: Path) -> str:
    return folder.name or folder.resolve().name or "images"


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise BadDataError(f"cannot list ({exc.strerror})", path=folder) from None


def _files(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())
    except OSError as exc:
        raise BadDataError(f"cannot list ({exc.strerror})", path=folder) from None


def _is_stage_sample(folder: Path) -> bool:
    """``folder/images/{folder}.png`` (or another image suffix) exists."""
    images = folder / "images"
    return images.is_dir() and any(
        (images / f"{folder.name}{s}").is_file() or (images / f"{folder.name}{s.upper()}").is_file()
        for s in IMAGE_SUFFIXES
    )


def _is_layout_a(folder: Path, *, strict: bool = False) -> bool:
    """``images/`` and ``masks/`` folders, and not a stage sample. ``strict`` (inside a stage folder, where a
    sample that lost its image looks the same): at least one image has a label image of its stem."""
    if not ((folder / "images").is_dir() and (folder / "masks").is_dir()) or _is_stage_sample(folder):
        return False
    if not strict:
        return True
    masks = {_named(p) for p in _files(folder / "masks")}  # as the pairs are matched: a.ome.tif, a.geojson
    masks |= {label_stem(p) for p in _files(folder / "masks")}
    return any(image_name(p) in masks for p in _images(_files(folder / "images")))


def _labels_by_stem(paths, stem_of) -> dict[str, Path]:
    """The label images among ``paths`` by the stem of their image (``stem_of``: None for a non-label file)."""
    labels: dict[str, Path] = {}
    for p in paths:
        stem = stem_of(p)
        if stem is None:
            continue
        if stem in labels:
            raise BadDataError(f"two label images for {stem!r} ({labels[stem].name} and {p.name}); keep one", path=p)
        labels[stem] = p
    return labels


def label_stem(path) -> str | None:
    """The image name a label file of layout (b) (``NAME_masks.tif``, ``NAME_labels.png``...) belongs to,
    or None when its name is no label file's.

    >>> label_stem("a_cp_masks.png"), label_stem("a.ome_cp_masks.png"), label_stem("a.tif")
    ('a', 'a', None)
    """
    path = Path(path)
    if path.suffix.lower() not in LABEL_EXTENSIONS:
        return None
    for suffix in LABEL_SUFFIXES:  # any case, as file systems and Windows users have it
        if path.stem.lower().endswith(suffix) and len(path.stem) > len(suffix):
            stem = path.stem[: -len(suffix)]
            # Cellpose cuts one suffix: a.ome.tif's masks are a.ome_cp_masks.png, of the image named a.
            return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > 4 else stem
    return None


def _is_layout_b(folder: Path) -> bool:
    return any(label_stem(p) is not None for p in _files(folder))


def _is_user_folder(folder: Path) -> bool:
    return _is_layout_a(folder) or _is_layout_b(folder)


def _holds_stage_samples(folder: Path) -> bool:
    return any((child / "images").is_dir() and not _is_layout_a(child, strict=True) for child in _subfolders(folder))


def _stage_samples(stage: Path) -> list[Sample]:
    ids = [i for i in list_ids(stage) if not _is_layout_a(stage / i, strict=True)]
    return [Sample(i, image_path(stage, i), stage / i / "masks", stage.name) for i in ids]


def _images(files: list[Path]) -> list[Path]:
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and label_stem(p) is None]


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    """``files`` by their names as ``dsb segment`` names outputs (``a.ome.tif`` is ``a``)."""
    out: dict[str, Path] = {}
    for p in files:
        stem = image_name(p)
        if stem in out:
            raise BadDataError(f"two {what} named {stem!r} ({out[stem].name} and {p.name}); keep one", path=p)
        out[stem] = p
    return out


def _user_samples(folder: Path, name: str) -> list[Sample]:
    """The samples of a user folder in layout (a) (``images/``, ``masks/``), (b) (labels beside images), or
    both at once (pairs beside the ``images/`` and ``masks/`` folders)."""
    layouts = [a for a, holds in ((True, _is_layout_a(folder)), (False, _is_layout_b(folder))) if holds]
    return [sample for in_folders in layouts for sample in _layout_samples(folder, name, in_folders)]


def _layout_samples(folder: Path, name: str, in_folders: bool) -> list[Sample]:
    """The samples of ``folder`` in layout (a) (``in_folders``) or (b)."""
    if in_folders:
        images = _by_stem(_images(_files(folder / "images")), "images")
        labels = _labels_by_stem(
            _files(folder / "masks"),
            lambda p: None if p.suffix.lower() not in LABEL_EXTENSIONS
            else _named(p) if _named(p) in images else (label_stem(p) or _named(p)),
        )
        missing = "masks/{stem}.tif, masks/{stem}.png or masks/{stem}.geojson"
        orphan = "images/{stem}.png or images/{stem}.tif"
    else:
        files = _files(folder)
        images = _by_stem(_images(files), "images")
        labels = _labels_by_stem(files, label_stem)
        missing = "{stem}_masks.tif, {stem}_labels.tif, {stem}_cp_masks.png or {stem}_masks.geojson beside it"
        orphan = "{stem}.png or {stem}.tif beside it"
    for stem, path in images.items():
        if stem not in labels:
            raise BadDataError(f"image without labels: expected {missing.format(stem=stem)}", path=path)
    for stem, path in labels.items():
        if stem not in images:
            raise BadDataError(f"labels without an image: expected {orphan.format(stem=stem)}", path=path)
    samples = []
    for stem in sorted(images):
        sample_id = f"{name}-{stem}"
        if any(c in sample_id for c in ",\n\r"):
            raise BadDataError("the file name holds a comma or line break, which the training cache cannot "
                               "hold; rename it", path=images[stem])
        samples.append(Sample(sample_id, images[stem], labels[stem], name, user=True))
    return samples


def _check_unique(samples: list[Sample]) -> list[Sample]:
    seen: dict[str, Sample] = {}
    for s in samples:
        if s.id in seen:
            raise BadDataError(f"gets the id {s.id!r} that {seen[s.id].image} has too; rename one", path=s.image)
        seen[s.id] = s
    return samples


# ---------------------------------------------------------------- reading


def read_label_image(path, shape: tuple[int, int] | None = None, *, image=None, renumbered: bool = True,
                     return_fixes: bool = False):
    """Read a label image: 0 background, one integer value per nucleus.

    A binary mask (a single value above 0, as 0/1 or 0/255, over several separate objects) is no label
    image, and read as one it would make all its nuclei one: each of its objects (8-connected: pixels
    touching at a corner are one object) is taken as one nucleus, numbered 1..N in raster order, and
    that fix is returned with ``return_fixes=True``, and otherwise reported with a
    :class:`dsb.io.images.MaskFixWarning` naming the file. A label image of several values is never
    relabelled, even where a nucleus's value covers stray separate fragments; one of a single nucleus
    with a stray fragment cannot be told from a binary mask, and is split so, with the warning.

    Parameters
    ----------
    path : str or os.PathLike
        An 8-, 16- or 32-bit integer TIFF or PNG (a palette PNG gives its indices), or a GeoJSON file of
        the nuclei's outlines (QuPath's objects: :func:`dsb.io.geojson.read_geojson_labels`).
    shape : (int, int), optional
        The (H, W) of its image, which it must have.
    image : str or os.PathLike, optional
        That image, to name in the message when the sizes differ.
    renumbered : bool
        Number the nuclei 1..N; False keeps the file's values (``dsb measure``, whose table names
        each nucleus by its value in the file).
    return_fixes : bool
        Also return the :class:`dsb.io.images.MaskFixes` (its ``binary``, for a binary mask).

    Returns
    -------
    labels : (H, W) ndarray of int32, or of the file's integer type when not ``renumbered``
        The nuclei renumbered 1..N in the order of their values (a binary mask's objects: int32,
        1..N, renumbered or not).
    fixes : MaskFixes
        Only with ``return_fixes=True``.

    Raises
    ------
    BadDataError
        Naming the file: unreadable, RGB (or several channels), floating point with values that are not
        whole numbers (whole ones, as Fiji's 32-bit images hold labels, are taken), negative values, or
        another size than ``shape``.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a_masks.tif")
    >>> tifffile.imwrite(path, np.array([[0, 7], [7, 300]], np.uint16))
    >>> read_label_image(path).tolist()
    [[0, 1], [1, 2]]
    """
    path = Path(path)
    if path.suffix.lower() == ".geojson":
        labels = read_geojson_labels(path, shape)
        labels = renumber(labels)[0] if renumbered else labels
        return (labels, MaskFixes()) if return_fixes else labels
    labels = _palette_indices(path)
    frames = stack_frames(path) if labels is None and path.suffix.lower() in (".tif", ".tiff") else ""
    if frames:
        named = "" if image is None else " " + Path(image).name
        kinds = " and ".join(FRAME_WORDS[role] for role in frames)
        raise BadDataError(f"label image is a stack (of {kinds}) but its image{named} is one 2-D image", path=path)
    if labels is None:
        labels = read_image(path)
    if labels.ndim == 3:
        if labels.shape[2] != 1:
            raise BadDataError(
                f"label image has {labels.shape[2]} channels or pages (an RGB picture, or a stack of planes?); "
                "expected one 2-D image of one channel, 0 background and one integer per nucleus (save the labels "
                "layer itself)",
                path=path,
            )
        labels = labels[..., 0]
    labels = _integer_labels(labels, path)
    if shape is not None and labels.shape != tuple(shape):
        raise BadDataError(
            f"label image is {labels.shape[0]}x{labels.shape[1]} but its image"
            f"{'' if image is None else ' ' + Path(image).name} is {shape[0]}x{shape[1]} "
            "(height x width)",
            path=path,
        )
    labels, objects = _binary_mask_objects(labels)
    fixes = MaskFixes(binary=((path.name, objects),)) if objects else MaskFixes()
    labels = renumber(labels)[0] if renumbered else labels
    if return_fixes:
        return labels, fixes
    if fixes:
        warnings.warn(str(fixes), MaskFixWarning, stacklevel=2)
    return labels


def _binary_mask_objects(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """A binary mask's objects (8-connected) as labels 1..N in raster order, and N; for any other label
    image (no value, several values, or one value over one object) ``labels`` itself, and 0.

    >>> mask = np.array([[1, 1, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]], np.uint8)
    >>> objects, n = _binary_mask_objects(mask)
    >>> n, objects.tolist()
    (3, [[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 0, 0]])
    >>> _binary_mask_objects(mask * np.array([1, 1, 2, 2], np.uint8))[1]  # two values: a label image
    0
    """
    from scipy import ndimage

    top = labels.max(initial=0)
    foreground = labels > 0
    if top == 0 or not np.array_equal(foreground, labels == top):
        return labels, 0
    objects, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
    return (objects, int(count)) if count > 1 else (labels, 0)


def read_label_stack(path, shape: tuple[int, ...], roles: str, *, image=None) -> np.ndarray:
    """Read the label TIFF (or QuPath GeoJSON) of a stack whose frame axes are ``roles`` (``t``, ``z``, ``f``
    unnamed, as :func:`dsb.io.images.read_stack` gives them) and whose shape is ``shape`` (frame axes, then
    height and width): each frame's nuclei by their values in the file (not renumbered).

    A file whose axes are named (``dsb segment``'s labels, a Fiji hyperstack, an OME-TIFF) is put in the
    image's order of time points and planes; one of plain pages (napari's save of a Labels layer: its
    frames one after another) is taken in the image's frame order. A GeoJSON file's objects go on the
    frames of their QuPath planes (:func:`_geojson_stack`).

    Raises
    ------
    BadDataError
        Naming the file: unreadable, neither a TIFF nor GeoJSON, not of integers (or of whole numbers),
        negative, or not the frames and size of its image (a GeoJSON's objects on planes it has not).
    """
    path = Path(path)
    if path.suffix.lower() == ".geojson":
        return _geojson_stack(path, tuple(int(n) for n in shape), roles)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise BadDataError("is the label image of a stack, which must be a TIFF of its frames or QuPath's objects "
                           "on its planes (GeoJSON); a PNG holds one 2-D plane", path=path)
    labels, axes = read_tiff_series(path)
    shape = tuple(int(n) for n in shape)
    named = axes if axes and len(axes) == labels.ndim else "?" * labels.ndim
    keep = [i for i in range(labels.ndim - 2) if labels.shape[i] != 1]  # axes of one frame say nothing
    labels = labels.reshape([labels.shape[i] for i in keep] + list(labels.shape[-2:]))
    own = "".join({"T": "t", "Z": "z"}.get(named[i].upper(), "f") for i in keep)
    if labels.ndim >= 2 and labels.shape[-2:] == shape[-2:]:
        if len(own) == len(roles) and all(a == b or "f" in (a, b) for a, b in zip(own, roles)):
            pass  # the image's axes, or unnamed ones of its lengths
        elif sorted(own) == sorted(roles) and len(set(own)) == len(own) and "f" not in own:
            labels = labels.transpose([own.index(role) for role in roles] + [-2, -1])  # e.g. Z, T as T, Z
        elif own == "f" and labels.size == int(np.prod(shape)):
            labels = labels.reshape(shape)  # plain pages, the frames one after another
    if labels.shape != shape:
        named_image = "" if image is None else " " + Path(image).name
        raise BadDataError(f"label stack is {_shape_words(own, labels.shape)} but its image{named_image} is "
                           f"{_shape_words(roles, shape)} (frames, then height x width)", path=path)
    return _integer_labels(labels, path)


def _geojson_stack(path: Path, shape: tuple[int, ...], roles: str) -> np.ndarray:
    """QuPath's objects of a stack (:func:`dsb.io.geojson.read_geojson_objects`) on the image's frames: its
    ``t`` and ``z`` planes on the frame axes :data:`dsb.io.geojson.QUPATH_PLANES` puts them on (a plain
    TIFF's pages on ``t``), as ``dsb segment --geojson`` wrote them."""
    from dsb.io.geojson import QUPATH_PLANES, on_frames, read_geojson_objects

    frames = dict(zip((QUPATH_PLANES[role] for role in roles), shape))
    found, planes, _ = read_geojson_objects(path, shape[-2:], frames=frames)
    return on_frames(found, planes, shape, roles)


def _shape_words(roles: str, shape) -> str:
    """A stack's shape with its frame axes' roles: ``2 t x 6 z x 96 x 96`` (an unnamed axis bare).

    >>> _shape_words("tf", (2, 6, 96, 96))
    '2 t x 6 x 96 x 96'
    """
    lead = [f"{n}{'' if role == 'f' else ' ' + role}" for role, n in zip(roles, shape)]
    return " x ".join(lead + [str(n) for n in shape[len(roles):]])


def _integer_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """``labels`` as integers, or one line naming ``path``: floats of whole values (Fiji's 32-bit labels)
    and booleans taken, other floats, other types and negative values refused."""
    if labels.dtype.kind == "f":
        # Fiji's 32-bit images are floats: whole values are labels all the same.
        whole = np.isfinite(labels).all() and bool((labels == np.round(labels)).all())
        if not whole or (labels.size and labels.max() >= 2**53):
            raise BadDataError(
                f"label image is floating point ({labels.dtype}) with values that are not whole numbers; "
                "expected integers, 0 background and one value per nucleus (in Fiji: Image > Type > 16-bit)",
                path=path,
            )
        labels = labels.astype(np.int64)
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise BadDataError(f"label image of type {labels.dtype}; expected 8-, 16- or 32-bit integers", path=path)
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise BadDataError(
            f"label image holds negative values (down to {labels.min()}); expected 0 background and one "
            "positive value per nucleus",
            path=path,
        )
    return labels


def label_file(image, folder=None, *, listing: dict | None = None) -> Path:
    """The label image of ``image``: a label file of its name (:func:`label_stem`: ``NAME_masks``,
    ``NAME_labels`` or ``NAME_cp_masks``, TIFF, PNG or GeoJSON, any case) beside it, or in ``folder``,
    where a file named as the image itself (``masks/NAME.tif`` beside ``images/NAME.tif``,
    ``masks/NAME.ome.tif`` or ``masks/NAME.geojson``) counts too. ``NAME`` is the image's name as
    ``dsb segment`` names its outputs (:func:`dsb.io.images.image_name`: ``a.ome.tif`` is ``a``).

    ``listing`` (a dict, empty at first) keeps each folder's label files by name between calls, so that
    pairing a folder of many images lists it once.

    Raises
    ------
    BadDataError
        Naming the image: no such file, or several (which one is meant is the user's to say).
    """
    image = Path(image)
    folder = image.parent if folder is None else Path(folder)
    name = image_name(image)
    elsewhere = folder.resolve() != image.parent.resolve()
    listing = {} if listing is None else listing
    if folder not in listing:  # the folder's label files by label name, and all its label-typed files by name
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS] \
            if folder.is_dir() else []
        by_label, by_name = {}, {}
        for p in files:
            if label_stem(p) is not None:
                by_label.setdefault(label_stem(p).casefold(), []).append(p)
            by_name.setdefault(_named(p).casefold(), []).append(p)
        listing[folder] = by_label, by_name
    by_label, by_name = listing[folder]
    found = by_label.get(name.casefold(), []) + (by_name.get(name.casefold(), []) if elsewhere else [])
    found = sorted((p for p in dict.fromkeys(found) if p.resolve() != image.resolve()), key=_label_rank)
    if len(found) > 1:
        raise BadDataError(f"has {len(found)} label images ({', '.join(p.name for p in found)}); keep one in "
                           f"{folder}", path=image)
    if not found:
        raise BadDataError(f"has no label image in {folder} ({name}_masks.tif, {name}_labels.tif, "
                           f"{name}_cp_masks.png or {name}_masks.geojson"
                           f"{', or ' + name + '.tif or ' + name + '.geojson' if elsewhere else ''})", path=image)
    return found[0]


def _named(path: Path) -> str:
    """The image name a label file named as its image bears (``masks/NAME.tif``, ``masks/NAME.geojson``)."""
    return path.stem if path.suffix.lower() == ".geojson" else image_name(path)


def _label_rank(path: Path) -> tuple[int, int]:
    """The order label files are named in: by their suffix (:data:`LABEL_SUFFIXES`, none last), then type."""
    stem = path.stem.lower()
    suffix = next((i for i, s in enumerate(LABEL_SUFFIXES) if stem.endswith(s)), len(LABEL_SUFFIXES))
    return suffix, LABEL_EXTENSIONS.index(path.suffix.lower())


def _palette_indices(path: Path) -> np.ndarray | None:
    """The indices of a palette PNG (which :func:`dsb.io.images.read_image` turns into colours), else None."""
    if path.suffix.lower() != ".png":
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            return np.array(im)
    except Exception:  # noqa: BLE001 - read_image names the problem
        return None


def read_sample(sample: Sample, channel: int | None = None) -> tuple[np.ndarray, np.ndarray, MaskFixes]:
    """The raw image, instance labels and mask fixes of one sample.

    Parameters
    ----------
    sample : Sample
    channel : int, optional
        For one's own images (not the competition's), only this channel, counted from 0
        (``preprocess.channel``, ``dsb train --channel``), as :func:`dsb.io.images.read_image` picks it:
        channel 0 of a grey image is the image, another channel of it is bad input. A channel
        that holds one value everywhere (an alpha channel) is bad input too.

    Returns
    -------
    image : (H, W) or (H, W, C) ndarray
        As :func:`dsb.io.images.read_image` returns it.
    labels : (H, W) ndarray of int32
        0 background, 1..N.
    fixes : MaskFixes
        What :func:`dsb.io.images.read_labels` settled, or for a label image what
        :func:`read_label_image` did (a binary mask taken object by object).

    Raises
    ------
    BadDataError
        Naming the file (see :func:`dsb.io.images.read_labels` and :func:`read_label_image`).
    """
    channel = channel if sample.user else None
    image = read_image(sample.image, channel)
    if channel is not None and image.size and image.min() == image.max():
        raise BadDataError(f"channel {channel} holds one value ({image.flat[0]}) everywhere: no nuclei to learn from "
                           "(an alpha channel?); pick the DNA stain's channel", path=sample.image)
    if not sample.user:
        labels, fixes = read_labels(sample.labels.parent, image.shape[:2], return_fixes=True)
        return image, labels, fixes
    return image, *read_label_image(sample.labels, image.shape[:2], image=sample.image, return_fixes=True)
