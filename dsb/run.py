"""Read and update a run folder (``model.keras`` + ``config.json``) that :mod:`dsb.training` wrote.

Also which folder a command's model comes from: the one given, or the model
shipped inside the package (:func:`default_model_dir`, :func:`resolve_model_dir`).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .atomic import atomic_dir, write_text
from .config import Config, PostprocessConfig, PredictConfig, load_config, save_config
from .errors import BadDataError, EnvironmentProblem

__all__ = [
    "default_model_dir",
    "resolve_model_dir",
    "load_run",
    "load_network",
    "load_run_config",
    "update_inference",
    "update_postprocess",
    "export_onnx_in_place",
    "export_run",
    "EXPORTED_FILES",
]

# What inference and provenance need; checkpoints and logs stay behind.
EXPORTED_FILES = ("config.json", "manifest.json", "history.csv", "tuning.csv")
_DEFAULT_MODEL = Path(__file__).parent / "models" / "default"


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


def load_network(run_dir, engine: str = "auto", precision: str = "float32"):
    """Load the network of a run folder behind an inference engine, and its config.

    Parameters
    ----------
    run_dir : path
        A folder with ``config.json`` and ``model.keras`` or ``model.onnx``.
    engine : str
        ``"keras"``, ``"onnx"`` (ONNX Runtime), ``"openvino"``, or ``"auto"``:
        the fastest installed engine the folder has a file for
        (:func:`dsb.engines.choose_engine`).
    precision : str
        ``"float32"``, or ``"int8"``: ``model.int8.onnx`` (:mod:`dsb.quantize`)
        on an ONNX engine.

    Returns
    -------
    (dsb.engines.Network, Config)
        The network is a callable from a ``(B, h, w, 1)`` batch to probabilities.

    Raises
    ------
    BadDataError
        As :func:`load_run`, and for a ``model.onnx`` that is missing, damaged
        or exported from another model.
    EnvironmentProblem
        The engine is not installed.
    """
    from .engines import open_network

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    return open_network(run_dir, config, engine, precision=precision), config


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


def export_onnx_in_place(run_dir) -> Path:
    """Write ``model.onnx`` beside a run folder's ``model.keras`` (:func:`dsb.onnx_export.export_onnx`).

    ``dsb predict``, ``segment``, ``evaluate`` and ``tune`` then run the
    network on ONNX Runtime or OpenVINO (:mod:`dsb.engines`). A later
    ``model.keras`` (a resumed training) makes the file stale, which the
    engines detect; export again then.

    Returns
    -------
    pathlib.Path
        The ONNX file.
    """
    from .onnx_export import ONNX_FILE, export_onnx

    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    return export_onnx(model, run_dir / ONNX_FILE, outputs=config.model.outputs, source=run_dir / "model.keras")


def quantize_in_place(run_dir, data_dir, *, progress: bool = False) -> Path:
    """Write ``model.int8.onnx`` beside a run folder's ``model.onnx`` (:mod:`dsb.quantize`).

    The activation ranges are measured on the run's training images in
    ``data_dir`` (its validation images are left out). ``model.onnx`` is
    exported first when the folder has none, or one the engines would refuse
    (from an earlier ``model.keras``): the int8 file records the digest of the
    file it was made from. ``--precision int8`` then runs it.

    Returns
    -------
    pathlib.Path
        The int8 file.
    """
    from .dataset import load_prepared
    from .engines import check_onnx
    from .onnx_export import ONNX_FILE
    from .quantize import INT8_FILE, calibration_batches, quantize_onnx, require_quantizer

    require_quantizer()
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    try:
        check_onnx(run_dir / ONNX_FILE, config.model.outputs, run_dir / "model.keras")
    except BadDataError:  # missing, damaged, or from another model.keras
        export_onnx_in_place(run_dir)
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)
    batches = calibration_batches(prepared, config)
    note = f"{len(batches)} training images (validation images left out)"
    return quantize_onnx(run_dir / ONNX_FILE, run_dir / INT8_FILE, batches, note=note)


def export_run(run_dir, out_dir, *, note: str | None = None) -> Path:
    """Copy a run folder for inference only: the model without optimizer state.

    ``dsb/models/default`` is made this way, so that ``dsb predict`` and ``dsb
    segment`` work right after installation. The copy holds ``model.keras``
    (weights only, no optimizer: a third of the size), the same network as
    ``model.onnx`` for the fast CPU engines (:mod:`dsb.onnx_export`), the
    run's :data:`EXPORTED_FILES` that exist, and ``TRAINING.md`` with ``note``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder that :func:`load_run` accepts.
    out_dir : str or os.PathLike
        The folder to write; an existing one is replaced only once the copy is whole.
    note : str, optional
        Markdown saying how the run was made (the exact command).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise BadDataError("--out is the run folder itself; exporting there would drop its checkpoints",
                           path=run_dir)
    from .onnx_export import ONNX_FILE, export_onnx
    from .quantize import INT8_FILE

    model, config = load_run(run_dir)
    if out_dir.exists():
        # Replacing is for an earlier export; any other folder (a parent of the run, a
        # project folder) would be deleted with everything in it.
        if not out_dir.is_dir():
            raise BadDataError("exists and is not a folder", path=out_dir)
        ours = {"model.keras", ONNX_FILE, INT8_FILE, "TRAINING.md", *EXPORTED_FILES}
        foreign = sorted({p.name for p in out_dir.iterdir()} - ours)
        if foreign:
            raise BadDataError(
                f"exists and holds more than an export (e.g. {foreign[0]!r}); give a new or empty folder",
                path=out_dir,
            )
    with atomic_dir(out_dir) as tmp:
        model.save(tmp / "model.keras")
        export_onnx(model, tmp / ONNX_FILE, outputs=config.model.outputs, source=tmp / "model.keras")
        for name in EXPORTED_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        if note:
            write_text(tmp / "TRAINING.md", note.rstrip() + "\n")
    return out_dir
