"""Tune the inference of a run on its validation images: tiling, then post-processing.

First the context the network needs is measured (:func:`tune_tiling`, with
:func:`dsb.inference.tiling.context_needed`), and the tile overlap set from it, so that
tiled predictions match whole-image ones.

The network runs once over the validation images; its probabilities stay in
memory while a coordinate search tries post-processing parameters one at a
time (every value of one parameter with the others held at the best so far,
then the next parameter, for a couple of rounds). The best parameters go into
the run folder's ``config.json`` (``postprocess`` section), so that ``dsb
predict`` uses them, and every setting tried into ``tuning.csv``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_paths
from dsb.core.config import PostprocessConfig, PredictConfig, check_scale_factors, config_json
from dsb.core.errors import BadDataError
from dsb.core.progress import track
from dsb.inference.labels import labels_to_image
from dsb.inference.predict import predict_scaled, use_tta
from dsb.inference.preprocess import image_type, preprocess_image
from dsb.inference.probabilities import batch_predictor
from dsb.inference.tiling import context_needed
from dsb.inference.watershed import finish_nuclei, labels_from_probabilities, remove_small, unfinished
from dsb.io.annotations import find_samples, read_sample
from dsb.kaggle.metric import score_labels
from dsb.network.engines import load_network
from dsb.network.model_folder import load_run_config
from dsb.training.finetune import MIN_VALIDATION_IMAGES

__all__ = ["GRID", "CONTEXT_TOLERANCE", "search_postprocess", "tune_tiling", "tune", "validation_data",
           "require_validation"]

# Probabilities of tiled and whole-image predictions may differ by this much (far below what
# moves a watershed threshold).
CONTEXT_TOLERANCE = 1e-3

# Values tried for each parameter, in the order they are searched: at most 25
# watersheds a round (about a second each on 66 validation images), as min_size, split_ratio
# and min_confidence reuse the last watershed (the split costs a few milliseconds an image).
GRID: dict[str, tuple] = {
    "marker_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "border_threshold": (0.2, 0.3, 0.4, 0.5, 0.6),
    "contact_threshold": (0.3, 0.5, 0.7, 1.0),  # 1: contact ignored; only for networks with a contact channel
    "core_threshold": (0.0, 0.3, 0.5, 0.7),  # 0: core ignored; only for networks with a core channel
    # Up to 0.8: a network after a short budget draws its outlines wider than its nuclei, and its
    # best threshold lies above 0.6 (the model card's cross-validation).
    "mask_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "flood": ("probability", "distance"),
    "min_marker_size": (1, 4, 8, 16),
    "min_size": (0, 8, 12, 20, 30, 45),
    "split_ratio": (0.0, 1.2, 1.5, 2.0),  # 0: merged-looking nuclei are not re-seeded
    # 0: every nucleus kept, however unsure. No higher than 0.8: above it, touching nuclei (whose
    # body probability dips along their contact) go too, which held-out images with few contacts
    # would not show (bench/bench_crowding.py).
    "min_confidence": (0.0, 0.6, 0.7, 0.75, 0.8),
}


def _key(config: PostprocessConfig) -> tuple:
    return dataclasses.astuple(config)


def search_postprocess(
    probabilities: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    start: PostprocessConfig,
    *,
    image_types: Mapping[str, str] | None = None,
    scales: Mapping[str, float] | None = None,
    grid: Mapping[str, Sequence] | None = None,
    rounds: int = 2,
    progress: bool = False,
) -> tuple[PostprocessConfig, pd.DataFrame]:
    """Coordinate search of post-processing parameters, scored with the competition metric.

    Parameters
    ----------
    probabilities : mapping of str to (h, w, C) ndarray of float32
        Network output per image id, at the working scale.
    truth : mapping of str to (H, W) ndarray of int
        True labels per image id (the same ids), on the images' own grid.
    start : PostprocessConfig
        Where the search starts; it is scored first, and kept unless a setting
        scores strictly better.
    image_types : mapping of str to str, optional
        Adds one mean score per image type to the table.
    scales : mapping of str to float, optional
        The working scale of each image's probabilities (1 when absent): the
        watershed runs there and its labels go back to the truth's grid
        (:func:`dsb.inference.labels.labels_to_image`).
    grid : mapping of str to sequence, optional
        Values to try per :class:`PostprocessConfig` field, searched in this
        order (default :data:`GRID`).
    rounds : int
        Passes over all parameters; the search stops early after a pass that
        changes nothing.
    progress : bool
        Draw a progress bar on stderr.

    Returns
    -------
    best : PostprocessConfig
    table : pandas.DataFrame
        One row per setting scored, in the order tried: the searched
        parameters, ``score`` (mean over images), ``score_{type}`` per image
        type, ``round``, ``seconds`` and ``best`` (true on the row of ``best``).
    """

    grid = dict(GRID if grid is None else grid)
    if any(p.shape[2] < 3 for p in probabilities.values()):
        grid.pop("contact_threshold", None)  # a two-channel network has no contact to threshold
    if any(p.shape[2] < 4 for p in probabilities.values()):
        grid.pop("core_threshold", None)  # nor a network without a core channel a core
    scales = dict(scales or {})
    fields = {f.name for f in dataclasses.fields(PostprocessConfig)}
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise ValueError(f"`grid` has unknown parameters {unknown} (known: {sorted(fields)})")
    ids = list(truth)
    missing = [i for i in ids if i not in probabilities]
    if missing:
        raise ValueError(f"no probabilities for {len(missing)} images, e.g. {missing[0]!r}")
    types = sorted({image_types[i] for i in ids if image_types.get(i)}) if image_types else []

    # The watershed does not depend on min_size, split_ratio or min_confidence: keep the last one
    # computed, and only drop small objects, split and drop unsure nuclei when those alone change
    # (as labels_from_probabilities does them, in that order).
    last: dict = {}

    def segment(config: PostprocessConfig) -> dict[str, np.ndarray]:
        base = dataclasses.replace(unfinished(config), min_size=0)
        if last.get("key") != _key(base):
            last["key"] = _key(base)
            last["labels"] = {i: labels_from_probabilities(probabilities[i], base) for i in ids}
        return {
            i: labels_to_image(
                finish_nuclei(remove_small(labels, max(config.min_size, 1)), probabilities[i], config),
                probabilities[i], scales.get(i, 1.0), truth[i].shape, config,
            )
            for i, labels in last["labels"].items()
        }

    scored: dict[tuple, float] = {}
    rows: list[dict] = []

    def evaluate(config: PostprocessConfig, round_: int) -> float:
        key = _key(config)
        if key not in scored:
            began = time.perf_counter()
            score, table = score_labels(truth, segment(config), image_types=image_types)
            scored[key] = score
            row = {name: getattr(config, name) for name in grid}
            row["score"] = score
            for t in types:
                row[f"score_{t}"] = float(table.loc[table["type"] == t, "score"].mean())
            row["round"] = round_
            row["seconds"] = round(time.perf_counter() - began, 3)
            rows.append(row)
        return scored[key]

    best = start
    best_score = evaluate(start, 0)
    total = rounds * sum(len(v) for v in grid.values())
    steps = ((r, name, value) for r in range(1, rounds + 1) for name, values in grid.items() for value in values)
    changed_in_round = {r: False for r in range(1, rounds + 1)}
    for round_, name, value in track(steps, length=total, label="tuning", enabled=progress):
        if round_ > 1 and not changed_in_round[round_ - 1]:
            break
        candidate = dataclasses.replace(best, **{name: value})
        candidate.check("postprocess")
        score = evaluate(candidate, round_)
        if score > best_score:
            best, best_score = candidate, score
            changed_in_round[round_] = True

    table = pd.DataFrame(rows)
    table["best"] = [
        all(row[name] == getattr(best, name) for name in grid) for row in rows
    ]
    return best, table


def tune_tiling(model, config, images: Sequence[np.ndarray], *, tolerance: float = CONTEXT_TOLERANCE,
                count: int = 8) -> tuple[PredictConfig, list[int]]:
    """Overlap and context of the tiles, from the context the network needs on real images.

    The context is measured (:func:`dsb.inference.tiling.context_needed`) on up to
    ``count`` of ``images`` at least 128 pixels a side after preprocessing,
    and the largest is kept; the overlap is twice that plus one grid step,
    so that neighbouring tiles hand over where both see enough.

    Parameters
    ----------
    model : callable
        See :func:`dsb.inference.probabilities.predict_probabilities`.
    config : Config
        The run's config; its ``predict`` section is the starting point.
    images : sequence of ndarray
        Raw validation images.

    Returns
    -------
    predict : PredictConfig
        ``config.predict`` with ``context`` and ``overlap`` measured (unchanged
        when no image is large enough).
    contexts : list of int
        The context measured on each image used.
    """

    multiple = config.model.size_multiple()
    predict_batch = batch_predictor(model)
    contexts = []
    for raw in images:
        gray = preprocess_image(raw, config.preprocess)
        if min(gray.shape[:2]) < 128:
            continue
        contexts.append(context_needed(predict_batch, gray, tolerance=tolerance, multiple=multiple)[0])
        if len(contexts) == count:
            break
    if not contexts:
        return config.predict, contexts
    context = -(-max(contexts) // multiple) * multiple
    overlap = 2 * context + multiple
    predict = dataclasses.replace(config.predict, context=context, overlap=overlap,
                                  tile_size=max(config.predict.tile_size, 4 * overlap))
    predict.check("predict")
    return predict, contexts


def require_validation(run_dir, config, purpose: str) -> None:
    """Refuse a run that kept no validation images, naming its ``config.json``: nothing to ``purpose``.

    Raises
    ------
    BadDataError
        ``config.validation_ids`` is empty: trained with ``validation_fraction`` 0, or a
        fine-tune on fewer than :data:`dsb.training.finetune.MIN_VALIDATION_IMAGES` annotated images.
    """
    if not config.validation_ids:
        raise BadDataError(
            f"is empty: the run kept no validation images to {purpose} (a run keeps them when trained with "
            f"validation_fraction > 0, a fine-tune when it has {MIN_VALIDATION_IMAGES} annotated images or more)",
            path=Path(run_dir) / "config.json", where="key 'validation_ids'",
        )


def validation_data(config, data_dir, *, progress: bool = False):
    """Raw images, true labels and image types of the run's validation images.

    Parameters
    ----------
    config : Config
        ``validation_ids`` name the images.
    data_dir : str or os.PathLike
        The training folder: in stage1_train layout, one holding
        ``stage1_train``, or annotated images of one's own
        (:func:`dsb.io.annotations.find_samples`).

    Returns
    -------
    images, labels, types : dict of str to ndarray, dict of str to ndarray, dict of str to str
        By id, in the order of ``config.validation_ids``.
    """

    if not config.validation_ids:
        raise BadDataError("the config names no validation images", where="key 'validation_ids'")
    samples = {s.id: s for s in find_samples(data_dir)}
    stage = next((s.image.parents[2] for s in samples.values() if not s.user), Path(data_dir))
    images, labels, types = {}, {}, {}
    for image_id in track(config.validation_ids, label="reading", enabled=progress):
        if image_id not in samples:
            raise BadDataError(
                f"validation image {image_id!r} is not in this folder (expected {image_id}/images/{image_id}.png, "
                "or the user image of that id)",
                path=stage,
            )
        # The few overlapping training masks are settled quietly (read_sample keeps the fixes), as in dsb score.
        raw, labels[image_id], _ = read_sample(samples[image_id], config.preprocess.channel)
        images[image_id] = raw
        types[image_id] = image_type(raw)
    return images, labels, types


def tune(run_dir, data_dir, *, progress: bool = True, engine: str = "auto",
         tta: bool | None = None, scale_factors: Sequence[float] | None = None, precision: str = "auto",
         ) -> tuple[PostprocessConfig, pd.DataFrame]:
    """Tune a run's post-processing on its validation images and store the best in the run.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder (``model.keras``, ``config.json`` with ``validation_ids``).
    data_dir : str or os.PathLike
        The training images: a stage1_train folder, or a folder holding one.
    progress : bool
        Draw progress bars on stderr.
    engine : str
        The inference engine: ``"keras"``, ``"onnx"``, ``"openvino"`` or
        ``"auto"`` (see :func:`dsb.network.engines.choose_engine`).
    precision : str
        The number format the network computes the probabilities in, as prediction will:
        ``"auto"`` (the fastest format this CPU computes well for the run's files,
        :func:`dsb.network.engines.resolve_precision`), ``"float32"``, ``"bfloat16"`` or ``"int8"``.
    tta : bool, optional
        Search on probabilities averaged over the eight flips and quarter
        turns, and store ``predict.tta`` so that the run predicts as it was
        tuned (averaged probabilities are smoother: they want other
        thresholds). None keeps the run's ``predict.tta``.
    scale_factors : sequence of float, optional
        Factors on the scale each image is predicted at
        (``predict.scale_factor``, :func:`dsb.inference.scale.prediction_scale`):
        the network runs over the images at each, the post-processing is
        searched for each, and the factor of the best score is stored (the
        smallest, and so the cheapest, of equal scores). None keeps the run's
        ``predict.scale_factor``. Each factor costs a prediction of every
        image, at its square in pixels.

    Returns
    -------
    best : PostprocessConfig
        Now also the ``postprocess`` section of ``run_dir/config.json``, whose
        ``predict`` section gets the measured tile overlap (:func:`tune_tiling`),
        ``tta`` and ``scale_factor``.
    table : pandas.DataFrame
        Every setting tried (see :func:`search_postprocess`) with ``scale_factor``
        and ``tta`` columns, ``best`` true on the one row stored; also written
        to ``run_dir/tuning.csv``.
    """

    run_dir = Path(run_dir)
    require_validation(run_dir, load_run_config(run_dir), "tune on")  # before the network loads
    model, config = load_network(run_dir, engine, precision)
    factors = (config.predict.scale_factor,) if scale_factors is None else check_scale_factors(scale_factors)
    images, labels, types = validation_data(config, data_dir, progress=progress)
    tiling, _ = tune_tiling(model, config, list(images.values()))
    tta = use_tta(config, tta)
    config = config.replace(predict=dataclasses.replace(tiling, tta=tta))
    tables, best, best_score, chosen = [], None, -np.inf, config
    for factor in factors:
        at = config.with_scale_factor(factor)
        label = "predicting" if len(factors) == 1 else f"predicting at {factor:g}x"
        # Each image at the scale prediction would pick for it (its estimated nucleus diameter).
        scaled = {
            image_id: predict_scaled(model, at, raw, tta=tta)
            for image_id, raw in track(images.items(), length=len(images), label=label, enabled=progress)
        }
        found, table = search_postprocess(
            {i: s.probabilities for i, s in scaled.items()}, labels, config.postprocess, image_types=types,
            scales={i: s.scale for i, s in scaled.items()}, progress=progress,
        )
        del scaled
        score = float(table.loc[table["best"], "score"].iloc[0])
        table.insert(0, "scale_factor", factor)
        table.insert(len(table.columns) - 1, "tta", tta)
        tables.append(table)
        if score > best_score:  # factors run from the smallest: a larger one must score strictly better
            best, best_score, chosen = found, score, at
    del images
    table = pd.concat(tables, ignore_index=True)
    table["best"] &= table["scale_factor"] == chosen.predict.scale_factor
    # Both or neither: a config.json tuned with no tuning.csv, or the reverse, would not say what
    # it was tuned on. config.json goes in first: tuning.csv is what make takes as "tuned".
    with atomic_paths(run_dir / "config.json", run_dir / "tuning.csv") as (config_tmp, table_tmp):
        config_tmp.write_text(config_json(chosen.replace(postprocess=best).check()))
        table.to_csv(table_tmp, index=False, float_format="%.6g")
    return best, table
