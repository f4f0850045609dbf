"""Training runs end to end on tiny synthetic data: run folder, determinism, resume, budgets, strategies.

Runs use a depth-2, 4-filter U-Net on 32-pixel crops for a few steps. Subprocesses
cover what must happen before a backend starts (logical devices, KERAS_BACKEND,
XLA flags) and a real SIGKILL.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import tiny_prepared  # noqa: E402

from dsb.core.config import (
    Config,
    ModelConfig,
    PostprocessConfig,
    TrainConfig,
    load_config,
)
from dsb.core.errors import BadDataError
from dsb.network.model_folder import load_run, update_postprocess
from dsb.training import TrainingInterrupted, latest_checkpoint, train, train_prepared

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

TINY = Config(
    model=ModelConfig(depth=2, base_filters=4, convs_per_block=1, dropout=(0.0, 0.2)),
    train=TrainConfig(crop_size=32, batch_size=4, epochs=3, steps_per_epoch=2, validation_fraction=0.2,
                      early_stopping_patience=10),
)


def checkpoint_weights(run_dir) -> list[np.ndarray]:
    folder, _ = latest_checkpoint(run_dir)
    return keras.saving.load_model(folder / "model.keras", compile=False).get_weights()


def assert_same_weights(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def history(run_dir) -> list[dict]:
    import csv

    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


class StopAt(keras.callbacks.Callback):
    """Raise KeyboardInterrupt at the start of (epoch, batch), like a Ctrl-C mid-epoch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted three-epoch run; its progress lines are kept in progress.txt beside it."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ref")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run = train_prepared(tiny_prepared(), TINY, out_dir=out / "run")
    (out / "progress.txt").write_text(err.getvalue())
    return run


# ---------------------------------------------------------------- run folder


def test_run_folder_holds_everything_predict_needs(reference_run, capsys):
    run = reference_run
    names = {p.name for p in run.iterdir()}
    assert {"model.keras", "config.json", "history.csv", "manifest.json", "checkpoints"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary left behind

    config = load_config(run / "config.json")
    assert len(config.validation_ids) == 2  # 20 % of each type: 1 of 7, 1 of 3 (rounded)
    assert config.model == TINY.model
    assert config.train.seed == TINY.train.seed

    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "val_loss", "body_iou", "val_body_iou", "val_body_dice", "learning_rate"} <= set(rows[0])
    assert float(rows[-1]["learning_rate"]) < float(rows[0]["learning_rate"])  # cosine decay

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stop_reason"] == "completed"
    assert manifest["epochs_run"] == 3 and manifest["seed"] == 42
    assert manifest["backend"] == keras.backend.backend()
    assert len(manifest["data_checksum"]) == 64 and len(manifest["config_hash"]) == 64
    assert {"keras", "numpy", "python"} <= set(manifest["versions"])
    best = manifest["best"]
    assert best["val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert manifest["train_images"] == 8 and manifest["validation_images"] == 2

    model, loaded = load_run(run)
    assert loaded.validation_ids == config.validation_ids
    out = keras.ops.convert_to_numpy(model.predict(np.zeros((1, 32, 48, 1), np.float32), verbose=0))
    assert out.shape == (1, 32, 48, 3)
    # model.keras holds the best epoch's weights.
    best_weights = model.get_weights()
    if best["epoch"] == 3:
        assert_same_weights(best_weights, checkpoint_weights(run))


def test_progress_lines_name_the_epoch_and_an_eta(reference_run):
    lines = (reference_run.parent / "progress.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all("ETA" in line and "val_loss" in line for line in epochs)
    assert lines[0].startswith("training on 8 images (2 for validation)")
    assert lines[-1].startswith("done (completed) after epoch 3")


def test_update_postprocess_rewrites_only_that_section(reference_run, tmp_path):
    import shutil

    run = Path(shutil.copytree(reference_run, tmp_path / "copy"))
    before = load_config(run / "config.json")
    after = update_postprocess(run, PostprocessConfig(marker_threshold=0.7))
    assert after.postprocess.marker_threshold == 0.7
    assert load_config(run / "config.json") == after == before.replace(postprocess=after.postprocess)


def test_load_run_names_what_is_missing_or_wrong(reference_run, tmp_path):
    import shutil

    with pytest.raises(BadDataError, match="not found"):
        load_run(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadDataError, match="config.json"):
        load_run(empty)
    run = Path(shutil.copytree(reference_run, tmp_path / "copy"))
    (run / "model.keras").unlink()
    with pytest.raises(BadDataError, match="model.keras"):
        load_run(run)
    (run / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(BadDataError, match="cannot load the model"):
        load_run(run)
    data = json.loads((run / "config.json").read_text())
    data["train"]["epochz"] = 3
    (run / "config.json").write_text(json.dumps(data))
    with pytest.raises(BadDataError, match="epochz"):
        load_run(run)
    data["train"].pop("epochz")
    data["model"]["depth"] = "four"
    (run / "config.json").write_text(json.dumps(data))
    with pytest.raises(BadDataError, match="model.depth"):
        load_run(run)


def test_a_failed_model_write_keeps_the_previous_model(reference_run, tmp_path, monkeypatch):
    import shutil

    run = Path(shutil.copytree(reference_run, tmp_path / "copy"))
    good = (run / "model.keras").read_bytes()

    def broken_save(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    from dsb.core.errors import EnvironmentProblem
    from dsb.training.checkpoints import BestModelFile

    best_file = BestModelFile(run, TINY.model)
    model, _ = load_run(run)
    with pytest.raises(EnvironmentProblem, match="no space left"):
        best_file.save(model)
    assert (run / "model.keras").read_bytes() == good
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(reference_run, tmp_path):
    with pytest.raises(BadDataError, match="not empty"):
        train_prepared(tiny_prepared(), TINY, out_dir=reference_run, progress=False)
    with pytest.raises(BadDataError, match="nothing to resume"):
        train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "none", resume=True, progress=False)


# ---------------------------------------------------------------- determinism and resume


def test_same_seed_same_weights_and_another_seed_differs(reference_run, tmp_path):
    again = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "again", progress=False)
    assert_same_weights(checkpoint_weights(again), checkpoint_weights(reference_run), atol=0)
    assert history(again) != [] and [r["loss"] for r in history(again)] == [r["loss"] for r in history(reference_run)]
    other = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "other", seed=7, epochs=1, progress=False)
    assert not np.allclose(checkpoint_weights(other)[0], checkpoint_weights(reference_run)[0])


def test_ctrl_c_leaves_a_checkpoint_and_resume_matches_an_uninterrupted_run(reference_run, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as caught:
        train_prepared(tiny_prepared(), TINY, out_dir=run, progress=False, callbacks=[StopAt(epoch=1, batch=1)])
    message = str(caught.value)
    assert "after epoch 1" in message and f"dsb train --resume --out {run}" in message
    assert isinstance(caught.value, KeyboardInterrupt)
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert latest_checkpoint(run)[1]["epoch"] == 1
    assert len(history(run)) == 1

    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert len(history(run)) == len(history(reference_run)) == 3
    assert_same_weights(checkpoint_weights(run), checkpoint_weights(reference_run))
    for got, want in zip(history(run), history(reference_run)):
        assert float(got["val_loss"]) == pytest.approx(float(want["val_loss"]), abs=1e-5)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-0003"]


def test_resume_refuses_changed_data(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_prepared(tiny_prepared(), TINY, out_dir=run, progress=False, callbacks=[StopAt(epoch=0, batch=1)])
    with pytest.raises(BadDataError, match="data changed"):
        train_prepared(tiny_prepared(seed=1), None, out_dir=run, resume=True, progress=False)


def test_early_stopping_and_plateau_schedule_survive_a_resume(tmp_path):
    # Zero loss weights: the loss is 0 every epoch, so nothing improves after epoch 1; the
    # rate halves after each further epoch (patience 1) and training stops after epoch 4
    # (patience 3). The history logs the rate each epoch ran with.
    config = TINY.replace(
        train=dataclasses.replace(TINY.train, bce_weight=0.0, dice_weight=0.0, lr_schedule="plateau",
                                  plateau_patience=1, plateau_factor=0.5, early_stopping_patience=3, epochs=10)
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_prepared(tiny_prepared(), config, out_dir=run, progress=False, callbacks=[StopAt(epoch=2, batch=0)])
    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert [float(r["learning_rate"]) for r in history(run)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stop_reason"] == "early_stopping" and manifest["epochs_run"] == 4
    # A run that stopped early stays stopped.
    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert len(history(run)) == 4


def test_time_budget_stops_at_a_batch_and_keeps_the_best_model(tmp_path):
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "run", time_budget=1e-6, progress=False)
    rows = history(run)
    assert len(rows) == 1 and int(rows[0]["steps"]) == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stop_reason"] == "time_budget" and manifest["time_budget_min"] == 1e-6
    model, _ = load_run(run)
    assert model.output_shape[-1] == 3
    # Resuming with the budget spent does nothing; a larger budget goes on.
    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert len(history(run)) == 1
    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, time_budget=60.0, progress=False)
    assert len(history(run)) == 3


def test_no_epoch_begins_with_less_than_half_of_one_left_of_the_budget(tmp_path, monkeypatch):
    """An epoch begun with seconds left would run a step or two at the learning rate's floor and
    then a whole validation past the budget: the run stops at the end of the epoch before."""
    from dsb.training import fit

    clock = {"left": 1e-3}  # seconds of the budget left whenever the run looks
    monkeypatch.setattr(fit.RunKeeper, "elapsed", lambda self: self.budget_s - clock["left"])
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "run", time_budget=60.0, progress=False)
    rows = history(run)
    assert len(rows) == 1 and int(rows[0]["steps"]) == TINY.train.steps_per_epoch  # a whole epoch, then no more
    assert json.loads((run / "manifest.json").read_text())["stop_reason"] == "time_budget"
    # Resuming with the same budget trains no further: what is left is still under half an epoch.
    train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert len(history(run)) == 1

    # With an hour left of the same budget, every epoch runs.
    clock["left"] = 3600.0
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "plenty", time_budget=120.0, progress=False)
    assert len(history(run)) == TINY.train.epochs
    assert json.loads((run / "manifest.json").read_text())["stop_reason"] == "completed"


def test_with_a_time_budget_the_learning_rate_follows_the_share_spent(tmp_path, monkeypatch):
    """The cosine runs over whichever is further along, the epochs or the budget: a budget far
    from spent leaves the epochs' cosine; one nearly spent (a slow machine) brings the rate down
    to its floor within the same epochs."""
    from dsb.training import fit
    from dsb.training.schedule import budget_cosine

    tc = TINY.train
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "plenty", time_budget=60.0, progress=False)
    rates = [float(r["learning_rate"]) for r in history(run)]
    assert rates == pytest.approx([budget_cosine(tc.learning_rate, tc.min_learning_rate, (e + 0.5) / 3)
                                   for e in range(3)], rel=1e-5)
    manifest = json.loads((run / "manifest.json").read_text())
    assert "over the 60-minute time budget, at most 3 epochs" in manifest["learning_rate_schedule"]

    # A slow machine: nine tenths of the budget already gone when each epoch starts.
    monkeypatch.setattr(fit.RunKeeper, "elapsed", lambda self: 0.9 * self.budget_s)
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "slow", time_budget=60.0, progress=False)
    rates = [float(r["learning_rate"]) for r in history(run)]
    assert len(rates) == 3 and max(rates) < 0.05 * tc.learning_rate
    assert rates[0] == pytest.approx(budget_cosine(tc.learning_rate, tc.min_learning_rate, 0.9), rel=1e-5)


# ---------------------------------------------------------------- divergence


class Poison(keras.callbacks.Callback):
    """Set the first kernel to ``value`` at (epoch, batch): at its start (``when="begin"``), so that
    the step's loss is not finite, or at its end, after the step's loss; counts the steps begun."""

    def __init__(self, epoch: int, batch: int, *, value=np.nan, when: str = "begin"):
        super().__init__()
        self.at, self.value, self.when = (epoch, batch), value, when
        self.epoch, self.steps = None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1
        if self.when == "begin":
            self._poison(batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.when == "end":
            self._poison(batch)

    def _poison(self, batch):
        if (self.epoch, batch) == self.at:
            kernel = self.model.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, self.value, dtype="float32"))


def manifest_of(run) -> dict:
    return json.loads((Path(run) / "manifest.json").read_text())


def finite_weights(path) -> list[np.ndarray]:
    weights = keras.saving.load_model(path, compile=False).get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    return weights


def test_a_nan_loss_stops_training_at_once_and_keeps_the_model_of_the_epoch_before(tmp_path):
    from dsb.training import TrainingDiverged

    run, poison = tmp_path / "run", Poison(epoch=1, batch=1)
    with pytest.raises(TrainingDiverged) as caught:
        train_prepared(tiny_prepared(), TINY, out_dir=run, progress=False, callbacks=[poison])
    error = caught.value
    assert isinstance(error, BadDataError) and error.exit_code == 3  # bad settings, as the CLI reports them
    assert str(error) == (f"{run}: training diverged (loss nan at epoch 2, step 2); model.keras holds epoch 1, "
                          "the best before; start a new run with a lower --learning-rate (it was 0.001)")
    assert poison.steps == TINY.train.steps_per_epoch + 2  # no step after the one whose loss was NaN

    manifest = manifest_of(run)
    assert manifest["status"] == "diverged" and manifest["epochs_run"] == 1
    assert manifest["diverged"] == {"epoch": 2, "step": 2, "what": "loss", "value": "nan"}
    assert manifest["best"]["epoch"] == 1
    assert len(history(run)) == 1 and latest_checkpoint(run)[1]["epoch"] == 1
    # model.keras is the best of the epochs before: epoch 1's weights, finite.
    assert_same_weights(finite_weights(run / "model.keras"), checkpoint_weights(run), atol=0)

    # A resume would diverge again from the same weights, rate and batches: it is refused, and changes nothing.
    with pytest.raises(TrainingDiverged, match=r"diverged \(loss nan at epoch 2, step 2\) and would again"):
        train_prepared(tiny_prepared(), None, out_dir=run, resume=True, progress=False)
    assert manifest_of(run)["status"] == "diverged" and len(history(run)) == 1


def test_a_run_that_diverges_in_its_first_epoch_leaves_no_model(tmp_path):
    from dsb.training import TrainingDiverged

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"\(loss nan at epoch 1, step 2\); no model was kept"):
        train_prepared(tiny_prepared(), TINY, out_dir=run, progress=False, callbacks=[Poison(epoch=0, batch=1)])
    assert not (run / "model.keras").exists()
    manifest = manifest_of(run)
    assert manifest["status"] == "diverged" and manifest["best"] is None and manifest["epochs_run"] == 0
    assert manifest["diverged"] == {"epoch": 1, "step": 2, "what": "loss", "value": "nan"}


@pytest.mark.parametrize("validation", [0.2, 0.0])
def test_weights_that_turn_nan_in_the_last_step_of_an_epoch_are_never_kept(tmp_path, validation):
    """The loss of a step is that of the weights before it: NaN weights after an epoch's last step
    show in the validation loss, or without validation in the weights themselves."""
    from dsb.training import TrainingDiverged

    config = TINY.replace(train=dataclasses.replace(TINY.train, validation_fraction=validation))
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train_prepared(tiny_prepared(), config, out_dir=run, progress=False,
                       callbacks=[Poison(epoch=1, batch=1, when="end")])
    what = "val_loss" if validation else "weights"
    assert f"({what} nan at epoch 2, after step 2); model.keras holds epoch 1" in str(caught.value)
    assert manifest_of(run)["diverged"] == {"epoch": 2, "step": 2, "what": what, "value": "nan"}
    assert len(history(run)) == 1 and latest_checkpoint(run)[1]["epoch"] == 1
    finite_weights(run / "model.keras")
    finite_weights(latest_checkpoint(run)[0] / "model.keras")


def test_without_validation_a_best_model_whose_next_step_is_nan_is_dropped(tmp_path):
    """Without validation the best model is the weights an epoch ended with, which no loss has
    looked at yet: huge finite weights that make the next step's loss NaN leave no model."""
    from dsb.training import TrainingDiverged

    config = TINY.replace(train=dataclasses.replace(TINY.train, validation_fraction=0.0))
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"\(loss nan at epoch 2, step 1\); no model was kept"):
        train_prepared(tiny_prepared(), config, out_dir=run, progress=False,
                       callbacks=[Poison(epoch=0, batch=1, value=1e38, when="end")])
    assert not (run / "model.keras").exists()
    assert manifest_of(run)["best"]["epoch"] == 1  # the figures it had, though its model is gone


def test_divergence_records_read_back_and_name_the_value():
    from dsb.training.divergence import Divergence, non_finite_loss, non_finite_weight

    d = Divergence(epoch=3, step=7, what="loss", value=float("inf"))
    assert str(d) == "loss inf at epoch 3, step 7"
    assert Divergence.from_dict(json.loads(json.dumps(d.as_dict()))) == d
    assert Divergence.from_dict(None) is None and Divergence.from_dict({"epoch": 1}) is None
    assert non_finite_loss({"loss": 0.5, "body_iou": float("nan"), "val_loss": float("-inf")}) == ("val_loss",
                                                                                                  float("-inf"))
    assert non_finite_loss({"loss": 0.5, "val_loss": 0.4}) is None
    assert non_finite_weight([np.ones(3, "float32"), np.arange(3)]) is None
    assert np.isnan(non_finite_weight([np.ones(2), np.array([1.0, np.nan])]))


def test_precision_auto_times_both_and_trains_in_the_faster(tmp_path, monkeypatch):
    from dsb.training import probe

    # A machine with bfloat16 units: the probe's timing says bfloat16 is faster.
    monkeypatch.setattr(probe, "time_steps", lambda config, precision: {"float32": 2.0, "bfloat16": 1.0}[precision])
    monkeypatch.setattr("dsb.training.session.probe_precision",
                        lambda config, has_gpu=False: probe.probe_precision(config, time_step=probe.time_steps))
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "fast", epochs=1, precision="auto",
                         progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["precision"] == "bfloat16"
    assert manifest["precision_probe"]["chosen"] == "bfloat16"
    assert manifest["precision_probe"]["seconds_per_step"] == {"float32": 2.0, "bfloat16": 1.0}


def test_a_gpu_gets_more_loader_threads_and_the_manifest_says_how_many(tmp_path, monkeypatch):
    from dsb.training import environment
    from dsb.training.environment import MAX_LOADER_THREADS, Environment

    env = Environment("default", "float32", None)
    monkeypatch.setattr("dsb.core.concurrency.usable_cores", lambda: 16)
    assert env.loader_threads() == 1  # a CPU: its cores train the network
    env.has_gpu = True
    assert env.loader_threads() == MAX_LOADER_THREADS
    monkeypatch.setattr("dsb.core.concurrency.usable_cores", lambda: 4)
    assert env.loader_threads() == 3
    monkeypatch.setattr("dsb.core.concurrency.usable_cores", lambda: 1)
    assert env.loader_threads() == 1
    # A run on a "GPU" (the device list is the backend's word for it) records the threads it used.
    monkeypatch.setattr("dsb.core.concurrency.usable_cores", lambda: 3)
    monkeypatch.setattr(environment, "devices", lambda backend: ["/device:GPU:0"])
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "gpu", epochs=1, progress=False)
    assert json.loads((run / "manifest.json").read_text())["loader_threads"] == 2
    monkeypatch.undo()
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "cpu", epochs=1, progress=False)
    assert json.loads((run / "manifest.json").read_text())["loader_threads"] == 1


def test_the_precision_probe_keeps_float32_unless_the_other_is_clearly_faster():
    from dsb.training.probe import probe_precision, time_steps

    timings = {"float32": 1.0, "bfloat16": 0.95}
    assert probe_precision(TINY, time_step=lambda c, p: timings[p]).chosen == "float32"  # within the noise
    timings["bfloat16"] = 0.5
    assert probe_precision(TINY, time_step=lambda c, p: timings[p]).chosen == "bfloat16"
    gpu = probe_precision(TINY, has_gpu=True, time_step=lambda c, p: {"float32": 1.0, "mixed": 0.4}[p])
    assert gpu.chosen == "mixed"
    # The real timing runs the tiny U-Net and gives a positive time a step.
    assert time_steps(TINY, "float32", steps=1) > 0


def test_mixed_precision_trains_and_saves_a_float32_model(tmp_path):
    before = keras.mixed_precision.global_policy().name
    run = train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "run", epochs=1, steps_per_epoch=1,
                         precision="mixed", progress=False)
    assert keras.mixed_precision.global_policy().name == before
    model, _ = load_run(run)
    assert {layer.dtype_policy.name for layer in model.layers if layer.weights} == {"float32"}
    assert json.loads((run / "manifest.json").read_text())["precision"] == "mixed"


def test_train_loads_the_prepared_data_of_the_data_folder(tmp_path, monkeypatch):
    dataset = pytest.importorskip("dsb.training.session")
    seen = []

    def fake_load_prepared(data_dir, config, *, progress=False):
        seen.append((Path(data_dir), config))
        return tiny_prepared()

    monkeypatch.setattr(dataset, "load_prepared", fake_load_prepared)
    run = train(TINY, data_dir=tmp_path / "data", out_dir=tmp_path / "run", epochs=1, progress=False)
    assert seen == [(tmp_path / "data", TINY.preprocess)]
    assert len(history(run)) == 1


# ---------------------------------------------------------------- subprocesses: backends, strategies, SIGKILL

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    args = json.loads(sys.argv[1])
    if args.get("logical_cpus"):
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args["logical_cpus"])
    sys.path.insert(0, args["tests"])
    import keras
    from dsb.core.config import Config
    from dsb.training import train_prepared
    from conftest import tiny_prepared

    class Kill(keras.callbacks.Callback):
        def __init__(self, at):
            super().__init__()
            self.at = at
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_begin(self, batch, logs=None):
            if [self.epoch, batch] == self.at:
                os.kill(os.getpid(), signal.SIGKILL)

    config = Config.from_dict(args["config"])
    for run in args["runs"]:
        callbacks = [Kill(run["kill_at"])] if run.get("kill_at") else []
        train_prepared(tiny_prepared(), config, out_dir=run["out"], callbacks=callbacks, progress=False,
                       **run.get("kwargs", {}))
    """
)


def run_child(tmp_path, runs: list[dict], *, env=None, **args) -> subprocess.CompletedProcess:
    """Run ``train_prepared`` on the tiny data once per item of ``runs`` in a fresh interpreter."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    payload = {"tests": str(TESTS), "config": TINY.to_dict(), "runs": runs, **args}
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, str(script), json.dumps(payload, default=str)],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=400,
    )


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# Each backend in a fresh process: a default run, then its data-parallel strategy on two
# devices (TensorFlow: MirroredStrategy over two logical CPUs; JAX: Keras DataParallel over
# two host devices), both of which must be set up before the backend starts.
BACKENDS = {
    "tensorflow": ({"KERAS_BACKEND": "tensorflow"}, {"logical_cpus": 2}, "mirrored"),
    "jax": (
        {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        {},
        "multiworker",
    ),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_each_installed_backend_trains_alone_and_data_parallel(backend, tmp_path):
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    env, extra, strategy = BACKENDS[backend]
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    runs = [
        {"out": single, "kwargs": {"epochs": 1}},
        {"out": parallel, "kwargs": {"epochs": 1, "strategy": strategy}},
    ]
    proc = run_child(tmp_path, runs, env=env, **extra)
    assert proc.returncode == 0, proc.stderr[-3000:]

    manifest = json.loads((single / "manifest.json").read_text())
    assert manifest["backend"] == backend and manifest["status"] == "complete"
    assert manifest["replicas"] == 1 and manifest["global_batch"] == TINY.train.batch_size
    assert np.isfinite(float(history(single)[0]["loss"]))
    model, _ = load_run(single)  # a model trained on one backend loads on this one
    assert model.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 32, 32, 3)

    manifest = json.loads((parallel / "manifest.json").read_text())
    assert manifest["strategy"] == strategy and manifest["replicas"] == 2 and len(manifest["devices"]) == 2
    assert manifest["global_batch"] == 2 * TINY.train.batch_size
    assert np.isfinite(float(history(parallel)[0]["val_loss"]))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = run_child(tmp_path, [{"out": out, "kill_at": [2, 1]}], env={"KERAS_BACKEND": keras.backend.backend()})
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert latest_checkpoint(out)[1]["epoch"] == 2
    assert len(history(out)) == 2
    train_prepared(tiny_prepared(), None, out_dir=out, resume=True, progress=False)
    assert len(history(out)) == len(history(reference_run))
    assert_same_weights(checkpoint_weights(out), checkpoint_weights(reference_run), atol=1e-5)


def test_strategies_need_their_backend(tmp_path):
    from dsb.core.errors import EnvironmentProblem

    wrong = "multiworker" if keras.backend.backend() != "jax" else "mirrored"
    with pytest.raises(EnvironmentProblem, match="backend"):
        train_prepared(tiny_prepared(), TINY, out_dir=tmp_path / "run", strategy=wrong, progress=False)


def test_manifest_keeps_the_commit_the_run_started_with(tmp_path, monkeypatch, capsys):
    # Regression: the manifest re-read HEAD at every write, so a run trained while the
    # repository moved on claimed the last commit rather than the code it started with.
    import dsb.training.checkpoints

    commits = iter(f"{i:040x}" for i in range(10_000))
    monkeypatch.setattr(dsb.training.checkpoints, "git_commit", lambda: next(commits))
    config = TINY.replace(train=dataclasses.replace(TINY.train, epochs=2))
    run = train_prepared(tiny_prepared(), config, out_dir=tmp_path / "run")
    assert json.loads((run / "manifest.json").read_text())["git_commit"] == f"{0:040x}"


def test_colour_images_come_from_the_cache_manifest_and_are_optional(tmp_path):
    from PIL import Image

    from dsb.training.plan import _colour_images

    tc = TrainConfig()
    fake = tiny_prepared(2)
    assert _colour_images(fake, tc, [0, 1]) is None  # a stand-in without a cache folder: grey only
    stage = tmp_path / "stage1_train"
    (stage / "img01" / "images").mkdir(parents=True)
    rgb = np.zeros((48, 64, 3), np.uint8) + np.array([200, 180, 220], np.uint8)
    Image.fromarray(rgb).save(stage / "img01" / "images" / "img01.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    fake.path, fake.types = cache, ["fluorescence", "stained"]
    with pytest.warns(UserWarning, match="manifest"):
        assert _colour_images(fake, tc, [0, 1]) is None
    (cache / "manifest.json").write_text(json.dumps({"stage_dir": str(stage)}))
    got = _colour_images(fake, tc, [1, 0])
    assert got[1] is None and got[0].shape == (48, 64, 3) and got[0].dtype == np.uint8
    np.testing.assert_array_equal(got[0], rgb)
    off = dataclasses.replace(tc, stain_jitter=0.0, stain_shift=0.0, hue_jitter=0.0, colour_jitter=0.0)
    assert _colour_images(fake, off, [0, 1]) is None
    (cache / "manifest.json").write_text(json.dumps({"stage_dir": str(tmp_path / "gone")}))
    with pytest.warns(UserWarning, match="stage_dir"):
        assert _colour_images(fake, tc, [0, 1]) is None


def test_split_holds_out_whole_groups_unless_random_or_named():
    from dsb.core.config import Config
    from dsb.training.plan import _split, _whole_groups

    ids = [f"i{k:02d}" for k in range(24)]
    types = ["fluorescence"] * 16 + ["stained"] * 8
    groups = ["f-a"] * 8 + ["f-b"] * 4 + ["f-c"] * 4 + ["s-a"] * 4 + ["s-b"] * 4
    config = Config()
    assert config.train.split == "group"
    train, val = _split(config, ids, types, 42, groups)
    held = _whole_groups(ids, groups, val)
    assert held and {g for i, g in zip(ids, groups) if i in set(val)} == set(held)
    assert {g[0] for g in held} == {"f", "s"}  # one group or more of each type
    random = config.replace(train=dataclasses.replace(config.train, split="random"))
    assert _split(random, ids, types, 42, groups) == _split(random, ids, types, 42, None)
    named = config.replace(validation_ids=("i00", "i23"))
    assert _split(named, ids, types, 42, groups)[1] == ["i00", "i23"]


# ---------------------------------------------------------------- the typed run state


def _state(**changes):
    from dsb.training.state import RunState

    base = dict(steps_per_epoch=3, global_batch=4, precision="float32", time_budget=None, data_checksum="ab" * 32,
                learning_rate=1e-3)
    return RunState(**{**base, **changes})


def test_run_state_round_trips_through_json_and_reads_older_files():
    from dsb.training.state import Best, RunState

    state = _state(epoch=2, best=Best(epoch=2, monitor="val_loss", value=0.5, logs={"loss": 0.6, "val_loss": 0.5}),
                   history=[{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.6}], seed_states={"drop": [1, 2]})
    state.plateau.wait = 1
    assert RunState.from_json(state.to_json()) == state
    older = json.loads(state.to_json()) | {"seed": 42, "epochs": 3}  # the config holds these now
    assert RunState.from_json(json.dumps(older)) == state
    with pytest.raises(BadDataError, match="unreadable checkpoint state"):
        RunState.from_json('{"epoch": 1}')


def test_is_finished_is_a_pure_query():
    from dsb.training.state import finish_reason, is_finished

    state = _state(epoch=3, stop_reason="completed")
    assert is_finished(state, epochs=3) and not is_finished(state, epochs=5)
    assert state.stop_reason == "completed"  # asking changes nothing
    assert finish_reason(_state(epoch=1, stop_reason="early_stopping"), epochs=5) == "early_stopping"
    spent = _state(epoch=1, time_budget=1.0, elapsed_s=60.0, stop_reason="time_budget")
    assert finish_reason(spent, epochs=5) == "time_budget"
    spent.time_budget = 2.0  # a larger budget given on resume
    assert finish_reason(spent, epochs=5) is None
