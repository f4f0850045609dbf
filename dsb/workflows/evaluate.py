"""Score a run on its own validation images, as the competition would.

The validation images are held out of training by ``dsb train`` and named in
the run's ``config.json``; scoring them with the run's tuned post-processing
gives a figure comparable to the leaderboard without touching the test set.
Scores come per imaging-experiment group (:mod:`dsb.training.groups`) and per image
type as well as overall: with ``train.split = "group"`` the validation groups
are experiments the network never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.inference.labels import labels_to_shape
from dsb.inference.resample import resample_to
from dsb.inference.scale import median_diameter
from dsb.kaggle.metric import MISS_CAUSES, SMALL_SHARE, miss_causes, score_labels
from dsb.network.engines import load_network
from dsb.network.model_folder import load_run_config
from dsb.training.cache import load_groups
from dsb.workflows.pipeline import nuclei_predictor, predict_each
from dsb.workflows.tune import require_validation, validation_data

__all__ = [
    "Validation", "predict_validation", "score_validation", "evaluate", "score_summary", "densest", "summary_lines",
    "zoom_pair", "magnification_sweep", "sweep_lines", "misread", "MISREAD_RATIO", "MISS_COLUMNS", "missed_words",
]


@dataclass(frozen=True)
class Validation:
    """A run's validation images with their truth and predictions, by id (in ``validation_ids`` order).

    Attributes
    ----------
    images : dict of str to ndarray
        The raw images.
    truth, pred : dict of str to (H, W) ndarray of int
        True and predicted labels.
    types, groups : dict of str to str
        Image type and imaging-experiment group of each image.
    diameters : dict of str to float
        The nucleus diameter prediction used for each image (given or
        estimated, pixels; NaN when unknown).
    sure : dict of str to bool
        Whether that diameter was given or confirmed by the estimate's
        cross-check (:class:`dsb.inference.scale.Scale`).
    """

    images: dict
    truth: dict
    pred: dict
    types: dict
    groups: dict
    diameters: dict = field(default_factory=dict)
    sure: dict = field(default_factory=dict)


# An estimate this far from the median diameter of the true nuclei, either way, reads the image
# wrong. Wide, because the estimate is an area-weighted median (larger nuclei weigh more) and the
# truth a plain one.
MISREAD_RATIO = 2.0

#: Per-image columns of :func:`score_validation`: the true nuclei missed at IoU 0.5 for each of
#: :data:`dsb.kaggle.metric.MISS_CAUSES`, then how many of the missed are small
#: (:data:`dsb.kaggle.metric.SMALL_SHARE` of their image's median area).
MISS_COLUMNS = tuple(f"miss_{cause}" for cause in MISS_CAUSES) + ("miss_small",)


def predict_validation(
    model, config, data_dir, *, tta: bool | None = None, diameter: float | None = None, progress: bool = True,
    zoom: float = 1.0,
) -> Validation:
    """Read a run's validation images and their groups, and predict their nuclei.

    Parameters
    ----------
    model : keras.Model or callable
    config : Config
        The run's config; ``validation_ids`` name the images.
    data_dir : str or os.PathLike
        A stage1_train folder, or a folder holding one. Its training cache
        gives the groups (:func:`dsb.training.cache.load_groups`; built when missing).
    tta : bool, optional
        Average over the eight flips and rotations; None follows the run's ``predict.tta``.
    diameter : float, optional
        The nucleus diameter of every image in pixels; by default each
        image's is estimated, as ``dsb predict`` does.
    progress : bool
        Draw a progress bar on stderr.
    zoom : float
        Resample every image and its truth by this factor first (:func:`zoom_pair`), as
        a microscope of another magnification would show them.

    Returns
    -------
    Validation
    """

    images, truth, types = validation_data(config, data_dir, progress=False)
    if zoom != 1.0:
        for image_id in images:
            images[image_id], truth[image_id] = zoom_pair(images[image_id], truth[image_id], zoom)
    all_groups = load_groups(data_dir, config.preprocess)[0]
    predict = nuclei_predictor(model, config, tta=tta, diameter=diameter)
    in_memory = ((image_id, None, raw) for image_id, raw in images.items())
    found = {
        image_id: nuclei
        for image_id, _, _, nuclei in predict_each(predict, in_memory, progress=progress, length=len(images))
    }
    groups = {i: all_groups.get(i, "unknown") for i in images}
    return Validation(images=images, truth=truth, pred={i: n.labels for i, n in found.items()}, types=types,
                      groups=groups, diameters={i: n.diameter for i, n in found.items()},
                      sure={i: bool(n.sure) for i, n in found.items()})


def score_validation(validation: Validation) -> tuple[float, pd.DataFrame]:
    """:func:`dsb.kaggle.metric.score_labels` of a :class:`Validation`, with ``type`` and ``group`` columns,
    ``diameter`` (used by prediction) beside ``true_diameter`` (from the masks), ``sure``, and why true
    nuclei were missed (:data:`MISS_COLUMNS`, from :func:`dsb.kaggle.metric.miss_causes`)."""

    value, table = score_labels(validation.truth, validation.pred, image_types=validation.types)
    ids = table["ImageId"].tolist()
    table["group"] = [validation.groups.get(i, "unknown") for i in ids]
    table["diameter"] = [validation.diameters.get(i, float("nan")) for i in ids]
    table["true_diameter"] = [median_diameter(validation.truth[i]) for i in ids]
    table["sure"] = [bool(validation.sure.get(i, True)) for i in ids]
    for column, counts in zip(MISS_COLUMNS, zip(*(_miss_counts(validation, i) for i in ids))):
        table[column] = counts
    return value, table


def _miss_counts(validation: Validation, image_id: str) -> tuple[int, ...]:
    """The :data:`MISS_COLUMNS` of one image (every true nucleus absent when it has no prediction)."""
    true = validation.truth[image_id]
    pred = validation.pred.get(image_id)
    causes = miss_causes(true, np.zeros_like(true) if pred is None else pred)
    return tuple(int((causes["cause"] == c).sum()) for c in MISS_CAUSES) + (int(causes["small"].sum()),)


def missed_words(row) -> str:
    """``"missed 4 absent, 11 merged (13 small)"`` from a row with :data:`MISS_COLUMNS` (a table
    row or a :func:`score_summary` row); empty when none was missed, or the row has no such columns."""
    if not hasattr(row, "miss_small"):
        return ""
    parts = [f"{int(getattr(row, f'miss_{c}'))} {c}" for c in MISS_CAUSES if getattr(row, f"miss_{c}")]
    if not parts:
        return ""
    small = int(row.miss_small)
    return "missed " + ", ".join(parts) + (f" ({small} small)" if small else "")


def misread(table: pd.DataFrame) -> pd.Series:
    """Per image: the diameter used was called sure yet is over :data:`MISREAD_RATIO` times off the
    median diameter of the true nuclei, either way: a silent failure of the estimate. False where
    either diameter is unknown."""
    ratio = table["diameter"] / table["true_diameter"]
    off = (ratio > MISREAD_RATIO) | (ratio < 1 / MISREAD_RATIO)
    return table["sure"].astype(bool) & off


def score_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean scores per group, per type and overall, from a per-image score table.

    Parameters
    ----------
    table : pandas.DataFrame
        As :func:`evaluate` returns it: ``score`` and ``type`` columns, and
        ``group`` where known.

    Returns
    -------
    pandas.DataFrame
        Columns ``level`` ("group", "type" or "all"), ``name``, ``type``,
        ``images``, ``score``, ``worst`` and ``best``: the groups (by type,
        then name), then the types, then one row for all images. With ``tp_50``
        and ``n_true`` in ``table``, also ``found`` and ``true``: the true nuclei
        matched at IoU 0.5, and all of them. With ``sure``, ``diameter`` and
        ``true_diameter``, also ``unsure`` (images whose estimate was not
        confirmed) and ``misread`` (:func:`misread`). With :data:`MISS_COLUMNS`, their sums.
    """
    rows = []
    types = table["type"].fillna("unknown") if "type" in table else pd.Series("unknown", index=table.index)
    if "group" in table:
        for (kind, name), part in table.groupby([types, table["group"].fillna("unknown")], sort=True):
            rows.append(("group", name, kind, part))
    for kind, part in table.groupby(types, sort=True):
        rows.append(("type", kind, kind, part))
    rows.append(("all", "all", "", table))
    counts = "tp_50" in table and "n_true" in table
    estimates = {"sure", "diameter", "true_diameter"} <= set(table.columns)
    wrong = misread(table) if estimates else None
    misses = [c for c in MISS_COLUMNS if c in table]
    return pd.DataFrame(
        [(level, name, kind, len(part), part["score"].mean(), part["score"].min(), part["score"].max())
         + ((int(part["tp_50"].sum()), int(part["n_true"].sum())) if counts else ())
         + ((int((~part["sure"].astype(bool)).sum()), int(wrong[part.index].sum())) if estimates else ())
         + tuple(int(part[c].sum()) for c in misses)
         for level, name, kind, part in rows],
        columns=["level", "name", "type", "images", "score", "worst", "best"] + (["found", "true"] if counts else [])
        + (["unsure", "misread"] if estimates else []) + misses,
    )


def _estimate_words(unsure: int, wrong: int) -> str:
    return f"estimate unsure on {unsure}, sure but over {MISREAD_RATIO:g}x off on {wrong}"


def densest(table: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` images with the most true nuclei: ``ImageId``, ``group``, ``type``,
    ``n_true``, ``found`` (true nuclei matched at IoU 0.5), ``n_pred``, ``score`` and the
    :data:`MISS_COLUMNS` where ``table`` has them."""
    columns = [c for c in ("ImageId", "group", "type", "n_true", "tp_50", "n_pred", "score", *MISS_COLUMNS)
               if c in table]
    top = table.sort_values(["n_true", "ImageId"], ascending=[False, True], kind="stable").head(n)
    return top[columns].rename(columns={"tp_50": "found"}).reset_index(drop=True)


def summary_lines(table: pd.DataFrame, *, n_dense: int = 2) -> list[str]:
    """Lines for people: the ``n_dense`` densest images of each group with their found/true nuclei
    (crowding is where merges lose nuclei), then the score of each group and of each type
    (``"fluorescence: 0.500000 (2 images)"``); the overall score is not among them."""
    lines = []
    parts = table.groupby(table["group"].fillna("unknown"), sort=True) if "group" in table else [("all", table)]
    dense = [densest(part, n_dense) for _, part in parts]
    if any(len(d) for d in dense):
        lines.append("densest validation images of each group, true nuclei found at IoU 0.5:")
        for rows in dense:
            for row in rows.itertuples(index=False):
                where = getattr(row, "group", None) or getattr(row, "type", "")
                why = missed_words(row)
                lines.append(f"  {row.ImageId} ({where}): found {row.found}/{row.n_true}, "
                             f"predicted {row.n_pred}, score {row.score:.4f}" + (f"; {why}" if why else ""))
    summary = score_summary(table)
    if "unsure" in summary:
        every = summary[summary["level"] == "all"].iloc[0]
        lines.append(f"diameter: {_estimate_words(every['unsure'], every['misread'])} of {every['images']} images "
                     "(against the masks' median diameter)")
    why = missed_words(summary[summary["level"] == "all"].iloc[0])
    if why:
        lines.append(f"true nuclei {why}; small: under {SMALL_SHARE:g} of their image's median area")
    for row in summary[summary["level"] == "group"].itertuples(index=False):
        lines.append(f"group {row.name} ({row.type}): {row.score:.6f} ({row.images} images)")
    for row in summary[summary["level"] == "type"].itertuples(index=False):
        lines.append(f"{row.name}: {row.score:.6f} ({row.images} images)")
    return lines


def evaluate(
    run_dir, data_dir, *, tta: bool | None = None, diameter: float | None = None, progress: bool = True,
    engine: str = "auto", precision: str = "auto", scale_factor: float | None = None,
) -> tuple[float, pd.DataFrame]:
    """Predict a run's validation images and score them with the competition metric.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder (``model.keras`` and ``config.json`` with ``validation_ids``).
    data_dir : str or os.PathLike
        A stage1_train folder, or a folder holding one.
    tta : bool, optional
        Average over the eight flips and rotations; None follows the run's ``predict.tta``.
    diameter : float, optional
        See :func:`predict_validation`.
    progress : bool
        Draw a progress bar on stderr.
    engine : str
        The inference engine: ``"keras"``, ``"onnx"``, ``"openvino"`` or
        ``"auto"`` (see :func:`dsb.network.engines.choose_engine`).
    precision : str
        ``"auto"`` (the default: the fastest format this CPU computes well for the run's files,
        :func:`dsb.network.engines.resolve_precision`), ``"float32"``, ``"bfloat16"``,
        or ``"int8"`` for the run's ``model.int8.onnx`` on an ONNX engine (:mod:`dsb.network.quantize`).
    scale_factor : float, optional
        Predict this many times larger than each image's estimated (or given)
        scale, in [0.5, 2]; None follows the run's ``predict.scale_factor``.

    Returns
    -------
    score : float
        The mean over validation images of the per-image score.
    table : pandas.DataFrame
        One row per image, as :func:`dsb.kaggle.metric.score_labels`, with its
        ``type`` and imaging-experiment ``group`` (see :func:`score_summary`).
    """

    require_validation(run_dir, load_run_config(run_dir), "score")  # before the network loads
    model, config = load_network(Path(run_dir), engine, precision, scale_factor=scale_factor)
    return score_validation(predict_validation(model, config, data_dir, tta=tta, diameter=diameter,
                                               progress=progress))


def zoom_pair(raw: np.ndarray, labels: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """An image and its instance labels as seen ``zoom`` times larger (or smaller, below 1).

    The image is resampled linearly, channel by channel, and keeps its dtype; the labels by the
    nearest pixel (:func:`dsb.inference.labels.labels_to_shape`), so nuclei keep their identity.

    Parameters
    ----------
    raw : (H, W) or (H, W, C) ndarray
    labels : (H, W) ndarray of int
    zoom : float
        Greater than 0.

    Returns
    -------
    (ndarray, ndarray of int32)
        Both of shape ``round(H * zoom), round(W * zoom)`` (at least 1 pixel).

    Examples
    --------
    >>> image, labels = zoom_pair(np.zeros((10, 20), np.uint8), np.ones((10, 20), int), 2)
    >>> image.shape, labels.shape, image.dtype
    ((20, 40), (20, 40), dtype('uint8'))
    """
    if not zoom > 0:
        raise ValueError(f"`zoom` is {zoom}; it must be greater than 0")
    shape = tuple(max(1, int(round(n * zoom))) for n in labels.shape[:2])
    planes = raw[:, :, None] if raw.ndim == 2 else raw
    out = np.stack([resample_to(planes[:, :, c], shape) for c in range(planes.shape[2])], axis=2)
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(raw.dtype)
    return (out[:, :, 0] if raw.ndim == 2 else out), labels_to_shape(labels, shape)


def magnification_sweep(
    run_dir, data_dir, zooms, *, tta: bool | None = None, progress: bool = True, engine: str = "auto",
    precision: str = "auto", scale_factor: float | None = None,
) -> pd.DataFrame:
    """Score a run's validation images seen at several magnifications: the yardstick for scale.

    Each zoom resamples every held-out image and its truth (:func:`zoom_pair`), so nuclei
    of the held-out groups span sizes that no held-out group shows, and predicts them with
    the scale estimated as ``dsb predict`` does. A product that is scale-invariant scores the
    same at every zoom.

    Parameters
    ----------
    run_dir, data_dir, tta, progress, engine, precision, scale_factor
        As :func:`evaluate`.
    zooms : sequence of float
        The magnifications, e.g. ``(0.5, 1, 2, 3)``.

    Returns
    -------
    pandas.DataFrame
        One row per zoom and summary level (as :func:`score_summary`: each group, each type,
        all): ``zoom``, ``level``, ``name``, ``images``, ``score``, ``found`` and ``true``,
        the true nuclei matched at IoU 0.5 and all true nuclei, and ``unsure`` and ``misread``,
        the images whose diameter estimate was not confirmed, and those it read wrong while
        calling itself sure, and why true nuclei were missed (:data:`MISS_COLUMNS`).
    """
    require_validation(run_dir, load_run_config(run_dir), "score")  # before the network loads
    model, config = load_network(Path(run_dir), engine, precision, scale_factor=scale_factor)
    frames = []
    for zoom in zooms:
        _, table = score_validation(predict_validation(model, config, data_dir, tta=tta, progress=progress,
                                                       zoom=float(zoom)))
        frames.append(score_summary(table).assign(zoom=float(zoom)))
    columns = ["zoom", "level", "name", "type", "images", "score", "found", "true", "unsure", "misread",
               *MISS_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns]


def sweep_lines(sweep: pd.DataFrame) -> list[str]:
    """Lines for people: per zoom, the score of each type and overall with the true nuclei found,
    and how far each zoom is from 1x when 1x was measured."""
    overall = sweep[sweep["level"] == "all"].set_index("zoom")
    base = overall["score"].get(1.0)
    lines = []
    for zoom, part in sweep.groupby("zoom", sort=True):
        types = part[part["level"] == "type"]
        every = overall.loc[zoom]
        line = (f"zoom {zoom:g}: {every['score']:.4f}"
                + "".join(f", {r.name} {r.score:.4f}" for r in types.itertuples(index=False))
                + f"; found {every['found']}/{every['true']} at IoU 0.5")
        why = missed_words(every)
        if why:
            line += f"; {why}"
        if "unsure" in every:
            line += "; " + _estimate_words(every["unsure"], every["misread"])
        if base is not None and zoom != 1.0:
            line += f"; {every['score'] - base:+.4f} against 1x"
        lines.append(line)
    return lines
