"""The fit loop and the callback that keeps the run: per-epoch bookkeeping and progress lines."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from dsb.core.progress import say
from dsb.training import checkpoints
from dsb.training.checkpoints import BestModelFile
from dsb.training.divergence import Diverged, Divergence, non_finite_loss, non_finite_weight
from dsb.training.environment import Environment
from dsb.training.plan import Plan
from dsb.training.schedule import budget_cosine, schedule_progress
from dsb.training.state import Best, RunState, budget_seconds, budget_spent, epoch_seconds


class RunKeeper(keras.callbacks.Callback):
    """Best model, early stopping, plateau schedule, time budget, checkpoints, history, progress.

    It updates ``state`` in place at the end of every epoch (and ``stop_reason``
    when the budget runs out), and the chief writes the checkpoint and history.csv.
    A loss or weight that is not finite raises :class:`dsb.training.divergence.Diverged`
    at once: after the step, or at the epoch's end before anything of the epoch is kept.
    """

    def __init__(self, run_dir: Path, plan: Plan, state: RunState, *, monitor: str, writer: bool,
                 progress: bool, env: Environment, best_file: BestModelFile):
        super().__init__()
        self.run_dir = run_dir
        self.plan = plan
        self.state = state
        self.monitor = monitor
        self.writer = writer
        self.progress = progress
        self.env = env
        self.best_file = best_file
        self.session_start = time.monotonic()
        self.elapsed_before = float(state.elapsed_s)
        self.wall_before = float(state.wall_s)
        self.budget_s = budget_seconds(state)
        self.epoch_start = None
        self.steps_done = 0

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def wall_s(self) -> float:
        return self.wall_before + time.monotonic() - self.session_start

    @property
    def follows_budget(self) -> bool:
        """Whether the learning rate follows the time budget (:mod:`dsb.training.schedule`)."""
        return (self.budget_s is not None and self.plan.config.train.lr_schedule == "cosine"
                # a run begun without a budget keeps its cosine over the steps (a schedule, not a variable)
                and hasattr(self.model.optimizer.learning_rate, "assign"))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()
        self.steps_done = 0
        if self.follows_budget:
            tc = self.plan.config.train
            progress = schedule_progress(epoch, self.plan.epochs, elapsed_s=self.elapsed(), budget_s=self.budget_s,
                                         epoch_s=epoch_seconds(self.state))
            self.model.optimizer.learning_rate.assign(budget_cosine(tc.learning_rate, tc.min_learning_rate,
                                                                    progress))

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        bad = non_finite_loss(logs or {})
        if bad is not None:
            raise Diverged(Divergence(self.state.epoch + 1, self.steps_done, *bad))
        if self.budget_s is None:
            return
        spent = self.elapsed() >= self.budget_s
        if self.env.shard[1] > 1:
            spent = self.env.agree(spent)  # every process must stop at the same step
        if spent:
            self.model.stop_training = True
            self.state.stop_reason = "time_budget"

    def _budget_spent(self) -> bool:
        if self.budget_s is None:
            return False
        spent = budget_spent(self.state, self.elapsed())
        if self.env.shard[1] > 1:
            spent = self.env.agree(spent)  # every process must stop after the same epoch
        return spent

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        s, tc = self.state, self.plan.config.train
        logs = {k: float(keras.ops.convert_to_numpy(v)) for k, v in sorted((logs or {}).items(), key=_log_order)}
        self._check_finite(logs)
        row = {"epoch": epoch + 1, "steps": self.steps_done, **logs, "learning_rate": self._learning_rate(),
               "time_s": round(time.monotonic() - self.epoch_start, 3)}
        s.history.append(row)
        s.epoch = epoch + 1
        value = logs.get(self.monitor, math.nan)
        improved = self._early_stopping(value, logs)
        if tc.lr_schedule == "plateau":
            self._plateau(value)
        if s.stop_reason is None and s.epoch >= self.plan.epochs:
            s.stop_reason = "completed"
        if s.stop_reason is None and self._budget_spent():
            # Less than half an epoch left: another would run a few steps at the floor of the
            # learning rate, then a whole validation past the budget.
            self.model.stop_training = True
            s.stop_reason = "time_budget"
        s.elapsed_s = self.elapsed()
        s.wall_s = self.wall_s()
        if self.writer:
            checkpoints.save_checkpoint(self.run_dir, self.model, s)
            checkpoints.write_history(self.run_dir / "history.csv", s.history)
        if self.progress:
            self._report(row, improved)

    def _check_finite(self, logs: dict) -> None:
        """Raise :class:`Diverged` for a loss of the epoch, or a weight, that is not finite."""
        bad = non_finite_loss(logs)
        if bad is None:
            weight = non_finite_weight(self.model.get_weights())
            bad = None if weight is None else ("weights", weight)
        if bad is not None:
            raise Diverged(Divergence(self.state.epoch + 1, self.steps_done, *bad))

    def _early_stopping(self, value: float, logs: dict) -> bool:
        """Keep the best model; stop after the patience. Whether this epoch is the best."""
        s = self.state
        improved = math.isfinite(value) and (s.best is None or value < s.best.value)
        if improved:
            s.best = Best(epoch=s.epoch, monitor=self.monitor, value=value, logs=logs)
            s.wait = 0
            if self.writer:
                self.best_file.save(self.model)
        else:
            s.wait += 1
            if s.wait >= self.plan.config.train.early_stopping_patience:
                self.model.stop_training = True
                s.stop_reason = "early_stopping"
        return improved

    def _plateau(self, value: float) -> None:
        s, tc = self.state, self.plan.config.train
        plateau = s.plateau
        if math.isfinite(value) and (plateau.best is None or value < plateau.best):
            plateau.best, plateau.wait = value, 0
            return
        plateau.wait += 1
        if plateau.wait >= tc.plateau_patience:
            lr = max(self._learning_rate() * tc.plateau_factor, tc.min_learning_rate)
            self.model.optimizer.learning_rate.assign(lr)
            plateau.wait = 0
        s.learning_rate = self._learning_rate()

    def _report(self, row: dict, improved: bool) -> None:
        s, epochs = self.state, self.plan.epochs
        done = [r["time_s"] for r in s.history[-5:]]
        mean = sum(done) / len(done)
        eta = max(0, epochs - s.epoch) * mean
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - self.elapsed()))
        if s.stop_reason in ("early_stopping", "time_budget"):
            eta = 0.0
        shown = {k: v for k, v in row.items() if k not in ("epoch", "steps", "time_s")}
        say(
            f"epoch {row['epoch']}/{epochs} {row['steps']} steps {_duration(row['time_s'])}  "
            f"{format_logs(shown)}{'  *best' if improved else ''}  ETA {_duration(eta)}"
        )
        if len(done) == 2 and self.follows_budget:
            reachable = s.epoch + int(max(0.0, self.budget_s - self.elapsed()) // mean)
            if reachable < epochs:
                say(f"note: the time budget ends near epoch {reachable} of {epochs}; the learning rate "
                    "follows the budget, so its schedule ends with it")


def fit(model, keeper: RunKeeper, train_data, val_data, callbacks: list) -> None:
    """Train from the state's epoch to the plan's last, with ``keeper`` first among ``callbacks``."""
    plan, state = keeper.plan, keeper.state
    model.fit(
        train_data,
        epochs=plan.epochs,
        initial_epoch=state.epoch,
        steps_per_epoch=plan.steps_per_epoch,
        validation_data=val_data,
        callbacks=callbacks,
        shuffle=False,  # the loader orders batches itself
        verbose=0,
    )


# ---------------------------------------------------------------- output


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _log_order(item) -> tuple:
    """loss first, then the metrics, training before validation."""
    name = item[0]
    base = name.removeprefix("val_")
    return (name.startswith("val_"), base != "loss", base)


def format_logs(logs: dict) -> str:
    """``name value`` pairs: losses and metrics to 4 decimals, the learning rate in e-notation."""
    parts = []
    for k, v in logs.items():
        parts.append(f"{k} {v:.2e}" if k == "learning_rate" else f"{k} {v:.4f}")
    return "  ".join(parts)
