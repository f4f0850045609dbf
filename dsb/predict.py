"""From images to nuclei: tiled network inference, test-time augmentation, the submission CSV.

:func:`predict_probabilities` runs the network over an image of any size
(:func:`dsb.tiling.predict_tiled`), optionally averaged over the eight flips
and 90-degree rotations; :func:`predict_labels` adds preprocessing and the
watershed; :func:`predict_folder` turns a folder of images into a validated
Kaggle submission and, optionally, one label image per input.

The model is called through ``predict_on_batch`` when it has one (a Keras
model: compiled once per tile shape, on whatever device the backend uses), or
called directly otherwise (any function from a ``(B, h, w, 1)`` batch to
``(B, h, w, C)`` probabilities), so tests can stand in a plain function.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, os_error, writable_dir
from .config import Config, PredictConfig
from .dataset import IMAGE_SUFFIXES, image_path, read_image
from .errors import BadDataError, DsbError, EnvironmentProblem
from .postprocess import labels_from_probabilities
from .progress import track
from .tiling import predict_tiled

__all__ = [
    "IMAGE_SUFFIXES",
    "DIHEDRAL",
    "batch_predictor",
    "predict_probabilities",
    "predict_labels",
    "find_images",
    "write_label_image",
    "predict_images",
    "predict_folder",
]

# The eight symmetries of the square: (quarter turns, flip left-right first).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))
# Decoded images kept from the checking pass for the prediction pass, in bytes
# (the 65 stage-1 test images take 37 MB; beyond this they are read again).
_CACHE_BYTES = 256 << 20


def batch_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a ``(B, h, w, 1)`` float32 batch to ``(B, h, w, C)`` float32 numpy.

    Keras models go through ``predict_on_batch`` (a compiled function; the
    same call on CPU and GPU); anything else is called as ``model(batch)``.
    """
    if hasattr(model, "predict_on_batch"):
        import keras

        return lambda batch: np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)), np.float32)
    if not callable(model):
        raise TypeError(f"`model` ({type(model).__name__}) must be a Keras model or a callable")
    return lambda batch: np.asarray(model(batch), np.float32)


def predict_probabilities(
    model, image_gray: np.ndarray, config: PredictConfig, *, tta: bool = False, multiple: int = 16
) -> np.ndarray:
    """Per-pixel probabilities for a preprocessed image of any size.

    Parameters
    ----------
    model : keras.Model or callable
        Maps ``(B, h, w, 1)`` float32 to ``(B, h, w, C)`` probabilities.
    image_gray : (H, W) or (H, W, 1) ndarray of float32
        The network input (:func:`dsb.preprocess.preprocess_image`).
    config : PredictConfig
        Tile size, overlap and batch size.
    tta : bool
        Average over the eight flips and quarter turns, each prediction turned
        back to the image's orientation first.
    multiple : int
        Tile sides must be multiples of this (:func:`dsb.model.size_multiple`).

    Returns
    -------
    (H, W, C) ndarray of float32
    """
    predict_batch = batch_predictor(model)
    image = np.asarray(image_gray, np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise TypeError(f"`image_gray` (shape {image.shape}) must be (H, W) or (H, W, 1)")

    def run(img: np.ndarray) -> np.ndarray:
        return predict_tiled(
            predict_batch, img, tile_size=config.tile_size, overlap=config.overlap,
            batch_size=config.batch_size, multiple=multiple,
        )

    if not tta:
        return run(image)
    total = None
    for turns, flip in DIHEDRAL:
        view = np.rot90(image[:, ::-1] if flip else image, turns)
        prob = np.rot90(run(view), -turns, axes=(0, 1))
        prob = prob[:, ::-1] if flip else prob
        total = prob.copy() if total is None else total + prob
    return total / np.float32(len(DIHEDRAL))


def predict_labels(model, config: Config, raw_image: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """Nuclei of one raw image: preprocess, predict probabilities, watershed.

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
        The run's config (preprocess, predict, postprocess and model sections).
    raw_image : (H, W) or (H, W, C) ndarray
        As read from disk: grey, RGB or RGBA, 8 or 16 bit.
    tta : bool
        Test-time augmentation (see :func:`predict_probabilities`).

    Returns
    -------
    (H, W) ndarray of int32
        0 background, nuclei 1..N.
    """
    from .preprocess import preprocess_image

    gray = preprocess_image(raw_image, config.preprocess)
    prob = predict_probabilities(model, gray, config.predict, tta=tta, multiple=config.model.size_multiple())
    return labels_from_probabilities(prob, config.postprocess)


def find_images(images_dir) -> tuple[dict[str, Path], list[BadDataError]]:
    """The images of a folder in stage layout or a flat folder, by id.

    A stage folder holds ``{id}/images/{id}.png`` (as Kaggle's stage zips
    unpack; another image suffix is accepted, see
    :func:`dsb.dataset.image_path`); a flat folder holds image files
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


def _writable_file(path: Path) -> None:
    writable_dir(path.parent)
    if path.is_dir():
        raise EnvironmentProblem("is a folder; expected a CSV file name", path=path)


def _read_checked(path: Path) -> np.ndarray:
    """Read an image and check the network can take it, naming the file otherwise."""
    image = read_image(path)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise BadDataError(
            f"image of shape {image.shape} is not 2-D grey or (H, W, C) with 1 to 4 channels", path=path
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise BadDataError(f"image of shape {image.shape} has no pixels", path=path)
    return image


def write_label_image(path, labels: np.ndarray) -> Path:
    """Write instance labels as an image that Fiji and napari open, atomically.

    Up to 65535 nuclei: a 16-bit greyscale PNG (``path`` as given); more: a
    32-bit TIFF (``path`` with suffix ``.tif``).

    Parameters
    ----------
    path : str or os.PathLike
        Destination, normally ``{id}.png``.
    labels : (H, W) ndarray of int
        0 background, 1..N nuclei.

    Returns
    -------
    Path
        The file written.
    """
    labels = np.asarray(labels)
    path = Path(path)
    if labels.size and labels.max() > np.iinfo(np.uint16).max:
        import tifffile

        path = path.with_suffix(".tif")
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels.astype(np.uint32), photometric="minisblack")
        return path
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
    return path


def _skip_or_raise(exc: DsbError, skip_bad: bool, skipped: list[str]) -> None:
    if not skip_bad:
        raise exc
    skipped.append(str(exc))


def predict_images(
    model,
    config: Config,
    images_dir,
    *,
    out_csv,
    labels_dir=None,
    tta: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`predict_folder` with a model already in memory.

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
        The run's config.
    images_dir, out_csv, labels_dir, tta, skip_bad, progress
        See :func:`predict_folder`.

    Returns
    -------
    pandas.DataFrame
        See :func:`predict_folder`.
    """
    from .rle import labels_to_rles
    from .submission import read_submission, validate_submission, write_submission

    out_csv = Path(out_csv)
    _writable_file(out_csv)
    images, problems = find_images(images_dir)
    skipped: list[str] = []
    for problem in problems:
        _skip_or_raise(problem, skip_bad, skipped)
    if labels_dir is not None:
        labels_dir = Path(labels_dir)
        if labels_dir.resolve() in {p.parent.resolve() for p in images.values()}:
            raise BadDataError("is where the input images are; give another folder for the label images",
                               path=labels_dir)
        writable_dir(labels_dir)

    # Read every image before predicting any, so that a bad one stops the run
    # before anything is written; keep what fits in memory for the second pass.
    cached: dict[str, np.ndarray] = {}
    cached_bytes = 0
    good: list[str] = []
    for image_id, path in track(images.items(), length=len(images), label="checking", enabled=progress):
        try:
            raw = _read_checked(path)
        except DsbError as exc:
            _skip_or_raise(exc, skip_bad, skipped)
            continue
        good.append(image_id)
        if cached_bytes + raw.nbytes <= _CACHE_BYTES:
            cached[image_id] = raw
            cached_bytes += raw.nbytes
    if not good:
        raise BadDataError(f"none of the {len(images) + len(problems)} images could be read", path=images_dir)

    staging = None
    if labels_dir is not None:
        # Label images wait in a hidden folder until the CSV has passed validation.
        try:
            staging = Path(tempfile.mkdtemp(prefix=".dsb-labels.", suffix=".tmp", dir=labels_dir))
        except OSError as exc:
            raise os_error(exc, labels_dir) from exc
    try:
        rows: list[tuple[str, str]] = []
        shapes: dict[str, tuple[int, int]] = {}
        label_files: list[Path] = []
        for image_id in track(good, label="predicting", enabled=progress):
            path = images[image_id]
            try:
                raw = cached.pop(image_id) if image_id in cached else _read_checked(path)
                labels = predict_labels(model, config, raw, tta=tta)
            except BadDataError as exc:
                if exc.path is None:
                    exc = BadDataError(exc.message, path=path, where=exc.where)
                _skip_or_raise(exc, skip_bad, skipped)
                continue
            shapes[image_id] = labels.shape
            rles = labels_to_rles(labels)
            rows.extend((image_id, rle) for rle in rles or [""])
            if staging is not None:
                label_files.append(write_label_image(staging / f"{image_id}.png", labels))
        if not shapes:
            raise BadDataError("no image could be predicted", path=images_dir)

        table = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])
        table.attrs["skipped"] = skipped
        with atomic_path(out_csv) as tmp:
            write_submission(table, tmp)
            # Validate the file as written, before it takes the place of out_csv.
            found = validate_submission(read_submission(tmp), shapes, path=out_csv)
            if found:
                raise DsbError(f"the predicted submission is not valid: {found[0]} ({len(found)} problems)",
                               path=out_csv)
            for file in label_files:
                try:
                    os.replace(file, labels_dir / file.name)
                except OSError as exc:
                    raise os_error(exc, labels_dir / file.name) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return table


def predict_folder(
    run_dir,
    images_dir,
    *,
    out_csv,
    labels_dir=None,
    tta: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every image of a folder into a validated Kaggle submission CSV.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder (``model.keras`` and ``config.json``, tuned
        post-processing included).
    images_dir : str or os.PathLike
        A stage folder (``{id}/images/{id}.png``) or a flat folder of PNG,
        TIFF or JPEG images (id = file name without suffix).
    out_csv : str or os.PathLike
        The submission to write, atomically, after it has been validated.
    labels_dir : str or os.PathLike, optional
        Also write one label image per input here: ``{id}.png``, 16-bit
        greyscale (``{id}.tif``, 32-bit, above 65535 nuclei).
    tta : bool
        Average over the eight flips and quarter turns.
    skip_bad : bool
        Go on when an image cannot be used, naming it in
        ``result.attrs["skipped"]``; by default the first bad image stops the
        run before anything is written.
    progress : bool
        Draw progress bars on stderr.

    Returns
    -------
    pandas.DataFrame
        ``ImageId``, ``EncodedPixels``: one row per nucleus, ids sorted, nuclei
        in label order; an image with no nucleus has one row with an empty
        ``EncodedPixels``. ``attrs["skipped"]`` lists one line per skipped
        file (empty unless ``skip_bad``).

    Raises
    ------
    BadDataError
        A bad image (without ``skip_bad``), an empty folder, a bad run folder.
    EnvironmentProblem
        An output that cannot be written.
    """
    from .run import load_run

    model, config = load_run(run_dir)
    return predict_images(
        model, config, images_dir, out_csv=out_csv, labels_dir=labels_dir, tta=tta,
        skip_bad=skip_bad, progress=progress,
    )
