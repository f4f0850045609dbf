"""The int8 network: calibration on training images, model.int8.onnx, --precision int8, and its failures."""

from __future__ import annotations

import builtins
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import STAGE, dsb, error_line, write_stage

from dsb.core.config import Config, ModelConfig, PredictConfig, PreprocessConfig
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.network.engines import choose_engine, engine_installed, open_network
from dsb.network.model_folder import (
    INT8_FILE,
    ONNX_FILE,
    check_onnx,
    file_digest,
    read_onnx_metadata,
)
from dsb.network.quantize import calibration_batches, quantize_onnx

pytest.importorskip("tf2onnx", reason="ONNX export on TensorFlow needs tf2onnx")
pytest.importorskip("onnxruntime", reason="int8 export calibrates with ONNX Runtime")
ONNX_ENGINES = [e for e in ("onnx", "openvino") if engine_installed(e)]
CONFIG = Config(
    model=ModelConfig(depth=3, base_filters=4, dropout=(0.0,)),
    predict=PredictConfig(tile_size=64, overlap=32, context=8, batch_size=2),
)


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A small random U-Net run folder with model.onnx, then model.int8.onnx written by `dsb export --int8`."""
    from test_engines import _unet_run

    root = tmp_path_factory.mktemp("int8")
    path, _ = _unet_run(root / "run", CONFIG)
    stage = write_stage(root / "stage")
    result = dsb("export", path, "--int8", "--data", stage)
    assert result.exit_code == 0, result.output
    return path, stage


def _prepared(sizes, groups, diameters, ids=None):
    rng = np.random.default_rng(0)
    ids = ids or [f"id{i:02d}" for i in range(len(sizes))]
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
    return SimpleNamespace(path="cache", ids=ids, images=images, groups=groups, diameters=diameters)


def test_calibration_leaves_out_validation_images_and_takes_every_group_in_turn():
    sizes = [(100, 120)] * 9
    groups = ["a"] * 6 + ["b"] * 2 + ["c"]
    prepared = _prepared(sizes, groups, [20.0] * 9)
    config = CONFIG.replace(validation_ids=("id08",))  # all of group c
    batches = calibration_batches(prepared, config, count=5, side=64)
    assert len(batches) == 5
    # Each image is its own random noise: find which ones were taken.
    taken = []
    for batch in batches:
        for i, image in enumerate(prepared.images):
            top, left = (100 - batch.shape[1]) // 2, (120 - batch.shape[2]) // 2
            crop = image[top : top + batch.shape[1], left : left + batch.shape[2]].astype(np.float32) / 255
            if np.array_equal(crop, batch[0, :, :, 0]):
                taken.append(i)
    assert "id08" not in [prepared.ids[i] for i in taken]
    # a, b, a, b, a: groups alternate while both have images left.
    assert [groups[i] for i in taken] == ["a", "b", "a", "b", "a"]
    assert len(set(taken)) == 5


def test_calibration_keeps_to_the_groups_the_run_trained_on():
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    prepared = _prepared([(100, 120)] * 9, groups, [20.0] * 9)
    batches = calibration_batches(prepared, CONFIG, count=9, side=64, groups={"b", "c"})
    taken = [i for batch in batches for i, image in enumerate(prepared.images)
             if np.array_equal(image[18:82, 28:92].astype(np.float32) / 255, batch[0, :, :, 0])]
    assert len(batches) == 6 and sorted(groups[i] for i in taken) == ["b"] * 3 + ["c"] * 3
    with pytest.raises(BadDataError, match=r"none of the groups the run trained on \(z\)"):
        calibration_batches(prepared, CONFIG, groups={"z"})


def test_export_int8_calibrates_on_the_groups_named_in_the_manifest(int8_run, tmp_path):
    import json

    from dsb.training.cache import load_prepared

    path, stage = int8_run
    run = tmp_path / "run"
    shutil.copytree(path, run)
    (run / "manifest.json").write_text(json.dumps({"train_groups": ["another-experiment"]}))
    result = dsb("export", run, "--int8", "--data", stage)
    error_line(result, 3, "none of the groups the run trained on (another-experiment)")
    trained = sorted(set(load_prepared(stage, CONFIG.preprocess, workers=1).groups))
    (run / "manifest.json").write_text(json.dumps({"train_groups": trained}))
    result = dsb("export", run, "--int8", "--data", stage)
    assert result.exit_code == 0, result.output
    assert "groups the run did not train on left out" in read_onnx_metadata(run / INT8_FILE)["dsb.calibration"]


def test_calibration_resamples_to_the_network_diameter_and_crops_to_the_size_multiple():
    config = CONFIG.replace(preprocess=PreprocessConfig(diameter=20.0))
    multiple = config.model.size_multiple()
    prepared = _prepared([(90, 70), (90, 70), (90, 70)], ["a", "a", "a"], [10.0, math.nan, 40.0])
    shapes = [b.shape for b in calibration_batches(prepared, config, side=512)]
    # Taken from the middle of the group outwards: unknown diameter -> as it is; 40 -> half (45x35);
    # 10 -> twice the size (180x140); each then cut to the size multiple.
    expected = [(90, 70), (45, 35), (180, 140)]
    assert shapes == [(1, h // multiple * multiple, w // multiple * multiple, 1) for h, w in expected]
    assert all(b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1 for b in calibration_batches(prepared, config))
    assert all(b.shape[1] <= 64 and b.shape[2] <= 64 for b in calibration_batches(prepared, config, side=64))


def test_calibration_without_a_training_image_is_refused():
    prepared = _prepared([(64, 64)], ["a"], [20.0])
    with pytest.raises(BadDataError, match="no training image"):
        calibration_batches(prepared, CONFIG.replace(validation_ids=("id00",)))


def test_export_int8_records_the_precision_the_outputs_and_the_source(int8_run):
    path, _ = int8_run
    meta = read_onnx_metadata(path / INT8_FILE)
    assert meta["dsb.precision"] == "int8"
    assert meta["dsb.outputs"] == ",".join(CONFIG.model.outputs)
    assert meta["dsb.model_keras_sha256"] == file_digest(path / "model.keras")
    assert "training images" in meta["dsb.calibration"]
    check_onnx(path / INT8_FILE, CONFIG.model.outputs, path / "model.keras", "int8")
    # The float32 file is untouched and still float32.
    check_onnx(path / ONNX_FILE, CONFIG.model.outputs, path / "model.keras")
    import onnx

    ops = {node.op_type for node in onnx.load(str(path / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_int8_probabilities_are_close_to_float32(int8_run, engine):
    path, _ = int8_run
    batch = np.random.default_rng(1).random((2, 64, 96, 1), dtype=np.float32)
    exact = open_network(path, CONFIG, "keras")(batch)
    int8 = open_network(path, CONFIG, engine, precision="int8")
    out = int8(batch)
    assert out.shape == exact.shape and out.dtype == np.float32
    diff = np.abs(out - exact)
    # A random network's probabilities spread little (std about 0.02): the error is measured against that.
    assert diff.mean() < 0.1 * exact.std() and diff.max() < 0.25 * np.ptp(exact), (diff.mean(), diff.max())
    assert diff.max() > 1e-6  # it is another network, not the float32 file run again


@pytest.mark.parametrize("engine", ["auto", *ONNX_ENGINES])
def test_predict_in_int8_writes_a_valid_csv(int8_run, tmp_path, engine):
    path, stage = int8_run
    out = tmp_path / "int8.csv"
    result = dsb("predict", path, "--images", stage, "--out", out, "--precision", "int8", "--engine", engine)
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(out)["ImageId"]) == set(STAGE)
    assert dsb("validate", out, "--images", stage).exit_code == 0


def test_int8_on_keras_is_one_line(int8_run, tmp_path):
    path, stage = int8_run
    result = dsb("predict", path, "--images", stage, "--out", tmp_path / "out.csv", "--precision", "int8",
                 "--engine", "keras")
    error_line(result, 3, "int8", "ONNX engines")
    assert not (tmp_path / "out.csv").exists()


def test_a_missing_int8_file_is_one_line_that_says_how_to_write_it(int8_run, tmp_path):
    path, stage = int8_run
    model_dir = tmp_path / "no-int8"
    shutil.copytree(path, model_dir)
    (model_dir / INT8_FILE).unlink()
    result = dsb("predict", model_dir, "--images", stage, "--out", tmp_path / "out.csv", "--precision", "int8")
    error_line(result, 3, f"no {INT8_FILE}", "dsb export", "--int8")


def test_files_swapped_between_precisions_are_refused(int8_run, tmp_path):
    path, stage = int8_run
    model_dir = tmp_path / "swapped"
    shutil.copytree(path, model_dir)
    shutil.copy(path / INT8_FILE, model_dir / ONNX_FILE)
    shutil.copy(path / ONNX_FILE, model_dir / INT8_FILE)
    for precision, name, held in (("float32", ONNX_FILE, "int8"), ("int8", INT8_FILE, "float32")):
        result = dsb("predict", model_dir, "--images", stage, "--out", tmp_path / "out.csv",
                     "--precision", precision, "--engine", "auto")
        error_line(result, 3, name, f"is the {held} network", "export it again")


@pytest.mark.parametrize("damage", [lambda d: d[: len(d) // 2], lambda d: b""], ids=["truncated", "empty"])
def test_a_damaged_int8_file_is_one_line_and_nothing_is_written(int8_run, tmp_path, damage):
    path, stage = int8_run
    model_dir = tmp_path / "damaged"
    shutil.copytree(path, model_dir)
    (model_dir / INT8_FILE).write_bytes(damage((model_dir / INT8_FILE).read_bytes()))
    result = dsb("predict", model_dir, "--images", stage, "--out", tmp_path / "out.csv", "--precision", "int8")
    error_line(result, 3, INT8_FILE)
    assert not (tmp_path / "out.csv").exists()


def test_an_int8_file_from_another_model_is_refused(int8_run, tmp_path):
    from test_engines import _unet_run

    path, stage = int8_run
    other, _ = _unet_run(tmp_path / "other", CONFIG, seed=3)
    quantize_onnx(other / ONNX_FILE, tmp_path / "other.int8.onnx",
                  [np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)])
    model_dir = tmp_path / "mismatched"
    shutil.copytree(path, model_dir)
    shutil.copy(tmp_path / "other.int8.onnx", model_dir / INT8_FILE)
    with pytest.raises(BadDataError, match="another model"):
        open_network(model_dir, CONFIG, "auto", precision="int8")


def test_export_out_with_int8_calibrates_the_copy(int8_run, tmp_path):
    path, stage = int8_run
    out = tmp_path / "exported"
    result = dsb("export", path, "--out", out, "--int8", "--data", stage)
    assert result.exit_code == 0, result.output
    # The copy's model.keras is written anew, so its int8 file must name that one.
    check_onnx(out / INT8_FILE, CONFIG.model.outputs, out / "model.keras", "int8")
    assert choose_engine(out, "auto", "int8") in ONNX_ENGINES


def test_export_out_with_int8_on_bad_data_keeps_the_earlier_export(int8_run, tmp_path):
    path, stage = int8_run
    out = tmp_path / "exported"
    note = tmp_path / "note.md"
    note.write_text("how it was trained")
    assert dsb("export", path, "--out", out, "--note", note).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = dsb("export", path, "--out", out, "--int8", "--data", empty)
    assert result.exit_code == 3 and str(empty) in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # TRAINING.md was lost with it


def test_an_int8_error_inside_the_staged_copy_names_the_export_folder(int8_run, tmp_path, monkeypatch):
    from dsb.workflows import export

    def fail(folder, data, progress=False):
        raise BadDataError("cannot be quantized", path=Path(folder) / "model.onnx")

    monkeypatch.setattr(export, "quantize_in_place", fail)
    path, stage = int8_run
    out = tmp_path / "exported"
    result = dsb("export", path, "--out", out, "--int8", "--data", stage)
    assert result.exit_code == 3
    assert result.stderr == f"dsb: error: {out / 'model.onnx'}: cannot be quantized\n"  # not .exported.XXXX.tmp
    assert not out.exists()


def test_export_int8_without_data_is_a_usage_error(int8_run):
    path, _ = int8_run
    result = dsb("export", path, "--int8")
    assert result.exit_code == 2
    assert "--int8 needs --data" in result.stderr


def test_auto_in_int8_never_falls_back_to_keras(int8_run, monkeypatch):
    path, _ = int8_run
    monkeypatch.setattr("dsb.network.engines.engine_installed", lambda e: e == "keras")
    with pytest.raises(EnvironmentProblem, match="not installed"):
        choose_engine(path, "auto", "int8")


def _without_onnxruntime(real_import):
    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    return no_onnxruntime


def test_quantizing_without_onnxruntime_says_what_to_install(int8_run, tmp_path, monkeypatch):
    path, _ = int8_run
    monkeypatch.setattr(builtins, "__import__", _without_onnxruntime(builtins.__import__))
    with pytest.raises(EnvironmentProblem, match="pip install onnxruntime"):
        quantize_onnx(path / ONNX_FILE, tmp_path / "x.onnx", [np.zeros((1, 32, 32, 1), np.float32)])
    assert not (tmp_path / "x.onnx").exists()


def test_an_unknown_precision_is_refused(int8_run):
    path, _ = int8_run
    with pytest.raises(ValueError, match="precision"):
        choose_engine(path, "auto", "float16")
    assert dsb("predict", path, "--precision", "float16").exit_code == 2


def _swapped(int8_run, tmp_path):
    """A copy of the run whose int8 file is the float32 one: whatever opens it at int8 must refuse it."""
    path, _ = int8_run
    model_dir = tmp_path / "float32-as-int8"
    shutil.copytree(path, model_dir)
    shutil.copy(path / ONNX_FILE, model_dir / INT8_FILE)
    return model_dir


def test_segment_evaluate_and_tune_pass_the_precision_on(int8_run, tmp_path):
    # Both would succeed on the float32 file: the refusal shows that int8 reached the engine.
    import json

    path, stage = int8_run
    model_dir = _swapped(int8_run, tmp_path)
    # Validation images, so that evaluate and tune get as far as the network (they refuse a run without any first).
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"validation_ids": sorted(STAGE)}))
    image = sorted(stage.glob("*/images/*.png"))[0]
    result = dsb("segment", image, "--model", model_dir, "--out", tmp_path / "seg", "--precision", "int8")
    error_line(result, 3, INT8_FILE, "is the float32 network")
    result = dsb("evaluate", model_dir, "--data", stage, "--precision", "int8")
    error_line(result, 3, INT8_FILE, "is the float32 network")
    result = dsb("tune", model_dir, "--data", stage, "--precision", "int8")
    error_line(result, 3, INT8_FILE, "is the float32 network")
    assert dsb("segment", image, "--model", model_dir, "--out", tmp_path / "seg").exit_code == 0


def test_load_model_takes_a_precision(int8_run, tmp_path, monkeypatch):
    import dsb as package

    path, _ = int8_run
    model = package.load_model(path, precision="int8")
    assert model.engine in ONNX_ENGINES and model.network.path.name == INT8_FILE
    # By default, what auto takes on the CPU: int8 only where it runs int8 fast and has no bfloat16 units.
    for bf16, int8_fast in ((True, True), (False, False), (False, True)):
        if "openvino" not in ONNX_ENGINES:
            break
        monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda b=bf16: b)
        monkeypatch.setattr("dsb.network.engines.int8_units", lambda v=int8_fast: v)
        default = package.load_model(path, engine="openvino")
        assert default.network.path.name == (INT8_FILE if int8_fast and not bf16 else ONNX_FILE)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="precision"):
        package.load_model(path, precision="float16")
    with pytest.raises(BadDataError, match="is the float32 network"):
        package.load_model(_swapped(int8_run, tmp_path), precision="int8")


@pytest.mark.parametrize("state", ["missing", "stale"])
def test_export_int8_writes_model_onnx_first_when_it_is_missing_or_stale(int8_run, tmp_path, state):
    from test_engines import _unet_run

    path, stage = int8_run
    model_dir = tmp_path / state
    shutil.copytree(path, model_dir)
    (model_dir / INT8_FILE).unlink()
    if state == "missing":
        (model_dir / ONNX_FILE).unlink()
    else:  # exported from an earlier model.keras: the engines refuse it, so the int8 file must not copy it
        other, _ = _unet_run(tmp_path / "other", CONFIG, seed=5)
        shutil.copy(other / ONNX_FILE, model_dir / ONNX_FILE)
    result = dsb("export", model_dir, "--int8", "--data", stage)
    assert result.exit_code == 0, result.output
    check_onnx(model_dir / ONNX_FILE, CONFIG.model.outputs, model_dir / "model.keras")
    check_onnx(model_dir / INT8_FILE, CONFIG.model.outputs, model_dir / "model.keras", "int8")


def test_data_without_int8_is_a_usage_error(int8_run, tmp_path):
    path, stage = int8_run
    result = dsb("export", path, "--out", tmp_path / "out", "--data", stage)
    assert result.exit_code == 2 and "--data is for --int8 only" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_quantizer_is_said_before_anything_is_written(int8_run, tmp_path, monkeypatch):
    path, stage = int8_run
    monkeypatch.setattr(builtins, "__import__", _without_onnxruntime(builtins.__import__))
    result = dsb("export", path, "--out", tmp_path / "out", "--int8", "--data", stage)
    error_line(result, 4, "pip install onnxruntime")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bf16, int8_fast, expected", [
    (True, True, "bfloat16"),    # bfloat16 units come first: faster still, and closer to float32
    (False, True, "int8"),       # x86 (AVX2 or later) without bfloat16 units: the int8 file
    (False, False, "float32"),   # neither (ARM, or x86 before AVX2): int8 not measured there
])
def test_auto_takes_int8_on_openvino_where_bfloat16_units_are_not(int8_run, tmp_path, monkeypatch, bf16, int8_fast,
                                                                   expected):
    from dsb.network.engines import resolve_precision

    if "openvino" not in ONNX_ENGINES:
        pytest.skip("auto's int8 is OpenVINO's")
    path, _ = int8_run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: bf16)
    monkeypatch.setattr("dsb.network.engines.int8_units", lambda: int8_fast)
    assert resolve_precision("auto", "openvino", path) == expected
    network = open_network(path, CONFIG, "auto", precision="auto")
    assert (network.engine, network.precision) == ("openvino", expected)
    # ONNX Runtime, a folder unknown, no int8 file, or one from another model: float32.
    assert resolve_precision("auto", "onnx", path) == "float32"
    if not bf16:
        assert resolve_precision("auto", "openvino") == "float32"
        bare = tmp_path / "bare"
        shutil.copytree(path, bare)
        (bare / INT8_FILE).unlink()
        assert resolve_precision("auto", "openvino", bare) == "float32"
        assert resolve_precision("auto", "openvino", _swapped(int8_run, tmp_path)) == "float32"
    # Asked outright, a precision is what it says, whatever the CPU.
    for asked in ("float32", "int8"):
        assert resolve_precision(asked, "openvino", path) == asked


def test_auto_in_an_inference_copy_takes_only_the_int8_file_of_its_model(int8_run, tmp_path, monkeypatch):
    from test_engines import _unet_run

    from dsb.network.engines import resolve_precision

    path, stage = int8_run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: False)
    monkeypatch.setattr("dsb.network.engines.int8_units", lambda: True)
    copy = tmp_path / "copy"  # the ONNX files copied without model.keras
    shutil.copytree(path, copy)
    (copy / "model.keras").unlink()
    assert resolve_precision("auto", "openvino", copy) == "int8"
    other, _ = _unet_run(tmp_path / "other", CONFIG, seed=3)
    quantize_onnx(other / ONNX_FILE, copy / INT8_FILE,
                  [np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)])
    assert resolve_precision("auto", "openvino", copy) == "float32"
    # Asked for outright, the foreign file is refused with one line, on either ONNX engine.
    for engine in ONNX_ENGINES:
        with pytest.raises(BadDataError, match="quantised from another model than the model.onnx beside it"):
            open_network(copy, CONFIG, engine, precision="int8")
    result = dsb("predict", copy, "--images", stage, "--out", tmp_path / "s.csv", "--precision", "int8")
    error_line(result, 3, "quantised from another model", f"--out {copy}")
    assert not (tmp_path / "s.csv").exists()
    # An int8 file that does not say which model it came from is refused the same way.
    import onnx

    shutil.copy(path / INT8_FILE, copy / INT8_FILE)
    assert resolve_precision("auto", "openvino", copy) == "int8"
    unsigned = onnx.load(copy / INT8_FILE)
    kept = [p for p in unsigned.metadata_props if p.key != "dsb.model_keras_sha256"]
    del unsigned.metadata_props[:]
    unsigned.metadata_props.extend(kept)
    onnx.save(unsigned, copy / INT8_FILE)
    assert resolve_precision("auto", "openvino", copy) == "float32"
    with pytest.raises(BadDataError, match="quantised from another model"):
        open_network(copy, CONFIG, ONNX_ENGINES[0], precision="int8")
    # What the line advises mends the folder.
    result = dsb("export", path, "--out", copy, "--int8", "--data", stage)
    assert result.exit_code == 0, result.output
    assert resolve_precision("auto", "openvino", copy) == "int8"


def test_the_command_line_says_auto_ran_in_int8(int8_run, tmp_path, monkeypatch):
    if "openvino" not in ONNX_ENGINES:
        pytest.skip("auto's int8 is OpenVINO's")
    path, stage = int8_run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: False)
    monkeypatch.setattr("dsb.network.engines.int8_units", lambda: True)
    result = dsb("predict", path, "--images", stage, "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("(openvino, int8)")


def test_int8_units_reads_the_cpu_flags(monkeypatch, tmp_path):
    from dsb.network import engines

    engines.int8_units.cache_clear()
    try:
        for header, flags, expected in (
                ("flags", "fpu sse avx2 avx512f avx512_vnni", True), ("flags", "fpu sse avx2 avx_vnni", True),
                ("flags", "fpu sse avx2 fma", True),  # AVX2 alone: int8 still about twice float32's speed
                ("flags", "fpu sse sse4_1 sse4_2 avx", False),  # before AVX2
                ("Features", "fp asimd evtstrm aes asimddp", False)):  # ARM names its units otherwise
            info = tmp_path / "cpuinfo"
            info.write_text(f"processor\t: 0\n{header}\t\t: {flags}\n")
            real = Path

            def fake(name, *args, _info=info):
                return _info if str(name) == "/proc/cpuinfo" else real(name, *args)

            monkeypatch.setattr(engines, "Path", fake)
            engines.int8_units.cache_clear()
            assert engines.int8_units() is expected
            monkeypatch.undo()
    finally:
        engines.int8_units.cache_clear()
