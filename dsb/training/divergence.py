"""A run whose loss or weights stop being finite: where it diverged, and the error that says so.

:class:`dsb.training.fit.RunKeeper` looks at the training loss after every step and at the
epoch's losses and weights at its end; the first value that is NaN or infinite raises
:class:`Diverged` at once, before anything of that epoch is written. The session then records
the run as ``"diverged"`` in its manifest (with :meth:`Divergence.as_dict`), keeps ``model.keras``
only where an earlier epoch gave it finite figures, and raises :class:`TrainingDiverged`. A
diverged run is not resumed: its learning rate, seed and batches are fixed, so it would diverge
again. Nothing here imports Keras.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsb.core.errors import BadDataError

__all__ = ["Divergence", "Diverged", "TrainingDiverged", "non_finite_loss", "non_finite_weight"]


@dataclass(frozen=True)
class Divergence:
    """Where a run diverged.

    Attributes
    ----------
    epoch : int
        The epoch it diverged in, counted from 1.
    step : int
        Steps of that epoch done when it was seen.
    what : str
        ``"loss"``, ``"val_loss"`` (another loss of the logs) or ``"weights"``.
    value : float
        The value that is not finite (NaN or an infinity).
    """

    epoch: int
    step: int
    what: str
    value: float

    def __str__(self) -> str:
        if self.what == "weights":
            return f"weights {self.value:g} at epoch {self.epoch}, after step {self.step}"
        if self.what.startswith("val_"):
            return f"{self.what} {self.value:g} at epoch {self.epoch}, after step {self.step}"
        return f"{self.what} {self.value:g} at epoch {self.epoch}, step {self.step}"

    def as_dict(self) -> dict:
        """The manifest's record; the value as text (``"nan"``, ``"inf"``), which JSON can hold."""
        return {"epoch": self.epoch, "step": self.step, "what": self.what, "value": f"{self.value:g}"}

    @classmethod
    def from_dict(cls, data) -> "Divergence | None":
        """The record :meth:`as_dict` made, or None for anything else."""
        try:
            return cls(epoch=int(data["epoch"]), step=int(data["step"]), what=str(data["what"]),
                       value=float(data["value"]))
        except (KeyError, TypeError, ValueError):
            return None


class Diverged(Exception):
    """Raised inside the fit where a run diverges; the session records it and raises :class:`TrainingDiverged`."""

    def __init__(self, divergence: Divergence):
        self.divergence = divergence
        super().__init__(str(divergence))


class TrainingDiverged(BadDataError):
    """Training diverged: the settings (above all the learning rate) are too aggressive for the data.

    ``str()`` is one line naming the run folder, where it diverged, which model was kept and what
    to change. Exit status 3, as for other settings that do not fit the data.

    Parameters
    ----------
    run_dir : path
    divergence : Divergence
    learning_rate : float
        The run's (peak) learning rate.
    kept : int, optional
        The epoch whose model ``model.keras`` holds; None when no model was kept.
    resumed : bool
        Whether this is the refusal of a resume, rather than the run diverging now.
    """

    def __init__(self, run_dir, divergence: Divergence, *, learning_rate: float, kept: int | None = None,
                 resumed: bool = False):
        self.run_dir = Path(run_dir)
        self.divergence = divergence
        self.learning_rate = float(learning_rate)
        self.kept = kept
        advice = f"start a new run with a lower --learning-rate (it was {self.learning_rate:g})"
        if resumed:
            message = f"the run diverged ({divergence}) and would again from its checkpoint; {advice}"
        else:
            model = "no model was kept" if kept is None else f"model.keras holds epoch {kept}, the best before"
            message = f"training diverged ({divergence}); {model}; {advice}"
        super().__init__(message, path=run_dir)


def non_finite_loss(logs: dict) -> tuple[str, float] | None:
    """The first loss of ``logs`` (a name ending in ``loss``, in the logs' order) that is not finite."""
    for name, value in logs.items():
        if name.endswith("loss") and not math.isfinite(float(value)):
            return name, float(value)
    return None


def non_finite_weight(weights: Iterable) -> float | None:
    """The first value of ``weights`` (arrays) that is not finite, or None when all are."""
    for w in weights:
        w = np.asarray(w)
        if w.dtype.kind == "f" or w.dtype.name == "bfloat16":
            w = w.astype(np.float32, copy=False)
            bad = ~np.isfinite(w)
            if bad.any():
                return float(w[bad].flat[0])
    return None
