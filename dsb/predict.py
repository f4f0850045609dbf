"""From images to nuclei: tiled network inference, test-time augmentation, the submission CSV.

:func:`predict_probabilities` runs the network over an image of any size
(:func:`dsb.tiling.predict_tiled`), optionally averaged over the eight flips
and 90-degree rotations; :func:`predict_labels` adds preprocessing and the
watershed; :func:`predict_folder` turns a folder of images into a validated
Kaggle submission and, optionally, one label image per input, through the
folder pipeline of :mod:`dsb.pipeline` (find, read and check, predict, write).

The model is called through ``predict_on_batch`` when it has one (a Keras
model: compiled once per tile shape, on whatever device the backend uses), or
called directly otherwise (any function from a ``(B, h, w, 1)`` batch to
``(B, h, w, C)`` probabilities), so tests can stand in a plain function.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, os_error, writable_dir
from .config import Config, PostprocessConfig, PredictConfig
from ._validate import check_gray
from .errors import BadDataError, DsbError, EnvironmentProblem
from .pipeline import Skips, folder_images, nuclei_predictor, predict_each, read_images, write_labels
from .postprocess import grow_into_mask, labels_from_probabilities, relabel, remove_small
from .scale import area_weighted_diameter, check_diameter, clip_scale, labels_to_shape, resample, resample_to
from .tiling import predict_tiled

__all__ = [
    "DIHEDRAL",
    "batch_predictor",
    "predict_probabilities",
    "Scale",
    "Scaled",
    "Nuclei",
    "choose_scale",
    "predict_scaled",
    "labels_at_scale",
    "labels_to_image",
    "predict_nuclei",
    "network_stage",
    "watershed_stage",
    "predict_labels",
    "predict_images",
    "predict_folder",
]

# The eight symmetries of the square: (quarter turns, flip left-right first).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


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
    image = check_gray("image_gray", np.asarray(image_gray, np.float32))

    def run(img: np.ndarray) -> np.ndarray:
        return predict_tiled(
            predict_batch, img, tile_size=config.tile_size, overlap=config.overlap,
            batch_size=config.batch_size, multiple=multiple, context=config.context,
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


# Above this side at the working scale, an image is predicted in overlapping chunks so that
# memory stays bounded when small nuclei make a large image larger still (2048 x 2048 pixels
# of 6-pixel nuclei are 6800 x 6800 at a diameter of 20).
_CHUNK = 2048
# Context around each chunk, in working pixels: several nuclei and more than the network's reach.
_CHUNK_MARGIN = 128


@dataclass(frozen=True)
class Scale:
    """The scale one image is predicted at.

    Attributes
    ----------
    scale : float
        Working size over the image's own size (1: not resampled).
    diameter : float
        The image's median nucleus diameter in its own pixels: given, or
        estimated; NaN when unknown (no scale normalisation, or no nucleus found).
    estimated : bool
        Whether ``diameter`` was estimated.
    passes : int
        Network passes the estimate took.
    """

    scale: float
    diameter: float
    estimated: bool
    passes: int = 0


@dataclass(frozen=True)
class Scaled:
    """Probabilities of one image at the scale the network saw it (:func:`predict_scaled`)."""

    probabilities: np.ndarray
    scale: float
    shape: tuple[int, int]
    diameter: float
    estimated: bool


@dataclass(frozen=True)
class Nuclei:
    """The nuclei of one image (:func:`predict_nuclei`): labels and the scale they were found at."""

    labels: np.ndarray
    diameter: float
    scale: float
    estimated: bool


def _network_input(raw_image, config: Config) -> np.ndarray:
    from .preprocess import preprocess_image

    return preprocess_image(raw_image, config.preprocess)


def _at_scale(model, gray: np.ndarray, scale: float, config: Config, *, tta: bool = False) -> np.ndarray:
    return predict_probabilities(
        model, resample(gray, scale), config.predict, tta=tta, multiple=config.model.size_multiple()
    )


def _prefix_sums(values: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
    """Sums of ``values`` along ``axis`` over ``[0, k)`` for each ``k`` in ``at`` (ascending, in
    ``[0, n]``), in float64: one pass of block sums between the wanted indices, not a full cumsum."""
    n = values.shape[axis]
    edges = np.union1d([0], at[at < n])
    blocks = np.add.reduceat(values, edges, axis=axis, dtype=np.float64)
    shape = list(blocks.shape)
    shape[axis] = 1
    prefix = np.concatenate([np.zeros(shape), np.cumsum(blocks, axis=axis)], axis=axis)
    return np.take(prefix, np.searchsorted(np.append(edges, n), at), axis=axis)


def _window(gray: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` x ``side`` part of ``gray`` with the most signal (nuclei are bright in the
    network's input), or all of an axis shorter than ``side``; the whole image when the
    window would hold half of it or more (the pass can then serve as the prediction)."""
    height, width = gray.shape[:2]
    sh, sw = min(side, height), min(side, width)
    if 2 * sh * sw >= height * width:
        return gray
    plane = gray[:, :, 0] if gray.ndim == 3 else gray
    # Window sums on a grid of a quarter window, from the summed-area table at the grid's corners only.
    rows = np.unique(np.linspace(0, height - sh, max(1, 4 * height // sh)).astype(int))
    cols = np.unique(np.linspace(0, width - sw, max(1, 4 * width // sw)).astype(int))
    row_at, col_at = np.union1d(rows, rows + sh), np.union1d(cols, cols + sw)
    table = _prefix_sums(_prefix_sums(plane, row_at, 0), col_at, 1)
    top, bottom = np.searchsorted(row_at, rows), np.searchsorted(row_at, rows + sh)
    left, right = np.searchsorted(col_at, cols), np.searchsorted(col_at, cols + sw)
    sums = (table[np.ix_(bottom, right)] - table[np.ix_(top, right)]
            - table[np.ix_(bottom, left)] + table[np.ix_(top, left)])
    i, j = np.unravel_index(np.argmax(sums), sums.shape)
    return gray[rows[i] : rows[i] + sh, cols[j] : cols[j] + sw]


def _inner_diameter(labels: np.ndarray, whole: bool) -> float:
    """:func:`dsb.scale.area_weighted_diameter` of the nuclei a window holds whole: those that touch its
    edge are cut and would read small, unless the window is the image or fewer than 3 are inside."""
    if not whole:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inner = np.where(np.isin(labels, edge), 0, labels)
        if len(np.unique(inner)) > 3:
            labels = inner
    return area_weighted_diameter(labels)


def choose_scale(model, config: Config, gray: np.ndarray, *, diameter: float | None = None) -> Scale:
    """The scale to predict a preprocessed image at.

    With ``config.preprocess.diameter`` set (the canonical diameter ``D``),
    the image is resampled by ``D / diameter`` when ``diameter`` is given.
    Otherwise the diameter is estimated: a pass at ``predict.estimate_scale``
    gives nuclei whose area-weighted median diameter ``d``
    (:func:`dsb.scale.area_weighted_diameter`) suggests the scale ``D / d``; when that
    is more than 20 % away from the current one, the next pass runs there, up
    to ``config.predict.diameter_passes`` passes, and one more when the last
    pass's window was under 6 of its nuclei across; after the last, the image
    is predicted at the scale that pass suggests. The scale stays within
    ``predict.min_scale`` .. ``max_scale``.

    Each pass sees a window of at most ``predict.estimate_size`` pixels a side
    at its scale, where the image is brightest, and measures the nuclei it
    holds whole, so that the estimate costs little next to the prediction
    itself; when the window is the whole image, its last pass is the
    prediction. The first pass runs at ``predict.estimate_scale``, by default
    the image's own scale (starting at half scale lost the small nuclei of
    held-out brightfield images).

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
    gray : (H, W) ndarray of float32
        The network input (:func:`dsb.preprocess.preprocess_image`).
    diameter : float, optional
        The image's median nucleus diameter in pixels; None estimates it.

    Returns
    -------
    Scale
    """
    return _choose(model, config, gray, diameter)[0]


def _choose(model, config: Config, gray: np.ndarray, diameter) -> tuple[Scale, np.ndarray | None, np.ndarray | None]:
    """:func:`choose_scale`, and the probabilities and watershed labels of its last pass when that
    pass saw the whole image at the chosen scale (so neither the network nor the watershed need
    run again); None and None otherwise."""
    canonical = config.preprocess.diameter
    pc = config.predict
    if not canonical:
        return Scale(1.0, math.nan, False), None, None
    if diameter is not None:
        scale = clip_scale(canonical / check_diameter(diameter), pc.min_scale, pc.max_scale)
        return Scale(scale, float(diameter), False), None, None
    scale, passes, found = clip_scale(pc.estimate_scale, pc.min_scale, pc.max_scale), 0, math.nan
    multiple = config.model.size_multiple()
    while True:
        # One pixel more than the window needs, so that it resamples to at least estimate_size.
        window = _window(gray, max(1, math.ceil(pc.estimate_size / scale) + 1))
        whole = window.shape == gray.shape
        if whole:
            prob = _at_scale(model, window, scale, config)
        else:
            # Every window the same shape at the working scale: an engine prepares a shape once.
            side = pc.estimate_size // multiple * multiple or multiple
            work = resample(window, scale)[:side, :side]
            prob = predict_probabilities(model, work, config.predict, multiple=multiple)
        passes += 1
        labels = labels_from_probabilities(prob, config.postprocess)
        found = _inner_diameter(labels, whole)
        if not math.isfinite(found):
            break
        wanted = clip_scale(scale * canonical / found, pc.min_scale, pc.max_scale)
        if abs(math.log(wanted / scale)) < math.log(1.2):
            break
        # A window fewer than 6 diameters across holds few whole nuclei, and the large ones
        # least: one more pass measures them at the scale this one suggests.
        crowded = found * 6 > pc.estimate_size
        if passes >= pc.diameter_passes + crowded:
            # No pass left to check it, but the last measurement still says where to predict
            # (before, the prediction ran at the last pass's scale, and that pass's own
            # measurement went unused).
            return Scale(wanted, found / scale, True, passes), None, None
        scale = wanted
    # The last pass ran at the chosen scale: its probabilities and labels serve when it saw the whole image.
    chosen = Scale(scale, found / scale, True, passes)
    return (chosen, prob, labels) if whole else (chosen, None, None)


def predict_scaled(
    model, config: Config, raw_image: np.ndarray, *, tta: bool = False, diameter: float | None = None
) -> Scaled:
    """Probabilities of one raw image at the scale :func:`choose_scale` picks, the whole image at once.

    For the post-processing search (:mod:`dsb.tune`), which keeps the
    probabilities; :func:`predict_nuclei` bounds memory on large images.
    """
    gray = _network_input(raw_image, config)
    chosen, prob, _ = _choose(model, config, gray, diameter)
    if prob is None or tta:
        prob = _at_scale(model, gray, chosen.scale, config, tta=tta)
    return Scaled(prob, chosen.scale, gray.shape[:2], chosen.diameter, chosen.estimated)


def labels_at_scale(prob: np.ndarray, scale: float, shape: tuple[int, int], config: PostprocessConfig) -> np.ndarray:
    """Nuclei from probabilities at the working scale, on the image's own grid.

    The watershed runs where the network saw the image (its thresholds and
    sizes are in the network's pixels); the labels then go back to ``shape``
    by the nearest pixel. Where the image was shrunk (large nuclei), each
    nucleus is then fitted to the body probability brought back to full
    resolution, so outlines are not blocky.

    Returns
    -------
    (H, W) ndarray of int32
    """
    return labels_to_image(labels_from_probabilities(prob, config), prob, scale, shape, config)


def labels_to_image(
    labels: np.ndarray, prob: np.ndarray, scale: float, shape: tuple[int, int], config: PostprocessConfig
) -> np.ndarray:
    """Labels found at the working scale brought back to the image's grid (see :func:`labels_at_scale`)."""
    if labels.shape == tuple(shape):
        return labels
    labels = labels_to_shape(labels, shape)
    if scale < 1.0:
        mask = resample_to(prob[:, :, 0], shape) > config.mask_threshold
        labels = remove_small(grow_into_mask(labels, mask, math.ceil(1.0 / scale)), 1)
    return labels


def _segment_in_chunks(model, config: Config, gray: np.ndarray, scale: float, *, tta: bool) -> np.ndarray:
    """Labels of a large image, chunk by chunk at the working scale.

    Each chunk is a core of ``_CHUNK`` working pixels a side with
    ``_CHUNK_MARGIN`` of context; it keeps the nuclei whose centre lies in
    its core, which the margin holds whole. Memory follows the chunk, not the
    image.
    """
    height, width = gray.shape[:2]
    core = max(1, int(_CHUNK / scale))
    margin = int(math.ceil(_CHUNK_MARGIN / scale))
    out = np.zeros((height, width), np.int32)
    count = 0
    for r0 in range(0, height, core):
        for c0 in range(0, width, core):
            r1, c1 = min(r0 + core, height), min(c0 + core, width)
            er0, ec0 = max(0, r0 - margin), max(0, c0 - margin)
            er1, ec1 = min(height, r1 + margin), min(width, c1 + margin)
            part = gray[er0:er1, ec0:ec1]
            prob = _at_scale(model, part, scale, config, tta=tta)
            labels = labels_at_scale(prob, scale, part.shape[:2], config.postprocess)
            n = int(labels.max())
            if not n:
                continue
            rows, cols = np.indices(labels.shape)
            area = np.bincount(labels.ravel(), minlength=n + 1)
            centre_r = np.bincount(labels.ravel(), rows.ravel(), minlength=n + 1) / np.maximum(area, 1) + er0
            centre_c = np.bincount(labels.ravel(), cols.ravel(), minlength=n + 1) / np.maximum(area, 1) + ec0
            keep = (centre_r >= r0) & (centre_r < r1) & (centre_c >= c0) & (centre_c < c1)
            labels = relabel(labels, keep)
            window = out[er0:er1, ec0:ec1]
            free = (labels > 0) & (window == 0)
            window[free] = labels[free] + count
            count += int(keep[1:].sum())
    return remove_small(out, 1)


def predict_nuclei(
    model, config: Config, raw_image: np.ndarray, *, tta: bool = False, diameter: float | None = None
) -> Nuclei:
    """Nuclei of one raw image: preprocess, resample to the network's scale, predict, watershed, back.

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
    raw_image : (H, W) or (H, W, C) ndarray
    tta : bool
        Test-time augmentation.
    diameter : float, optional
        The image's median nucleus diameter in pixels; None estimates it
        (:func:`choose_scale`).

    Returns
    -------
    Nuclei
        ``labels`` (H, W) int32 on the image's grid (0 background, 1..N), the
        ``diameter`` used or estimated, the ``scale`` and whether it was ``estimated``.
    """
    return watershed_stage(network_stage(model, config, raw_image, tta=tta, diameter=diameter), config)


def network_stage(model, config: Config, raw_image: np.ndarray, *, tta: bool = False,
                  diameter: float | None = None):
    """The network's half of :func:`predict_nuclei`: probabilities at the chosen scale.

    Returns what :func:`watershed_stage` takes: the two halves let a caller
    run the watershed of one image while the network works on the next
    (:func:`dsb.pipeline.predict_each`). An image large enough to be done in
    chunks comes back as its finished :class:`Nuclei`.
    """
    gray = _network_input(raw_image, config)
    chosen, prob, labels = _choose(model, config, gray, diameter)
    if max(gray.shape[:2]) * chosen.scale > _CHUNK + 2 * _CHUNK_MARGIN:
        labels = _segment_in_chunks(model, config, gray, chosen.scale, tta=tta)
        return Nuclei(labels, chosen.diameter, chosen.scale, chosen.estimated)
    if prob is None or tta:
        prob, labels = _at_scale(model, gray, chosen.scale, config, tta=tta), None
    return prob, labels, chosen, gray.shape[:2]


def watershed_stage(stage, config: Config) -> Nuclei:
    """The other half of :func:`predict_nuclei`: nuclei from :func:`network_stage`'s probabilities
    (and the estimate's watershed of them at the working scale, when it made one)."""
    if isinstance(stage, Nuclei):
        return stage
    prob, labels, chosen, shape = stage
    if labels is None:
        labels = labels_at_scale(prob, chosen.scale, shape, config.postprocess)
    else:
        labels = labels_to_image(labels, prob, chosen.scale, shape, config.postprocess)
    return Nuclei(labels, chosen.diameter, chosen.scale, chosen.estimated)


def predict_labels(
    model, config: Config, raw_image: np.ndarray, *, tta: bool = False, diameter: float | None = None
) -> np.ndarray:
    """Nuclei of one raw image as a label image (:func:`predict_nuclei`).

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
    diameter : float, optional
        The median nucleus diameter in pixels; None estimates it.

    Returns
    -------
    (H, W) ndarray of int32
        0 background, nuclei 1..N.
    """
    return predict_nuclei(model, config, raw_image, tta=tta, diameter=diameter).labels


def _writable_file(path: Path) -> None:
    writable_dir(path.parent)
    if path.is_dir():
        raise EnvironmentProblem("is a folder; expected a CSV file name", path=path)


def predict_images(
    model,
    config: Config,
    images_dir,
    *,
    out_csv,
    labels_dir=None,
    tta: bool = False,
    diameter: float | None = None,
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
    images_dir, out_csv, labels_dir, tta, diameter, skip_bad, progress
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
    skips = Skips(skip_bad)
    images, problems = folder_images(images_dir)
    for problem in problems:
        skips(problem)
    if labels_dir is not None:
        labels_dir = Path(labels_dir)
        if labels_dir.resolve() in {p.parent.resolve() for p in images.values()}:
            raise BadDataError("is where the input images are; give another folder for the label images",
                               path=labels_dir)
        writable_dir(labels_dir)

    # Every image is read before any is predicted, so that a bad one stops the run before anything is written.
    checked = read_images(images, skips, progress=progress)
    if not checked:
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
        predict = nuclei_predictor(model, config, tta=tta, diameter=diameter)
        found = predict_each(predict, checked.images(skips), skips=skips, progress=progress, length=len(checked))
        with contextlib.closing(found):  # a failed write stops the images in flight
            for image_id, _, _, nuclei in found:
                labels = nuclei.labels
                shapes[image_id] = labels.shape
                rles = labels_to_rles(labels)
                rows.extend((image_id, rle) for rle in rles or [""])
                if staging is not None:
                    label_files.append(write_labels(staging / f"{image_id}.png", labels))
        if not shapes:
            raise BadDataError("no image could be predicted", path=images_dir)

        table = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])
        table.attrs["skipped"] = skips.records
        with atomic_path(out_csv) as tmp:
            write_submission(table, tmp)
            # Validate the file as written, before it takes the place of out_csv.
            invalid = validate_submission(read_submission(tmp), shapes, path=out_csv)
            if invalid:
                raise DsbError(f"the predicted submission is not valid: {invalid[0]} ({len(invalid)} problems)",
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
    diameter: float | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    engine: str = "auto",
    precision: str = "float32",
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
    diameter : float, optional
        The median nucleus diameter of every image, in pixels; by default
        each image's is estimated (:func:`predict_scaled`).
    skip_bad : bool
        Go on when an image cannot be used, naming it in
        ``result.attrs["skipped"]``; by default the first bad image stops the
        run before anything is written.
    progress : bool
        Draw progress bars on stderr.
    engine : str
        The inference engine: ``"keras"``, ``"onnx"``, ``"openvino"`` or
        ``"auto"`` (see :func:`dsb.engines.choose_engine`).
    precision : str
        ``"float32"``, or ``"int8"`` for the run's ``model.int8.onnx`` on an
        ONNX engine (:mod:`dsb.quantize`).

    Returns
    -------
    pandas.DataFrame
        ``ImageId``, ``EncodedPixels``: one row per nucleus, ids sorted, nuclei
        in label order; an image with no nucleus has one row with an empty
        ``EncodedPixels``. ``attrs["skipped"]`` holds a
        :class:`dsb.pipeline.Skip` per skipped file (empty unless ``skip_bad``).

    Raises
    ------
    BadDataError
        A bad image (without ``skip_bad``), an empty folder, a bad run folder.
    EnvironmentProblem
        An output that cannot be written.
    """
    from .run import load_network

    model, config = load_network(run_dir, engine, precision)
    return predict_images(
        model, config, images_dir, out_csv=out_csv, labels_dir=labels_dir, tta=tta, diameter=diameter,
        skip_bad=skip_bad, progress=progress,
    )
