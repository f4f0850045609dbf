"""`dsb export`: a run folder stripped to what inference needs, and still usable."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dsb.cli import cli
from dsb.core.config import Config, ModelConfig, TrainConfig, save_config
from dsb.network.model_folder import load_run


def _trained_run(path):
    import keras

    from dsb.network.unet import build_unet, compile_model

    config = Config(model=ModelConfig(depth=2, base_filters=4, dropout=(0.0,)), train=TrainConfig(batch_size=2))
    model = build_unet(config.model)
    compile_model(model, config)
    x = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    model.fit(x, np.concatenate([x > 0.5, x > 0.9, x > 0.95], axis=-1).astype(np.float32), epochs=1, verbose=0)
    path.mkdir()
    model.save(path / "model.keras")
    save_config(config, path / "config.json")
    (path / "manifest.json").write_text("{}")
    (path / "checkpoints").mkdir()
    return path, model, x, keras


def test_export_keeps_predictions_and_drops_optimizer_state(tmp_path):
    run, model, x, keras = _trained_run(tmp_path / "run")
    note = tmp_path / "note.md"
    note.write_text("trained with: dsb train ...")
    out = tmp_path / "default"
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(out), "--note", str(note)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["TRAINING.md", "config.json", "manifest.json", "model.keras",
                                                     "model.onnx"]
    assert (out / "model.keras").stat().st_size < (run / "model.keras").stat().st_size
    exported, config = load_run(out)
    np.testing.assert_allclose(exported.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    assert config == load_run(run)[1]
    assert (out / "TRAINING.md").read_text() == "trained with: dsb train ...\n"


def test_export_of_a_folder_without_a_model_fails_cleanly(tmp_path):
    (tmp_path / "run").mkdir()
    save_config(Config(), tmp_path / "run" / "config.json")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "no model.keras here" in result.stderr
    assert not (tmp_path / "out").exists()


def test_export_onto_the_run_itself_is_refused(tmp_path):
    run, *_ = _trained_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(run)])
    assert result.exit_code == 3
    assert "--out is the run folder itself" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def test_read_manifest_gives_what_training_wrote_or_nothing(tmp_path):
    from dsb.network.model_folder import read_manifest

    assert read_manifest(tmp_path) == {}  # no manifest: a copy made by hand
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert read_manifest(tmp_path) == {}  # not an object
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) == {}
    (tmp_path / "manifest.json").write_text('{"train_groups": ["a"], "seed": 42}')
    assert read_manifest(tmp_path) == {"train_groups": ["a"], "seed": 42}


JAX_EXPORT = """
import sys
import keras
from dsb.core.errors import EnvironmentProblem
from dsb.network.onnx_export import export_onnx

model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3, padding="same")])
try:
    export_onnx(model, sys.argv[1], outputs=("body", "border"))
except EnvironmentProblem as exc:
    print(exc)
"""


def test_onnx_export_under_jax_says_it_needs_tensorflow(tmp_path):
    """Keras on JAX looked for jax2onnx, and the message blamed onnx and tf2onnx, which were installed."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_EXPORT, str(tmp_path / "model.onnx")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ONNX export runs through TensorFlow (tf2onnx), and Keras runs on jax here")
    assert not (tmp_path / "model.onnx").exists()
