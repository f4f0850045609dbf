"""The typed state of a training run, persisted as ``checkpoints/epoch-NNNN/state.json``.

One source per value: the seed and the number of epochs live in the run's
``config.json`` (``config.train``) and nowhere else. The state holds what the
config cannot: the progress (epoch, best, counters, history), the provenance
the run started with (data checksum, git commit, init), and the run's fixed
shape that a resume must keep (resolved steps per epoch, global batch,
precision). ``config.train.steps_per_epoch`` is the option (0: one pass over
the training images); ``RunState.steps_per_epoch`` is the count it resolved to.

State files of older versions, which also held ``seed`` and ``epochs`` (always
equal to the config's), load: :meth:`RunState.from_json` ignores those keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dsb.core.errors import BadDataError

STOP_REASONS = ("completed", "early_stopping", "time_budget")


@dataclass
class Best:
    """The best epoch so far by the monitored loss."""

    epoch: int
    monitor: str
    value: float
    logs: dict[str, float]


@dataclass
class Plateau:
    """The plateau schedule's own best loss and patience counter."""

    best: float | None = None
    wait: int = 0


@dataclass
class RunState:
    """What a run has done so far, and what a resume must keep.

    Attributes
    ----------
    steps_per_epoch, global_batch : int
        The run's resolved step count and crops per step; fixed for the run.
    precision : str
        ``"float32"``, ``"mixed"`` or ``"bfloat16"``; fixed for the run.
    time_budget : float or None
        Minutes of training over all sessions; the latest session's value.
    data_checksum : str
        Of the training data the run started on.
    git_commit : str or None
        The code the run started with; later manifests keep it.
    init : str or None
        The run folder a fine-tune started from (resolved path).
    learning_rate : float
        The plateau schedule's current rate.
    epoch : int
        Epochs finished.
    elapsed_s, wall_s : float
        Training time and wall time, summed over sessions.
    best : Best or None
    wait : int
        Epochs since the best one (early stopping).
    plateau : Plateau
    history : list of dict
        One row per epoch, as history.csv holds it.
    stop_reason : str or None
        One of :data:`STOP_REASONS` once the run stopped.
    seed_states : dict
        Dropout random states by layer name (``.keras`` files do not keep them).
    """

    steps_per_epoch: int
    global_batch: int
    precision: str
    time_budget: float | None
    data_checksum: str
    learning_rate: float
    git_commit: str | None = None
    init: str | None = None
    epoch: int = 0
    elapsed_s: float = 0.0
    wall_s: float = 0.0
    best: Best | None = None
    wait: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    seed_states: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> str:
        """The state as the text of a state.json."""
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path=None) -> "RunState":
        """Parse a state.json (of this version or an older one, whose extra keys are ignored)."""
        try:
            data = json.loads(text)
            return cls._from_dict(data)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BadDataError(f"unreadable checkpoint state ({type(exc).__name__}: {exc})", path=path) from None

    @classmethod
    def _from_dict(cls, data: dict) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        best = kept.get("best")
        kept["best"] = None if best is None else Best(**best)
        kept["plateau"] = Plateau(**kept.get("plateau", {}))
        return cls(**kept)


def finish_reason(state: RunState, *, epochs: int) -> str | None:
    """Why the run is already over before this session trains, or None when it has more to do.

    A pure query: an earlier ``"completed"`` or ``"time_budget"`` no longer
    holds once a resume gives more epochs or a larger budget.
    """
    if state.stop_reason == "early_stopping":
        return "early_stopping"
    if budget_spent(state):
        return "time_budget"  # spent by the earlier sessions
    if state.epoch >= epochs:
        return "completed"
    return None


def is_finished(state: RunState, *, epochs: int) -> bool:
    """Whether the run needs no more training (see :func:`finish_reason`)."""
    return finish_reason(state, epochs=epochs) is not None


def check_resumable(state: RunState, *, steps_per_epoch: int | None, checksum: str, path: Path) -> None:
    """Every check a resume makes before it trains on: the same steps and the same data.

    Raises
    ------
    BadDataError
        When the options or the data disagree with the run.
    """
    if steps_per_epoch and steps_per_epoch != state.steps_per_epoch:
        raise BadDataError(
            f"the run has {state.steps_per_epoch} steps per epoch; it cannot change on resume", path=path
        )
    if state.data_checksum != checksum:
        raise BadDataError(
            f"the training data changed since this run started (checksum {checksum[:12]}, "
            f"run has {state.data_checksum[:12]}); start a new run",
            path=path,
        )


def budget_seconds(state: RunState) -> float | None:
    """The time budget in seconds, or None without one."""
    return None if state.time_budget is None else float(state.time_budget) * 60.0


def epoch_seconds(state: RunState) -> float:
    """What an epoch of the run takes, training and validation: the mean of its last five (0 before the first)."""
    recent = [float(row["time_s"]) for row in state.history[-5:]]
    return sum(recent) / len(recent) if recent else 0.0


def budget_spent(state: RunState, elapsed_s: float | None = None) -> bool:
    """Whether the run's time budget leaves no room for another epoch.

    Spent when the training time (``elapsed_s``, by default the state's) has reached the
    budget, or when less than half an epoch of it is left: by then the learning rate of a
    budget-following schedule is at its floor (:func:`dsb.training.schedule.schedule_progress`
    counts an epoch's middle), and an epoch cut short after a few steps would mostly pay for
    its validation. False without a budget.
    """
    budget = budget_seconds(state)
    if budget is None:
        return False
    elapsed = state.elapsed_s if elapsed_s is None else float(elapsed_s)
    return budget - elapsed < 0.5 * epoch_seconds(state) or elapsed >= budget

