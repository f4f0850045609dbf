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
:mod:`dsb.loader`), so a resumed run sees the same batches as an uninterrupted
one and, on CPU, ends with the same weights.

Multi-machine training (``strategy="multiworker"``, JAX backend): start the same
command on every machine with ``KERAS_BACKEND=jax`` and
``KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:port,host1:port,...``,
``KERAS_DISTRIBUTION_NUM_PROCESSES=N``, ``KERAS_DISTRIBUTION_PROCESS_ID=i``
(0 on the coordinator); the run folder must be on a file system they share;
process 0 writes it. Each process makes its slice of every global batch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from . import __version__
from .atomic import atomic_dir, atomic_path, write_text
from .config import Config, load_config, save_config
from .errors import BadDataError, EnvironmentProblem
from .finetune import MIN_VALIDATION_IMAGES, check_architecture, finetune_split, user_image_count
from .loader import CropLoader, ValidationLoader, split_ids, zoom_for
from .model import build_unet, compile_model

__all__ = ["train", "train_prepared", "TrainingInterrupted", "STRATEGIES", "PRECISIONS", "latest_checkpoint"]

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed")
_CHECKPOINTS = "checkpoints"
_CKPT_RE = re.compile(r"^epoch-(\d{4,})$")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the run folder holds a checkpoint to resume from.

    A :class:`KeyboardInterrupt`, so it is never swallowed by ``except
    Exception``; ``str()`` is the one-line message that says how to resume.
    """

    def __init__(self, run_dir, epoch: int):
        self.run_dir = Path(run_dir)
        self.epoch = epoch
        super().__init__(
            f"training interrupted; the checkpoint after epoch {epoch} is saved in {self.run_dir}. "
            f"Resume with: dsb train --resume --out {self.run_dir}"
        )


# ---------------------------------------------------------------- public entries


def train(
    config: Config | None,
    *,
    data_dir,
    out_dir,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    time_budget: float | None = None,
    resume: bool = False,
    strategy: str = "default",
    precision: str = "float32",
    seed: int | None = None,
    progress: bool = True,
    init=None,
    learning_rate: float | None = None,
) -> Path:
    """Train a U-Net on the prepared training images of ``data_dir``.

    Parameters
    ----------
    config : Config or None
        Model, preprocessing and training settings. Ignored when resuming:
        the run's own ``config.json`` is used. When it names
        ``validation_ids`` (a config.json of an earlier run), those images are
        held out; otherwise a split stratified by image type is drawn with the seed.
    data_dir : path
        The data folder (with ``stage1_train``, annotated images of one's own
        or both, see :mod:`dsb.annotations`); loaded through
        :func:`dsb.dataset.load_prepared`, which builds the cache if needed.
    out_dir : path
        The run folder; must be missing or empty unless ``resume``.
    epochs, steps_per_epoch, seed : int, optional
        Override ``config.train``; ``steps_per_epoch`` 0 or None with a config
        value of 0 means one pass over the training images per epoch.
        On resume, ``epochs`` may extend the run; the others are the run's.
    time_budget : float, optional
        Minutes of training (summed over resumed sessions) after which
        training stops at the end of a batch, keeping the best model.
    resume : bool
        Continue ``out_dir`` from its last checkpoint.
    strategy : {"default", "mirrored", "multiworker"}
        ``"mirrored"``: tf.distribute.MirroredStrategy over all local GPUs (or
        logical CPUs), TensorFlow backend. ``"multiworker"``: Keras
        distribution ``DataParallel`` over all devices of all processes, JAX
        backend. The batch size in the config is per replica.
    precision : {"float32", "mixed"}
        ``"mixed"``: ``mixed_float16`` policy with loss scaling (for GPUs).
    progress : bool
        One line per epoch on stderr.
    init : path, optional
        Fine-tune: start from the weights of this run folder (see
        :mod:`dsb.finetune`). The config is
        :func:`dsb.finetune.finetune_config` of its ``config.json``, taking
        only the ``train`` section of ``config`` when given: a tenth of the
        learning rate, a few epochs, and validation on a random share of the
        user's images. Ignored when resuming (the run keeps its own).
    learning_rate : float, optional
        Overrides the learning rate (of the fine-tune, with ``init``).

    Returns
    -------
    Path
        The run folder.

    Raises
    ------
    TrainingInterrupted
        On Ctrl-C, after making sure a resumable checkpoint exists.
    BadDataError
        Bad config, non-empty ``out_dir`` without ``resume``, nothing to resume,
        data that changed since the run started, or an ``init`` that is no run folder.
    """
    from .dataset import load_prepared

    out_dir = Path(out_dir)
    if resume:
        config = _resume_config(out_dir)
    elif init is not None:
        from .finetune import finetune_config
        from .run import load_run_config

        config = finetune_config(load_run_config(init), config, learning_rate=learning_rate, epochs=epochs)
    elif config is None:
        raise ValueError("`config` is required unless resuming")
    elif learning_rate is not None:
        rate = float(learning_rate)
        tc = dataclasses.replace(config.train, learning_rate=rate,
                                 min_learning_rate=min(config.train.min_learning_rate, rate))
        config = config.replace(train=tc)
    if strategy != "multiworker":
        _check_new_run(out_dir, resume)  # before the data load, to fail fast
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)
    return train_prepared(
        prepared,
        config,
        out_dir=out_dir,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        time_budget=time_budget,
        resume=resume,
        strategy=strategy,
        precision=precision,
        seed=seed,
        progress=progress,
        init=None if resume else init,
    )


def train_prepared(
    prepared,
    config: Config | None,
    *,
    out_dir,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    time_budget: float | None = None,
    resume: bool = False,
    strategy: str = "default",
    precision: str = "float32",
    seed: int | None = None,
    progress: bool = True,
    workers: int = 1,
    deterministic: bool | None = None,
    callbacks: list | None = None,
    init=None,
) -> Path:
    """:func:`train` on data already in memory.

    Parameters
    ----------
    prepared
        Anything with ``ids``, ``images`` (uint8 (H, W)), ``labels`` (int32
        (H, W)) and ``types`` (list of str), like :class:`dsb.dataset.Prepared`;
        ``checksum`` (str) is used when present.
    workers : int
        Loader threads (batches stay in order, so results do not change).
    deterministic : bool, optional
        Deterministic TensorFlow ops; default: when no GPU is visible.
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks, run after the run's own (tests use them to interrupt).
    init : path, optional
        A run folder whose weights the model starts from; its U-Net must be
        ``config``'s (:func:`dsb.finetune.check_architecture`). ``config`` is
        used as given (:func:`dsb.finetune.finetune_config` makes a fine-tune
        one); validation is :func:`dsb.finetune.finetune_split` unless
        ``config.validation_ids`` names the images. The folder is recorded as
        ``init`` in the manifest and kept on resume.

    Other parameters are those of :func:`train`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` is {strategy!r}, expected one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` is {precision!r}, expected one of {PRECISIONS}")
    out_dir = Path(out_dir)
    wall_start = time.time()
    state: dict = {}
    ckpt_dir = None
    init_model = None
    if resume:
        config = _resume_config(out_dir)
        ckpt_dir, state = latest_checkpoint(out_dir)
        init = state.get("init")
        seed = state["seed"]
        precision = state["precision"]
        epochs = epochs or state["epochs"]
        if steps_per_epoch and steps_per_epoch != state["steps_per_epoch"]:
            raise BadDataError(
                f"the run has {state['steps_per_epoch']} steps per epoch; it cannot change on resume",
                path=out_dir,
            )
        time_budget = time_budget if time_budget is not None else state["time_budget"]
        _remove_stale_temporaries(out_dir)
    else:
        if config is None:
            raise ValueError("`config` is required unless resuming")
        config = config.check()
        if strategy != "multiworker":  # there, process 0 may already have started the folder
            _check_new_run(out_dir, resume)
        if init is not None:
            init_model = _load_init(init, config)

    ids = [str(i) for i in prepared.ids]
    checksum = getattr(prepared, "checksum", None) or data_checksum(prepared)
    if resume and state["data_checksum"] != checksum:
        raise BadDataError(
            f"the training data changed since this run started (checksum {checksum[:12]}, "
            f"run has {state['data_checksum'][:12]}); start a new run",
            path=out_dir,
        )
    tc = config.train
    seed = tc.seed if seed is None else int(seed)
    groups = list(getattr(prepared, "groups", None) or []) or None  # stand-ins may hold no groups
    train_ids, val_ids = _split(config, ids, prepared.types, seed, groups, finetune=init is not None)
    val_groups = _whole_groups(ids, groups, val_ids)
    index = {id_: i for i, id_ in enumerate(ids)}
    train_idx = [index[i] for i in train_ids]
    val_idx = [index[i] for i in val_ids]
    if not train_idx:
        raise BadDataError("no training images left after the validation split", where="train.validation_fraction")

    with _Environment(strategy, precision, deterministic) as env:
        global_batch = state.get("global_batch") or tc.batch_size * env.replicas
        if global_batch % env.replicas:
            raise BadDataError(
                f"the run's global batch of {global_batch} does not split over {env.replicas} replicas", path=out_dir
            )
        steps = state.get("steps_per_epoch") or steps_per_epoch or tc.steps_per_epoch or math.ceil(
            len(train_idx) / global_batch
        )
        epochs = epochs or tc.epochs
        train_config = dataclasses.replace(
            tc, seed=seed, epochs=epochs, steps_per_epoch=steps_per_epoch or tc.steps_per_epoch
        )
        config = config.replace(train=train_config, validation_ids=tuple(val_ids))
        if not resume:
            state = {
                "epoch": 0,
                "epochs": epochs,
                "steps_per_epoch": steps,
                "global_batch": global_batch,
                "seed": seed,
                "precision": precision,
                "time_budget": time_budget,
                "data_checksum": checksum,
                # The code the run started with; a manifest written later must not say otherwise.
                "git_commit": _git_commit(),
                "elapsed_s": 0.0,
                "wall_s": 0.0,
                "best": None,
                "wait": 0,
                "plateau": {"best": None, "wait": 0},
                "learning_rate": tc.learning_rate,
                "history": [],
                "stop_reason": None,
                "seed_states": {},
                "init": None if init is None else str(Path(init).resolve()),
            }
        state.update(epochs=epochs, time_budget=time_budget)

        keras.utils.set_random_seed(seed)
        with env.scope():
            if ckpt_dir is None:
                model = build_unet(config.model)
                compile_model(model, config, total_steps=epochs * steps)
                if init_model is not None:
                    _set_init_weights(model, init_model, init)
            else:
                model = _load_checkpoint_model(ckpt_dir, state)
                if config.train.lr_schedule == "plateau":
                    model.optimizer.learning_rate.assign(state["learning_rate"])

        writer = env.is_chief
        if writer and not resume:
            _check_new_run(out_dir, resume)  # again: only the chief of several processes can tell
            save_config(config, out_dir / "config.json")
            _save_checkpoint(out_dir, model, state)
        elif writer:
            save_config(config, out_dir / "config.json")  # keeps tuned post-processing; records new epochs
        images = prepared.images
        labels = prepared.labels
        zooms = _zooms(prepared, config)
        contact_width = config.preprocess.contact_width if "contact" in config.model.outputs else None
        train_data = CropLoader(
            [images[i] for i in train_idx],
            [labels[i] for i in train_idx],
            batch_size=global_batch,
            steps_per_epoch=steps,
            seed=seed,
            crop_size=tc.crop_size,
            border_width=config.preprocess.border_width,
            contact_width=contact_width,
            zooms=[zooms[i] for i in train_idx],
            augment=tc,
            colour=_colour_images(prepared, tc, train_idx),
            preprocess=config.preprocess,
            start_step=state["epoch"] * steps,
            shard=env.shard,
            workers=workers,
        )
        val_data = None
        if val_idx:
            val_data = ValidationLoader(
                [images[i] for i in val_idx],
                [labels[i] for i in val_idx],
                batch_size=global_batch,
                crop_size=tc.crop_size,
                border_width=config.preprocess.border_width,
                contact_width=contact_width,
                zooms=[zooms[i] for i in val_idx],
                shard=env.shard,
                workers=workers,
            )
        keeper = _RunKeeper(
            out_dir,
            config,
            state,
            monitor="val_loss" if val_data is not None else "loss",
            writer=writer,
            progress=progress,
            env=env,
        )
        run_info = {
            "train_images": len(train_idx),
            "validation_images": len(val_idx),
            "validation_crops": val_data.n_crops if val_data is not None else 0,
            "validation_groups": val_groups,
            "init": state.get("init"),
        }
        if writer:
            _write_manifest(out_dir, config, state, env, run_info, status="running", wall_start=wall_start)
        if progress:
            _say(
                f"training on {len(train_idx)} images ({len(val_idx)} for validation), "
                f"{steps} steps of {global_batch} crops per epoch, epochs {state['epoch'] + 1}..{epochs}, "
                f"{env.describe()}; run folder {out_dir}"
            )
            if val_groups:
                _say(f"validation holds out the groups {', '.join(val_groups)}")
            if init is not None:
                _say(f"fine-tuning from {state.get('init')}, learning rate {config.train.learning_rate:.2e}"
                     + ("" if val_idx else f"; no validation: {user_image_count(ids, groups)} image(s) of your "
                        f"own, fewer than {MIN_VALIDATION_IMAGES} to hold some out, so training uses them all"))
        all_callbacks = []
        if writer:
            tensorboard = _tensorboard(out_dir / "logs")
            if tensorboard is not None:
                all_callbacks.append(tensorboard)
        all_callbacks.append(keeper)
        all_callbacks.extend(callbacks or [])
        status = "complete"
        try:
            if keeper.finished():
                if progress:
                    _say(f"nothing to do: the run stopped ({state['stop_reason']}) after epoch {state['epoch']}")
            else:
                model.fit(
                    train_data,
                    epochs=epochs,
                    initial_epoch=state["epoch"],
                    steps_per_epoch=steps,
                    validation_data=val_data,
                    callbacks=all_callbacks,
                    shuffle=False,  # the loader orders batches itself
                    verbose=0,
                )
        except KeyboardInterrupt:
            status = "interrupted"
            if writer:
                state["wall_s"] = keeper.wall_s()
                _write_manifest(out_dir, config, state, env, run_info, status=status, wall_start=wall_start)
            epoch = state["epoch"]
            with contextlib.suppress(BadDataError):
                epoch = latest_checkpoint(out_dir)[1]["epoch"]  # the one on disk, should ^C hit its writing
            raise TrainingInterrupted(out_dir, epoch) from None
        if writer:
            if not (out_dir / "model.keras").exists():
                keeper.save_best(model)
            state["wall_s"] = keeper.wall_s()
            _write_manifest(out_dir, config, state, env, run_info, status=status, wall_start=wall_start)
        if progress:
            best = state["best"]
            figures = "" if best is None else f"; best epoch {best['epoch']}: {_format_logs(best['logs'])}"
            _say(f"done ({state['stop_reason']}) after epoch {state['epoch']}{figures}")
    return out_dir


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest complete checkpoint of a run: ``(folder, state)``.

    Raises
    ------
    BadDataError
        When the run folder has none.
    """
    run_dir = Path(run_dir)
    root = run_dir / _CHECKPOINTS
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = _CKPT_RE.match(child.name)
            if m and (child / "state.json").is_file() and (child / "model.keras").is_file():
                found.append((int(m.group(1)), child))
    if not found:
        raise BadDataError("no checkpoint to resume from (was it trained with `dsb train --out` here?)", path=run_dir)
    _, folder = max(found)
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadDataError(f"unreadable checkpoint state ({exc})", path=folder / "state.json") from None
    return folder, state


def _save_checkpoint(run_dir: Path, model, state: dict) -> None:
    state["seed_states"] = _seed_states(model)
    root = run_dir / _CHECKPOINTS
    name = f"epoch-{state['epoch']:04d}"
    with atomic_dir(root / name) as tmp:
        model.save(tmp / "model.keras")
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    # Older checkpoints go only once the new one is complete.
    for child in root.iterdir():
        if _CKPT_RE.match(child.name) and child.name != name:
            shutil.rmtree(child, ignore_errors=True)


def _load_init(init, config: Config):
    """The model of the run folder ``init``, once its U-Net is known to be ``config``'s."""
    from .run import load_run

    model, init_config = load_run(init)
    check_architecture(init_config.model, config.model, path=init)
    return model


def _set_init_weights(model, init_model, init) -> None:
    try:
        model.set_weights(init_model.get_weights())
    except ValueError as exc:  # the configs agree but the file does not (an edited config.json)
        raise BadDataError(f"its weights do not fit the new run's U-Net ({_first_line(exc)})",
                           path=Path(init) / "model.keras") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _load_checkpoint_model(folder: Path, state: dict):
    # The loss and metrics deserialise because importing dsb.model registered them.
    path = folder / "model.keras"
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # a damaged zip surfaces as many exception types
        raise BadDataError(f"cannot load checkpoint ({type(exc).__name__}: {exc})", path=path) from None
    _restore_seed_states(model, state.get("seed_states", {}))
    return model


def _seed_states(model) -> dict:
    """Dropout random states by layer name (``.keras`` files do not keep them)."""
    out = {}
    for layer in model.layers:
        gen = getattr(layer, "seed_generator", None)
        if gen is not None:
            out[layer.name] = [int(v) for v in np.asarray(keras.ops.convert_to_numpy(gen.state)).ravel()]
    return out


def _restore_seed_states(model, states: dict) -> None:
    for layer in model.layers:
        gen = getattr(layer, "seed_generator", None)
        if gen is not None and layer.name in states:
            gen.state.assign(np.asarray(states[layer.name], dtype=gen.state.dtype))


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed run left (``.name.XXXX.tmp*``); never complete by construction."""
    for folder in (run_dir, run_dir / _CHECKPOINTS):
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name.startswith(".") and ".tmp" in child.name:
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)


# ---------------------------------------------------------------- the callback that keeps the run


class _RunKeeper(keras.callbacks.Callback):
    """Best model, early stopping, plateau schedule, time budget, checkpoints, history, progress."""

    def __init__(self, run_dir: Path, config: Config, state: dict, *, monitor, writer, progress, env):
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.state = state
        self.monitor = monitor
        self.writer = writer
        self.progress = progress
        self.env = env
        self.session_start = time.monotonic()
        self.elapsed_before = float(state["elapsed_s"])
        self.wall_before = float(state.get("wall_s", 0.0))
        budget = state.get("time_budget")
        self.budget_s = None if budget is None else float(budget) * 60.0
        self.epoch_start = None
        self.steps_done = 0
        self._twin = None

    def finished(self) -> bool:
        """Whether the run is already over; otherwise clears the last session's stop reason."""
        s = self.state
        if s["stop_reason"] == "early_stopping":
            return True
        if self.budget_s is not None and self.elapsed_before >= self.budget_s:
            s["stop_reason"] = "time_budget"  # spent by the earlier sessions
            return True
        if s["epoch"] >= s["epochs"]:
            s["stop_reason"] = "completed"
            return True
        s["stop_reason"] = None  # more epochs or a larger budget given on resume
        return False

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def wall_s(self) -> float:
        return self.wall_before + time.monotonic() - self.session_start

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()
        self.steps_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        if self.budget_s is None:
            return
        spent = self.elapsed() >= self.budget_s
        if self.env is not None and self.env.shard[1] > 1:
            spent = self.env.agree(spent)  # every process must stop at the same step
        if spent:
            self.model.stop_training = True
            self.state["stop_reason"] = "time_budget"

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        tc = self.config.train
        logs = {k: float(keras.ops.convert_to_numpy(v)) for k, v in sorted((logs or {}).items(), key=_log_order)}
        duration = time.monotonic() - self.epoch_start
        row = {"epoch": epoch + 1, "steps": self.steps_done, **logs, "learning_rate": self._learning_rate(),
               "time_s": round(duration, 3)}
        s["history"].append(row)
        s["epoch"] = epoch + 1

        value = logs.get(self.monitor, math.nan)
        best = s["best"]
        improved = math.isfinite(value) and (best is None or value < best["value"])
        if improved:
            s["best"] = {"epoch": epoch + 1, "monitor": self.monitor, "value": value, "logs": logs}
            s["wait"] = 0
            if self.writer:
                self.save_best(self.model)
        else:
            s["wait"] += 1
            if s["wait"] >= tc.early_stopping_patience:
                self.model.stop_training = True
                s["stop_reason"] = "early_stopping"

        if tc.lr_schedule == "plateau":
            self._plateau(value)
        if s["stop_reason"] is None and s["epoch"] >= s["epochs"]:
            s["stop_reason"] = "completed"
        s["elapsed_s"] = self.elapsed()
        s["wall_s"] = self.wall_s()
        if self.writer:
            _save_checkpoint(self.run_dir, self.model, s)
            _write_history(self.run_dir / "history.csv", s["history"])
        if self.progress:
            self._report(row, improved)

    def _plateau(self, value: float) -> None:
        s, tc = self.state, self.config.train
        plateau = s["plateau"]
        if math.isfinite(value) and (plateau["best"] is None or value < plateau["best"]):
            plateau["best"], plateau["wait"] = value, 0
            return
        plateau["wait"] += 1
        if plateau["wait"] >= tc.plateau_patience:
            lr = max(self._learning_rate() * tc.plateau_factor, tc.min_learning_rate)
            self.model.optimizer.learning_rate.assign(lr)
            plateau["wait"] = 0
        s["learning_rate"] = self._learning_rate()

    def save_best(self, model) -> None:
        """Write ``model.keras`` atomically; a mixed-precision model goes in as a float32 copy.

        The copy lets inference run in float32 on any device; for a float32
        model the file is the model itself (with its optimizer state, which
        inference ignores), which spares building a twin.
        """
        if model.dtype_policy.name != "float32":
            if self._twin is None:
                with _float32_policy():
                    self._twin = build_unet(self.config.model)
            self._twin.set_weights(model.get_weights())
            model = self._twin
        with atomic_path(self.run_dir / "model.keras") as tmp:
            model.save(tmp)

    def _report(self, row: dict, improved: bool) -> None:
        s = self.state
        done = [r["time_s"] for r in s["history"][-5:]]
        mean = sum(done) / len(done)
        eta = max(0, s["epochs"] - s["epoch"]) * mean
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - self.elapsed()))
        if s["stop_reason"] in ("early_stopping", "time_budget"):
            eta = 0.0
        shown = {k: v for k, v in row.items() if k not in ("epoch", "steps", "time_s")}
        _say(
            f"epoch {row['epoch']}/{s['epochs']} {row['steps']} steps {_duration(row['time_s'])}  "
            f"{_format_logs(shown)}{'  *best' if improved else ''}  ETA {_duration(eta)}"
        )
        if len(done) == 2 and self.budget_s is not None and self.config.train.lr_schedule == "cosine":
            # The cosine spans the configured epochs; say so when the budget will cut it short.
            reachable = s["epoch"] + int(max(0.0, self.budget_s - self.elapsed()) // mean)
            if reachable < s["epochs"]:
                _say(
                    f"note: the time budget ends near epoch {reachable} of {s['epochs']}, before the cosine "
                    f"learning-rate schedule does; --epochs {reachable} would let it finish"
                )


def _write_history(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- devices, strategies, precision


@contextlib.contextmanager
def _float32_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class _Environment:
    """Precision policy, determinism and the distribution strategy, undone on exit."""

    def __init__(self, strategy: str, precision: str, deterministic: bool | None):
        self.strategy = strategy
        self.precision = precision
        self.deterministic = deterministic
        self.backend = keras.backend.backend()
        self.replicas = 1
        self.shard = (0, 1)
        self.is_chief = True
        self.devices: list[str] = []
        self._tf_strategy = None
        self._previous_policy = None
        self._previous_distribution = None

    def __enter__(self) -> "_Environment":
        self.devices = _devices(self.backend)
        has_gpu = any("gpu" in d.lower() or "cuda" in d.lower() for d in self.devices)
        if self.deterministic is None:
            self.deterministic = not has_gpu
        if self.deterministic and self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        self._previous_policy = keras.mixed_precision.global_policy()
        if self.precision == "mixed":
            keras.mixed_precision.set_global_policy("mixed_float16")
        if self.strategy == "mirrored":
            self._enter_mirrored(has_gpu)
        elif self.strategy == "multiworker":
            self._enter_multiworker()
        return self

    def _enter_mirrored(self, has_gpu: bool) -> None:
        if self.backend != "tensorflow":
            raise EnvironmentProblem(
                f"--strategy mirrored needs the TensorFlow backend (KERAS_BACKEND is {self.backend!r})"
            )
        import tensorflow as tf

        kind = "GPU" if has_gpu else "CPU"
        names = [d.name for d in tf.config.list_logical_devices(kind)]
        self._tf_strategy = tf.distribute.MirroredStrategy(names)
        self.replicas = self._tf_strategy.num_replicas_in_sync
        self.devices = names

    def _enter_multiworker(self) -> None:
        if self.backend != "jax":
            raise EnvironmentProblem(
                f"--strategy multiworker needs the JAX backend (set KERAS_BACKEND=jax; it is {self.backend!r})"
            )
        import jax

        if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
            if not jax.distributed.is_initialized():
                keras.distribution.initialize()
        devices = keras.distribution.list_devices()
        self._previous_distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        self.replicas = len(devices)
        self.shard = (jax.process_index(), jax.process_count())
        self.is_chief = jax.process_index() == 0
        self.devices = list(devices)

    def agree(self, flag: bool) -> bool:
        """Process 0's ``flag``, on every process (multi-process JAX)."""
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))

    def scope(self):
        return self._tf_strategy.scope() if self._tf_strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        where = ", ".join(self.devices) or "?"
        return f"{self.backend} on {where}, strategy {self.strategy} ({self.replicas} replicas), {self.precision}"

    def __exit__(self, *exc) -> None:
        if self._previous_policy is not None:
            keras.mixed_precision.set_global_policy(self._previous_policy)
        if self.strategy == "multiworker" and self.backend == "jax":
            keras.distribution.set_distribution(self._previous_distribution)


def _devices(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return []


def _tensorboard(log_dir: Path):
    """The TensorBoard callback, or None where the ``tensorboard`` package (which tf.summary needs) is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensorboard") is None:
        return None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, update_freq="epoch")


# ---------------------------------------------------------------- run folder helpers


def _resume_config(out_dir: Path) -> Config:
    if not (out_dir / "config.json").is_file():
        raise BadDataError("no config.json: nothing to resume here", path=out_dir)
    return load_config(out_dir / "config.json")


def _check_new_run(out_dir: Path, resume: bool) -> None:
    if resume:
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadDataError("the run folder exists and is not empty; use --resume to continue it or another --out",
                           path=out_dir)
    # Fail now, not after the data load: the nearest existing folder must take the run folder.
    for folder in out_dir.parents:
        if folder.exists():
            if not folder.is_dir():
                raise EnvironmentProblem("is a file, so the run folder cannot be made below it", path=folder)
            if not os.access(folder, os.W_OK):
                raise EnvironmentProblem("not writable (permission denied)", path=folder)
            return


def _whole_groups(ids: list[str], groups: list[str] | None, val_ids: list[str]) -> list[str]:
    """The groups all of whose images are in ``val_ids``, sorted (empty without groups)."""
    if not groups or not val_ids:
        return []
    held = set(val_ids)
    out = set(groups)
    for i, g in zip(ids, groups):
        if i not in held:
            out.discard(g)
    return sorted(out)


def _split(config: Config, ids: list[str], types, seed: int, groups=None, *,
           finetune: bool = False) -> tuple[list[str], list[str]]:
    """The run's (train, validation) ids: ``config.validation_ids`` when given, else for a
    fine-tune a random share of the user's images (:func:`dsb.finetune.finetune_split`), else
    whole groups held out (``train.split == "group"`` and ``groups`` known), else a random share."""
    if config.validation_ids:
        known = set(ids)
        unknown = [i for i in config.validation_ids if i not in known]
        if unknown:
            raise BadDataError(
                f"{len(unknown)} validation id(s) are not in the training data, e.g. {unknown[0]!r}",
                where="validation_ids",
            )
        held = set(config.validation_ids)
        return [i for i in ids if i not in held], [i for i in ids if i in held]
    if finetune:
        return finetune_split(ids, groups, fraction=config.train.validation_fraction, seed=seed)
    if config.train.split != "group" or not groups or len(groups) != len(ids):
        groups = None
    return split_ids(ids, list(types), fraction=config.train.validation_fraction, seed=seed, groups=groups)


def _zooms(prepared, config: Config) -> list[float]:
    """Per image, the zoom that takes its median nucleus to ``preprocess.diameter`` (all 1 when that is 0)."""
    canonical = config.preprocess.diameter
    diameters = getattr(prepared, "diameters", None)
    if not diameters:  # data held in memory without the cache's measurements
        from .scale import median_diameter

        diameters = [median_diameter(lab) for lab in prepared.labels]
    # The same bounds as prediction's: beyond them an image is used as near as they allow.
    low, high = config.predict.min_scale, config.predict.max_scale
    return [min(max(zoom_for(d, canonical), low), high) for d in diameters]


def _colour_images(prepared, tc, indices: list[int]) -> list | None:
    """Raw RGB of the stained images at ``indices`` (None for the others), for colour augmentation.

    None when the config turns colour augmentation off, or ``prepared`` has no
    cache folder (stand-ins holding only arrays) or its raw images cannot be
    found (a warning): stained crops then come from the cached grey.
    """
    if not tc.colour_augmentation or getattr(prepared, "path", None) is None:
        return None
    from .dataset import load_colour_images

    try:
        colour = load_colour_images(prepared)
    except BadDataError as exc:
        import warnings

        warnings.warn(f"no colour augmentation, stained crops come from the cached grey: {exc}", stacklevel=2)
        return None
    return [colour.get(str(prepared.ids[i])) for i in indices]


def data_checksum(prepared) -> str:
    """The checksum of a :class:`dsb.dataset.Prepared` (see :func:`dsb.dataset.data_checksum`)."""
    from .dataset import data_checksum as checksum

    return checksum(prepared.ids, prepared.images, prepared.labels)


def config_hash(config: Config) -> str:
    """sha256 of what determines the trained weights: model, preprocess, train sections and the split."""
    data = config.to_dict()
    key = {k: data[k] for k in ("model", "preprocess", "train", "validation_ids")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _versions(backend: str) -> dict:
    import scipy

    versions = {"python": platform.python_version(), "dsb": __version__, "keras": keras.__version__,
                "numpy": np.__version__, "scipy": scipy.__version__}
    for name in ("tensorflow", "jax"):
        module = sys.modules.get(name)
        if module is not None or name == backend:
            with contextlib.suppress(ImportError):
                versions[name] = __import__(name).__version__
    return versions


def _write_manifest(out_dir: Path, config: Config, state: dict, env: _Environment, run_info: dict, *,
                    status: str, wall_start: float) -> None:
    best = state["best"]
    manifest = {
        "status": status,
        "stop_reason": state["stop_reason"],
        "git_commit": state.get("git_commit"),
        "data_checksum": state["data_checksum"],
        "config_hash": config_hash(config),
        "seed": state["seed"],
        "versions": _versions(env.backend),
        "backend": env.backend,
        "devices": env.devices,
        "strategy": env.strategy,
        "replicas": env.replicas,
        "precision": env.precision,
        "deterministic": env.deterministic,
        "epochs_run": state["epoch"],
        "epochs": state["epochs"],
        "steps_per_epoch": state["steps_per_epoch"],
        "global_batch": state["global_batch"],
        "time_budget_min": state["time_budget"],
        "training_time_s": round(state["elapsed_s"], 1),
        "wall_time_s": round(state.get("wall_s", 0.0), 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_start)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **run_info,
        "best": None if best is None else {"epoch": best["epoch"], "monitor": best["monitor"], **best["logs"]},
    }
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------- output


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def _format_logs(logs: dict) -> str:
    parts = []
    for k, v in logs.items():
        parts.append(f"{k} {v:.2e}" if k == "learning_rate" else f"{k} {v:.4f}")
    return "  ".join(parts)
