"""The images a command is given: find them, read and check each once, keep the skip records.

Steps 1 and 2 of the folder pipeline of ``dsb predict``, ``dsb segment`` and
``dsb evaluate`` (steps 3 and 4 are :mod:`dsb.workflows.pipeline` and
:mod:`dsb.io.writers`):

1. find the images: :func:`folder_images` (a stage folder or a flat folder,
   as ``dsb predict`` takes) or :func:`find_images` (image files and folders
   of them, as ``dsb segment`` takes); both give ``{id: path}`` and the
   entries that are not usable images;
2. read and check each image once, before anything is written
   (:func:`read_images`); decoded images are kept for prediction up to
   :data:`CACHE_BYTES`, beyond which they are read again.

A bad image is the :class:`Skips` policy's: by default it stops the run,
with ``skip_bad`` it becomes a :class:`Skip` record that the command returns
and the command line prints. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsb.core.concurrency import in_order, usable_cores
from dsb.core.errors import BadDataError, DsbError
from dsb.core.progress import track
from dsb.io.annotations import label_stem
from dsb.io.images import IMAGE_SUFFIXES, image_name, image_path, read_image
from dsb.io.ome import is_plate, is_plate_field, plate_name, plate_wells

#: The stem ending of ``dsb segment``'s overlay of an image (``NAME_overlay.png``).
OVERLAY_SUFFIX = "_overlay"

__all__ = [
    "CACHE_BYTES",
    "Skip",
    "Skips",
    "folder_images",
    "find_images",
    "claim_name",
    "Checked",
    "read_images",
]


# Decoded images kept from the checking pass for the prediction pass, in bytes
# (the 65 stage-1 test images take 37 MB; beyond this they are read again).
CACHE_BYTES = 256 << 20


@dataclass(frozen=True)
class Skip:
    """An input left out of a run, and why.

    ``str(skip)`` is the one line the command line prints after "skipped: ",
    in the form of :class:`dsb.core.errors.DsbError`: ``path: where: message``.
    """

    path: str | None
    message: str
    where: str | None = None

    @classmethod
    def from_error(cls, exc: DsbError) -> Skip:
        return cls(exc.path, exc.message, exc.where)

    def __str__(self) -> str:
        return str(DsbError(self.message, path=self.path, where=self.where))


class Skips:
    """What to do with a bad input: raise it (the default), or record it and go on.

    Parameters
    ----------
    skip_bad : bool
        Record each problem as a :class:`Skip` in :attr:`records` instead of
        raising it.
    """

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.records: list[Skip] = []

    def __call__(self, exc: DsbError, *, path=None) -> None:
        """Raise ``exc`` (named after ``path`` when it names no file), or record it with ``skip_bad``."""
        if exc.path is None and path is not None:
            exc = type(exc)(exc.message, path=path, where=exc.where)
        if not self.skip_bad:
            raise exc
        self.records.append(Skip.from_error(exc))


def folder_images(images_dir) -> tuple[dict[str, Path], list[BadDataError]]:
    """The images of a folder in stage layout or a flat folder, by id.

    A stage folder holds ``{id}/images/{id}.png`` (as Kaggle's stage zips
    unpack; another image suffix is accepted, see
    :func:`dsb.io.images.image_path`); a flat folder holds image files
    directly, the id being the file name without its suffix. Hidden files and
    folders are ignored.

    Parameters
    ----------
    images_dir : str or os.PathLike

    Returns
    -------
    images : dict of str to Path
        Id to image file, sorted by id.
    problems : list of BadDataError
        Entries that are not usable images (a file with another suffix, a sample
        folder without its image, two files with one id), each naming the path.

    Raises
    ------
    BadDataError
        When ``images_dir`` is not a folder or holds no image at all.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise BadDataError("not a folder of images", path=root)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise BadDataError(f"cannot list the folder ({exc.strerror})", path=root) from None
    images: dict[str, Path] = {}
    problems: list[BadDataError] = []
    folders = [p for p in entries if p.is_dir()]
    if any((p / "images").is_dir() for p in folders):
        for folder in folders:
            path = image_path(root, folder.name)
            if path.is_file():
                images[folder.name] = path
            else:
                problems.append(BadDataError(f"expected the sample's image at images/{folder.name}.png", path=folder))
    else:
        for path in entries:
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(
                    BadDataError(f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})", path=path)
                )
            elif not _usable_id(path.stem):
                problems.append(
                    BadDataError("the file name cannot be a submission ImageId (comma, quote or edge spaces)", path=path)
                )
            elif path.stem in images:
                problems.append(BadDataError(f"has the same id {path.stem!r} as {images[path.stem].name}", path=path))
            else:
                images[path.stem] = path
    if not images and not problems:
        raise BadDataError(
            "holds no images (expected {id}/images/{id}.png folders or PNG, TIFF, JPEG or BMP files)", path=root
        )
    return dict(sorted(images.items())), problems


def _usable_id(image_id: str) -> bool:
    return image_id.strip() == image_id and image_id.isprintable() and not any(c in image_id for c in ',"')


def find_images(paths) -> tuple[dict[str, Path], list[BadDataError]]:
    """Expand image files and folders into the images to segment, by name.

    A folder contributes the image files (PNG, TIFF, JPEG, BMP: the suffixes
    of :data:`dsb.io.images.IMAGE_SUFFIXES`) directly inside it, not those of its
    subfolders; hidden files and other suffixes are left alone, as are the label
    images (``NAME_masks.tif``, ``NAME_labels.tif``, ``NAME_cp_masks.png``:
    :func:`dsb.io.annotations.label_stem`) and ``dsb segment``'s overlays
    (``NAME_overlay.png``) of an image ``NAME`` in the same folder, so that a
    folder of annotated images, or one ``dsb segment`` wrote into, is
    segmented again as the images it holds. A file named explicitly must have
    one of those suffixes, and is taken whatever its name. An OME-Zarr
    high-content screening plate contributes the fields of its wells
    (:func:`dsb.io.ome.plate_wells`), each an image named by the plate, its
    well and its field (``plate_B_03_0``); a field is taken on its own too.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Image files and folders of images.

    Returns
    -------
    images : dict of str to Path
        File name without suffix to file, in the order given (each folder
        sorted by name); a file reached twice counts once.
    problems : list of BadDataError
        Paths that cannot be segmented, each naming the path: missing, a file
        with another suffix, a folder with no images, a plate's missing well or field.

    Raises
    ------
    BadDataError
        For two different files, or plates, with one name (their outputs would collide).
    """
    images: dict[str, Path] = {}
    problems: list[BadDataError] = []
    seen: set[Path] = set()
    plates: dict[str, Path] = {}

    def add(path: Path) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        claim_name(images, path)

    for path in map(Path, paths):
        if is_plate(path):
            _claim_plate(plates, path)
            try:
                wells, bad = plate_wells(path)
            except BadDataError as exc:
                wells, bad = [], [exc]
            problems.extend(bad)
            for field in (field for well in wells for field in well.fields):
                add(field)
        elif is_plate_field(path):
            add(path)
        elif path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found = _without_derived(found)
            if not found:
                holds_plates = any(is_plate(p) for p in path.iterdir() if p.is_dir())
                problems.append(BadDataError(
                    f"folder holds no images (expected files ending {', '.join(IMAGE_SUFFIXES)})"
                    + (", but OME-Zarr plates: give them (FOLDER/*.zarr)" if holds_plates else ""), path=path))
            for p in found:
                add(p)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                add(path)
            else:
                problems.append(BadDataError(
                    f"suffix {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_SUFFIXES)}", path=path))
        else:
            problems.append(BadDataError("no such file or folder", path=path))
    return images, problems


def _without_derived(files: list[Path]) -> list[Path]:
    """``files`` (of one folder) without the label images and overlays of an image among them."""
    names = {image_name(p) for p in files}

    def derived(p: Path) -> bool:
        stem = label_stem(p)
        if stem is None and p.stem.lower().endswith(OVERLAY_SUFFIX):
            stem = p.stem[: -len(OVERLAY_SUFFIX)]
        return stem is not None and stem in names

    return [p for p in files if not derived(p)]


def claim_name(names: dict[str, Path], path: Path) -> None:
    """Enter ``path`` in ``names`` under the name its outputs take (:func:`dsb.io.images.image_name`); a
    :class:`BadDataError` where another input holds it (their outputs would overwrite each other)."""
    name = image_name(path)
    other = names.setdefault(name, path)
    if other != path:
        raise BadDataError(f"would write the same output files as {other} (same name {name!r}); rename one of them",
                           path=path)


def _claim_plate(plates: dict[str, Path], path: Path) -> None:
    """Enter a plate in ``plates`` under the name of its wells table (:func:`dsb.io.ome.plate_name`); a
    :class:`BadDataError` where another plate holds it."""
    other = plates.setdefault(plate_name(path), path)
    if other.resolve() != path.resolve():
        raise BadDataError(f"would write the same wells table as {other} (same name {plate_name(path)!r}); rename "
                           "one of them", path=path)


def _read_or_problem(path: Path, channel: int | None = None) -> tuple[np.ndarray | None, DsbError | None]:
    try:
        return read_image(path, channel), None  # checks the layout: (H, W) or (H, W, 1..4), at least one pixel
    except DsbError as exc:
        return None, exc


def _read_ahead(paths: Iterable[Path],
                channel: int | None = None) -> Iterator[tuple[np.ndarray | None, DsbError | None]]:
    """``(raw image, None)`` or ``(None, problem)`` for each path, in order, decoded on every core:
    Pillow decodes outside the GIL.
    At most two images per core are decoded ahead of the reader."""
    from concurrent.futures import ThreadPoolExecutor

    cores = usable_cores()
    read = functools.partial(_read_or_problem, channel=channel)
    if cores == 1:
        yield from map(read, paths)
        return
    with ThreadPoolExecutor(max_workers=cores, thread_name_prefix="dsb-read") as pool, \
            contextlib.closing(in_order(pool, read, paths, 2 * cores)) as done:
        for _, future in done:
            yield future.result()


class Checked:
    """The images that read and passed the check, by id, with the decoded ones kept.

    Iterate with :meth:`images` to get each image once more for prediction.
    """

    def __init__(self, paths: dict[str, Path], cache: dict[str, np.ndarray], channel: int | None = None):
        self.paths = paths
        self._cache = cache
        self._channel = channel

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, skips: Skips) -> Iterator[tuple[str, Path, np.ndarray]]:
        """``(id, path, raw image)`` of each image: kept ones handed over, others read again."""
        for image_id, path in self.paths.items():
            if image_id in self._cache:
                yield image_id, path, self._cache.pop(image_id)
                continue
            try:
                raw = read_image(path, self._channel)
            except DsbError as exc:
                skips(exc, path=path)
                continue
            yield image_id, path, raw


def read_images(
    images: Mapping[str, Path],
    skips: Skips,
    *,
    progress: bool = False,
    label: str = "checking",
    cache_bytes: int = CACHE_BYTES,
    channel: int | None = None,
) -> Checked:
    """Read and check every image before any is predicted, so that a bad one stops the run early.

    Parameters
    ----------
    images : mapping of str to Path
        From :func:`folder_images` or :func:`find_images`.
    skips : Skips
        Gets each image that cannot be read or taken by the network
        (:func:`dsb.io.images.read_image`: unreadable, not an image, a stack).
    progress : bool
        Draw a progress bar on stderr.
    label : str
        The progress bar's label.
    cache_bytes : int
        Decoded images are kept for prediction up to this many bytes.
    channel : int, optional
        Read only this channel of each image (:func:`dsb.io.images.read_image`).

    Returns
    -------
    Checked
    """
    good: dict[str, Path] = {}
    cache: dict[str, np.ndarray] = {}
    kept = 0
    with contextlib.closing(_read_ahead(images.values(), channel)) as read:  # a bad image stops the reads ahead
        for (image_id, path), (raw, problem) in track(zip(images.items(), read), length=len(images),
                                                      label=label, enabled=progress):
            if problem is not None:
                skips(problem, path=path)
                continue
            good[image_id] = path
            if kept + raw.nbytes <= cache_bytes:
                cache[image_id] = raw
                kept += raw.nbytes
    return Checked(good, cache, channel)
