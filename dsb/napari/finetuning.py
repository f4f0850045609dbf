"""Fine-tune a model on the corrections of a project folder, reporting as it goes and stoppable.

:func:`finetune_project` is ``dsb train --init MODEL --data PROJECT/corrections
--out PROJECT/models/finetune-NNN`` as a function, with a report per training
step and per epoch and a cancel flag; :func:`finetune_events` runs it in a
thread and yields those reports, for a napari thread worker to pass on to the
widget. Nothing here imports napari or Qt.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dsb
from dsb.inference.predict import predict_labels
from dsb.io.annotations import find_samples, read_sample
from dsb.napari.child import child_events
from dsb.napari.project import Project
from dsb.network.model_folder import load_run_config, resolve_model_dir
from dsb.training.cache import load_prepared
from dsb.training.finetune import FINETUNE_STEPS, finetune_config
from dsb.workflows.export import export_onnx_in_place, int8_would_run, quantize_in_place

__all__ = ["Progress", "Outcome", "finetune_project", "finetune_and_export", "finetune_events", "export_onnx_in_child"]


@dataclass(frozen=True)
class Progress:
    """Where a fine-tune stands, after a training step or an epoch.

    Attributes
    ----------
    epoch : int
        1-based.
    epochs : int
    step : int
        Steps done in this epoch.
    steps : int
        Steps per epoch.
    loss : float
        The training loss (running mean over the epoch).
    val_loss : float
        The validation loss at the end of an epoch, NaN otherwise or without held-out images.
    val_score : float
        At the end of an epoch, the competition metric (:func:`dsb.score`: mean precision over IoU
        thresholds 0.5 to 0.95) of the model's nuclei on the held-out corrected images; NaN
        otherwise or without held-out images.
    end_of_epoch : bool
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_loss: float = math.nan
    val_score: float = math.nan
    end_of_epoch: bool = False

    @property
    def fraction(self) -> float:
        """The share of the planned steps done, in [0, 1]."""
        total = max(1, self.epochs * self.steps)
        return min(1.0, ((self.epoch - 1) * self.steps + self.step) / total)


@dataclass(frozen=True)
class Outcome:
    """How a fine-tune ended.

    Attributes
    ----------
    run_dir : Path or None
        The new run folder; None when cancelled (the folder is then removed).
    cancelled : bool
    init : Path
        The model it started from.
    history : list of dict
        One row per finished epoch (``loss`` and, with held-out images, ``val_loss`` and ``val_score``).
    """

    run_dir: Path | None
    cancelled: bool
    init: Path
    history: list = field(default_factory=list)


class _ValidationScore:
    """:func:`dsb.score` of a model on the corrected images a run holds out (its config.json names them)."""

    def __init__(self, corrections: Path, run_dir: Path):
        self.corrections = corrections
        self.run_dir = run_dir
        self.held_out: list | None = None
        self.config = None

    def _load(self) -> None:
        self.config = load_run_config(self.run_dir)
        wanted = set(self.config.validation_ids)
        self.held_out = [read_sample(s)[:2] for s in find_samples(self.corrections) if s.id in wanted]

    def __call__(self, model) -> float:
        """The mean score over the held-out images; NaN when there are none."""
        if self.held_out is None:
            self._load()
        scores = [dsb.score(predict_labels(model, self.config, image), labels) for image, labels in self.held_out]
        return float(np.mean(scores)) if scores else math.nan


def _reporter(report: Callable[[Progress], None] | None, cancel, epochs: int, steps: int,
              validation: _ValidationScore):
    """A Keras callback that reports each step and epoch (with the validation score) and stops training
    once ``cancel`` is set (made here, so that importing this module loads no Keras)."""
    import keras

    class Reporter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch = 1
            self.history: list[dict] = []

        def _stop_if_cancelled(self) -> None:
            if cancel.is_set():
                self.model.stop_training = True

        def on_train_begin(self, logs=None):
            self._stop_if_cancelled()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if report is not None:
                report(Progress(self.epoch, epochs, batch + 1, steps, float((logs or {}).get("loss", math.nan))))
            self._stop_if_cancelled()

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(keras.ops.convert_to_numpy(v)) for k, v in (logs or {}).items()}
            if "val_loss" in logs and not cancel.is_set():
                logs["val_score"] = validation(self.model)
            self.history.append(logs)
            if report is not None:
                report(Progress(epoch + 1, epochs, steps, steps, logs.get("loss", math.nan),
                                logs.get("val_loss", math.nan), logs.get("val_score", math.nan), end_of_epoch=True))

    return Reporter()


def finetune_project(
    project: Project,
    init=None,
    *,
    epochs: int = 10,
    steps_per_epoch: int | None = None,
    time_budget: float | None = None,
    report: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> Outcome:
    """Fine-tune ``init`` on every corrected image of ``project`` into a new run folder of the project.

    Parameters
    ----------
    project : Project
    init : str or os.PathLike, optional
        The run folder to start from; by default the shipped model.
    epochs : int
    steps_per_epoch : int, optional
        Default :data:`dsb.training.finetune.FINETUNE_STEPS`.
    time_budget : float, optional
        Minutes after which training stops at the end of a step, keeping the best model.
    report : callable, optional
        Called with a :class:`Progress` after every step and epoch.
    cancel : threading.Event, optional
        Anything with ``is_set()``: once set, training stops at the end of the current step and the
        new folder is removed.

    Returns
    -------
    Outcome

    Raises
    ------
    BadDataError
        No corrected image, a correction the loader refuses, or an ``init`` that is no run folder.
    """
    from dsb.training import train_prepared

    init = resolve_model_dir(init)
    cancel = cancel or threading.Event()
    project.check()
    steps = int(steps_per_epoch or FINETUNE_STEPS)
    config = finetune_config(load_run_config(init), epochs=epochs)
    # Corrections are saved from grey layers: a channel the init run learnt from is not theirs.
    config = config.replace(preprocess=dataclasses.replace(config.preprocess, channel=None))
    prepared = load_prepared(project.corrections, config.preprocess)
    out_dir = project.new_model_dir()
    reporter = _reporter(report, cancel, int(epochs), steps, _ValidationScore(project.corrections, out_dir))
    try:
        train_prepared(prepared, config, out_dir=out_dir, epochs=epochs, steps_per_epoch=steps,
                       time_budget=time_budget, progress=False, callbacks=[reporter], init=init)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if cancel.is_set():
        shutil.rmtree(out_dir, ignore_errors=True)
        return Outcome(None, True, Path(init), reporter.history)
    return Outcome(out_dir, False, Path(init), reporter.history)


def finetune_and_export(project_path, init, *, report=None, cancel=None, **options) -> Outcome:
    """:func:`finetune_project`, then ``model.onnx`` beside the new ``model.keras``
    (:func:`dsb.workflows.export.export_onnx_in_place`), so that OpenVINO or ONNX Runtime can run it;
    and where ``auto`` runs int8 on this machine (:func:`dsb.workflows.export.int8_would_run`), the
    ``model.int8.onnx`` it would run, calibrated on the project's corrections, as ``dsb export
    --int8`` makes it: a CPU without bfloat16 units then segments with the new model as fast as
    with the one it came from."""
    project = Project(project_path)
    outcome = finetune_project(project, init, report=report, cancel=cancel, **options)
    if outcome.run_dir is not None:
        export_onnx_in_place(outcome.run_dir)
        if int8_would_run():
            quantize_in_place(outcome.run_dir, project.corrections)
    return outcome


def finetune_events(project: Project, init=None, *, cancel: threading.Event, **options) -> Iterator:
    """:func:`finetune_and_export` in a child process: yields each :class:`Progress`, then the :class:`Outcome`.

    ``options`` are those of :func:`finetune_project`; setting ``cancel`` stops the child's training
    at the end of its step.

    Raises
    ------
    DsbError
        As :func:`finetune_project`.
    dsb.napari.child.ChildFailed
        Another error in the child, or its death.
    """
    yield from child_events(finetune_and_export, project.path, None if init is None else Path(init),
                            cancel=cancel, **options)


def _export(model_dir, *, report=None, cancel=None) -> Path:
    return export_onnx_in_place(model_dir)


def export_onnx_in_child(model_dir) -> Path:
    """Write ``model.onnx`` beside a run folder's ``model.keras``, in a child process (see :mod:`dsb.napari.child`).

    Returns
    -------
    Path
        The ONNX file.
    """
    *_, path = child_events(_export, Path(model_dir))
    return path
