"""Where and how a run computes: precision policy, determinism, distribution strategy.

Multi-machine training (``strategy="multiworker"``, JAX backend): start the same
command on every machine with ``KERAS_BACKEND=jax`` and
``KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:port,host1:port,...``,
``KERAS_DISTRIBUTION_NUM_PROCESSES=N``, ``KERAS_DISTRIBUTION_PROCESS_ID=i``
(0 on the coordinator); the run folder must be on a file system they share;
process 0 writes it. Each process makes its slice of every global batch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import keras
import numpy as np

from dsb.core.errors import EnvironmentProblem

STRATEGIES = ("default", "mirrored", "multiworker")
# "mixed": float16 compute with loss scaling, for GPUs; "bfloat16": bfloat16 compute, for CPUs and
# accelerators with bfloat16 units (on a CPU without them it is emulated, and slower than float32).
TRAINING_PRECISIONS = ("float32", "mixed", "bfloat16")
_POLICIES = {"mixed": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# Threads that make training crops beside a GPU, at most: on an H200 a step of 16 crops of 256
# pixels took 0.023 s, while one CPU thread takes a good part of a second to cut, augment and
# crowd them; on a CPU the cores train the network and one thread makes the crops.
MAX_LOADER_THREADS = 8


def has_gpu(device_names) -> bool:
    """Whether any of the backend's device names (:func:`devices`) is a GPU."""
    return any("gpu" in d.lower() or "cuda" in d.lower() for d in device_names)


@contextlib.contextmanager
def float32_policy():
    """Build under the float32 policy, whatever the global one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class Environment:
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
        self.has_gpu = False
        self._tf_strategy = None
        self._previous_policy = None
        self._previous_distribution = None

    def __enter__(self) -> "Environment":
        self.devices = devices(self.backend)
        self.has_gpu = has_gpu(self.devices)
        if self.deterministic is None:
            self.deterministic = not self.has_gpu
        if self.deterministic and self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        self._previous_policy = keras.mixed_precision.global_policy()
        if self.precision in _POLICIES:
            keras.mixed_precision.set_global_policy(_POLICIES[self.precision])
        if self.strategy == "mirrored":
            self._enter_mirrored(self.has_gpu)
        elif self.strategy == "multiworker":
            self._enter_multiworker()
        return self

    def _enter_mirrored(self, gpu: bool) -> None:
        if self.backend != "tensorflow":
            raise EnvironmentProblem(
                f"--strategy mirrored needs the TensorFlow backend (KERAS_BACKEND is {self.backend!r})"
            )
        import tensorflow as tf

        kind = "GPU" if gpu else "CPU"
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

    def loader_threads(self) -> int:
        """Threads for the training crops: one on a CPU; beside a GPU every core but one, at most
        :data:`MAX_LOADER_THREADS` (the crops are then the slow part)."""
        if not self.has_gpu:
            return 1
        from dsb.core.concurrency import usable_cores

        return max(1, min(MAX_LOADER_THREADS, usable_cores() - 1))

    def agree(self, flag: bool) -> bool:
        """Process 0's ``flag``, on every process (multi-process JAX)."""
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))

    def scope(self):
        return self._tf_strategy.scope() if self._tf_strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        where = ", ".join(self.devices) or "?"
        return f"{self.backend} on {where}, strategy {self.strategy} ({self.replicas} replica{'' if self.replicas == 1 else 's'}), {self.precision}"

    def __exit__(self, *exc) -> None:
        if self._previous_policy is not None:
            keras.mixed_precision.set_global_policy(self._previous_policy)
        if self.strategy == "multiworker" and self.backend == "jax":
            keras.distribution.set_distribution(self._previous_distribution)


def devices(backend: str) -> list[str]:
    """The names of the devices the backend sees (GPUs, else CPUs)."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return []


def tensorboard(log_dir: Path):
    """The TensorBoard callback, or None where the ``tensorboard`` package (which tf.summary needs) is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensorboard") is None:
        return None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, update_freq="epoch")
