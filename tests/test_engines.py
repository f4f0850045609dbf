"""Inference engines: ONNX export, ONNX Runtime and OpenVINO against Keras, and their failures."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import dsb, error_line, write_stage

from dsb.core.config import Config, ModelConfig, PredictConfig, save_config
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.network.engines import (
    AUTO_ORDER,
    KerasNetwork,
    accelerator,
    choose_engine,
    engine_installed,
    open_network,
    shape_ladder,
)
from dsb.network.model_folder import (
    ONNX_FILE,
    check_onnx,
    file_digest,
    read_onnx_metadata,
)
from dsb.network.onnx_export import export_onnx

pytest.importorskip("tf2onnx", reason="ONNX export on TensorFlow needs tf2onnx")
ONNX_ENGINES = [e for e in ("onnx", "openvino") if engine_installed(e)]
CONFIG = Config(
    model=ModelConfig(depth=3, base_filters=4, dropout=(0.0,)),
    predict=PredictConfig(tile_size=64, overlap=32, context=8, batch_size=2),
)


def _unet_run(path, config=CONFIG, seed=0):
    """A run folder with a small random U-Net (batch norm with non-trivial statistics) and its ONNX file."""
    import keras

    from dsb.network.unet import build_unet

    keras.utils.set_random_seed(seed)
    model = build_unet(config.model)
    for layer in model.layers:  # move the batch-norm statistics off their defaults
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            rng = np.random.default_rng(seed)
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    save_config(config, path / "config.json")
    export_onnx(model, path / ONNX_FILE, outputs=config.model.outputs, source=path / "model.keras")
    return path, model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _unet_run(tmp_path_factory.mktemp("engines") / "run")


def test_export_names_the_tensors_and_records_the_outputs_and_source(run):
    path, _ = run
    meta = read_onnx_metadata(path / ONNX_FILE)
    assert meta["dsb.outputs"] == "body,border,contact"
    assert meta["dsb.model_keras_sha256"] == file_digest(path / "model.keras")
    check_onnx(path / ONNX_FILE, ("body", "border", "contact"), path / "model.keras")


@pytest.mark.parametrize("engine", ONNX_ENGINES)
@pytest.mark.parametrize("shape", [(1, 32, 32, 1), (3, 48, 80, 1), (2, 128, 64, 1)])
def test_engines_agree_with_keras_within_1e_4(run, engine, shape):
    path, model = run
    batch = np.random.default_rng(1).random(shape, dtype=np.float32)
    network = open_network(path, CONFIG, engine, precision="float32")
    assert network.engine == engine and network.precision == "float32"
    expected = KerasNetwork(model)(batch)
    got = network(batch)
    assert got.shape == expected.shape == shape[:3] + (3,)
    assert np.abs(got - expected).max() < 1e-4
    # Not the trivial agreement of a constant network.
    assert expected.std() > 1e-3


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="streams need 2 cores or more")
@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_streams_give_the_same_probabilities_to_the_bit(run, monkeypatch, engine):
    import threading

    path, _ = run
    network = open_network(path, CONFIG, engine)
    batches = [np.random.default_rng(i).random((1, 48 + 16 * i, 64, 1), dtype=np.float32) for i in range(4)]
    expected = [network(batch) for batch in batches]
    streams = network.streams()
    assert len(streams) >= 2  # on the 2 or more cores of every test machine
    assert all(s is not network and s.engine == engine for s in streams)
    assert network.streams() is streams  # opened once
    # Each stream on its own thread, at the same time.
    got = {}

    def work(i, stream):
        got[i] = [stream(batch) for batch in batches]

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(streams)
    for outputs in got.values():
        for a, b in zip(outputs, expected):
            np.testing.assert_array_equal(a, b)
    # One core: nothing to gain from streams.
    monkeypatch.setattr("dsb.network.engines.usable_cores", lambda: 1)
    single = open_network(path, CONFIG, engine)
    assert single.streams() == [single]


def test_keras_runs_one_call_at_a_time(run):
    path, model = run
    network = open_network(path, CONFIG, "keras", keras_model=model)
    assert network.streams() == [network]


def test_auto_takes_the_first_installed_engine_that_has_a_file(run, tmp_path, monkeypatch):
    path, _ = run
    installed = [e for e in AUTO_ORDER if engine_installed(e)]
    assert choose_engine(path, "auto") == installed[0]
    keras_only = tmp_path / "keras-only"
    shutil.copytree(path, keras_only)
    (keras_only / ONNX_FILE).unlink()
    assert choose_engine(keras_only, "auto") == "keras"
    monkeypatch.setattr("dsb.network.engines.engine_installed", lambda e: e != "openvino")
    assert choose_engine(path, "auto") == "onnx"


def test_auto_takes_keras_where_its_backend_sees_a_gpu(run, tmp_path, monkeypatch):
    path, _ = run
    monkeypatch.setattr("dsb.network.engines.accelerator", lambda: "cuda:0")
    assert choose_engine(path, "auto") == "keras"
    # int8 runs on the ONNX engines only, GPU or not.
    folder = tmp_path / "int8"
    shutil.copytree(path, folder)
    shutil.copy(folder / ONNX_FILE, folder / "model.int8.onnx")
    assert choose_engine(folder, "auto", "int8") == AUTO_ORDER[0] or not ONNX_ENGINES
    # A folder without model.keras keeps an ONNX engine.
    (folder / "model.keras").unlink()
    assert choose_engine(folder, "auto") in ONNX_ENGINES or not ONNX_ENGINES


def test_no_gpu_is_seen_without_an_nvidia_device(monkeypatch):
    import builtins
    import glob

    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        assert name.split(".")[0] not in ("tensorflow", "jax", "torch"), f"imported {name} to look for a GPU"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    assert accelerator() is None


def test_shape_ladder_holds_each_side_in_at_most_half_again_its_pixels():
    assert [shape_ladder(n) for n in (1, 64, 65, 96, 97, 128, 129, 200, 1024, 1025)] == [
        64, 64, 96, 96, 128, 128, 192, 256, 1024, 1536]
    sides = np.arange(1, 3000)
    rungs = np.array([shape_ladder(int(n), 16) for n in sides])
    assert (rungs >= sides).all() and (rungs % 16 == 0).all()
    assert (rungs[sides >= 64] <= 1.5 * sides[sides >= 64] + 16).all()
    assert len(set(rungs)) <= 16  # a few shapes for every side up to 3000
    # Rounded up to the network's multiple.
    assert shape_ladder(70, 64) == 128
    with pytest.raises(ValueError, match="side"):
        shape_ladder(0)


def test_padded_shapes_crop_back_and_change_only_the_padded_edges(run):
    _, model = run
    rng = np.random.default_rng(3)
    batch = rng.random((3, 80, 112, 1), dtype=np.float32)
    exact = KerasNetwork(model, pad_shapes=False)(batch)
    padded_network = KerasNetwork(model, pad_shapes=True, multiple=CONFIG.model.size_multiple())
    calls = []
    real = model.predict_on_batch
    model.predict_on_batch = lambda x: calls.append(x.shape) or real(x)
    try:
        padded = padded_network(batch)
        again = padded_network(rng.random((4, 70, 128, 1), dtype=np.float32))
    finally:
        del model.predict_on_batch
    assert calls == [(4, 96, 128, 1), (4, 96, 128, 1)]  # one compiled shape for both
    assert padded.shape == exact.shape and again.shape == (4, 70, 128, 3)
    # The top-left, out of the reach of the padding, is the same; the bottom and right edges move.
    reach = 24
    np.testing.assert_allclose(padded[:, : 80 - reach, : 112 - reach], exact[:, : 80 - reach, : 112 - reach], atol=1e-5)
    assert np.abs(padded - exact).max() > 1e-6
    # A batch already on the ladder is not changed at all.
    on = rng.random((2, 64, 96, 1), dtype=np.float32)
    np.testing.assert_allclose(padded_network(on), KerasNetwork(model, pad_shapes=False)(on), atol=1e-6)


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_the_csvs_of_every_engine_score_the_same(run, tmp_path, engine):
    path, _ = run
    stage = write_stage(tmp_path / "stage")
    scores = {}
    for name in ("keras", engine):
        out = tmp_path / f"{name}.csv"
        result = dsb("predict", path, "--images", stage, "--out", out, "--engine", name, "--precision", "float32")
        assert result.exit_code == 0, result.output
        result = dsb("score", out, "--truth", stage)
        assert result.exit_code == 0, result.output
        scores[name] = result.stdout.strip().splitlines()[-1]
    assert scores[engine] == scores["keras"]
    keras_rows = pd.read_csv(tmp_path / "keras.csv").fillna("")
    assert keras_rows.equals(pd.read_csv(tmp_path / f"{engine}.csv").fillna(""))


def _copy(run, tmp_path, name):
    path, _ = run
    target = tmp_path / name
    shutil.copytree(path, target)
    return target


@pytest.mark.parametrize("engine", ["auto", *ONNX_ENGINES])
@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"not an onnx file at all, just text\n" * 10,
        lambda data: b"",
    ],
    ids=["truncated", "text", "empty"],
)
def test_a_damaged_onnx_file_is_one_line_and_exit_3(run, tmp_path, engine, damage):
    model_dir = _copy(run, tmp_path, "damaged")
    onnx_path = model_dir / ONNX_FILE
    onnx_path.write_bytes(damage(onnx_path.read_bytes()))
    stage = write_stage(tmp_path / "stage")
    result = dsb("predict", model_dir, "--images", stage, "--out", tmp_path / "out.csv", "--engine", engine)
    error_line(result, 3, ONNX_FILE)
    assert not (tmp_path / "out.csv").exists()


def test_an_onnx_file_from_another_model_is_refused(run, tmp_path):
    model_dir = _copy(run, tmp_path, "mismatched")
    other, _ = _unet_run(tmp_path / "other", seed=1)
    shutil.copy(other / ONNX_FILE, model_dir / ONNX_FILE)
    stage = write_stage(tmp_path / "stage")
    result = dsb("segment", *sorted(stage.glob("*/images/*.png")), "--model", model_dir, "--out", tmp_path / "seg")
    line = error_line(result, 3, ONNX_FILE, "another model")
    assert "export it again" in line


def test_an_onnx_file_with_other_outputs_is_refused(run, tmp_path):
    model_dir = _copy(run, tmp_path, "two-outputs")
    config = CONFIG.replace(model=ModelConfig(depth=3, base_filters=4, dropout=(0.0,), outputs=("body", "border")))
    save_config(config, model_dir / "config.json")
    with pytest.raises(BadDataError, match="outputs"):
        open_network(model_dir, config, "auto")


def test_a_missing_onnx_file_for_an_onnx_engine_is_one_line(run, tmp_path):
    model_dir = _copy(run, tmp_path, "no-onnx")
    (model_dir / ONNX_FILE).unlink()
    stage = write_stage(tmp_path / "stage")
    result = dsb("predict", model_dir, "--images", stage, "--out", tmp_path / "out.csv", "--engine", "onnx")
    error_line(result, 3, "no model.onnx", "dsb export")


def test_an_engine_that_is_not_installed_is_one_line_and_exit_4(run, tmp_path, monkeypatch):
    path, _ = run
    monkeypatch.setattr("dsb.network.engines.engine_installed", lambda e: e == "keras")
    stage = write_stage(tmp_path / "stage")
    result = dsb("predict", path, "--images", stage, "--out", tmp_path / "out.csv", "--engine", "openvino")
    error_line(result, 4, "openvino", "not installed", "pip install openvino")
    with pytest.raises(EnvironmentProblem, match="onnxruntime"):
        choose_engine(path, "onnx")
    assert choose_engine(path, "auto") == "keras"


def test_metadata_reader_refuses_what_is_not_onnx(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(bytes([0x08, 0x07, 0x12]))  # a varint field, then a length that runs off the end
    with pytest.raises(BadDataError, match="not an ONNX model"):
        read_onnx_metadata(bad)
    bad.write_bytes(bytes([0x08, 0x07]))  # a valid protobuf message with no graph
    with pytest.raises(BadDataError, match="no graph"):
        read_onnx_metadata(bad)


def test_export_writes_model_onnx_beside_model_keras(run, tmp_path):
    path, _ = run
    out = tmp_path / "exported"
    result = dsb("export", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / ONNX_FILE).is_file()
    check_onnx(out / ONNX_FILE, CONFIG.model.outputs, out / "model.keras")
    assert choose_engine(out, "auto") in AUTO_ORDER[:2] or not ONNX_ENGINES


def test_export_drops_the_empty_crops_after_each_transposed_convolution(run, tmp_path, monkeypatch):
    """The Slice and Pad tf2onnx puts after each 2x2 stride-2 transposed convolution change nothing:
    without them the file gives the same probabilities to the bit, and has no shape arithmetic left."""
    import onnx
    import onnxruntime

    import dsb.network.onnx_export as onnx_export

    path, model = run
    graph = onnx.load(str(path / ONNX_FILE)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("ConvTranspose") == CONFIG.model.depth - 1
    assert not {"Slice", "Pad", "Shape"} & set(ops)

    monkeypatch.setattr(onnx_export, "drop_empty_crops", lambda graph: 0)
    raw_path = export_onnx(model, tmp_path / "raw.onnx", outputs=CONFIG.model.outputs)
    raw_ops = [node.op_type for node in onnx.load(str(raw_path)).graph.node]
    assert raw_ops.count("Slice") >= 1 and raw_ops.count("Pad") == CONFIG.model.depth - 1
    lean = onnxruntime.InferenceSession(str(path / ONNX_FILE), providers=["CPUExecutionProvider"])
    raw = onnxruntime.InferenceSession(str(raw_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 32, 32, 1), (2, 48, 80, 1), (1, 136, 64, 1)]:
        batch = np.random.default_rng(shape[1]).random(shape, dtype=np.float32)
        np.testing.assert_array_equal(lean.run(None, {"image": batch})[0], raw.run(None, {"image": batch})[0])


def test_a_transposed_convolution_that_overlaps_keeps_its_crop():
    """Only a kernel as long as its stride gives exactly stride x input: a 3x3 kernel of stride 2
    does not, so the crop after it stays, and so do the nodes that feed it."""
    import onnx
    from onnx import TensorProto, helper

    from dsb.network.onnx_export import drop_empty_crops

    def graph(kernel):
        weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, kernel, kernel], [1.0] * kernel * kernel)
        consts = [helper.make_tensor(name, TensorProto.INT64, [len(v)], v)
                  for name, v in (("starts", [0, 0]), ("ends", [8, 8]), ("axes", [2, 3]), ("pads", [0] * 8))]
        nodes = [
            helper.make_node("ConvTranspose", ["x", "w"], ["up"], kernel_shape=[kernel, kernel], strides=[2, 2]),
            helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["cropped"]),
            helper.make_node("Pad", ["cropped", "pads"], ["padded"]),
            helper.make_node("Relu", ["padded"], ["y"]),
        ]
        return helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [weight, *consts],
        )

    overlapping = graph(3)
    assert drop_empty_crops(overlapping) == 0
    assert [n.op_type for n in overlapping.node] == ["ConvTranspose", "Slice", "Pad", "Relu"]
    exact = graph(2)
    assert drop_empty_crops(exact) == 1
    assert [n.op_type for n in exact.node] == ["ConvTranspose", "Relu"]
    assert [t.name for t in exact.initializer] == ["w"]
    onnx.checker.check_graph(exact)
