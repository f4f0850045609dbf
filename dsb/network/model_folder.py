"""A model folder's files: which exist, what they are called, how they are checked and read.

A run folder (``model.keras`` + ``config.json``, written by :mod:`dsb.training`)
may also hold ``model.onnx`` and ``model.int8.onnx``; each ONNX file records the
digest of the ``model.keras`` it came from, which :func:`check_onnx` checks.
Also which folder a command's model comes from: the one given, or the model
shipped inside the package (:func:`default_model_dir`, :func:`resolve_model_dir`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

from dsb.core.atomic import os_error
from dsb.core.config import (
    Config,
    PostprocessConfig,
    PredictConfig,
    load_config,
    save_config,
)
from dsb.core.errors import BadDataError, EnvironmentProblem

__all__ = [
    "EXPORTED_FILES",
    "default_model_dir",
    "resolve_model_dir",
    "load_run_config",
    "read_manifest",
    "load_run",
    "update_inference",
    "update_postprocess",
    "network_file",
    "read_onnx_metadata",
    "read_onnx_opset",
    "check_onnx",
    "ONNX_FILE",
    "file_digest",
    "INT8_FILE",
    "PRECISIONS",
    "PRECISION_CHOICES",
]


# What inference and provenance need; checkpoints and logs stay behind.
EXPORTED_FILES = ("config.json", "manifest.json", "history.csv", "tuning.csv")


_DEFAULT_MODEL = Path(__file__).parents[1] / "models" / "default"


def default_model_dir() -> Path:
    """The run folder of the model shipped inside the package.

    Returns
    -------
    Path
        ``dsb/models/default``, holding ``model.keras`` and ``config.json``.

    Raises
    ------
    EnvironmentProblem
        When this installation has no shipped model yet.
    """
    if not (_DEFAULT_MODEL / "model.keras").is_file():
        raise EnvironmentProblem(
            "this installation ships no default model (model.keras is missing); "
            "pass a run folder with --model",
            path=_DEFAULT_MODEL,
        )
    return _DEFAULT_MODEL


def resolve_model_dir(model_dir=None) -> Path:
    """``model_dir`` as a Path, or the shipped model's folder (:func:`default_model_dir`) when None."""
    return default_model_dir() if model_dir is None else Path(model_dir)


def load_run_config(run_dir) -> Config:
    """The config of a run folder, with a clear error if the folder or its config is missing or wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadDataError("run folder not found", path=run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise BadDataError("no config.json here: not a run folder (make one with `dsb train --out`)", path=run_dir)
    return load_config(path)


def read_manifest(run_dir) -> dict:
    """A run folder's ``manifest.json`` (what training wrote: provenance, the groups it trained and
    validated on); empty when the folder has none, or one that is not a JSON object, as copies made
    by hand and runs from other tools may not."""
    try:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def load_run(run_dir):
    """Load the model and config of a run folder.

    Parameters
    ----------
    run_dir : path
        A folder with ``config.json`` and ``model.keras``.

    Returns
    -------
    (keras.Model, Config)
        The model uncompiled (for inference).

    Raises
    ------
    BadDataError
        The folder, its config or its model is missing; the config has unknown
        keys or wrong types; the model file is damaged or does not match the
        config (input channels, output channels).
    """
    import keras

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    path = run_dir / "model.keras"
    if not path.is_file():
        raise BadDataError("no model.keras here: the run has not finished an epoch yet", path=run_dir)
    try:  # opened once: one that cannot be read is said so, not called damaged
        with open(path, "rb") as file:
            damaged = not zipfile.is_zipfile(file)
    except OSError as exc:
        raise os_error(exc, path) from exc
    if damaged:  # Keras says "File not found" of a file that is there
        raise BadDataError("cannot load the model: damaged or not a Keras model (a .keras file is a zip "
                           "archive); copy or export it again", path=path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # a damaged zip surfaces as many exception types
            # Keras explains a mismatch over dozens of lines and warnings: the first line says it.
            lines = str(exc).strip().splitlines() or [""]
            raise BadDataError(f"cannot load the model ({type(exc).__name__}: {lines[0][:300]})", path=path) from None
    for w in caught:  # a model that loaded: pass on what Keras had to say
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n_out = len(config.model.outputs)
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if in_shape[-1] != 1 or out_shape[-1] != n_out:
        raise BadDataError(
            f"model maps {in_shape[-1]} channel(s) to {out_shape[-1]}, but config.json expects 1 to {n_out} "
            f"({list(config.model.outputs)})",
            path=path,
        )
    return model, config


def update_inference(run_dir, *, predict: PredictConfig | None = None,
                     postprocess: PostprocessConfig | None = None) -> Config:
    """Replace the prediction and/or post-processing sections of a run's ``config.json`` in one
    atomic write; return the new config."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    changes = {}
    for name, value, kind in (("predict", predict, PredictConfig), ("postprocess", postprocess, PostprocessConfig)):
        if value is not None:
            if not isinstance(value, kind):
                raise TypeError(f"`{name}` must be a {kind.__name__}, got {type(value).__name__}")
            changes[name] = value
    config = config.replace(**changes).check()
    save_config(config, run_dir / "config.json")
    return config


def update_postprocess(run_dir, postprocess: PostprocessConfig) -> Config:
    """Replace the post-processing section of a run's ``config.json`` (atomically); return the new config."""
    return update_inference(run_dir, postprocess=postprocess)


def network_file(model_dir, precision: str = "float32") -> Path:
    """The ONNX file that runs ``model_dir`` at ``precision``: ``model.int8.onnx`` for int8, else
    ``model.onnx`` (bfloat16, and auto, run the float32 file: OpenVINO computes it in bfloat16)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"`precision` is {precision!r}; expected one of {', '.join(PRECISION_CHOICES)}")
    return Path(model_dir) / (INT8_FILE if precision == "int8" else ONNX_FILE)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """The (field number, value) pairs of one protobuf message; bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, value


def read_onnx_metadata(path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without the ``onnx`` package.

    ONNX files are protobuf ``ModelProto`` messages; field 14 holds the
    key/value pairs. Only the top level is walked (the graph is skipped by
    its length), so this costs little even for large models.

    Raises
    ------
    BadDataError
        The file is not a protobuf message, or holds no graph.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadDataError(f"cannot read ({exc.strerror or exc})", path=path) from None
    meta: dict[str, str] = {}
    has_graph = False
    try:
        for number, value in _fields(data):
            if number == 7:  # graph
                has_graph = bool(value)
            elif number == 14:
                entry = dict(_fields(value))
                meta[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b"")).decode()
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise BadDataError(f"is not an ONNX model (damaged or another kind of file: {exc})", path=path) from None
    if not has_graph:
        raise BadDataError("is not an ONNX model (no graph in it)", path=path)
    return meta


def read_onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file imports, read without the ``onnx`` package."""
    try:
        for number, value in _fields(path.read_bytes()):
            if number == 8:  # ModelProto.opset_import
                entry = dict(_fields(value))
                if bytes(entry.get(1, b"")).decode() in ("", "ai.onnx"):
                    return int(entry.get(2, 0))
    except (OSError, ValueError, UnicodeDecodeError, TypeError) as exc:
        raise BadDataError(f"is not an ONNX model ({exc})", path=path) from None
    raise BadDataError("imports no default ONNX opset", path=path)


def check_onnx(path, outputs: Sequence[str], keras_path=None, precision: str = "float32") -> None:
    """Refuse an ONNX file that was not exported from this folder's model, or not at ``precision``.

    Raises
    ------
    BadDataError
        The file is damaged, names other output channels than ``outputs``,
        was exported from another ``model.keras`` than ``keras_path``, or is
        not the ``precision`` its name says (``dsb.precision`` metadata:
        ``int8`` for ``model.int8.onnx``, absent or ``float32`` otherwise).
        Where ``keras_path`` is missing (a folder of the ONNX files copied
        without it), an int8 file must record that it comes from the model that
        the ``model.onnx`` beside it came from.
    """
    path = Path(path)
    meta = read_onnx_metadata(path)
    recorded = meta.get("dsb.outputs")
    if recorded is None:
        raise BadDataError("has no dsb.outputs metadata: not written by `dsb export`; export it again", path=path)
    held = meta.get("dsb.precision", "float32")
    if held != precision:
        raise BadDataError(f"is the {held} network, not the {precision} one: export it again", path=path)
    if recorded.split(",") != list(outputs):
        raise BadDataError(
            f"has outputs {recorded.split(',')}, but config.json expects {list(outputs)}: export it again", path=path
        )
    digest = meta.get("dsb.model_keras_sha256")
    if keras_path is not None and Path(keras_path).is_file():
        if digest and digest != file_digest(keras_path):
            raise BadDataError(
                f"was exported from another model than {Path(keras_path).name} beside it: export it again", path=path
            )
    elif precision == "int8" and (path.parent / ONNX_FILE).is_file():
        source = read_onnx_metadata(path.parent / ONNX_FILE).get("dsb.model_keras_sha256")
        if not digest or not source or digest != source:
            raise BadDataError(f"was quantised from another model than the {ONNX_FILE} beside it: write both "
                               f"again from the run, `dsb export RUN_DIR --out {path.parent} --int8 --data DATA`",
                               path=path)


ONNX_FILE = "model.onnx"


def file_digest(path) -> str:
    """The SHA-256 of a file, as hex (the ``model.keras`` an ONNX file was exported from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


INT8_FILE = "model.int8.onnx"


PRECISIONS = ("float32", "bfloat16", "int8")


PRECISION_CHOICES = ("auto", *PRECISIONS)
