"""The learning rate of a run with a time budget: a cosine over the share of the budget spent.

A cosine over a fixed number of epochs fits the CPU it was measured on: on a slower one the
budget ends while the rate is still high, on a faster one the run ends early. With a time
budget, the rate at each epoch follows whichever is further along, the epochs (``--epochs``
still caps the run) or the budget (the time spent, plus half of an epoch's time, over the
budget), so that a slower machine runs the whole schedule in fewer steps and a faster one in
more. The rate is set at the start of each epoch from the run's state (epoch, training time,
the last epochs' times), so a resumed run sets the same rate for the same state.
"""

from __future__ import annotations

import math

__all__ = ["schedule_progress", "budget_cosine"]


def schedule_progress(epoch: int, epochs: int, *, elapsed_s: float = 0.0, budget_s: float | None = None,
                      epoch_s: float = 0.0) -> float:
    """How far along the schedule an epoch's middle is, in [0, 1].

    Parameters
    ----------
    epoch : int
        The epoch about to start, counted from 0.
    epochs : int
        The run's cap on epochs.
    elapsed_s : float
        Training seconds spent before this epoch.
    budget_s : float, optional
        The time budget in seconds; None schedules by epochs alone.
    epoch_s : float
        What an epoch takes (the mean of the last ones; 0 before the first).

    Examples
    --------
    >>> schedule_progress(0, 10)
    0.05
    >>> schedule_progress(2, 10, elapsed_s=1500, budget_s=3000, epoch_s=600)
    0.6
    """
    progress = (epoch + 0.5) / max(1, epochs)
    if budget_s:
        progress = max(progress, (elapsed_s + 0.5 * epoch_s) / budget_s)
    return min(1.0, progress)


def budget_cosine(learning_rate: float, min_learning_rate: float, progress: float) -> float:
    """The cosine from ``learning_rate`` down to ``min_learning_rate`` at ``progress`` in [0, 1]
    (Keras's ``CosineDecay`` with ``alpha = min / initial``)."""
    floor = min(min_learning_rate, learning_rate)
    return floor + (learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
