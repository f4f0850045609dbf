"""Leave-groups-out cross-validation: every imaging experiment judged by a model that never saw it.

One held-out split judges only the few experiments it holds out (with seed 42: none with large
or dense nuclei). :func:`crossval` deals the imaging-experiment groups of the training data
(:mod:`dsb.training.groups`) into ``folds`` folds, trains one run per fold with that fold's
groups held out, and scores each run on its own held-out images, so that every group is scored
once, by a model trained without it. Short time budgets are enough to compare recipes; the
figures are per group, per type and overall.

By default each fold is judged as ``make submit`` makes a model: the fold's run never sees its
held-out groups, not even to choose its best epoch. It trains on the other groups with
validation images held back from them as :func:`dsb.training.train` splits (whole groups of a
type with two or more left, a random share of a type with one), its post-processing is tuned
on those (:func:`dsb.workflows.tune.tune`, predicting as the recipe's config does unless
``tta`` and ``scale_factors`` say otherwise: ``make submit`` tunes with test-time augmentation
and scale factors 1 and 1.25, which cost eight and two predictions of every image), and only
then are the held-out groups scored, as the tuned run predicts. Unless ``engine`` is Keras, each
fold's network is exported to ONNX first, as ``make submit`` does, so that the CPU engines tune
and score it. Untuned
(``tune=False``), the held-out groups are the run's validation images and it is scored with the
recipe's own post-processing: the network alone, whose outlines after a short budget are wider
than a tuned threshold makes them.

Each fold's run folder is kept (``OUT/fold-K``); a fold whose run has finished is scored again
without training, so an interrupted cross-validation goes on where it stopped, and folds already
trained can be scored again at other magnifications (``zooms``: each held-out image and its
masks resampled as in :func:`dsb.workflows.evaluate.magnification_sweep`), which judges scale
and every group in one table.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dsb.core.atomic import atomic_path
from dsb.core.config import Config, check_scale_factors
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.core.progress import say
from dsb.inference.predict import use_tta
from dsb.network.engines import load_network
from dsb.network.model_folder import load_run_config
from dsb.training.cache import load_prepared
from dsb.training.checkpoints import latest_state
from dsb.training.plan import data_checksum
from dsb.training.session import TrainingInterrupted, train_prepared
from dsb.workflows.evaluate import predict_validation, score_summary, score_validation
from dsb.workflows.export import fresh_onnx
from dsb.workflows.tune import tune as tune_run

__all__ = ["deal_groups", "crossval"]


def deal_groups(groups, types, folds: int) -> list[list[str]]:
    """Deal whole groups into ``folds`` folds of about equal image counts.

    Largest groups first, each to the fold with the fewest images among those that hold no
    group of its type yet (any fold when all do), so that a fold's training keeps every type it
    can.

    Parameters
    ----------
    groups, types : sequence of str
        Group and image type of each image.
    folds : int
        At least 2, at most the number of groups.

    Returns
    -------
    list of list of str
        The group names of each fold, sorted.

    Examples
    --------
    >>> deal_groups(["a", "a", "b", "c", "c", "c"], ["x", "x", "x", "y", "y", "y"], 2)
    [['b', 'c'], ['a']]
    """
    count: dict[str, int] = defaultdict(int)
    kind: dict[str, str] = {}
    for g, t in zip(groups, types):
        count[str(g)] += 1
        kind[str(g)] = str(t)
    if not 2 <= folds <= len(count):
        raise ValueError(f"`folds` is {folds}; it must be between 2 and the number of groups ({len(count)})")
    dealt: list[list[str]] = [[] for _ in range(folds)]
    size = [0] * folds
    for g in sorted(count, key=lambda name: (-count[name], name)):
        free = [f for f in range(folds) if all(kind[h] != kind[g] for h in dealt[f])] or list(range(folds))
        f = min(free, key=lambda k: (size[k], k))
        dealt[f].append(g)
        size[f] += count[g]
    return [sorted(fold) for fold in dealt]


def crossval(
    data_dir,
    out_dir,
    config: Config,
    *,
    folds: int = 4,
    time_budget: float | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    precision: str = "float32",
    engine: str = "auto",
    tune: bool = True,
    tta: bool | None = None,
    scale_factors: Sequence[float] | None = None,
    zooms: Sequence[float] = (1.0,),
    progress: bool = True,
) -> tuple[float, pd.DataFrame]:
    """Train one run per fold of held-out groups and score each group on the run that never saw it.

    Parameters
    ----------
    data_dir : str or os.PathLike
        The training data (``stage1_train``, annotated images of one's own, or both).
    out_dir : str or os.PathLike
        Where the fold runs go (``fold-1`` ...) and ``crossval.csv``, one row per image.
    config : Config
        The recipe; its ``validation_ids`` are replaced by each fold's images.
    folds : int
        How many folds (at least 2, at most the number of groups).
    time_budget : float, optional
        Minutes of training per fold.
    epochs, seed, precision
        As for :func:`dsb.training.train` (``precision`` may be ``"auto"``: each fold probes).
    engine : str
        The engine that tunes and scores the runs (:func:`dsb.network.engines.choose_engine`).
        Unless it is ``"keras"``, each fold's ``model.onnx`` is exported when missing or stale;
        with ``"auto"``, a machine without the converter goes on with Keras.
    tune : bool
        Train each fold without its held-out groups and with validation images of its own,
        and tune its post-processing on those before scoring (the module's text). A fold whose
        training data leave no validation image is scored untuned (``tuned`` false).
    tta : bool, optional
        Tune each fold on probabilities averaged over flips and quarter turns, and score it so
        (:func:`dsb.workflows.tune.tune`); None follows the recipe's ``predict.tta``.
    scale_factors : sequence of float, optional
        The factors on the prediction scale each fold's tuning tries, keeping the best; None
        tunes at the recipe's ``predict.scale_factor`` only. A fold tuned before with another
        ``tta`` or other factors is tuned again.
    zooms : sequence of float
        The magnifications each fold's held-out images are scored at (each image and its
        masks resampled, :func:`dsb.workflows.evaluate.zoom_pair`); by default as they are.
    progress : bool
        Progress lines and bars on stderr.

    Returns
    -------
    score : float
        The mean over all images of their per-image scores; with several ``zooms``, the lowest
        such mean of any zoom.
    table : pandas.DataFrame
        :func:`dsb.workflows.evaluate.score_summary` over every image at each zoom (``zoom``),
        with the fold that held each group out in ``fold`` (0 for the type and overall rows) and
        whether that fold was ``tuned`` (false on those rows). ``crossval.csv`` says ``zoom`` and
        ``tuned`` per image.

    Raises
    ------
    ValueError
        No zoom, or one that is not greater than 0; ``tta`` or ``scale_factors`` without ``tune``.
    BadDataError
        A scale factor outside what ``dsb tune`` takes (before anything trains); too few
        groups for ``folds``; or a fold run in ``out_dir`` (finished or not) made by
        the other kind of cross-validation: with ``tune``, one that validated on its held-out
        groups; without, one that validated on images of its own.
    """
    out_dir = Path(out_dir)
    zooms = tuple(dict.fromkeys(float(z) for z in zooms))
    if not zooms or not all(z > 0 for z in zooms):
        raise ValueError(f"`zooms` is {zooms}; give at least one, each greater than 0")
    if not tune and (tta is not None or scale_factors is not None):
        raise ValueError("`tta` and `scale_factors` choose how each fold is tuned; they need `tune`")
    # What each fold is tuned with, resolved now so that a fold tuned otherwise before is seen.
    tuning = (use_tta(config, tta), check_scale_factors(
        (config.predict.scale_factor,) if scale_factors is None else scale_factors))
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)
    if not prepared.groups:
        raise BadDataError("the training data have no imaging-experiment groups to hold out", path=data_dir)
    if folds > len(set(prepared.groups)):
        raise BadDataError(f"hold {len(set(prepared.groups))} imaging-experiment groups, too few for {folds} folds "
                           "(each fold holds out whole groups; folds must be between 2 and the number of groups)",
                           path=data_dir)
    dealt = deal_groups(prepared.groups, prepared.types, folds)
    held_out = [[i for i, g in zip(prepared.ids, prepared.groups) if g in fold_groups] for fold_groups in dealt]
    # What each fold's run trains on: a tuned fold never sees its held-out images.
    trained = [_without(prepared, held) if tune else prepared for held in held_out]
    for k, (held, data) in enumerate(zip(held_out, trained), start=1):  # before any training
        _check_fold(out_dir / f"fold-{k}", prepared, held, data, tune=tune)
    tables = []
    for k, (fold_groups, held, data) in enumerate(zip(dealt, held_out, trained), start=1):
        run = out_dir / f"fold-{k}"
        if progress:
            say(f"fold {k}/{folds}: holding out {', '.join(fold_groups)} ({len(held)} images)")
        fold_config = config.replace(validation_ids=() if tune else tuple(held))
        if not _finished(run):
            resume = (run / "checkpoints").is_dir()
            try:
                train_prepared(data, None if resume else fold_config, out_dir=run, resume=resume,
                               time_budget=time_budget, epochs=epochs, seed=seed, precision=precision,
                               progress=progress)
            except TrainingInterrupted as stop:  # `dsb train --resume` would resume on all the data
                raise TrainingInterrupted(stop.run_dir, stop.epoch, resume_with=(
                    f"the same dsb crossval command (--out {out_dir})")) from None
        if engine != "keras":
            try:
                fresh_onnx(run)
            except EnvironmentProblem:  # no converter here: auto goes on with Keras
                if engine != "auto":
                    raise
        tuned = tune and _tune_fold(run, data_dir, tuning, engine=engine, progress=progress)
        model, run_config = load_network(run, engine)
        scored = run_config.replace(validation_ids=tuple(held))
        # A fold with nothing to tune on still predicts with the test-time augmentation asked for.
        tta_asked = None if tuned or not tune else tuning[0]
        for zoom in zooms:
            if progress and len(zooms) > 1:
                say(f"fold {k}/{folds}: scoring at zoom {zoom:g}")
            _, table = score_validation(predict_validation(model, scored, data_dir, tta=tta_asked,
                                                           progress=progress, zoom=zoom))
            tables.append(table.assign(fold=k, tuned=tuned, zoom=zoom))
    table = pd.concat(tables, ignore_index=True)
    with atomic_path(out_dir / "crossval.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    fold_of = {g: k for k, fold_groups in enumerate(dealt, start=1) for g in fold_groups}
    tuned = table.groupby("fold")["tuned"].first().to_dict()
    summaries = []
    for zoom, part in table.groupby("zoom", sort=False):
        summary = score_summary(part)
        summary["fold"] = [fold_of.get(name, 0) if level == "group" else 0
                           for level, name in zip(summary["level"], summary["name"])]
        summary["tuned"] = [bool(tuned.get(k, False)) for k in summary["fold"]]
        summaries.append(summary.assign(zoom=zoom))
    summary = pd.concat(summaries, ignore_index=True)
    # The overall row of each zoom is the mean over all its images.
    return float(summary.loc[summary["level"] == "all", "score"].min()), summary


def _without(prepared, held):
    """``prepared`` without the images ``held`` (their ``ids``), so a fold's run cannot see them; its
    ``checksum`` is the subset's, as training records it."""
    drop = set(held)
    keep = [j for j, i in enumerate(prepared.ids) if i not in drop]

    def pick(values):
        return [values[j] for j in keep] if len(values) == len(prepared.ids) else values

    subset = dataclasses.replace(
        prepared, ids=pick(prepared.ids), images=pick(prepared.images), labels=pick(prepared.labels),
        types=pick(prepared.types), diameters=pick(prepared.diameters), groups=pick(prepared.groups),
        fixes={i: f for i, f in prepared.fixes.items() if i not in drop}, checksum="",
    )
    return dataclasses.replace(subset, checksum=data_checksum(subset))


def _check_fold(run: Path, prepared, held: list[str], data, *, tune: bool) -> None:
    """Refuse a fold run in ``run`` (finished or not) that was not made as this fold is made.

    A tuned fold trains on ``prepared`` without ``held`` and validates on images of its own; an
    untuned one trains on all of ``prepared`` and validates on ``held``; ``data`` is what this
    fold trains on. The run's data checksum (once it has a checkpoint) and its validation images
    tell which it was.

    Raises
    ------
    BadDataError
        The run was made by the other kind of cross-validation (tuning an untuned fold would
        tune it on the images it is scored on; an untuned fold's figures describe the network
        alone), or it trained on other images than this fold's: the folds or the data changed,
        and it could be scored on images it trained on.
    """
    if not (run / "config.json").is_file():
        return
    validation = set(load_run_config(run).validation_ids)
    try:
        trained_on = latest_state(run)[1].data_checksum
    except BadDataError:  # started, no checkpoint yet: training checks the data when it resumes
        trained_on = None
    mine = data_checksum(data)
    other = data_checksum(prepared) if tune else _without(prepared, held).checksum
    if trained_on is None:
        other_kind, changed = bool(validation & set(held)) if tune else validation != set(held), False
    elif trained_on == mine:  # an untuned fold trains on all the data whatever it holds out
        other_kind, changed = False, not tune and validation != set(held)
    else:
        other_kind, changed = trained_on == other, trained_on != other
    if changed:
        raise BadDataError("was trained for other held-out images than this fold's (the folds or the training "
                           "data changed since), so it could be scored on images it trained on; "
                           "use another --out", path=run)
    if other_kind and tune:
        raise BadDataError("was trained with its held-out groups as validation images (an untuned "
                           "cross-validation's fold); tune folds in another --out, or score these untuned",
                           path=run)
    if other_kind:
        raise BadDataError("was trained without its held-out groups, with validation images of its own "
                           "(a tuned cross-validation's fold); score it tuned, or run untuned folds in "
                           "another --out", path=run)


def _tune_fold(run: Path, data_dir, tuning: tuple[bool, tuple[float, ...]], *, engine: str,
               progress: bool) -> bool:
    """Tune a fold's run on its own validation images with ``tuning`` (test-time augmentation,
    scale factors), unless it was tuned so before; whether it is tuned."""
    if not load_run_config(run).validation_ids:
        if progress:
            say(f"{run.name}: no validation images of its own to tune on; scored untuned")
        return False
    tta, factors = tuning
    earlier = _tuned_with(run / "tuning.csv")
    if earlier == tuning:
        return True
    if earlier is not None and progress:
        say(f"{run.name}: tuned before with {_tuning_words(*earlier)}; tuning again with {_tuning_words(tta, factors)}")
    tune_run(run, data_dir, progress=progress, engine=engine, tta=tta, scale_factors=factors)
    return True


def _tuned_with(path: Path) -> tuple[bool, tuple[float, ...]] | None:
    """The test-time augmentation and scale factors a run's ``tuning.csv`` was searched with; None
    when there is none, or one that does not say (damaged, or from before it said)."""
    try:
        table = pd.read_csv(path, usecols=["tta", "scale_factor"])
    except (OSError, ValueError):  # missing, empty, damaged or without the columns
        return None
    if table.empty or table["tta"].nunique() != 1:
        return None
    tta = str(table["tta"].iloc[0]).strip().lower() in ("true", "1", "1.0")
    return tta, tuple(sorted(float(f) for f in table["scale_factor"].unique()))


def _tuning_words(tta: bool, factors: tuple[float, ...]) -> str:
    return f"{'' if tta else 'no '}test-time augmentation, scale factors {','.join(f'{f:g}' for f in factors)}"


def _finished(run: Path) -> bool:
    """Whether ``run`` holds a run that stopped (completed, early stopping or its time budget)."""
    if not (run / "model.keras").is_file():
        return False
    try:
        _, state = latest_state(run)
    except BadDataError:
        return False
    return state.stop_reason is not None
