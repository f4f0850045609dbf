"""Leave-groups-out cross-validation: every imaging experiment judged by a model that never saw it.

One held-out split judges only the few experiments it holds out (with seed 42: none with large
or dense nuclei). :func:`crossval` deals the imaging-experiment groups of the training data
(:mod:`dsb.training.groups`) into ``folds`` folds, trains one run per fold with that fold's
groups held out (``config.validation_ids``), and scores each run on its own held-out images,
so that every group is scored once, by a model trained without it. Short time budgets are
enough to compare recipes; the figures are per group, per type and overall.

Each fold's run folder is kept (``OUT/fold-K``); a fold whose run has finished is scored again
without training, so an interrupted cross-validation goes on where it stopped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from dsb.core.atomic import atomic_path
from dsb.core.config import Config
from dsb.core.errors import BadDataError
from dsb.core.progress import say
from dsb.network.engines import load_network
from dsb.training.cache import load_prepared
from dsb.training.checkpoints import latest_state
from dsb.training.session import train_prepared
from dsb.workflows.evaluate import predict_validation, score_summary, score_validation

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
        The engine that scores the runs (Keras unless a run has ``model.onnx``).
    progress : bool
        Progress lines and bars on stderr.

    Returns
    -------
    score : float
        The mean over all images of their per-image scores.
    table : pandas.DataFrame
        :func:`dsb.workflows.evaluate.score_summary` over every image, with the fold that held
        each group out in ``fold`` (0 for the type and overall rows).
    """
    out_dir = Path(out_dir)
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)
    if not prepared.groups:
        raise BadDataError("the training data have no imaging-experiment groups to hold out", path=data_dir)
    if folds > len(set(prepared.groups)):
        raise BadDataError(f"hold {len(set(prepared.groups))} imaging-experiment groups, too few for {folds} folds "
                           "(each fold holds out whole groups; folds must be between 2 and the number of groups)",
                           path=data_dir)
    dealt = deal_groups(prepared.groups, prepared.types, folds)
    tables = []
    for k, fold_groups in enumerate(dealt, start=1):
        held = [i for i, g in zip(prepared.ids, prepared.groups) if g in fold_groups]
        run = out_dir / f"fold-{k}"
        if progress:
            say(f"fold {k}/{folds}: holding out {', '.join(fold_groups)} ({len(held)} images)")
        if not _finished(run):
            fold_config = config.replace(validation_ids=tuple(held))
            resume = (run / "checkpoints").is_dir()
            train_prepared(prepared, None if resume else fold_config, out_dir=run, resume=resume,
                           time_budget=time_budget, epochs=epochs, seed=seed, precision=precision,
                           progress=progress)
        model, run_config = load_network(run, engine)
        _, table = score_validation(predict_validation(model, run_config, data_dir, progress=progress))
        tables.append(table.assign(fold=k))
    table = pd.concat(tables, ignore_index=True)
    with atomic_path(out_dir / "crossval.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    summary = score_summary(table)
    fold_of = {g: k for k, fold_groups in enumerate(dealt, start=1) for g in fold_groups}
    summary["fold"] = [fold_of.get(name, 0) if level == "group" else 0
                       for level, name in zip(summary["level"], summary["name"])]
    return float(table["score"].mean()), summary


def _finished(run: Path) -> bool:
    """Whether ``run`` holds a run that stopped (completed, early stopping or its time budget)."""
    if not (run / "model.keras").is_file():
        return False
    try:
        _, state = latest_state(run)
    except BadDataError:
        return False
    return state.stop_reason is not None
