"""The run folder on disk: checkpoints, the best model, history.csv and the manifest.

Every file is written under a temporary name and renamed into place, and a
checkpoint folder is complete before the previous one is removed, so a crash
or SIGKILL at any moment leaves the last good state.
"""

from __future__ import annotations

import contextlib
import csv
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

from dsb import __version__
from dsb.core.atomic import atomic_dir, atomic_path, write_text
from dsb.core.config import Config, ModelConfig, load_config
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.network.model_folder import load_run, read_manifest
from dsb.network.unet import build_unet
from dsb.training.divergence import Divergence, TrainingDiverged
from dsb.training.environment import Environment, float32_policy
from dsb.training.finetune import check_architecture
from dsb.training.state import RunState

CHECKPOINTS = "checkpoints"
_CKPT_RE = re.compile(r"^epoch-(\d{4,})$")


# ---------------------------------------------------------------- checkpoints


def _latest_folder(run_dir: Path) -> Path:
    root = run_dir / CHECKPOINTS
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = _CKPT_RE.match(child.name)
            if m and (child / "state.json").is_file() and (child / "model.keras").is_file():
                found.append((int(m.group(1)), child))
    if not found:
        raise BadDataError("no checkpoint to resume from (was it trained with `dsb train --out` here?)", path=run_dir)
    return max(found)[1]


def _read_state_text(folder: Path) -> str:
    try:
        return (folder / "state.json").read_text()
    except OSError as exc:
        raise BadDataError(f"unreadable checkpoint state ({exc})", path=folder / "state.json") from None


def latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest complete checkpoint of a run: ``(folder, state)``, the state as its JSON holds it.

    Raises
    ------
    BadDataError
        When the run folder has none, or its state is unreadable.
    """
    folder = _latest_folder(Path(run_dir))
    try:
        return folder, json.loads(_read_state_text(folder))
    except json.JSONDecodeError as exc:
        raise BadDataError(f"unreadable checkpoint state ({exc})", path=folder / "state.json") from None


def latest_state(run_dir: Path) -> tuple[Path, RunState]:
    """:func:`latest_checkpoint` with the state typed."""
    folder = _latest_folder(run_dir)
    return folder, RunState.from_json(_read_state_text(folder), path=folder / "state.json")


def save_checkpoint(run_dir: Path, model, state: RunState) -> None:
    """Write ``checkpoints/epoch-NNNN`` for ``state.epoch`` (recording the dropout seeds), then drop older ones."""
    state.seed_states = _seed_states(model)
    root = run_dir / CHECKPOINTS
    name = f"epoch-{state.epoch:04d}"
    with atomic_dir(root / name) as tmp:
        model.save(tmp / "model.keras")
        (tmp / "state.json").write_text(state.to_json())
    # Older checkpoints go only once the new one is complete.
    for child in root.iterdir():
        if _CKPT_RE.match(child.name) and child.name != name:
            shutil.rmtree(child, ignore_errors=True)


def load_checkpoint_model(folder: Path, state: RunState):
    """The model of a checkpoint, with its dropout random states restored."""
    # The loss and metrics deserialise because importing dsb.network.unet registered them.
    path = folder / "model.keras"
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # a damaged zip surfaces as many exception types
        raise BadDataError(f"cannot load checkpoint ({type(exc).__name__}: {exc})", path=path) from None
    _restore_seed_states(model, state.seed_states)
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


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed run left (``.name.XXXX.tmp*``); never complete by construction."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name.startswith(".") and ".tmp" in child.name:
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)


# ---------------------------------------------------------------- the best model and an init model


class BestModelFile:
    """``model.keras``, written atomically; a mixed-precision model goes in as a float32 copy.

    The copy lets inference run in float32 on any device; for a float32 model
    the file is the model itself (with its optimizer state, which inference
    ignores), which spares building a twin.
    """

    def __init__(self, run_dir: Path, model_config: ModelConfig):
        self.path = Path(run_dir) / "model.keras"
        self.model_config = model_config
        self._twin = None

    def save(self, model) -> None:
        if model.dtype_policy.name != "float32":
            if self._twin is None:
                with float32_policy():
                    self._twin = build_unet(self.model_config)
            self._twin.set_weights(model.get_weights())
            model = self._twin
        with atomic_path(self.path) as tmp:
            model.save(tmp)


def load_init(init, config: Config):
    """The model of the run folder ``init``, once its U-Net is known to be ``config``'s."""

    model, init_config = load_run(init)
    check_architecture(init_config.model, config.model, path=init)
    return model


def set_init_weights(model, init_model, init) -> None:
    """Copy the weights of ``init_model`` (from the run folder ``init``) into ``model``."""
    try:
        model.set_weights(init_model.get_weights())
    except ValueError as exc:  # the configs agree but the file does not (an edited config.json)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BadDataError(f"its weights do not fit the new run's U-Net ({first_line})",
                           path=Path(init) / "model.keras") from None


# ---------------------------------------------------------------- the run folder


def resume_config(out_dir: Path) -> Config:
    """The run's own config.json, once the run is known to be one to resume (:func:`check_not_diverged`)."""
    if not (out_dir / "config.json").is_file():
        raise BadDataError("no config.json: nothing to resume here", path=out_dir)
    config = load_config(out_dir / "config.json")
    check_not_diverged(out_dir, config)
    return config


def check_not_diverged(out_dir: Path, config: Config) -> None:
    """Refuse to resume a run whose manifest says it diverged: the same rate, seed and batches would again.

    Raises
    ------
    TrainingDiverged
    """
    manifest = read_manifest(out_dir)
    if manifest.get("status") == "diverged":
        divergence = Divergence.from_dict(manifest.get("diverged")) or Divergence(0, 0, "loss", math.nan)
        raise TrainingDiverged(out_dir, divergence, learning_rate=config.train.learning_rate, resumed=True)


def check_new_run(out_dir: Path) -> None:
    """Refuse a run folder that is not empty, or that could not be made."""
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


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv: one row per epoch, the columns in order of first appearance."""
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- the manifest


def config_hash(config: Config) -> str:
    """sha256 of what determines the trained weights: model, preprocess, train sections and the split."""
    data = config.to_dict()
    key = {k: data[k] for k in ("model", "preprocess", "train", "validation_ids")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def git_commit() -> str | None:
    """HEAD of the repository holding this code, or None outside one."""
    repo = Path(__file__).resolve().parents[2]
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


def write_manifest(out_dir: Path, config: Config, state: RunState, env: Environment, run_info: dict, *,
                   status: str, wall_start: float) -> None:
    """manifest.json: provenance, the run's shape and progress, ``run_info`` and the best figures."""
    best = state.best
    manifest = {
        "status": status,
        "stop_reason": state.stop_reason,
        "git_commit": state.git_commit,
        "data_checksum": state.data_checksum,
        "config_hash": config_hash(config),
        "seed": config.train.seed,
        "versions": _versions(env.backend),
        "backend": env.backend,
        "devices": env.devices,
        "strategy": env.strategy,
        "replicas": env.replicas,
        "precision": env.precision,
        "deterministic": env.deterministic,
        "epochs_run": state.epoch,
        "epochs": config.train.epochs,
        "steps_per_epoch": state.steps_per_epoch,
        "global_batch": state.global_batch,
        "time_budget_min": state.time_budget,
        "training_time_s": round(state.elapsed_s, 1),
        "wall_time_s": round(state.wall_s, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_start)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **run_info,
        "best": None if best is None else {"epoch": best.epoch, "monitor": best.monitor, **best.logs},
    }
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
