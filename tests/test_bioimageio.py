"""dsb.workflows.bioimageio: a model folder as a bioimage.io model package that validates offline and reproduces."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys

import numpy as np
import pytest
import tifffile
from conftest import CONFIG, make_threshold_run
from PIL import Image

from dsb.core.config import save_config
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.preprocess import preprocess_image
from dsb.network.model_folder import default_model_dir, load_run
from dsb.workflows.bioimageio import (
    PACKAGE_FILES,
    _dump_rdf,
    export_bioimageio,
    synthetic_image,
)

TRAINING = """# How it was trained

Ten epochs on discs.

```sh
# not a heading: a shell comment
dsb train --out runs/x
```
"""


def _export(model_dir, out_dir, **kwargs):
    """Export, skipping where this machine has no ONNX converter (dsb's ONNX export needs onnx and tf2onnx)."""
    try:
        return export_bioimageio(model_dir, out_dir, **kwargs)
    except EnvironmentProblem as exc:
        if "ONNX export needs" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny thresholding model of conftest, with a TRAINING.md."""
    run = make_threshold_run(tmp_path_factory.mktemp("bmz") / "run")
    (run / "TRAINING.md").write_text(TRAINING)
    return run


@pytest.fixture(scope="module")
def package(run_dir):
    return _export(run_dir, run_dir.parent / "package")


@pytest.fixture(scope="module")
def unet_package(tmp_path_factory):
    """The package of the model shipped in dsb/models/default: a real, trained U-Net."""
    try:
        model_dir = default_model_dir()
    except EnvironmentProblem as exc:
        pytest.skip(str(exc))
    return _export(model_dir, tmp_path_factory.mktemp("bmz-unet") / "package")


@pytest.fixture(params=["package", "unet_package"])
def any_package(request):
    return request.getfixturevalue(request.param)


def _rdf(package) -> dict:
    text = (package / "rdf.yaml").read_text()
    try:
        import yaml
    except ImportError:
        return json.loads(text)
    return yaml.safe_load(text)


def _file_entries(node):
    """Every {source, sha256} in the RDF."""
    if isinstance(node, dict):
        if "source" in node:
            yield node
        for value in node.values():
            yield from _file_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _file_entries(value)


def test_package_holds_its_files_each_with_its_sha256(package):
    assert sorted(p.name for p in package.iterdir()) == sorted(PACKAGE_FILES)
    rdf = _rdf(package)
    entries = list(_file_entries(rdf))
    assert sorted(e["source"] for e in entries) == sorted(set(PACKAGE_FILES) - {"rdf.yaml"})
    for entry in entries:
        assert entry["sha256"] == hashlib.sha256((package / entry["source"]).read_bytes()).hexdigest(), entry
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert rdf["name"] == "dsb nucleus U-Net" and rdf["license"] == "MIT"
    assert set(rdf["weights"]) == {"keras_v3", "onnx"}  # keras_hdf5 is for HDF5 files, not Keras 3 .keras
    assert rdf["weights"]["keras_v3"]["source"] == "model.keras"
    assert rdf["weights"]["onnx"]["parent"] == "keras_v3"
    assert "10.1038/s41592-019-0612-7" in [c.get("doi") for c in rdf["cite"]]  # the DSB2018 data set
    assert "git_repo" not in rdf
    # The package is a dsb model folder too.
    assert load_run(package)[1] == CONFIG


def test_rdf_declares_the_axes_sizes_and_the_expressible_preprocessing(package):
    rdf = _rdf(package)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert inp["id"] == "image" and out["id"] == "probabilities"
    assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
    assert [a.get("id") for a in inp["axes"][1:3]] == ["y", "x"]
    assert all(a["size"] == {"min": 16, "step": 16} for a in inp["axes"][1:3])
    assert len(inp["axes"][3]["channel_names"]) == 1 and inp["data"]["type"] == "float32"
    assert [p["id"] for p in inp["preprocessing"]] == ["scale_range", "clip"]
    kwargs = inp["preprocessing"][0]["kwargs"]
    assert (kwargs["min_percentile"], kwargs["max_percentile"]) == (
        CONFIG.preprocess.percentile_low, CONFIG.preprocess.percentile_high)
    assert inp["preprocessing"][1]["kwargs"] == {"min": 0.0, "max": 1.0}
    assert [a["size"] for a in out["axes"][1:3]] == [
        {"tensor_id": "image", "axis_id": "y"}, {"tensor_id": "image", "axis_id": "x"}]
    assert out["axes"][3]["channel_names"] == list(CONFIG.model.outputs) == ["body", "border", "contact"]
    assert out["data"] == {"type": "float32", "range": [0.0, 1.0]}


def test_test_output_is_the_keras_output_for_exactly_the_test_input(any_package):
    model, config = load_run(any_package)
    x, y = np.load(any_package / "test_input.npy"), np.load(any_package / "test_output.npy")
    assert x.dtype == y.dtype == np.float32
    assert x.shape == (1, 128, 128, 1) and y.shape == (1, 128, 128, len(config.model.outputs))
    # The deterministic synthetic image of discs, through dsb's preprocessing.
    expected = preprocess_image(synthetic_image(config.preprocess.diameter, 128), config.preprocess)
    np.testing.assert_array_equal(x[0, :, :, 0], expected)
    assert expected.min() == 0 and expected.max() == 1
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)), y, atol=1e-6)
    assert 0 <= y.min() and y.max() <= 1 and y[..., 0].max() > 0.5 > y[..., 0].min()
    # The sample tensors (TIFF, for viewers) are the same arrays.
    np.testing.assert_array_equal(tifffile.imread(any_package / "sample_input.tif"), x[0, :, :, 0])
    np.testing.assert_array_equal(tifffile.imread(any_package / "sample_output.tif"), y[0])


def test_the_onnx_weights_reproduce_the_test_output(any_package):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(any_package / "model.onnx"), providers=["CPUExecutionProvider"])
    x, y = np.load(any_package / "test_input.npy"), np.load(any_package / "test_output.npy")
    (got,) = session.run(None, {"image": x})
    assert np.abs(got - y).max() < 1e-4


def test_validates_with_bioimageio_spec_offline(any_package, tmp_path, monkeypatch):
    cache = tmp_path / "bioimageio-cache"
    cache.mkdir()
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(cache))
    spec = pytest.importorskip("bioimageio.spec")
    monkeypatch.setattr(spec.settings, "cache_path", cache)
    reached = []

    def no_network(*args, **kwargs):
        reached.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    descr = spec.load_description(any_package / "rdf.yaml", perform_io_checks=True)
    summary = descr.validation_summary
    # Without bioimageio.core (which runs the weights) "valid-format" is the best status there is.
    assert summary.status == "valid-format", summary.format_md()
    assert type(descr).__name__ == "ModelDescr"
    assert summary.details and all(d.status == "passed" and not d.errors for d in summary.details)
    warnings = [w.msg for d in summary.details for w in d.warnings]
    # The one expected warning: no author names a GitHub user (checking one would need the network).
    assert all("github_user" in w for w in warnings), warnings
    assert reached == [] and list(cache.iterdir()) == []


def test_readme_says_what_the_network_does_and_that_the_watershed_is_separate(package):
    text = (package / "README.md").read_text()
    assert "watershed" in text and "not part of" in text.replace("\n", " ")
    assert "`dsb segment" in text and "dsb.segment" in text
    for name in CONFIG.model.outputs:
        assert f"`{name}`" in text
    for words in ("polarity", "scale_range", "20 pixels", "0.5th percentile", "99.8th", "## Validation", "MIT",
                  "2018 Data Science Bowl", "doi:10.1038/s41592-019-0612-7"):
        assert words in text, words
    # TRAINING.md is copied, its headings under "## Training", its code untouched.
    assert "### How it was trained\n\nTen epochs on discs." in text
    assert "\n# not a heading: a shell comment\n" in text


def test_cover_shows_the_input_beside_the_body_probability(package):
    cover = np.asarray(Image.open(package / "cover.png"))
    assert cover.ndim == 3 and cover.shape[2] == 3 and cover.shape[1] == 2 * cover.shape[0] >= 256
    left, right = cover[:, : cover.shape[1] // 2], cover[:, cover.shape[1] // 2 :]
    body = np.load(package / "test_output.npy")[0, :, :, 0] > 0.9
    zoom = cover.shape[0] // body.shape[0]
    body = np.repeat(np.repeat(body, zoom, 0), zoom, 1)
    # Grey on the left; magenta over the nuclei on the right, the background unchanged.
    assert (left[..., 0] == left[..., 1]).all()
    assert (right[body][:, 0].astype(int) - right[body][:, 1] > 60).all()
    np.testing.assert_array_equal(right[~body & (left[..., 0] < 30)], left[~body & (left[..., 0] < 30)])


def test_rdf_is_json_when_pyyaml_is_missing(monkeypatch):
    rdf = {"name": "x", "inputs": [{"axes": [{"type": "batch"}]}], "tags": ["a"]}
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert json.loads(_dump_rdf(rdf)) == rdf


def test_a_folder_with_other_files_is_refused_and_kept(run_dir, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("mine too")
    with pytest.raises(BadDataError, match="holds more than a bioimage.io package"):
        export_bioimageio(run_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt"]
    with pytest.raises(BadDataError, match="model folder itself"):
        export_bioimageio(run_dir, run_dir)


def test_a_model_folder_without_model_keras_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    save_config(CONFIG, tmp_path / "run" / "config.json")
    with pytest.raises(BadDataError, match="no model.keras"):
        export_bioimageio(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_earlier_package_is_replaced_and_the_folders_onnx_used_only_when_it_matches(package, run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    shutil.copy(package / "model.onnx", run / "model.onnx")  # exported from this model.keras
    out = shutil.copytree(package, tmp_path / "package")
    _export(run, out)
    assert (out / "model.onnx").read_bytes() == (run / "model.onnx").read_bytes()
    # Another model.keras: the folder's model.onnx is stale and a new one is exported.
    model, _ = load_run(run)
    model.layers[-1].set_weights([w * 0.5 for w in model.layers[-1].get_weights()])
    model.save(run / "model.keras")
    _export(run, out)
    assert (out / "model.onnx").read_bytes() != (run / "model.onnx").read_bytes()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x, y = np.load(out / "test_input.npy"), np.load(out / "test_output.npy")
    assert np.abs(session.run(None, {"image": x})[0] - y).max() < 1e-4


def test_a_given_sample_is_preprocessed_and_cropped_to_the_size_step(run_dir, tmp_path):
    sample = np.full((100, 70), 20, np.uint8)
    sample[30:50, 20:40] = 200
    out = _export(run_dir, tmp_path / "package", sample=sample)
    x = np.load(out / "test_input.npy")
    assert x.shape == (1, 96, 64, 1)
    np.testing.assert_array_equal(x[0, :, :, 0], preprocess_image(sample, CONFIG.preprocess)[2:98, 3:67])
    with pytest.raises(BadDataError, match="at least 16x16"):
        export_bioimageio(run_dir, tmp_path / "small", sample=np.zeros((12, 40), np.uint8))


def test_readme_names_the_core_channel_and_its_marker_rule():
    import dataclasses

    from dsb.workflows.bioimageio import _readme

    model = dataclasses.replace(CONFIG.model, outputs=("body", "border", "contact", "core"))
    config = CONFIG.replace(model=model, postprocess=dataclasses.replace(CONFIG.postprocess, core_threshold=0.5))
    text = _readme(config, 16, None)
    assert "| 3 | `core` | probability that the pixel lies in the inner part of a nucleus" in text
    assert "and core over 0.5," in text
    ignored = _readme(config.replace(postprocess=CONFIG.postprocess), 16, None)
    assert "`core`" in ignored and "core over" not in ignored


def test_readme_gives_the_diameter_the_run_predicts_at():
    import dataclasses

    from dsb.core.config import PreprocessConfig
    from dsb.workflows.bioimageio import _readme

    config = CONFIG.replace(preprocess=dataclasses.replace(CONFIG.preprocess, diameter=20.0))
    assert "median nucleus is 20 pixels across" in _readme(config, 16, None)
    larger = config.replace(predict=dataclasses.replace(config.predict, scale_factor=1.25))
    assert "median nucleus is 25 pixels across" in _readme(larger, 16, None)
    flat = larger.replace(preprocess=PreprocessConfig(diameter=0.0))
    assert "is 1.25 times the size the training images had across" in _readme(flat, 16, None)


def test_readme_and_rdf_name_the_channel_a_run_learnt_from():
    import dataclasses

    from collections import defaultdict

    from dsb.workflows.bioimageio import _rdf, _readme

    picked = CONFIG.replace(preprocess=dataclasses.replace(CONFIG.preprocess, channel=1))
    assert "channel 1 (counted from 0) of multi-channel images" in _readme(picked, 16, None)
    assert "channel 1" not in _readme(CONFIG, 16, None)
    digests = defaultdict(lambda: "0" * 64)  # every file's digest
    for config, channel in ((picked, 1), (CONFIG, None)):
        rdf = _rdf(config, digests, step=16, keras_info=("3", "tensorflow", "2"), opset=17, tags=[])
        assert rdf["config"]["dsb"]["preprocess"]["channel"] == channel
