"""``--precision auto``: a short probe that times a few training steps in each precision.

Mixed bfloat16 trains faster than float32 on CPUs with bfloat16 units and several times slower
on CPUs without them, and which CPU a run lands on is not known in advance. So ``auto`` builds
the run's U-Net under each candidate policy, times a few steps on random crops, and keeps the
faster one unless float32 is within :data:`MARGIN` of it. The probe's figures go into the
run's manifest. On a GPU the candidates are float32 and mixed float16.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np

from dsb.core.config import Config
from dsb.network.unet import build_unet, compile_model
from dsb.training.environment import Environment

__all__ = ["MARGIN", "PROBE_CROP", "ProbeResult", "probe_precision", "time_steps"]

# The other precision must be this much faster than float32 to be taken (timing noise on a
# shared machine is about a tenth).
MARGIN = 0.9
# Crops of at most this side (the run's own when smaller). Smaller crops would probe faster but
# understate bfloat16: on an AMD EPYC with bfloat16 units the shipped CPU config ran 1.14 times
# faster in bfloat16 on 128-pixel crops and 1.28 times on its own 256-pixel ones (3 steps of 8).
PROBE_CROP = 256


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What ``--precision auto`` measured and chose: ``seconds`` per step by precision."""

    chosen: str
    seconds: dict

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "seconds_per_step": {k: round(v, 4) for k, v in self.seconds.items()},
                "rule": f"the faster, unless float32 is within {1 - MARGIN:.0%} of it"}


def time_steps(config: Config, precision: str, *, steps: int = 3, seed: int = 0) -> float:
    """Seconds per training step of the config's U-Net under ``precision`` (after one warm-up step,
    which compiles), on random crops of the run's size, at most :data:`PROBE_CROP` pixels."""
    crop = min(PROBE_CROP, config.train.crop_size)
    batch = config.train.batch_size
    rng = np.random.default_rng(seed)
    x = rng.random((batch, crop, crop, 1), dtype=np.float32)
    y = (rng.random((batch, crop, crop, len(config.model.outputs))) > 0.5).astype(np.float32)
    with Environment("default", precision, deterministic=False):
        model = build_unet(config.model)
        compile_model(model, config)
        model.train_on_batch(x, y)
        began = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        seconds = (time.perf_counter() - began) / steps
    keras.backend.clear_session()
    return seconds


def probe_precision(config: Config, *, has_gpu: bool = False,
                    time_step: Callable[[Config, str], float] = time_steps) -> ProbeResult:
    """Time float32 against the lower precision this machine may run faster, and choose.

    Parameters
    ----------
    config : Config
        The run's config (its U-Net, batch size and crop size).
    has_gpu : bool
        Probe mixed float16 (GPUs) instead of mixed bfloat16 (CPUs).
    time_step : callable
        ``(config, precision) -> seconds per step``; :func:`time_steps` by default.

    Returns
    -------
    ProbeResult
    """
    other = "mixed" if has_gpu else "bfloat16"
    seconds = {name: float(time_step(config, name)) for name in ("float32", other)}
    chosen = other if seconds[other] < MARGIN * seconds["float32"] else "float32"
    return ProbeResult(chosen, seconds)
