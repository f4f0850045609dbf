"""Inference engines: the same network run by Keras, ONNX Runtime or OpenVINO.

A model folder holds ``model.keras`` and, once exported
(:func:`dsb.network.onnx_export.export_onnx`), ``model.onnx``. :func:`open_network`
returns a :class:`Network`: a callable from a ``(B, h, w, 1)`` float32 batch
to ``(B, h, w, C)`` float32 probabilities, which is all that tiled inference
(:mod:`dsb.inference.tiling`) asks of a model.

``engine="auto"`` (the default of every command) takes the fastest engine that
is installed and has a file to run, in the order of :data:`AUTO_ORDER`:
OpenVINO, then ONNX Runtime, then Keras: on every CPU measured OpenVINO's
forward pass was the fastest, at the least memory (``make bench`` measures it;
the figures are on the documentation's benchmarks page). In float32 the three
agree within 1e-5 on probabilities. Where Keras's backend sees a GPU
(:func:`accelerator`), ``auto`` takes Keras, which runs there, padding its
tiles to a few shapes (:func:`shape_ladder`) so that it is not compiled again
for every image.

:meth:`Network.streams` gives the callables that may run at the same time:
OpenVINO and ONNX Runtime offer one stream per core, up to
:data:`MAX_STREAMS`, each with its share of the threads (one on 2 cores), and a
folder is then predicted that many images at a time, which keeps every core
in the network while another image is in the watershed.

``precision="int8"`` runs ``model.int8.onnx`` instead (:mod:`dsb.network.quantize`),
on the ONNX engines only: OpenVINO computes the network in it two to three times
as fast as in float32 on x86 CPUs (:func:`int8_units`; end to end 1.5 to 2.6
times), probabilities within a few hundredths.
``precision="bfloat16"`` runs ``model.onnx`` on OpenVINO computing in bfloat16,
on CPUs with bfloat16 units only (:func:`bfloat16_units`): several times faster
on those with AMX, probabilities within a few hundredths of float32's.
``precision="auto"`` (:func:`resolve_precision`) takes bfloat16, else int8, else
float32, as the CPU and the folder allow.

Before an ONNX file is used it is checked against the folder: its metadata
must name the output channels of ``config.json`` and, when ``model.keras`` is
there, carry that file's digest; otherwise it was exported from another model
and is refused with one line, as is a file neither engine can read.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from dsb.core.concurrency import usable_cores
from dsb.core.errors import BadDataError, DsbError, EnvironmentProblem
from dsb.network.model_folder import (
    INT8_FILE,
    ONNX_FILE,
    check_onnx,
    load_run_config,
    network_file,
)
from dsb.network.onnx_export import INPUT_NAME

__all__ = [
    "load_network",
    "ENGINES",
    "ENGINE_CHOICES",
    "AUTO_ORDER",
    "Network",
    "KerasNetwork",
    "accelerator",
    "shape_ladder",
    "MAX_STREAMS",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "engine_installed",
    "auto_takes_int8",
    "choose_engine",
    "open_network",
    "bfloat16_units",
    "int8_units",
    "resolve_precision",
]


ENGINES = ("keras", "onnx", "openvino")


ENGINE_CHOICES = ("auto", *ENGINES)


AUTO_ORDER = ("openvino", "onnx", "keras")


_MODULES = {"keras": "keras", "onnx": "onnxruntime", "openvino": "openvino"}


_PIP = {"keras": "keras tensorflow-cpu", "onnx": "onnxruntime", "openvino": "openvino"}


class Network:
    """A network behind one engine: ``network(batch)`` gives probabilities.

    Attributes
    ----------
    engine : str
        ``"keras"``, ``"onnx"`` (ONNX Runtime) or ``"openvino"``.
    path : pathlib.Path
        The file it runs.
    precision : str
        The number format it computes in: ``"float32"``, ``"bfloat16"`` or ``"int8"``.
    """

    engine = ""

    def __init__(self, path, precision: str = "float32"):
        self.path = Path(path)
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def streams(self) -> list:
        """Callables like this one that may run at the same time, one per thread.

        An engine that computes faster as several single-threaded streams
        than as one multi-threaded call gives one per stream, and a folder is
        then predicted that many images at a time
        (:func:`dsb.workflows.pipeline.predict_each`); the others give ``[self]``.
        """
        return [self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def accelerator() -> str | None:
    """The first GPU that Keras's backend computes on (its name, e.g. ``"cuda:0"``), or None.

    Cheap on a machine without an NVIDIA device: the backend is imported only
    when ``/dev/nvidia0`` (or the like) is there, and then asked whether it
    sees the GPU (``tensorflow-cpu``, or JAX without its CUDA plugin, does not).
    """
    import glob

    if not glob.glob("/dev/nvidia[0-9]*"):
        return None
    try:
        import keras

        backend = keras.backend.backend()
    except ImportError:  # no backend installed: no engine runs on the GPU
        return None
    if backend == "jax":
        import jax

        gpus = [str(d) for d in jax.devices() if d.platform == "gpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    elif backend == "torch":
        import torch

        gpus = ["cuda:0"] if torch.cuda.is_available() else []
    else:
        gpus = []
    return gpus[0] if gpus else None


# Tile sides a Keras network on an accelerator is called with: powers of two and one and a half
# times them (each at most half again the side it stands for).
_LADDER_MIN = 64


def shape_ladder(side: int, multiple: int = 32) -> int:
    """The side a tile of ``side`` pixels is padded to on an accelerator: the least of 64, 96,
    128, 192, 256, 384, ... (rounded up to ``multiple``) that holds it.

    A compiled network (JAX, TensorFlow's graphs on a GPU) is compiled again for every new
    input shape, which takes longer on a GPU than predicting the tile; on the ladder a folder of
    images of every size and scale needs a few shapes, not one per image.
    """
    if side < 1:
        raise ValueError(f"`side` is {side}, expected at least 1")
    if multiple < 1:
        raise ValueError(f"`multiple` is {multiple}, expected at least 1")
    step = _LADDER_MIN
    while True:
        for rung in (step, step * 3 // 2):
            rung = -(-rung // multiple) * multiple
            if rung >= side:
                return rung
        step *= 2


class KerasNetwork(Network):
    """A Keras model called through ``predict_on_batch``, which compiles once per input shape.

    With ``pad_shapes`` (by default when the model runs on a GPU, :func:`accelerator`)
    each batch is padded at its end, by reflection, to the sides of
    :func:`shape_ladder` and to a power-of-two batch, and the output cropped
    back: a handful of compiled shapes serve every image, at the cost of more
    pixels. Rows and columns within the network's context of the padded bottom and
    right edges then see mirrored image where they saw the tiling's own mirror,
    so probabilities there move slightly; without it (CPUs) the engines agree
    within 1e-4.
    """

    engine = "keras"

    def __init__(self, model, path=None, *, pad_shapes: bool | None = None, multiple: int = 32):
        super().__init__(path or "model.keras")
        self.model = model
        self.pad_shapes = accelerator() is not None if pad_shapes is None else bool(pad_shapes)
        self.multiple = int(multiple)

    def __call__(self, batch):
        import keras

        batch = np.asarray(batch, np.float32)
        if not self.pad_shapes:
            return np.asarray(keras.ops.convert_to_numpy(self.model.predict_on_batch(batch)), np.float32)
        n, height, width = batch.shape[:3]
        rows, cols = shape_ladder(height, self.multiple), shape_ladder(width, self.multiple)
        padded = np.pad(batch, ((0, 0), (0, rows - height), (0, cols - width), (0, 0)), mode="reflect")
        padded = np.pad(padded, ((0, (1 << (n - 1).bit_length()) - n), (0, 0), (0, 0), (0, 0)))
        out = keras.ops.convert_to_numpy(self.model.predict_on_batch(padded))
        return np.ascontiguousarray(out[:n, :height, :width], np.float32)


# At most this many images in flight at once (each holds its own memory: about 0.5 GiB for a
# 1040x1388 image), whatever the number of cores; each stream then takes a share of them.
MAX_STREAMS = 4


def _onnx_session(path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the session's warnings are not the user's business
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_session(session, batch: np.ndarray) -> np.ndarray:
    out = session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0]
    return np.asarray(out, np.float32)


class OnnxRuntimeNetwork(Network):
    """``model.onnx`` in an ONNX Runtime session on the CPU, one thread per core.

    :meth:`streams` opens a second session with a share of the threads
    (one on 2 cores) that one thread per core, up to :data:`MAX_STREAMS`,
    calls at the same time (ONNX Runtime runs a session from several threads
    at once), for a folder predicted several images at a time.
    """

    engine = "onnx"

    def __init__(self, path, precision: str = "float32"):
        super().__init__(path, precision)
        self.session = _onnx_session(path, usable_cores())
        self._streams = None

    def __call__(self, batch):
        return _run_session(self.session, batch)

    def streams(self):
        if self._streams is None:
            threads = usable_cores()
            count = min(threads, MAX_STREAMS)
            self._streams = [self]
            if count > 1:
                # One session (a share of the threads each) that the streams call at once.
                session = _onnx_session(self.path, threads // count)
                self._streams = [_Stream(self, functools.partial(_run_session, session)) for _ in range(count)]
        return self._streams


class _Stream(Network):
    """One thread's share of an engine (:meth:`Network.streams`): ``run(batch)``."""

    def __init__(self, network: Network, run):
        super().__init__(network.path, network.precision)
        self.engine, self.run = network.engine, run

    def __call__(self, batch):
        return self.run(batch)


def _infer(request, batch: np.ndarray) -> np.ndarray:
    request.infer({0: np.ascontiguousarray(batch, np.float32)})
    # The request's buffer is reused by the next call: copy out.
    return np.array(request.get_output_tensor(0).data, np.float32)


class OpenVinoNetwork(Network):
    """``model.onnx`` compiled by OpenVINO for the CPU, in float32 (or bfloat16 when asked).

    The float32 hint matters: on CPUs with bfloat16 units OpenVINO would
    otherwise compute in bfloat16, which moves probabilities by up to a few
    hundredths; ``precision="bfloat16"`` asks for that.
    One compiled model serves every tile shape (the file's height and width
    are dynamic).

    A call runs on every core (OpenVINO's latency mode). :meth:`streams`
    compiles the model a second time in throughput mode, as one stream per
    core up to :data:`MAX_STREAMS`, each with its share of the threads, for a
    folder predicted several images at a time: a stream does not wait for
    the other cores while they do one image's watershed, so the cores stay
    busy. Every mode gives the same probabilities to the bit.
    """

    engine = "openvino"

    def __init__(self, path, precision: str = "float32"):
        import openvino

        super().__init__(path, precision)
        self._core = openvino.Core()
        self._model = self._core.read_model(str(path))
        self.compiled = self._compile("LATENCY")
        self.request = self.compiled.create_infer_request()
        self._streams = None

    def _compile(self, hint: str, streams: int | None = None):
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bfloat16" else "f32", "PERFORMANCE_HINT": hint,
                  "INFERENCE_NUM_THREADS": usable_cores()}
        if streams:
            config["NUM_STREAMS"] = streams
        return self._core.compile_model(self._model, "CPU", config)

    def __call__(self, batch):
        return _infer(self.request, batch)

    def streams(self):
        if self._streams is None:
            self._streams = [self]
            wanted = min(usable_cores(), MAX_STREAMS)
            if wanted > 1:
                compiled = self._compile("THROUGHPUT", wanted)
                count = min(int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")), wanted)
                if count > 1:  # one infer request per stream
                    self._streams = [_Stream(self, functools.partial(_infer, compiled.create_infer_request()))
                                     for _ in range(count)]
        return self._streams


@functools.cache
def bfloat16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16, AMX): where OpenVINO's own default
    number format is bfloat16. False when OpenVINO is not installed. Asked once per process.

    Not OpenVINO's list of capabilities, which names bfloat16 on any AVX-512 CPU: without the
    units OpenVINO emulates it, slower than float32."""
    if not engine_installed("openvino"):
        return False
    import openvino

    default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return default == openvino.Type.bf16


# The CPU flags (Linux's /proc/cpuinfo names) of the integer multiply-adds OpenVINO's int8 kernels use:
# AVX2's (as on every x86 CPU of the last decade), and the dot-product units that speed them further
# (AVX-512 VNNI, AVX-VNNI, AMX).
_INT8_FLAGS = frozenset({"avx2", "avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def int8_units() -> bool:
    """Whether OpenVINO runs ``model.int8.onnx`` faster than float32 on this CPU: an x86 CPU with AVX2
    or later, whose integer multiply-adds compute the network two to three times as fast as float32
    (with the dot-product units of AVX-512 VNNI, AVX-VNNI or AMX the most). False on other CPUs
    (ARM, or x86 before AVX2), where it was not measured, and where ``/proc/cpuinfo`` cannot be read
    (outside Linux).
    Asked once per process."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not _INT8_FLAGS.isdisjoint(flags)


def auto_takes_int8() -> bool:
    """Whether ``--precision auto`` on OpenVINO runs a folder's current ``model.int8.onnx`` on this CPU
    (:func:`resolve_precision`): it has int8 units (:func:`int8_units`) and no bfloat16 units
    (:func:`bfloat16_units`), which come first."""
    return not bfloat16_units() and int8_units()


def engine_installed(engine: str) -> bool:
    """Whether the package behind ``engine`` can be imported."""
    import importlib.util

    return importlib.util.find_spec(_MODULES[engine]) is not None


def _not_installed(engine: str) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"engine {engine!r} is not installed (pip install {_PIP[engine]}), or choose another with --engine"
    )


def choose_engine(model_dir, engine: str = "auto", precision: str = "auto") -> str:
    """The engine ``engine`` names for ``model_dir``: itself, or for ``"auto"`` the first of
    :data:`AUTO_ORDER` that is installed and has its file in the folder.

    ``precision="int8"`` runs ``model.int8.onnx`` (:mod:`dsb.network.quantize`), which
    only the ONNX engines can; ``"auto"`` then never falls back to Keras.

    Raises
    ------
    EnvironmentProblem
        The engine asked for is not installed.
    BadDataError
        An ONNX engine (or int8) was asked for and the folder has no such file;
        Keras was asked for in int8.
    """
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"`engine` is {engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")
    model_dir = Path(model_dir)
    path = network_file(model_dir, precision)
    if precision == "auto":
        precision = "float32"  # the engine as for float32; open_network then picks the format (resolve_precision)
    if precision == "bfloat16":
        return _bfloat16_engine(model_dir, engine, path)
    int8 = precision == "int8"
    if int8 and engine == "keras":
        raise BadDataError("int8 runs on the ONNX engines only: choose --engine openvino, onnx or auto",
                           path=model_dir)
    if int8 and not path.is_file():
        raise BadDataError(
            f"no {path.name} here for --precision int8: write one with `dsb export RUN_DIR --int8 --data DATA`",
            path=model_dir,
        )
    if engine == "auto":
        has_onnx = path.is_file()
        if not int8 and engine_installed("keras") and (model_dir / "model.keras").is_file() and accelerator():
            return "keras"  # the GPU: the ONNX engines here run on the CPU
        for candidate in AUTO_ORDER:
            file_there = not int8 if candidate == "keras" else has_onnx
            if file_there and engine_installed(candidate):
                return candidate
        raise _not_installed("openvino" if int8 else "keras")
    if not engine_installed(engine):
        raise _not_installed(engine)
    if engine != "keras" and not path.is_file():
        raise BadDataError(
            f"no {ONNX_FILE} here for engine {engine!r}: write one with `dsb export RUN_DIR --out DIR`",
            path=model_dir,
        )
    return engine


def resolve_precision(precision: str, engine: str, model_dir=None) -> str:
    """The number format ``precision`` names on ``engine``: itself, or for ``"auto"``, on OpenVINO,
    bfloat16 where the CPU has bfloat16 units (:func:`bfloat16_units`), else int8 on an x86 CPU
    with AVX2 or later (:func:`int8_units`) when ``model_dir`` holds a ``model.int8.onnx``
    exported from its model (:func:`dsb.network.quantize`); float32 otherwise.

    OpenVINO computes the network several times faster in bfloat16 (with AMX), and two to three
    times as fast in int8 (the most with VNNI); the probabilities move by a few hundredths at most (the
    documentation's engines page has the held-out and cross-validation scores of each). On a GPU
    (Keras) and on ONNX Runtime auto is float32.
    """
    if precision != "auto":
        return precision
    if engine != "openvino":
        return "float32"
    if bfloat16_units():
        return "bfloat16"
    if model_dir is not None and auto_takes_int8() and _current_int8(Path(model_dir)):
        return "int8"
    return "float32"


def _current_int8(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a ``model.int8.onnx`` that its checks pass (quantised from the
    folder's own model, :func:`dsb.network.model_folder.check_onnx`): auto does not take a file left
    behind by an earlier model."""
    path = model_dir / INT8_FILE
    if not path.is_file():
        return False
    try:
        check_onnx(path, load_run_config(model_dir).model.outputs, model_dir / "model.keras", "int8")
    except (DsbError, OSError):
        return False
    return True


def _bfloat16_engine(model_dir: Path, engine: str, path: Path) -> str:
    """OpenVINO, the one engine that computes ``model.onnx`` in bfloat16, where the CPU has the units."""
    if engine not in ("auto", "openvino"):
        raise BadDataError(f"bfloat16 runs on the openvino engine only, not {engine!r}: choose --engine openvino "
                           "or auto", path=model_dir)
    if not engine_installed("openvino"):
        raise _not_installed("openvino")
    if not path.is_file():
        raise BadDataError(f"no {ONNX_FILE} here for --precision bfloat16: write one with "
                           "`dsb export RUN_DIR --out DIR`", path=model_dir)
    if not bfloat16_units():
        raise EnvironmentProblem("this CPU has no bfloat16 units (OpenVINO finds neither AVX-512 BF16 nor AMX): "
                                 "choose --precision float32")
    return "openvino"


def open_network(model_dir, config, engine: str = "auto", *, keras_model=None,
                 precision: str = "auto") -> Network:
    """The network of a model folder behind the engine ``engine`` names (see :func:`choose_engine`).

    Parameters
    ----------
    model_dir : str or os.PathLike
        A run or model folder.
    config : dsb.core.config.Config
        Its config (the output channels are checked against the ONNX file).
    engine : str
        One of :data:`ENGINE_CHOICES`.
    keras_model : keras.Model, optional
        The folder's Keras model, when already loaded (engine ``"keras"``).
    precision : str
        ``"float32"`` (``model.onnx``, or ``model.keras`` for Keras),
        ``"bfloat16"`` (``model.onnx`` computed in bfloat16, OpenVINO on a CPU with
        bfloat16 units), ``"int8"`` (``model.int8.onnx``, :mod:`dsb.network.quantize`),
        or ``"auto"`` (:func:`resolve_precision`). The network's ``precision`` says which ran.

    Raises
    ------
    BadDataError
        ``model.onnx`` (``model.int8.onnx``) is missing, damaged or from another model.
    EnvironmentProblem
        The engine is not installed.
    """
    model_dir = Path(model_dir)
    engine = choose_engine(model_dir, engine, precision)
    precision = resolve_precision(precision, engine, model_dir)
    if engine == "keras":
        if keras_model is None:
            from dsb.network.model_folder import load_run

            keras_model, _ = load_run(model_dir)
        return KerasNetwork(keras_model, model_dir / "model.keras", multiple=config.model.size_multiple())
    path = network_file(model_dir, precision)
    check_onnx(path, config.model.outputs, model_dir / "model.keras", "int8" if precision == "int8" else "float32")
    network_class = OpenVinoNetwork if engine == "openvino" else OnnxRuntimeNetwork
    try:
        network = network_class(path, precision)
    except Exception as exc:  # each runtime raises its own types for a file it cannot use
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise BadDataError(f"engine {engine!r} cannot load it ({lines[0][:300]})", path=path) from None
    _check_shapes(network, path, len(config.model.outputs))
    return network


def _check_shapes(network: Network, path: Path, channels: int) -> None:
    """Run one small batch: the file must map (1, 32, 32, 1) to (1, 32, 32, channels)."""
    try:
        out = network(np.zeros((1, 32, 32, 1), np.float32))
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise BadDataError(f"engine {network.engine!r} cannot run it ({lines[0][:300]})", path=path) from None
    if out.shape != (1, 32, 32, channels):
        raise BadDataError(
            f"maps a (1, 32, 32, 1) batch to {out.shape}, expected (1, 32, 32, {channels})", path=path
        )


def load_network(run_dir, engine: str = "auto", precision: str = "auto", *, scale_factor: float | None = None):
    """Load the network of a run folder behind an inference engine, and its config.

    Parameters
    ----------
    run_dir : path
        A folder with ``config.json`` and ``model.keras`` or ``model.onnx``.
    engine : str
        ``"keras"``, ``"onnx"`` (ONNX Runtime), ``"openvino"``, or ``"auto"``:
        the fastest installed engine the folder has a file for
        (:func:`dsb.network.engines.choose_engine`).
    precision : str
        ``"float32"``, ``"bfloat16"``, ``"int8"`` or ``"auto"``, as for :func:`open_network`.
    scale_factor : float, optional
        Predict this many times larger than the chosen scale, in place of the
        folder's ``predict.scale_factor`` (:meth:`dsb.core.config.Config.with_scale_factor`).

    Returns
    -------
    (dsb.network.engines.Network, Config)
        The network is a callable from a ``(B, h, w, 1)`` batch to probabilities.

    Raises
    ------
    BadDataError
        As :func:`load_run`, and for a ``model.onnx`` that is missing, damaged
        or exported from another model.
    EnvironmentProblem
        The engine is not installed.
    """

    run_dir = Path(run_dir)
    config = load_run_config(run_dir).with_scale_factor(scale_factor)
    return open_network(run_dir, config, engine, precision=precision), config
