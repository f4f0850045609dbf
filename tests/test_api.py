"""The package-top API for notebooks: dsb.segment, load_model, score, rle, submissions."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import dsb
from dsb.core.errors import BadDataError

CENTRES = [(40, 40), (40, 120), (110, 70), (150, 200), (60, 210), (150, 120)]
RADIUS = 14


@pytest.fixture(scope="module")
def grey():
    """Six separate blurred discs, bright on a dark noisy background (as tests/test_default_model.py)."""
    rr, cc = np.indices((200, 260))
    image = np.zeros((200, 260))
    for r, c in CENTRES:
        image[(rr - r) ** 2 + (cc - c) ** 2 <= RADIUS**2] = 1
    image = ndimage.gaussian_filter(image, 1.5) * 180 + 15
    image += np.random.default_rng(0).normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _assert_finds_the_discs(labels):
    assert labels.shape == (200, 260) and labels.dtype == np.int32
    ids = np.unique(labels[labels > 0])
    assert len(ids) == len(CENTRES)
    found = sorted(tuple(np.round(c)) for c in ndimage.center_of_mass(labels > 0, labels, ids))
    np.testing.assert_allclose(found, sorted(CENTRES), atol=2)


@pytest.mark.parametrize(
    "layout",
    [
        lambda g: g,
        lambda g: np.stack([g, g, g], axis=-1),
        lambda g: np.dstack([g, g, g, np.full_like(g, 255)]),
        lambda g: g.astype(np.uint16) * 257,
    ],
    ids=["grey", "rgb", "rgba", "grey16"],
)
def test_segment_finds_the_nuclei_with_the_shipped_model(grey, layout):
    _assert_finds_the_discs(dsb.segment(layout(grey)))


def test_segment_with_the_true_diameter_finds_the_nuclei(grey):
    _assert_finds_the_discs(dsb.segment(grey, diameter=2 * RADIUS))


def test_segment_returns_each_nucleus_confidence_when_asked(grey):
    labels, confidence = dsb.segment(grey, return_confidence=True)
    np.testing.assert_array_equal(labels, dsb.segment(grey))
    assert confidence.shape == (labels.max(),) and confidence.dtype == np.float32
    # Clean bright discs: the shipped model is sure of every one, above the bar it drops nuclei at.
    assert (confidence >= dsb.load_model().config.postprocess.min_confidence).all() and (confidence <= 1).all()


def test_segment_passes_diameter_and_tta_on(grey, monkeypatch):
    seen = {}

    def fake(model, config, raw, *, tta, diameter):
        seen.update(tta=tta, diameter=diameter, shape=raw.shape)
        return np.zeros(raw.shape[:2], np.int32)

    monkeypatch.setattr("dsb.inference.predict.predict_labels", fake)
    dsb.segment(grey, diameter=28, tta=True)
    assert seen == {"tta": True, "diameter": 28, "shape": grey.shape}
    dsb.segment(grey)
    assert seen["diameter"] is None and seen["tta"] is None  # None: the model's predict.tta decides


def test_a_loaded_model_is_reused(grey, monkeypatch):
    from dsb.network import engines as run
    from dsb.network.model_folder import default_model_dir

    calls = []
    load_network = run.load_network
    monkeypatch.setattr(run, "load_network",
                        lambda path, engine, precision: calls.append(path) or load_network(path, engine, precision))
    model = dsb.load_model(str(default_model_dir()))
    assert calls == [str(default_model_dir())]
    assert model.path == default_model_dir() and model.config.predict is not None
    first = dsb.segment(grey, model)
    second = dsb.segment(grey, model=model)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    # The shipped model is loaded once per session, whoever asks for it.
    assert dsb.load_model() is dsb.load_model()


def test_load_model_takes_an_engine_and_keeps_the_keras_model_at_hand(grey):
    from dsb.network.engines import choose_engine
    from dsb.network.model_folder import default_model_dir

    keras_model = dsb.load_model(engine="keras")
    assert keras_model.engine == "keras" and repr(keras_model).endswith("engine='keras')")
    assert dsb.load_model().engine == choose_engine(default_model_dir(), "auto")
    fast = dsb.load_model(precision="float32")  # auto may be bfloat16 here: to the bit only in float32
    assert fast.engine == choose_engine(default_model_dir(), "auto")
    assert fast.keras_model.count_params() == keras_model.keras_model.count_params()
    np.testing.assert_array_equal(dsb.segment(grey, fast), dsb.segment(grey, keras_model))
    with pytest.raises(ValueError, match="`engine` is 'tensorrt'"):
        dsb.load_model(engine="tensorrt")


def test_load_model_says_what_is_wrong_with_a_folder(tmp_path):
    with pytest.raises(BadDataError, match="run folder not found"):
        dsb.load_model(tmp_path / "missing")
    with pytest.raises(BadDataError, match="no config.json"):
        dsb.load_model(tmp_path)
    with pytest.raises(TypeError, match="`path` must be"):
        dsb.load_model(3)


@pytest.mark.parametrize(
    "image, model, error, words",
    [
        (np.zeros((8, 8, 5), np.uint8), None, TypeError, "`image` (shape (8, 8, 5))"),
        (np.zeros(8, np.uint8), None, TypeError, "must be (H, W)"),
        (np.zeros((0, 8), np.uint8), None, ValueError, "has no pixels"),
        (np.array([["a"]]), None, TypeError, "dtype"),
        (np.zeros((8, 8), np.uint8), 42, TypeError, "`model` must be"),
    ],
)
def test_segment_rejects_what_it_cannot_take(image, model, error, words):
    with pytest.raises(error) as caught:
        dsb.segment(image, model)
    assert words in str(caught.value)


# ---------------------------------------------------------------- score


def test_score_by_hand():
    true = np.zeros((6, 6), np.int32)
    true[0:2, 0:2] = 1  # matched exactly
    true[4:6, 4:6] = 2  # missed: one FN
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:2] = 7
    pred[0:2, 4:6] = 3  # nothing there: one FP
    # At every threshold TP 1, FP 1, FN 1.
    assert dsb.score(pred, true) == pytest.approx(1 / 3)
    # One perfect match plus one FP: 1 / 2 at every threshold.
    assert dsb.score(pred, np.where(true == 1, 1, 0)) == pytest.approx(1 / 2)
    assert dsb.score(true, true) == 1.0
    assert dsb.score(np.zeros((3, 3), int), np.zeros((3, 3), int)) == 1.0


def test_score_counts_an_iou_at_a_threshold_as_a_miss():
    true = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 1, 0]])
    # IoU 3/4 is above 0.50 ... 0.70 (5 thresholds) and not above 0.75 ... 0.95.
    assert dsb.score(pred, true) == pytest.approx(0.5)


def test_score_names_its_arguments():
    with pytest.raises(ValueError, match=r"`pred_labels` \(shape \(2, 2\)\).*`true_labels` \(shape \(3, 3\)\)"):
        dsb.score(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(TypeError, match=r"`true_labels` \(dtype float64\) must hold integers"):
        dsb.score(np.zeros((2, 2), int), np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"`pred_labels` \(shape \(4,\)\) must be 2-D"):
        dsb.score(np.zeros(4, int), np.zeros((2, 2), int))


def test_score_submission_from_a_frame_and_a_file(tmp_path):
    truth = {"a": np.array([[1, 1, 0], [0, 0, 2]]), "b": np.array([[0, 1], [0, 1]])}
    # Image a: object 1 (pixels 1 and 3, column-major) found, object 2 missed -> 1/2;
    # image b has no row -> 0.
    rows = pd.DataFrame({"ImageId": ["a"], "EncodedPixels": ["1 1 3 1"]})
    mean, table = dsb.score_submission(rows, truth)
    assert mean == pytest.approx(0.25)
    assert table["ImageId"].tolist() == ["a", "b"] and table["score"].tolist() == [0.5, 0.0]
    path = dsb.write_submission(rows, tmp_path / "sub.csv")
    assert dsb.score_submission(path, truth)[0] == pytest.approx(0.25)
    assert dsb.score_submission(str(path), truth)[0] == pytest.approx(0.25)


def test_score_submission_against_a_solution_csv(tmp_path):
    solution = tmp_path / "solution.csv"
    solution.write_text("ImageId,EncodedPixels,Height,Width\na,1 1 3 1,2,3\na,6 1,2,3\n")
    rows = pd.DataFrame({"ImageId": ["a", "a"], "EncodedPixels": ["1 1 3 1", "6 1"]})
    assert dsb.score_submission(rows, solution)[0] == 1.0


def test_score_submission_rejects_what_it_cannot_take():
    truth = {"a": np.zeros((2, 2), int)}
    with pytest.raises(ValueError, match="no column EncodedPixels"):
        dsb.score_submission(pd.DataFrame({"ImageId": ["a"]}), truth)
    with pytest.raises(BadDataError, match="unknown ImageId 'z'"):
        dsb.score_submission(pd.DataFrame({"ImageId": ["z"], "EncodedPixels": [""]}), truth)
    with pytest.raises(TypeError, match="`submission` must be"):
        dsb.score_submission(3, truth)
    with pytest.raises(TypeError, match="`truth` must be"):
        dsb.score_submission(pd.DataFrame({"ImageId": [], "EncodedPixels": []}), 3)


# ---------------------------------------------------------------- rle and submissions


def test_rle_round_trip_against_a_hand_written_encoding():
    mask = np.array(
        [
            [1, 0, 0],
            [1, 0, 1],
            [0, 0, 1],
        ],
        bool,
    )
    # Column-major, 1-based: column 0 holds pixels 1-3, column 1 pixels 4-6, column 2 pixels 7-9.
    assert dsb.rle_encode(mask) == "1 2 8 2"
    np.testing.assert_array_equal(dsb.rle_decode("1 2 8 2", (3, 3)), mask)
    assert dsb.rle_encode(np.zeros((2, 2), bool)) == ""


def test_submission_round_trip(tmp_path):
    rows = pd.DataFrame({"ImageId": ["a", "a", "b"], "EncodedPixels": ["1 2", "5 1", ""]})
    path = dsb.write_submission(rows, tmp_path / "sub.csv")
    assert path.read_text() == "ImageId,EncodedPixels\na,1 2\na,5 1\nb,\n"
    pd.testing.assert_frame_equal(dsb.read_submission(path), rows)


# ---------------------------------------------------------------- the package top


def test_all_is_exactly_the_public_names():
    assert sorted(dsb.__all__) == sorted(
        ["segment", "load_model", "segment_blocks", "measure", "score", "score_submission", "rle_encode", "rle_decode",
         "read_submission", "write_submission"]
    )
    for name in dsb.__all__:
        assert callable(getattr(dsb, name)), name
        assert getattr(dsb, name).__doc__, name
    assert set(dsb.__all__) <= set(dir(dsb))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        dsb.nothing_here  # noqa: B018


def test_segment_stays_the_function_after_every_submodule_is_imported():
    from dsb.api import segment

    for info in pkgutil.iter_modules(dsb.__path__):
        if info.name != "__main__":
            importlib.import_module(f"dsb.{info.name}")
    assert dsb.segment is segment
    from dsb import segment as imported

    assert imported is segment


def test_import_dsb_loads_no_keras_and_no_pandas():
    code = "import dsb, sys; print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_model_that_learnt_from_one_channel_names_it_when_none_is_given(grey, tmp_path):
    """dsb train --channel keeps the channel in the run's config; dsb.segment does not pick it for a
    multi-channel image, but warns and names it."""
    import json
    import shutil

    from dsb.network.model_folder import default_model_dir

    folder = tmp_path / "picked"
    shutil.copytree(default_model_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["preprocess"]["channel"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    model = dsb.load_model(folder)
    two = np.dstack([np.full_like(grey, 60), grey])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        dsb.segment(two, model, diameter=2 * RADIUS)
    assert any("learnt from channel 1" in str(w.message) and "give channel=1" in str(w.message) for w in said)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_finds_the_discs(dsb.segment(two, model, diameter=2 * RADIUS, channel=1))
        dsb.segment(grey, model, diameter=2 * RADIUS)  # a grey image has no channel to pick
