"""Scale normalisation: nuclei of any size reach the network at its diameter, labels come back whole."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_discs
from scipy import ndimage

from dsb.cli import cli
from dsb.core.config import Config, PredictConfig, PreprocessConfig
from dsb.inference.labels import labels_to_shape
from dsb.inference.predict import predict_nuclei, predict_scaled
from dsb.inference.scale import ESTIMATE_WATERSHED, choose_scale, median_diameter, nucleus_diameters, zoom_for
from dsb.inference.watershed import labels_from_probabilities
from dsb.kaggle.metric import image_score
from dsb.training.cache import cache_path
from dsb.training.loader import TargetSpec, augment_crop, contact_widths, make_targets

CANONICAL = 20.0
CONFIG = Config(
    preprocess=PreprocessConfig(diameter=CANONICAL),
    predict=PredictConfig(tile_size=512, overlap=16, batch_size=4),  # whole images: the fake sees whole nuclei
)


def size_tuned_network(batch: np.ndarray) -> np.ndarray:
    """Stands in for a network that knows nuclei up to twice CANONICAL pixels across.

    Body wherever the input is bright, border the ring within 2 pixels of the
    background; a bright region wider than 2 * CANONICAL gets a cross of border
    through its centre, so that a nucleus much bigger than the network knows
    comes out in four pieces (as a real network trained at one scale does).
    """
    out = np.zeros(batch.shape[:3] + (3,), np.float32)
    for k, image in enumerate(batch[..., 0]):
        body = image > 0.5
        border = body & ~ndimage.binary_erosion(body, iterations=2)
        regions, _ = ndimage.label(body)
        for index, (rows, cols) in enumerate(ndimage.find_objects(regions), start=1):
            if min(rows.stop - rows.start, cols.stop - cols.start) > 2 * CANONICAL:
                mid_r, mid_c = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
                border[mid_r - 1 : mid_r + 2, cols] |= regions[mid_r - 1 : mid_r + 2, cols] == index
                border[rows, mid_c - 1 : mid_c + 2] |= regions[rows, mid_c - 1 : mid_c + 2] == index
        out[k, ..., 0] = body
        out[k, ..., 1] = border
    return out


def grid_of_discs(shape, radius, spacing):
    centres = [(r, c) for r in range(spacing // 2, shape[0] - radius, spacing)
               for c in range(spacing // 2, shape[1] - radius, spacing)]
    return make_discs(shape, centres, radius)


def image_of(labels):
    return np.where(labels > 0, 220, 10).astype(np.uint8)


def test_diameters_are_equivalent_circle_diameters():
    labels = make_discs((200, 200), ((50, 50), (140, 140)), 30)
    d = nucleus_diameters(labels)
    assert d.shape == (2,)
    # A digital disc of radius 30 has about pi * 30^2 pixels: diameter about 60.
    np.testing.assert_allclose(d, 60.0, rtol=0.02)
    assert np.isnan(median_diameter(np.zeros((4, 4), np.int32)))


def test_zoom_takes_nuclei_to_the_canonical_diameter():
    assert zoom_for(60.0, 20.0) == pytest.approx(1 / 3)
    assert zoom_for(5.0, 20.0) == 4.0
    assert zoom_for(0.0, 20.0) == 1.0 and zoom_for(30.0, 0.0) == 1.0


def test_training_crops_show_nuclei_at_the_canonical_size():
    labels = grid_of_discs((600, 600), 40, 120)  # diameter about 80
    rng = np.random.default_rng(0)
    zoom = zoom_for(median_diameter(labels), CANONICAL)
    x, y = augment_crop(image_of(labels), labels, rng, crop_size=128,
                        targets=TargetSpec(border_width=2, contact_width=2), zoom=zoom)
    crop_labels, _ = ndimage.label(y[..., 0] > 0.5)
    whole = [d for d, lab in zip(nucleus_diameters(crop_labels), range(1, crop_labels.max() + 1))
             if not _touches_edge(crop_labels == lab)]
    assert whole, "the crop should hold whole nuclei"
    assert np.median(whole) == pytest.approx(CANONICAL, rel=0.15)
    assert x.shape == (128, 128, 1) and y.shape == (128, 128, 3)


def _touches_edge(mask):
    return mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()


def test_contact_target_marks_where_two_nuclei_meet_only():
    alone = make_discs((40, 40), ((20, 20),), 8)
    assert make_targets(alone, border_width=2, contact_width=2)[..., 2].sum() == 0
    pair = make_discs((40, 60), ((20, 20), (20, 37)), 8)  # 1-pixel gap between the discs
    contact = make_targets(pair, border_width=2, contact_width=2)[..., 2] > 0
    assert contact.any()
    assert (contact & (pair == 0)).any(), "the gap between the nuclei belongs to the contact zone"
    assert not contact[:, :8].any() and not contact[:, 52:].any(), "far sides of the nuclei are not contact"


def test_contact_channel_keeps_touching_nuclei_apart():
    pair = make_discs((40, 60), ((20, 20), (20, 35)), 8)  # overlapping: one blob
    body = (pair > 0).astype(np.float32)
    no_border = np.zeros_like(body)
    contact = make_targets(pair, border_width=2, contact_width=2)[..., 2]
    merged = labels_from_probabilities(np.stack([body, no_border], -1))
    split = labels_from_probabilities(np.stack([body, no_border, contact], -1))
    assert merged.max() == 1 and split.max() == 2


def _square(shape, *boxes) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = i + 1
    return labels


def test_each_nucleus_gets_a_contact_width_from_its_own_size():
    # Squares of 6, 18 and 40 px: equivalent diameters 6.8, 20.3 and 45.1.
    labels = _square((100, 100), (2, 8, 2, 8), (10, 28, 10, 28), (40, 80, 40, 80))
    assert contact_widths(labels, 0.1, 4).tolist() == [0, 1, 2, 4]
    assert contact_widths(labels, 0.1, 3).tolist() == [0, 1, 2, 3], "capped"
    assert contact_widths(labels, 0.01, 4).tolist() == [0, 1, 1, 1], "at least one pixel"
    # A 40-px nucleus three quarters outside the crop: 10x40 px left, 22.6 px by area, a 40-px cut.
    cut = _square((60, 60), (0, 10, 10, 50))
    assert contact_widths(cut, 0.1, 8).tolist() == [0, 4]
    assert contact_widths(np.pad(cut, 1), 0.1, 8).tolist() == [0, 2], "away from the edge: by its area"
    # A 8x48 rod whose end touches the edge: an 8-px cut, 22 px by area.
    assert contact_widths(_square((60, 60), (0, 48, 20, 28)), 0.1, 8).tolist() == [0, 2]


def test_a_contact_band_that_follows_size_is_the_fixed_band_at_the_canonical_size():
    pair = make_discs((40, 60), ((20, 20), (20, 40)), 10)  # discs of 21 px, touching
    fixed = make_targets(pair, border_width=2, contact_width=2)
    sized = make_targets(pair, border_width=2, contact_width=2, contact_scale=2 / CANONICAL)
    assert fixed[..., 2].any()
    np.testing.assert_array_equal(sized, fixed)


def test_a_contact_band_that_follows_size_is_as_wide_as_the_smaller_nucleus_allows():
    small_large = _square((60, 100), (25, 31, 20, 26), (10, 50, 27, 67))  # 6-px nucleus, 1 px from a 40-px one
    large_large = _square((60, 100), (10, 50, 5, 45), (10, 50, 47, 87))  # two 40-px nuclei 2 px apart
    field = np.hstack([small_large, np.where(large_large > 0, large_large + 2, 0)])
    sized = make_targets(field, border_width=2, contact_width=2, contact_scale=0.1)[..., 2]
    # Left half: the band of the smaller, 1 px; right half: 4 px (0.1 x 45, capped at 2 x 2).
    expected = np.hstack([make_targets(small_large, border_width=2, contact_width=1)[..., 2],
                          make_targets(large_large, border_width=2, contact_width=4)[..., 2]])
    np.testing.assert_array_equal(sized, expected)
    fixed = make_targets(field, border_width=2, contact_width=2)[..., 2]
    small = field == 1
    assert (sized * small).sum() < (fixed * small).sum(), "the small nucleus keeps more of its body"
    assert sized[:, 100:].sum() > fixed[:, 100:].sum(), "the large pair gets a wider band"


def test_contact_scale_comes_from_the_config():
    assert PreprocessConfig().contact_scale == 0.0
    assert PreprocessConfig(contact_follows_size=True, contact_width=3, diameter=30.0).contact_scale == 0.1
    # Targets are made per crop: the prepared cache is the same.
    assert cache_path("data", PreprocessConfig(contact_follows_size=True)) == cache_path("data", PreprocessConfig())
    with pytest.raises(ValueError, match="contact_scale"):
        make_targets(make_discs(), border_width=2, contact_width=2, contact_scale=-0.1)
    with pytest.raises(ValueError, match="needs `contact_width`"):
        make_targets(make_discs(), border_width=2, contact_scale=0.1)


@pytest.mark.parametrize(("radius", "spacing"), [(38, 110), (12, 40)])
def test_the_diameter_is_estimated_and_the_labels_come_back_at_full_resolution(radius, spacing):
    truth = grid_of_discs((440, 440), radius, spacing)
    found = predict_nuclei(size_tuned_network, CONFIG, image_of(truth))
    assert found.estimated
    assert found.diameter == pytest.approx(median_diameter(truth), rel=0.2)
    assert found.labels.shape == truth.shape
    assert found.labels.max() == truth.max()
    assert image_score(truth, found.labels).score > 0.8


def test_large_nuclei_are_cut_up_without_scale_normalisation():
    truth = grid_of_discs((440, 440), 38, 110)
    flat = CONFIG.replace(preprocess=PreprocessConfig(diameter=0.0))
    fixed = predict_nuclei(size_tuned_network, flat, image_of(truth))
    assert fixed.scale == 1.0 and np.isnan(fixed.diameter)
    assert fixed.labels.max() > 1.5 * truth.max()  # what the estimate is for


def test_a_given_diameter_is_used_as_it_is():
    truth = grid_of_discs((300, 300), 30, 90)
    scaled = predict_scaled(size_tuned_network, CONFIG, image_of(truth), diameter=60.0)
    assert not scaled.estimated
    assert scaled.scale == pytest.approx(CANONICAL / 60.0)
    assert scaled.probabilities.shape[:2] == (100, 100)


def test_the_scale_stays_within_the_configured_bounds():
    truth = grid_of_discs((200, 200), 6, 30)
    scaled = predict_scaled(size_tuned_network, CONFIG, image_of(truth), diameter=2.5)
    assert scaled.scale == CONFIG.predict.max_scale


def test_a_large_upscaled_image_is_segmented_in_chunks_like_a_whole_one(monkeypatch):
    from dsb.inference import predict

    truth = grid_of_discs((300, 300), 5, 25)
    whole = predict_nuclei(size_tuned_network, CONFIG, image_of(truth), diameter=10.0)
    monkeypatch.setattr(predict, "_CHUNK", 128)  # many chunks instead of one
    monkeypatch.setattr(predict, "_CHUNK_MARGIN", 48)
    chunked = predict_nuclei(size_tuned_network, CONFIG, image_of(truth), diameter=10.0)
    assert chunked.labels.max() == whole.labels.max() == truth.max()
    assert image_score(truth, chunked.labels).score == pytest.approx(image_score(truth, whole.labels).score, abs=0.02)
    # Each nucleus's confidence, measured in the chunk that keeps it, as in the whole image.
    assert chunked.confidence.shape == whole.confidence.shape == (truth.max(),)
    np.testing.assert_allclose(np.sort(chunked.confidence), np.sort(whole.confidence), atol=0.01)


def graded_network(batch: np.ndarray) -> np.ndarray:
    """Stands in for a network whose body probability is the input's brightness itself: a dim
    nucleus is one it is less sure of. Border: the 2-pixel ring of the bright part."""
    out = np.zeros(batch.shape[:3] + (3,), np.float32)
    for k, image in enumerate(batch[..., 0]):
        bright = image > 0.5
        out[k, ..., 0] = image
        out[k, ..., 1] = bright & ~ndimage.binary_erosion(bright, iterations=2)
    return out


@pytest.mark.parametrize("diameter", [CANONICAL, CANONICAL / 2, CANONICAL * 2])
def test_each_nucleus_confidence_is_its_mean_body_probability(diameter):
    from dsb.inference.predict import _network_input
    from dsb.inference.watershed import nucleus_confidence

    radius = int(diameter // 2)
    truth = make_discs((8 * radius, 8 * radius), ((2 * radius, 2 * radius), (5 * radius, 6 * radius)), radius)
    image = np.select([truth == 1, truth == 2], [240, 150], 10).astype(np.uint8)
    nuclei = predict_nuclei(graded_network, CONFIG, image, diameter=diameter)
    assert nuclei.labels.max() == 2 and nuclei.confidence.shape == (2,)
    body = np.squeeze(_network_input(image, CONFIG))  # what the network says, at the image's own scale
    if diameter == CANONICAL:  # seen as it is: the mean over each nucleus's pixels, exactly
        np.testing.assert_array_equal(nuclei.confidence, nucleus_confidence(nuclei.labels, body))
    bright, dim = nuclei.labels[2 * radius, 2 * radius], nuclei.labels[5 * radius, 6 * radius]
    # Resampled, each nucleus's mean stays near the plateau of its brightness, a little under it where
    # the enlargement softened its edge.
    plateau = np.array([np.median(body[ndimage.binary_erosion(truth == k, iterations=2)]) for k in (1, 2)])
    found = nuclei.confidence[[bright - 1, dim - 1]]
    assert (found <= plateau + 0.01).all() and (found >= plateau - 0.1).all(), (found, plateau)
    assert nuclei.confidence[bright - 1] > nuclei.confidence[dim - 1] + 0.2

    # The drop of unsure nuclei goes by the same measure: what is kept is at least as sure as it asks.
    strict = dataclasses.replace(CONFIG, postprocess=dataclasses.replace(
        CONFIG.postprocess, min_confidence=float(nuclei.confidence.mean())))
    kept = predict_nuclei(graded_network, strict, image, diameter=diameter)
    assert kept.labels.max() == 1 and kept.labels[2 * radius, 2 * radius] == 1
    assert kept.confidence[0] == pytest.approx(nuclei.confidence[bright - 1])


def test_labels_to_shape_keeps_every_label_that_survives_and_numbers_them():
    lab = np.zeros((10, 10), np.int32)
    lab[0, 0] = 1  # one pixel: vanishes at a quarter of the size
    lab[4:10, 4:10] = 2
    small = labels_to_shape(lab, (3, 3))
    assert set(np.unique(small)) == {0, 1}


@pytest.mark.parametrize("value", ["-3", "0", "abc", "1e9", "nan"])
@pytest.mark.parametrize("command", ["predict", "segment", "evaluate"])
def test_bad_diameter_is_one_usage_line(tmp_path, command, value):
    target = {"predict": ["--images", str(tmp_path)], "segment": [str(tmp_path), "--out", str(tmp_path / "o")],
              "evaluate": [str(tmp_path), "--data", str(tmp_path)]}[command]
    result = CliRunner().invoke(cli, [command, *target, "--diameter", value])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--diameter" in lines[0] and "nucleus diameter" in lines[0], result.stderr


def test_every_estimate_window_has_one_shape_and_the_estimate_costs_little():
    from dsb.inference.preprocess import preprocess_image
    from dsb.inference.scale import choose_scale

    shapes = []

    def recording(batch):
        shapes.append(batch.shape[1:3])
        return size_tuned_network(batch)

    side = CONFIG.predict.estimate_size // CONFIG.model.size_multiple() * CONFIG.model.size_multiple()
    # Two large images of different sizes and nucleus diameters.
    for shape, radius, spacing in (((900, 700), 8, 30), ((760, 1000), 14, 50)):
        shapes.clear()
        gray = preprocess_image(image_of(grid_of_discs(shape, radius, spacing)), CONFIG.preprocess)
        chosen = choose_scale(recording, CONFIG, gray)
        assert chosen.diameter == pytest.approx(2 * radius, rel=0.2)
        assert set(shapes) == {(side, side)} and len(shapes) == chosen.passes
        # What the estimate looked at, against what the prediction will.
        assert len(shapes) * side**2 < 0.25 * shape[0] * shape[1] * chosen.scale**2


@pytest.mark.parametrize(
    ("source", "target"),
    [((512, 680), (1567, 2081)), ((256, 256), (360, 360)), ((520, 696), (218, 292)), ((519, 161), (343, 106)),
     ((37, 300), (12, 99)), ((5, 7), (12, 18)), ((1, 9), (3, 4)), ((40, 30), (20, 90)), ((64, 64), (64, 64))],
)
def test_resampling_computes_what_skimage_resize_does(source, target):
    # The separable version replaces skimage's resize on the prediction path for speed: same figures.
    from skimage.transform import resize

    from dsb.inference.resample import resample_to

    image = np.random.default_rng(sum(source)).random(source, dtype=np.float32)
    expected = resize(image, target, order=1, anti_aliasing=None, preserve_range=True)
    got = resample_to(image, target)
    assert got.shape == target and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_resample_scales_both_sides_and_keeps_a_flat_image_flat():
    from dsb.inference.resample import resample

    flat = np.full((50, 80), 0.25, np.float32)
    for scale in (0.3, 1.7, 3.06):
        out = resample(flat, scale)
        assert out.shape == (round(50 * scale), round(80 * scale))
        np.testing.assert_allclose(out, 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        resample(np.zeros((4, 4, 2), np.float32), 2.0)


def test_the_estimate_window_is_the_brightest_on_its_grid():
    from dsb.inference.scale import _window

    rng = np.random.default_rng(3)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(30, 400, 2))
        side = int(rng.integers(8, 200))
        gray = (rng.random((height, width)) * (rng.random((height, width)) < 0.2)).astype(np.float32)
        window = _window(gray, side)
        sh, sw = min(side, height), min(side, width)
        if 2 * sh * sw >= height * width:
            assert window is gray
            continue
        rows = np.unique(np.linspace(0, height - sh, max(1, 4 * height // sh)).astype(int))
        cols = np.unique(np.linspace(0, width - sw, max(1, 4 * width // sw)).astype(int))
        sums = np.array([[gray[r : r + sh, c : c + sw].sum(dtype=np.float64) for c in cols] for r in rows])
        r, c = np.unravel_index(np.argmax(sums), sums.shape)
        assert window.shape == (sh, sw)
        np.testing.assert_array_equal(window, gray[rows[r] : rows[r] + sh, cols[c] : cols[c] + sw])


def _counting_watersheds(monkeypatch):
    """Record ``(shape, settings, finish)`` of every watershed the estimate (dsb.inference.scale) and
    the way back to the image's grid (dsb.inference.labels) run."""
    from dsb.inference import labels as labels_module
    from dsb.inference import scale as scale_module

    calls = []
    counted = scale_module.labels_from_probabilities

    def counting(prob, config=None, **kwargs):
        calls.append((prob.shape, config, kwargs.get("finish", True)))
        return counted(prob, config, **kwargs)

    monkeypatch.setattr(scale_module, "labels_from_probabilities", counting)
    monkeypatch.setattr(labels_module, "labels_from_probabilities", counting)
    return calls


# A run whose post-processing is the estimate's own watershed (as the shipped model's is).
ESTIMATE_CONFIG = CONFIG.replace(postprocess=dataclasses.replace(ESTIMATE_WATERSHED, split_ratio=1.5))


def test_the_estimate_pass_that_saw_the_whole_image_serves_its_watershed_too(monkeypatch):
    from dsb.inference import predict
    from dsb.inference.labels import labels_at_scale

    truth = grid_of_discs((200, 200), 12, 40)  # small enough to be estimated whole
    calls = _counting_watersheds(monkeypatch)
    gray = predict._network_input(image_of(truth), ESTIMATE_CONFIG)
    passes = choose_scale(size_tuned_network, ESTIMATE_CONFIG, gray).passes
    calls.clear()
    found = predict_nuclei(size_tuned_network, ESTIMATE_CONFIG, image_of(truth))
    assert found.estimated and passes >= 1
    assert len(calls) == passes  # one watershed per estimate pass, none again for the prediction
    scaled = predict_scaled(size_tuned_network, ESTIMATE_CONFIG, image_of(truth))
    again = labels_at_scale(scaled.probabilities, scaled.scale, truth.shape, ESTIMATE_CONFIG.postprocess)
    assert again.max() == truth.max()
    np.testing.assert_array_equal(found.labels, again)


def test_unsure_nuclei_are_dropped_from_the_estimate_pass_without_a_second_flood(monkeypatch):
    # min_confidence, like the split, works on the estimate's labels: no watershed runs again.
    from dsb.inference import predict
    from dsb.inference.labels import labels_at_scale

    truth = grid_of_discs((200, 200), 12, 40)
    image = image_of(truth)
    image[(truth > 0) & (truth % 2 == 0)] = 130  # every other disc dim ...

    def unsure_of_dim_nuclei(batch):  # ... and the network unsure of it
        out = size_tuned_network(batch)
        out[..., 0] *= np.where(batch[..., 0] > 0.8, 1.0, 0.7)
        return out

    run = CONFIG.replace(postprocess=dataclasses.replace(ESTIMATE_CONFIG.postprocess, min_confidence=0.8))
    calls = _counting_watersheds(monkeypatch)
    gray = predict._network_input(image, run)
    passes = choose_scale(unsure_of_dim_nuclei, run, gray).passes
    calls.clear()
    found = predict_nuclei(unsure_of_dim_nuclei, run, image)
    assert len(calls) == passes  # the estimate's watersheds only
    assert found.labels.max() == (np.unique(truth[truth > 0]) % 2 == 1).sum()  # the bright discs
    assert not found.labels[(truth > 0) & (truth % 2 == 0)].any()  # nothing where a dim one lies
    scaled = predict_scaled(unsure_of_dim_nuclei, run, image)
    np.testing.assert_array_equal(
        found.labels, labels_at_scale(scaled.probabilities, scaled.scale, truth.shape, run.postprocess))
    every = predict_nuclei(unsure_of_dim_nuclei, ESTIMATE_CONFIG, image)
    assert every.labels.max() == truth.max() and every.diameter == found.diameter


def test_a_tuned_run_floods_the_estimate_pass_again_with_its_own_settings(monkeypatch):
    from dsb.inference import predict
    from dsb.inference.labels import labels_at_scale

    truth = grid_of_discs((200, 200), 12, 40)
    tuned = CONFIG.replace(postprocess=dataclasses.replace(ESTIMATE_WATERSHED, marker_threshold=0.3,
                                                           min_marker_size=1, split_ratio=1.5))
    calls = _counting_watersheds(monkeypatch)
    gray = predict._network_input(image_of(truth), tuned)
    passes = choose_scale(size_tuned_network, tuned, gray).passes
    calls.clear()
    found = predict_nuclei(size_tuned_network, tuned, image_of(truth))
    # The estimate's passes with its own watershed, then one with the run's on the same probabilities.
    assert [config for _, config, _ in calls] == [ESTIMATE_WATERSHED] * passes + [tuned.postprocess]
    scaled = predict_scaled(size_tuned_network, tuned, image_of(truth))
    np.testing.assert_array_equal(
        found.labels, labels_at_scale(scaled.probabilities, scaled.scale, truth.shape, tuned.postprocess))
    assert found.labels.max() == truth.max()


def test_the_estimate_does_not_follow_the_runs_post_processing():
    """``dsb tune`` scores post-processing at the scales the estimate chose: settings that also moved
    the estimate would be judged at scales that prediction does not use. A run whose watershed keeps
    nothing of the discs (every nucleus under min_size) still reads their size."""
    from dsb.inference import predict

    truth = grid_of_discs((300, 300), 12, 40)
    blind = CONFIG.replace(postprocess=dataclasses.replace(CONFIG.postprocess, min_size=100_000))
    gray = predict._network_input(image_of(truth), CONFIG)
    own, other = choose_scale(size_tuned_network, CONFIG, gray), choose_scale(size_tuned_network, blind, gray)
    assert math.isfinite(own.diameter) and own.diameter == pytest.approx(25, rel=0.2)
    assert (other.scale, other.diameter, other.sure) == (own.scale, own.diameter, own.sure)
    assert predict_nuclei(size_tuned_network, blind, image_of(truth)).labels.max() == 0  # the run's own watershed


def _passes(n):
    import dataclasses

    return dataclasses.replace(CONFIG, predict=dataclasses.replace(CONFIG.predict, diameter_passes=n))


def test_the_image_is_predicted_at_the_scale_the_last_pass_suggests():
    from dsb.inference import predict

    truth = grid_of_discs((440, 440), 6, 24)  # 12-pixel nuclei: the network wants them 1.7 times larger
    gray = predict._network_input(image_of(truth), CONFIG)
    chosen = choose_scale(size_tuned_network, _passes(1), gray)
    assert chosen.passes == 2  # the one pass, and the cross-check at half the scale
    assert chosen.sure and chosen.agreement == pytest.approx(1, abs=0.2)
    # Not the scale the one pass ran at (1.0), but the one it measured.
    assert chosen.scale == pytest.approx(CANONICAL / median_diameter(truth), rel=0.2)
    assert chosen.diameter == pytest.approx(median_diameter(truth), rel=0.2)
    found = predict_nuclei(size_tuned_network, _passes(1), image_of(truth))
    assert found.labels.max() == truth.max()


def test_a_window_too_small_for_its_nuclei_earns_one_more_pass():
    from dsb.inference import predict

    # 76-pixel nuclei: the network sees each in four pieces at scale 1, and a 192-pixel window holds
    # few whole; a second pass at the scale the pieces suggest sees them whole.
    truth = grid_of_discs((440, 440), 38, 110)
    gray = predict._network_input(image_of(truth), CONFIG)
    chosen = choose_scale(size_tuned_network, _passes(1), gray)
    assert chosen.passes == 3  # two passes and the cross-check at half the scale
    assert chosen.diameter == pytest.approx(median_diameter(truth), rel=0.2)
    # Nuclei of the network's own size need no second pass, only the cross-check.
    small = grid_of_discs((440, 440), 10, 40)
    assert choose_scale(size_tuned_network, _passes(1), predict._network_input(image_of(small), CONFIG)).passes == 2


def _too_large(body: np.ndarray) -> np.ndarray:
    """The pixels of ``body`` in regions wider than 1.5 CANONICAL: too large for the stand-ins to see whole."""
    regions, n = ndimage.label(body)
    extent = np.zeros(n + 1, bool)
    for index, (rows, cols) in enumerate(ndimage.find_objects(regions), start=1):
        extent[index] = max(rows.stop - rows.start, cols.stop - cols.start) > 1.5 * CANONICAL
    return extent[regions]


def texture_network(batch: np.ndarray) -> np.ndarray:
    """Stands in for a network that reads any bright region wider than 1.5 CANONICAL as pieces of
    about CANONICAL pixels, at every scale: the texture inside a nucleus far larger than the
    nuclei it was trained on, which a real network takes for many nuclei of its own size, and is
    unsure of (body probability 0.7 there, against 1 in nuclei it knows)."""
    out = np.zeros(batch.shape[:3] + (3,), np.float32)
    for k, image in enumerate(batch[..., 0]):
        body = image > 0.5
        large = _too_large(body)
        rr, cc = np.indices(body.shape)
        grid = (rr % CANONICAL < 2) | (cc % CANONICAL < 2)
        out[k, ..., 0] = np.where(large, 0.7, 1.0) * body
        out[k, ..., 1] = (body & ~ndimage.binary_erosion(body, iterations=2)) | (large & grid)
    return out


@pytest.mark.parametrize("radius", [10, 35, 55])
def test_the_cross_check_finds_nuclei_far_larger_than_the_network_knows(radius):
    """A pass at the image's scale reads 110-pixel nuclei as 20-pixel pieces; the look at half
    the scale sees the pieces grow and moves until the nuclei read the same twice."""
    config = dataclasses.replace(CONFIG, predict=dataclasses.replace(CONFIG.predict, min_scale=0.1))
    truth = grid_of_discs((8 * radius, 8 * radius), radius, int(2.8 * radius))
    image = image_of(truth)
    chosen = choose_scale(texture_network, config, predict_input(image, config))
    assert chosen.diameter == pytest.approx(median_diameter(truth), rel=0.25)
    assert chosen.sure
    found = predict_nuclei(texture_network, config, image)
    assert found.labels.max() == truth.max()
    assert image_score(truth, found.labels).score > 0.8


def hazy_network(batch: np.ndarray) -> np.ndarray:
    """:func:`texture_network`, unsure (0.7) also of the outer fifth of the regions it sees whole: at
    every scale a third of each nucleus in doubt, as a real network is of carpets of cells that
    it reads as large blobs when it looks coarse."""
    out = texture_network(batch)
    for k, image in enumerate(batch[..., 0]):
        body = out[k, ..., 0] == 1.0
        regions, n = ndimage.label(body)
        depth = ndimage.distance_transform_edt(body)
        deepest = np.concatenate([[1.0], ndimage.maximum(depth, regions, np.arange(1, n + 1))])
        out[k, ..., 0] = np.where(body & (depth < 0.2 * deepest[regions]), 0.7, out[k, ..., 0])
    return out


def test_a_coarse_reading_the_network_still_doubts_is_taken_but_not_sure():
    """Carpets of small cells can read as large nuclei at coarse scales; what tells them from whole
    large nuclei is that the network stays unsure of them there. The move is made (stained tissue
    enlarged three times reads the same way) but the image is flagged."""
    from dsb.inference.scale import CROSS_CHECK_MAX_DOUBT, _doubt

    config = dataclasses.replace(CONFIG, predict=dataclasses.replace(CONFIG.predict, min_scale=0.1))
    truth = grid_of_discs((440, 440), 55, 154)
    gray = predict_input(image_of(truth), config)
    whole = resample_input(gray, CANONICAL / median_diameter(truth))
    assert _doubt(hazy_network(whole[None, ..., None])[0]) > CROSS_CHECK_MAX_DOUBT
    hazy = choose_scale(hazy_network, config, gray)
    assert hazy.diameter == pytest.approx(median_diameter(truth), rel=0.25)
    assert not hazy.sure
    clear = choose_scale(texture_network, config, gray)
    assert clear.diameter == pytest.approx(hazy.diameter, rel=0.05) and clear.sure


def grain_network(batch: np.ndarray) -> np.ndarray:
    """Stands in for a network that reads a bright region wider than 1.5 CANONICAL as the pieces
    its inner grain (darker lines) cuts it into, unsure of them (body 0.7), and a smaller region
    whole and sure: the grain is the image's, so the pieces measure the same at every scale
    where the network still sees them as pieces, as a real network reads the chromatin of
    nuclei four or more times its size."""
    out = np.zeros(batch.shape[:3] + (3,), np.float32)
    for k, image in enumerate(batch[..., 0]):
        body = image > 0.3
        large = _too_large(body)
        out[k, ..., 0] = np.where(large, 0.7, 1.0) * body
        out[k, ..., 1] = (body & ~ndimage.binary_erosion(body, iterations=2)) | (large & (image < 0.85))
    return out


def grained_image(truth: np.ndarray, spacing: int = 20) -> np.ndarray:
    """Nuclei (220) with lines of grain (140) every ``spacing`` pixels across them, on 10."""
    rr, cc = np.indices(truth.shape)
    grain = (rr % spacing < 3) | (cc % spacing < 3)
    return np.where(truth > 0, np.where(grain, 140, 220), 10).astype(np.uint8)


def test_nuclei_that_are_pieces_even_at_half_the_scale_are_found_a_quarter_down():
    """110-pixel nuclei read as 17-pixel pieces at the image's scale and again at half of it, so
    the cross-check agrees with the pieces; the look at a quarter sees them whole, the network
    far surer, and a look at an eighth agrees: the estimate moves there and stays sure."""
    from dsb.inference import scale

    config = dataclasses.replace(CONFIG, predict=dataclasses.replace(CONFIG.predict, min_scale=0.1))
    truth = grid_of_discs((480, 480), 55, 150)
    gray = predict_input(grained_image(truth), config)
    chosen = choose_scale(grain_network, config, gray)
    assert chosen.diameter == pytest.approx(median_diameter(truth), rel=0.25)
    assert chosen.sure
    found = predict_nuclei(grain_network, config, grained_image(truth))
    assert found.labels.max() == truth.max()
    # Without the look a quarter down, the pieces are taken for the nuclei, and called sure.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scale, "WHOLE_DOUBT", math.inf)
        pieces = choose_scale(grain_network, config, gray)
    assert pieces.diameter < 0.3 * median_diameter(truth) and pieces.sure


def scripted_looks(readings: dict):
    """A stand-in for one look of the estimate: the (diameter in the image's pixels, doubt) that a
    real network read at each scale, taken from the nearest scale of ``readings``."""

    def measure(model, config, gray, scale):
        nearest = min(readings, key=lambda at: abs(math.log(at / scale)))
        return (*readings[nearest], None)

    return measure


def script(monkeypatch, readings: dict, nesting=(math.nan, math.nan)):
    """The estimate run on scripted looks (:func:`scripted_looks`), and on a scripted ``(peak, pieces)``
    of how the coarse reading's nuclei hold the first's (``dsb.inference.scale._nesting``)."""
    from dsb.inference import scale

    monkeypatch.setattr(scale, "_measure", scripted_looks(readings))
    monkeypatch.setattr(scale, "_nesting", lambda *args: nesting)


# (diameter, doubt) by scale, as two networks of the shipped recipe read them (tests use the readings,
# not the networks): 72-pixel touching synthetic nuclei read as their 11-pixel texture at first; a
# held-out brightfield carpet of 16-pixel cells, and one of 12-pixel cells.
TEXTURE_72 = {1.0: (10.8, 0.342), 0.5: (74.9, 0.088), 0.25: (75.5, 0.090), 0.125: (81.7, 0.152),
              0.0625: (434.8, 0.295)}
CARPET_16 = {1.0: (14.2, 1.065), 0.5: (40.3, 0.809), 0.25: (143.8, 0.283), 0.125: (150.0, 0.254)}
CARPET_12 = {1.0: (13.2, 0.833), 0.5: (58.4, 0.513), 0.25: (128.2, 0.217), 0.125: (140.4, 0.273),
             0.0625: (164.5, 0.452)}


def test_a_coarse_reading_the_network_is_clear_about_replaces_texture(monkeypatch):
    """Whole large nuclei, seen at half the scale with little doubt and confirmed a quarter down,
    replace a first reading of their texture, even where the doubt fell only to 0.26 of the
    first; brightfield carpets, which the network doubts at every coarse look, are read as
    before (the coarse move flagged unsure, or the first reading kept and flagged)."""
    from dsb.inference import scale

    gray = np.zeros((640, 640), np.float32)
    shipped = scale.CLEAR_DOUBT
    script(monkeypatch, TEXTURE_72)
    chosen = choose_scale(None, CONFIG, gray)
    assert chosen.diameter == pytest.approx(74.9) and chosen.sure
    monkeypatch.setattr(scale, "CLEAR_DOUBT", -1.0)  # without the rule: the texture, unsure
    old = choose_scale(None, CONFIG, gray)
    assert old.diameter == pytest.approx(10.8) and not old.sure

    for readings, diameter in ((CARPET_16, 143.8), (CARPET_12, 13.2)):
        script(monkeypatch, readings)
        for clear in (shipped, -1.0):
            monkeypatch.setattr(scale, "CLEAR_DOUBT", clear)
            carpet = choose_scale(None, CONFIG, gray)
            assert carpet.diameter == pytest.approx(diameter) and not carpet.sure


# A fluorescence image of 37-pixel nuclei enlarged 3 times (a held-out image), as the network of the
# eleventh run read it: pieces at first, then larger and larger merges until two looks agree on
# blobs of 362 pixels, doubted little at the last.
MERGES_362 = {1.0: (10.7, 3.027), 0.5: (32.5, 1.561), 0.25: (70.4, 0.578), 0.125: (362.1, 0.367),
              0.0625: (392.2, 0.193)}


def test_a_reading_past_the_largest_nucleus_prediction_can_bring_is_not_sure(monkeypatch):
    """Beyond READING_CEILING times preprocess.diameter / predict.min_scale, prediction runs at
    min_scale whatever the reading says: the reading is kept but never called sure."""
    from dsb.inference import scale

    gray = np.zeros((640, 640), np.float32)
    shipped = scale.READING_CEILING
    script(monkeypatch, MERGES_362)
    chosen = choose_scale(None, CONFIG, gray)
    assert chosen.diameter == pytest.approx(362.1) and not chosen.sure
    assert chosen.scale == pytest.approx(CONFIG.predict.min_scale)
    monkeypatch.setattr(scale, "READING_CEILING", math.inf)  # without the rule: the same reading, sure
    assert choose_scale(None, CONFIG, gray).sure
    # A reading within the ceiling is judged by the cross-check as before.
    monkeypatch.setattr(scale, "READING_CEILING", shipped)
    script(monkeypatch, TEXTURE_72)
    assert choose_scale(None, CONFIG, gray).sure


# A held-out brightfield smear of 15-pixel nuclei in cells of about 150 pixels, as the shipped network
# read it: the nuclei at the image's scale, the cells as nuclei from a quarter of it, with little doubt;
# the coarse cells held 10 of the first pass's nuclei each, the brightest 2.05 times the rest of the
# cell (above the background). Stained nuclei enlarged 2 and 3 times held up to 7 pieces of their own
# texture, at most 1.48 times the rest.
SMEAR_15 = {1.0: (14.9, 0.892), 0.5: (78.7, 0.391), 0.25: (154.1, 0.115), 0.125: (154.0, 0.155),
            0.0625: (267.8, 0.216)}
SMEAR_NESTING, TEXTURE_NESTING = (2.05, 10.0), (1.48, 6.0)


def test_whole_cells_read_as_large_nuclei_give_way_to_the_nuclei_inside_them(monkeypatch):
    """A coarse reading is undone, and the image flagged, where its nuclei are cells that hold the
    first pass's nuclei: several of them in each, the brightest far above the rest of the cell.
    Large nuclei whose texture the first pass read keep the move."""
    from dsb.inference import scale

    gray = np.zeros((1024, 1024), np.float32)
    shipped = scale.CELL_PEAK
    script(monkeypatch, SMEAR_15, SMEAR_NESTING)
    smear = choose_scale(None, CONFIG, gray)
    assert smear.diameter == pytest.approx(14.9) and not smear.sure
    assert smear.scale == pytest.approx(CANONICAL / 14.9)
    monkeypatch.setattr(scale, "CELL_PEAK", math.inf)  # without the rule: the cells, called sure
    cells = choose_scale(None, CONFIG, gray)
    assert cells.diameter == pytest.approx(154.1) and cells.sure
    monkeypatch.setattr(scale, "CELL_PEAK", shipped)
    for nesting in (TEXTURE_NESTING, (2.05, 2.0)):  # texture; or one bright piece, not several
        script(monkeypatch, SMEAR_15, nesting)
        assert choose_scale(None, CONFIG, gray).diameter == pytest.approx(154.1)
    script(monkeypatch, TEXTURE_72, TEXTURE_NESTING)
    assert choose_scale(None, CONFIG, gray).diameter == pytest.approx(74.9)


def cell_network(batch: np.ndarray) -> np.ndarray:
    """Stands in for a network that reads a region brighter than 0.3 and wider than 1.5 CANONICAL as
    what lies in it: a nucleus where it is brighter than 0.8, sure; specks where it is brighter than
    0.5, unsure; the rest no nucleus, unsure. A smaller region it reads whole, as a real network reads
    a cell at a coarse scale."""
    out = np.zeros(batch.shape[:3] + (3,), np.float32)
    for k, image in enumerate(batch[..., 0]):
        region = image > 0.3
        large = _too_large(region)
        body = np.where(large, np.select([image > 0.8, image > 0.5], [1.0, 0.7], 0.3), region.astype(float))
        inside = body > 0.5
        out[k, ..., 0] = body * region
        out[k, ..., 1] = inside & ~ndimage.binary_erosion(inside, iterations=2)
    return out


def cells_input(nuclei: bool) -> tuple[np.ndarray, np.ndarray]:
    """A network input of cells 100 pixels across (0.4 on 0.04) with a speck (0.55) every 16 pixels,
    and with ``nuclei`` a 14-pixel nucleus (1.0) at the centre of each; the cells' labels."""
    cells = grid_of_discs((480, 480), 50, 120)
    rr, cc = np.indices(cells.shape)
    specks = (rr % 16 < 5) & (cc % 16 < 5)
    gray = np.where(cells > 0, np.where(specks, 0.55, 0.4), 0.04).astype(np.float32)
    if nuclei:
        centres = [(r, c) for r in range(60, 480, 120) for c in range(60, 480, 120)]
        gray[make_discs(cells.shape, centres, 7) > 0] = 1.0
    return gray, cells


@pytest.mark.parametrize("nuclei", [True, False])
def test_the_nesting_tells_cells_holding_nuclei_from_textured_nuclei(nuclei):
    """Seen coarse, cells are nuclei; seen at the image's scale, what they hold. A nucleus inside a
    cell is far brighter than the rest of it: the nesting passes CELL_PEAK and CELL_PIECES. Specks
    alone are texture, as in a large nucleus: it does not."""
    from dsb.inference import scale

    gray, cells = cells_input(nuclei)
    peak, pieces = scale._nesting(cell_network, CONFIG, gray, 1.0, CANONICAL / median_diameter(cells))
    assert pieces >= scale.CELL_PIECES
    assert (peak >= scale.CELL_PEAK) == nuclei
    assert 1.2 < peak < 4  # the brightest piece over the rest of the cell: above 1 either way


def test_nesting_is_nan_where_the_fine_pass_fills_the_coarse_nuclei():
    """Where the first pass's nuclei fill the coarse ones (nuclei the network sees whole at both
    scales), nothing is left to compare them with."""
    from dsb.inference import scale

    truth = grid_of_discs((240, 240), 12, 60)
    gray = predict_input(image_of(truth), CONFIG)
    assert all(math.isnan(v) for v in scale._nesting(size_tuned_network, CONFIG, gray, 1.0, 0.5))


def resample_input(gray, scale):
    from dsb.inference.resample import resample

    return resample(gray, scale)


def test_an_estimate_that_cannot_be_checked_is_not_sure():
    # 24 pixels: half the scale leaves too little to look at.
    tiny = image_of(grid_of_discs((24, 24), 6, 24))
    assert not choose_scale(size_tuned_network, CONFIG, predict_input(tiny, CONFIG)).sure
    # No nucleus at all: nothing to measure.
    empty = np.full((200, 200), 10, np.uint8)
    chosen = choose_scale(size_tuned_network, CONFIG, predict_input(empty, CONFIG))
    assert not chosen.sure and np.isnan(chosen.diameter)
    # A given diameter is not an estimate.
    assert choose_scale(size_tuned_network, CONFIG, predict_input(empty, CONFIG), diameter=20).sure


def predict_input(image, config):
    from dsb.inference.preprocess import preprocess_image

    return preprocess_image(image, config.preprocess)


def test_nuclei_the_first_pass_cannot_see_are_found_at_another_scale(monkeypatch):
    """Never zero nuclei at one scale when another finds them: discs that the first pass's
    min_size drops are measured at twice the scale; the estimate says it is unsure."""
    from dsb.core.config import PostprocessConfig
    from dsb.inference import scale as scale_module

    monkeypatch.setattr(scale_module, "ESTIMATE_WATERSHED",
                        dataclasses.replace(scale_module.ESTIMATE_WATERSHED, min_size=170))
    config = CONFIG.replace(postprocess=PostprocessConfig(min_size=170))
    truth = grid_of_discs((200, 200), 7, 30)  # 149-pixel discs
    chosen = choose_scale(size_tuned_network, config, predict_input(image_of(truth), config))
    assert chosen.diameter == pytest.approx(median_diameter(truth), rel=0.2) and not chosen.sure
    assert predict_nuclei(size_tuned_network, config, image_of(truth)).labels.max() == truth.max()
    off = dataclasses.replace(config, predict=dataclasses.replace(config.predict, cross_check=False))
    assert np.isnan(choose_scale(size_tuned_network, off, predict_input(image_of(truth), off)).diameter)


def test_the_estimate_measures_the_watershed_before_the_split_and_serves_it_after(monkeypatch):
    # The estimate's diameter comes from the unsplit nuclei, whatever split_ratio says; the
    # labels it hands on for the prediction are split, as a fresh watershed's would be.
    import dataclasses

    from dsb.inference import predict
    from dsb.inference import scale as scale_module
    from dsb.inference.labels import labels_at_scale

    truth = grid_of_discs((200, 200), 12, 40)
    calls = _counting_watersheds(monkeypatch)
    cuts = []
    monkeypatch.setattr(scale_module, "finish_nuclei", lambda labels, prob, config: cuts.append(1) or labels)
    gray = predict._network_input(image_of(truth), ESTIMATE_CONFIG)
    for ratio in (0.0, 1.5):
        config = CONFIG.replace(postprocess=dataclasses.replace(ESTIMATE_WATERSHED, split_ratio=ratio))
        calls.clear()
        choose_scale(size_tuned_network, config, gray)
        assert calls and not any(split for _, _, split in calls)
    assert cuts  # the whole pass's labels went through the split
    monkeypatch.undo()
    found = predict_nuclei(size_tuned_network, ESTIMATE_CONFIG, image_of(truth))
    scaled = predict_scaled(size_tuned_network, ESTIMATE_CONFIG, image_of(truth))
    np.testing.assert_array_equal(found.labels, labels_at_scale(scaled.probabilities, scaled.scale, truth.shape,
                                                                ESTIMATE_CONFIG.postprocess))


# ---------------------------------------------------------------- predict.scale_factor


def _factor(config, factor, **predict):
    return config.replace(predict=dataclasses.replace(config.predict, scale_factor=factor, **predict))


def test_a_scale_factor_multiplies_the_chosen_scale_within_the_bounds():
    truth = grid_of_discs((300, 300), 30, 90)
    scaled = predict_scaled(size_tuned_network, _factor(CONFIG, 1.5), image_of(truth), diameter=60.0)
    assert scaled.scale == pytest.approx(1.5 * CANONICAL / 60.0)
    assert scaled.probabilities.shape[:2] == (150, 150)
    assert scaled.diameter == 60.0  # the image's nuclei, as given: the factor is prediction's
    # 2.5-pixel nuclei call for 8x, clipped to max_scale 4; the factor does not take it past the bound ...
    assert predict_scaled(size_tuned_network, _factor(CONFIG, 2.0), image_of(truth), diameter=2.5).scale == 4.0
    # ... but a factor below 1 takes the clipped scale down from it.
    assert predict_scaled(size_tuned_network, _factor(CONFIG, 0.5), image_of(truth), diameter=2.5).scale == 2.0
    # Without scale normalisation the image itself is resampled by the factor.
    flat = _factor(CONFIG.replace(preprocess=PreprocessConfig(diameter=0.0)), 1.25)
    assert predict_scaled(size_tuned_network, flat, image_of(truth)).probabilities.shape[:2] == (375, 375)


def test_with_a_scale_factor_the_estimate_reads_the_same_and_prediction_runs_again_larger(monkeypatch):
    from dsb.inference import predict
    from dsb.inference.scale import choose_scale_and_pass

    truth = grid_of_discs((200, 200), 12, 40)  # small enough to be estimated whole
    gray = predict._network_input(image_of(truth), ESTIMATE_CONFIG)
    plain, prob, labels = choose_scale_and_pass(size_tuned_network, ESTIMATE_CONFIG, gray, None)
    assert prob is not None and labels is not None  # factor 1: the last pass is the prediction
    larger = _factor(ESTIMATE_CONFIG, 1.5)
    chosen, prob, labels = choose_scale_and_pass(size_tuned_network, larger, gray, None)
    assert (chosen.diameter, chosen.sure, chosen.passes) == (plain.diameter, plain.sure, plain.passes)
    assert chosen.scale == pytest.approx(1.5 * plain.scale)
    assert prob is None and labels is None  # that pass ran at another scale
    seen = []

    def recording(batch):
        seen.append(batch.shape[1:3])
        return size_tuned_network(batch)

    found = predict_nuclei(recording, larger, image_of(truth))
    side = round(200 * chosen.scale)
    assert seen[-1] == (side + (-side) % 16, side + (-side) % 16)  # the prediction, padded to the U-Net's multiple
    assert found.scale == chosen.scale and found.labels.shape == truth.shape
    assert found.labels.max() == truth.max()


def test_blocks_predict_at_the_scale_factor_too():
    from dsb.io.bigimage import open_source
    from dsb.workflows.blocks import image_settings

    source = open_source(image_of(grid_of_discs((300, 300), 12, 40)))
    plain = image_settings(source, size_tuned_network, CONFIG)
    larger = image_settings(source, size_tuned_network, _factor(CONFIG, 1.5))
    assert plain.estimated and larger.diameter == plain.diameter
    assert larger.scale == pytest.approx(1.5 * plain.scale)
    given = image_settings(source, size_tuned_network, _factor(CONFIG, 1.5), diameter=40.0)
    assert given.scale == pytest.approx(1.5 * CANONICAL / 40.0)


class _Recording:
    """The size-tuned stand-in, recording the side of each batch it is given; an engine's name for
    :func:`dsb.segment_blocks`."""

    engine = "stand-in"

    def __init__(self):
        self.sides = []

    def __call__(self, batch):
        self.sides.append(batch.shape[1])
        return size_tuned_network(batch)


def test_dsb_segment_takes_a_scale_factor_for_one_call():
    import dsb
    from dsb.api import LoadedModel
    from dsb.core.errors import BadDataError

    truth = grid_of_discs((200, 200), 12, 40)
    network = _Recording()
    model = LoadedModel(Path("stand-in"), network, CONFIG)
    for factor, side in [(None, round(200 * CANONICAL / 25)), (1.5, round(1.5 * 200 * CANONICAL / 25))]:
        network.sides.clear()
        labels = dsb.segment(image_of(truth), model, diameter=25.0, scale_factor=factor)
        assert network.sides == [side + (-side) % 16]  # one whole-image pass, padded to the U-Net's multiple
        assert labels.shape == truth.shape and labels.max() == truth.max()
    assert model.config.predict.scale_factor == 1.0  # the loaded model keeps its own
    with pytest.raises(BadDataError, match=r"scale_factor: is 3, expected a number in \[0\.5, 2\]"):
        dsb.segment(image_of(truth), model, scale_factor=3)


def test_segment_blocks_predicts_at_the_scale_factor_given():
    import dsb
    from dsb.api import LoadedModel
    from dsb.workflows import blocks, cluster

    truth = grid_of_discs((256, 256), 10, 32)
    network = _Recording()
    model = LoadedModel(Path("stand-in"), network, CONFIG)
    spec = blocks._model_spec(model, 1.5)
    assert spec.scale_factor == 1.5
    assert cluster.worker_network(spec)[1].predict.scale_factor == 1.5  # what a block's task in this process finds
    assert model.config.predict.scale_factor == 1.0
    largest = {}
    for factor in (None, 1.5):
        network.sides.clear()
        labels = dsb.segment_blocks(image_of(truth), model, diameter=20.0, block_size=128,
                                    scale_factor=factor).compute()
        assert labels.max() == truth.max()
        largest[factor] = max(network.sides)
    # A corner block is its 128-pixel core and one margin (narrower in image pixels at a larger scale,
    # since it is planned at the working scale), seen 1.5 times larger.
    seen_larger = round(1.5 * (128 + blocks.block_margin(CONFIG, 1.5)))
    assert largest[1.5] >= seen_larger > largest[None]


def test_a_run_folder_loads_with_another_scale_factor(tmp_path):
    from conftest import make_threshold_run

    from dsb.core.errors import BadDataError
    from dsb.network.engines import load_network
    from dsb.workflows import cluster

    run = make_threshold_run(tmp_path / "run", _factor(CONFIG, 1.25))
    assert load_network(run, "keras")[1].predict.scale_factor == 1.25  # the run's own
    assert load_network(run, "keras", scale_factor=0.75)[1].predict.scale_factor == 0.75
    spec = cluster.ModelSpec(str(run), "keras", "float32", np.float32(1.5))  # numpy's numbers are numbers
    assert cluster.worker_network(spec)[1].predict.scale_factor == 1.5  # a worker loads the folder at the spec's factor
    with pytest.raises(BadDataError, match="scale_factor: is 0.1"):
        load_network(run, "keras", scale_factor=0.1)
    with pytest.raises(BadDataError, match="scale_factor: is 3"):  # refused where the spec is made, not per task
        cluster.ModelSpec(str(run), "keras", "float32", 3)


@pytest.mark.parametrize("value", [0.4, 2.5, float("nan"), True])
def test_a_scale_factor_out_of_range_names_its_key(value):
    from dsb.core.errors import BadDataError

    with pytest.raises(BadDataError, match=r"predict\.scale_factor.*expected a number in \[0\.5, 2\]"):
        _factor(CONFIG, value).check()
