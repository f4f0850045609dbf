"""Train the U-Net into a self-describing, resumable run folder.

A run folder holds::

    model.keras        best model so far by validation loss (float32)
    config.json        the full Config, with the validation ids
    history.csv        one row per epoch
    manifest.json      provenance and the best validation figures
    logs/              TensorBoard logs
    checkpoints/epoch-NNNN/{model.keras,state.json}
                       the last finished epoch: weights, optimizer state (with the
                       learning-rate schedule position), dropout random state,
                       early-stopping and plateau counters, history

Every file is written under a temporary name and renamed into place, and a
checkpoint folder is complete before the previous one is removed, so a crash
or SIGKILL at any moment leaves the last good state; ``resume=True`` continues
from it. Training data are a pure function of ``(seed, epoch, batch)`` (see
:mod:`dsb.training.loader`), so a resumed run sees the same batches as an uninterrupted
one and, on CPU, ends with the same weights.

The modules: :mod:`.plan` (what a run will do), :mod:`.state` (the typed run
state in state.json), :mod:`.checkpoints` (the files of the run folder),
:mod:`.environment` (precision, determinism, distribution), :mod:`.fit` (the
fit loop and its callback), :mod:`.divergence` (a loss that is no longer finite
stops the run) and :mod:`.session` (the entry points).
"""

from dsb.core.lazy import lazy_names

# Not typing.TYPE_CHECKING: importing typing here costs more than the rest; checkers know the name.
TYPE_CHECKING = False

__all__ = ["train", "train_prepared", "TrainingInterrupted", "TrainingDiverged", "STRATEGIES", "TRAINING_PRECISIONS",
           "latest_checkpoint"]

# Public name -> its module. Loaded on first use, so that the Keras-free modules of this package
# (the cache, groups, augmentation, fine-tuning plans) can be imported without Keras.
_HOMES = {
    "train": ".session",
    "train_prepared": ".session",
    "TrainingInterrupted": ".session",
    "TrainingDiverged": ".divergence",
    "STRATEGIES": ".environment",
    "TRAINING_PRECISIONS": ".environment",
    "latest_checkpoint": ".checkpoints",
}

if TYPE_CHECKING:
    from dsb.training.checkpoints import latest_checkpoint
    from dsb.training.divergence import TrainingDiverged
    from dsb.training.environment import STRATEGIES, TRAINING_PRECISIONS
    from dsb.training.session import TrainingInterrupted, train, train_prepared


__getattr__, __dir__ = lazy_names(__name__, _HOMES, globals())
