"""Inference in bfloat16: OpenVINO on CPUs with bfloat16 units, ``--precision auto`` and its refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import STAGE, dsb, error_line, write_stage

from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.network.engines import (
    bfloat16_units,
    choose_engine,
    engine_installed,
    open_network,
    resolve_precision,
)
from dsb.network.model_folder import ONNX_FILE

pytest.importorskip("tf2onnx", reason="ONNX export on TensorFlow needs tf2onnx")
openvino = pytest.mark.skipif(not engine_installed("openvino"), reason="bfloat16 runs on OpenVINO")
units = pytest.mark.skipif(not bfloat16_units(), reason="this CPU has no bfloat16 units")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_engines import _unet_run

    return _unet_run(tmp_path_factory.mktemp("bfloat16") / "run")


def _hint(network) -> str:
    """The number format OpenVINO compiled the network for: ``f32`` or ``bf16``."""
    return network.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


@pytest.mark.parametrize("has_units", [True, False])
def test_auto_is_bfloat16_on_openvino_where_the_cpu_has_the_units(monkeypatch, has_units):
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: has_units)
    assert resolve_precision("auto", "openvino") == ("bfloat16" if has_units else "float32")
    for engine in ("onnx", "keras"):
        assert resolve_precision("auto", engine) == "float32"
    for asked in ("float32", "bfloat16", "int8"):
        assert resolve_precision(asked, "openvino") == asked


@openvino
@units
def test_bfloat16_computes_in_bfloat16_close_to_float32(run):
    path, _ = run
    from test_engines import CONFIG

    batch = np.random.default_rng(1).random((2, 64, 96, 1), dtype=np.float32)
    exact = open_network(path, CONFIG, "openvino", precision="float32")
    fast = open_network(path, CONFIG, "openvino", precision="bfloat16")
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    assert (_hint(exact), _hint(fast)) == ("f32", "bf16")
    # auto on this CPU is the same network as bfloat16, and streams keep the precision.
    auto = open_network(path, CONFIG, "openvino")
    assert auto.precision == "bfloat16" and _hint(auto) == "bf16"
    assert {s.precision for s in auto.streams()} == {"bfloat16"}
    a, b = exact(batch), fast(batch)
    assert a.shape == b.shape and b.dtype == np.float32
    diff = np.abs(a - b)
    # bfloat16 keeps 8 bits of mantissa: off by a few hundredths at most, but not the float32 network run again.
    assert diff.max() < 0.05 and diff.max() > 1e-6, diff.max()
    np.testing.assert_array_equal(fast(batch), b)  # and the same to the bit, call after call


@openvino
def test_auto_without_the_units_is_float32(run, monkeypatch):
    path, _ = run
    from test_engines import CONFIG

    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: False)
    network = open_network(path, CONFIG, "openvino")
    assert network.precision == "float32" and _hint(network) == "f32"


def test_auto_on_onnx_runtime_and_keras_is_float32(run):
    path, model = run
    from test_engines import CONFIG

    assert open_network(path, CONFIG, "keras", keras_model=model).precision == "float32"
    if engine_installed("onnx"):
        assert open_network(path, CONFIG, "onnx").precision == "float32"


@pytest.mark.parametrize("engine", ["keras", "onnx"])
def test_bfloat16_on_another_engine_is_one_line(run, tmp_path, engine):
    path, _ = run
    stage = write_stage(tmp_path / "stage", {"img_a": STAGE["img_a"]})
    out = tmp_path / "out.csv"
    result = dsb("predict", path, "--images", stage, "--out", out, "--precision", "bfloat16", "--engine", engine)
    error_line(result, 3, "bfloat16", "openvino engine only", repr(engine))
    assert not out.exists()


@openvino
def test_bfloat16_without_the_units_is_one_line(run, tmp_path, monkeypatch):
    path, _ = run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: False)
    stage = write_stage(tmp_path / "stage", {"img_a": STAGE["img_a"]})
    out = tmp_path / "out.csv"
    result = dsb("predict", path, "--images", stage, "--out", out, "--precision", "bfloat16")
    error_line(result, 4, "no bfloat16 units", "--precision float32")
    assert not out.exists()
    with pytest.raises(EnvironmentProblem, match="no bfloat16 units"):
        choose_engine(path, "openvino", "bfloat16")


@openvino
def test_bfloat16_without_model_onnx_says_how_to_write_it(run, tmp_path, monkeypatch):
    import shutil

    path, _ = run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: True)
    copy = tmp_path / "no-onnx"
    shutil.copytree(path, copy)
    (copy / ONNX_FILE).unlink()
    with pytest.raises(BadDataError, match="dsb export"):
        choose_engine(copy, "auto", "bfloat16")
    # auto falls back to what the folder has: Keras, in float32.
    assert choose_engine(copy, "auto", "auto") == "keras"


@openvino
@units
def test_predict_in_bfloat16_writes_a_valid_csv_close_to_float32(run, tmp_path):
    path, _ = run
    stage = write_stage(tmp_path / "stage")
    scores = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.csv"
        result = dsb("predict", path, "--images", stage, "--out", out, "--precision", precision)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith(f"validated (openvino, {precision})"), result.stdout
        assert set(pd.read_csv(out)["ImageId"]) == set(STAGE)
        assert dsb("validate", out, "--images", stage).exit_code == 0
        result = dsb("score", out, "--truth", stage)
        assert result.exit_code == 0, result.output
        scores[precision] = float(result.stdout.strip().splitlines()[-1].split()[-1])
    assert abs(scores["bfloat16"] - scores["float32"]) < 0.1, scores


@openvino
@units
def test_a_block_spec_carries_the_precision_of_a_loaded_model(run):
    import dsb as package
    from dsb.workflows.blocks import _model_spec

    path, _ = run
    assert _model_spec(package.load_model(path, precision="float32")).precision == "float32"
    assert _model_spec(package.load_model(path)).precision == "bfloat16"
    # A folder: each worker at its own default, as `dsb segment --blocks` asks.
    assert _model_spec(str(path)).precision == "auto"


@openvino
@pytest.mark.parametrize("has_units", [True, False])
def test_segment_and_predict_say_what_auto_computed_in(run, tmp_path, monkeypatch, has_units):
    path, _ = run
    monkeypatch.setattr("dsb.network.engines.bfloat16_units", lambda: has_units)
    # The network itself is not opened in bfloat16 without real units: float32 there whatever auto says.
    monkeypatch.setattr("dsb.network.engines.OpenVinoNetwork.__init__", _plain_openvino(has_units))
    stage = write_stage(tmp_path / "stage", {"img_a": STAGE["img_a"]})
    said = "bfloat16" if has_units else "float32"
    result = dsb("predict", path, "--images", stage, "--out", tmp_path / "out.csv")
    assert result.exit_code == 0 and result.stdout.strip().endswith(f"(openvino, {said})"), result.output
    image = sorted(stage.glob("*/images/*.png"))[0]
    result = dsb("segment", image, "--model", path, "--out", tmp_path / "seg")
    assert result.exit_code == 0 and result.stdout.strip().endswith(f"(openvino, {said})"), result.output
    if engine_installed("onnx"):  # auto is float32 on ONNX Runtime, units or not
        result = dsb("segment", image, "--model", path, "--out", tmp_path / "seg", "--engine", "onnx")
        assert result.exit_code == 0 and result.stdout.strip().endswith("(onnx, float32)"), result.output


def _plain_openvino(has_units):
    from dsb.network.engines import OpenVinoNetwork

    real = OpenVinoNetwork.__init__

    def init(self, file, precision="float32"):
        real(self, file, precision if bfloat16_units.__wrapped__() else "float32")
        self.precision = precision

    return init
