"""Exporting a run folder: ONNX and int8 files in place, or a copy for inference elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

from dsb.core.atomic import atomic_dir, write_text
from dsb.core.errors import BadDataError, DsbError, EnvironmentProblem
from dsb.network.model_folder import (
    EXPORTED_FILES,
    INT8_FILE,
    ONNX_FILE,
    check_onnx,
    load_run,
    load_run_config,
    read_manifest,
)
from dsb.network.onnx_export import export_onnx
from dsb.network.quantize import (
    calibration_batches,
    quantize_onnx,
    require_quantizer,
)

__all__ = [
    "export_onnx_in_place",
    "fresh_onnx",
    "quantize_in_place",
    "int8_would_run",
    "export_run",
]


def export_onnx_in_place(run_dir) -> Path:
    """Write ``model.onnx`` beside a run folder's ``model.keras`` (:func:`dsb.network.onnx_export.export_onnx`).

    ``dsb predict``, ``segment``, ``evaluate`` and ``tune`` then run the
    network on ONNX Runtime or OpenVINO (:mod:`dsb.network.engines`). A later
    ``model.keras`` (a resumed training) makes the file stale, which the
    engines detect; export again then.

    Returns
    -------
    pathlib.Path
        The ONNX file.
    """

    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    return export_onnx(model, run_dir / ONNX_FILE, outputs=config.model.outputs, source=run_dir / "model.keras")


def fresh_onnx(run_dir) -> Path:
    """``model.onnx`` of a run folder, exported first when the folder has none, or one the engines
    would refuse (damaged, or from an earlier ``model.keras``: a resumed training).

    Raises
    ------
    EnvironmentProblem
        An export is needed and the converter (``tf2onnx``, TensorFlow) is not installed.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    try:
        check_onnx(run_dir / ONNX_FILE, config.model.outputs, run_dir / "model.keras")
    except BadDataError:  # missing, damaged, or from another model.keras
        return export_onnx_in_place(run_dir)
    return run_dir / ONNX_FILE


def quantize_in_place(run_dir, data_dir, *, progress: bool = False) -> Path:
    """Write ``model.int8.onnx`` beside a run folder's ``model.onnx`` (:mod:`dsb.network.quantize`).

    The activation ranges are measured on the run's training images in
    ``data_dir``: its validation images are left out, and so are the groups
    it did not train on where its ``manifest.json`` names those it did
    (``train_groups``: the held-out groups of a cross-validation fold). ``model.onnx`` is
    exported first when the folder has none, or one the engines would refuse
    (from an earlier ``model.keras``): the int8 file records the digest of the
    file it was made from. ``--precision int8`` then runs it.

    Returns
    -------
    pathlib.Path
        The int8 file.
    """
    from dsb.training.cache import load_prepared

    require_quantizer()
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)  # bad data: nothing written yet
    fresh_onnx(run_dir)
    trained = _trained_groups(run_dir)
    batches = calibration_batches(prepared, config, groups=trained)
    note = f"{len(batches)} training images (validation images" + (
        " and groups the run did not train on left out)" if trained is not None else " left out)")
    return quantize_onnx(run_dir / ONNX_FILE, run_dir / INT8_FILE, batches, note=note)


def int8_would_run() -> bool:
    """Whether ``--precision auto`` on this machine would run a folder's ``model.int8.onnx``
    (:func:`dsb.network.engines.resolve_precision`: OpenVINO installed, an x86 CPU with AVX2 or
    later and no bfloat16 units) and it can be made here (ONNX Runtime's quantizer installed): a
    model made on this machine is then worth quantising for it."""
    from dsb.network.engines import auto_takes_int8, engine_installed

    if not engine_installed("openvino") or not auto_takes_int8():
        return False
    try:
        require_quantizer()
    except EnvironmentProblem:
        return False
    return True


def _trained_groups(run_dir: Path) -> set[str] | None:
    """The groups a run trained on, from its ``manifest.json`` (runs from before it recorded them, and
    inference copies without a manifest: None, every group)."""
    groups = read_manifest(run_dir).get("train_groups")
    return set(groups) if isinstance(groups, list) else None


def export_run(run_dir, out_dir, *, note: str | None = None, int8_data=None, progress: bool = False) -> Path:
    """Copy a run folder for inference only: the model without optimizer state.

    ``dsb/models/default`` is made this way, so that ``dsb predict`` and ``dsb
    segment`` work right after installation. The copy holds ``model.keras``
    (weights only, no optimizer: a third of the size), the same network as
    ``model.onnx`` for the fast CPU engines (:mod:`dsb.network.onnx_export`), the
    run's :data:`EXPORTED_FILES` that exist, and ``TRAINING.md`` with ``note``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder that :func:`load_run` accepts.
    out_dir : str or os.PathLike
        The folder to write; an existing one is replaced only once the copy is whole.
    note : str, optional
        Markdown saying how the run was made (the exact command).
    int8_data : str or os.PathLike, optional
        The training data: the copy also gets ``model.int8.onnx`` (:func:`quantize_in_place`), made before
        it replaces ``out_dir``, so that bad data leaves an earlier export as it was.
    progress : bool
        A progress bar while the int8 calibration images are prepared.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise BadDataError("--out is the run folder itself; exporting there would drop its checkpoints",
                           path=run_dir)

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
        if int8_data is not None:
            try:
                quantize_in_place(tmp, int8_data, progress=progress)
            except DsbError as exc:  # named as the user knows it, not by the staging folder, gone when read
                if exc.path is not None and exc.path.startswith(str(tmp)):
                    exc.path = str(out_dir) + exc.path[len(str(tmp)):]
                raise
    return out_dir
