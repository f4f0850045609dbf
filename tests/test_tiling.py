"""Tiled inference: exact blending, any shape, bounded batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from dsb.inference.tiling import (
    axis_weights,
    blend_window,
    context_needed,
    plan_axis,
    predict_tiled,
)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


def two_channels(batch: np.ndarray) -> np.ndarray:
    """A pointwise 'network' with two outputs, like body and border."""
    return np.concatenate([batch, 1.0 - batch * batch], axis=-1)


class Recorder:
    """A pointwise predictor that remembers the shapes of the batches it was given."""

    def __init__(self, multiple: int):
        self.multiple = multiple
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[3] == 1
        assert batch.shape[1] % self.multiple == 0 and batch.shape[2] % self.multiple == 0
        self.shapes.append(batch.shape)
        return two_channels(batch)


@pytest.mark.parametrize(
    "shape",
    [(161, 161), (256, 256), (256, 320), (520, 696), (1, 1), (1, 300), (300, 1), (17, 33), (257, 255), (603, 1272)],
)
def test_pointwise_predictor_reproduces_the_image(shape):
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    record = Recorder(16)
    out = predict_tiled(record, image, tile_size=256, overlap=64, batch_size=4)
    assert out.shape == (*shape, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], image, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], 1.0 - image * image, atol=1e-6)
    assert all(b <= 4 and h <= 256 and w <= 256 for b, h, w, _ in record.shapes)
    assert len({s[1:] for s in record.shapes}) == 1  # one tile shape per image


def test_small_image_is_one_reflected_tile():
    image = np.arange(10 * 7, dtype=np.float32).reshape(10, 7)
    seen = []

    def spy(batch):
        seen.append(batch.copy())
        return batch

    out = predict_tiled(spy, image, tile_size=64, overlap=16, multiple=16)
    (batch,) = seen
    assert batch.shape == (1, 16, 16, 1)
    # The image sits in the middle of the tile, mirrored (not repeated, not zeros) around it.
    rows, cols = plan_axis(10, 64, 16), plan_axis(7, 64, 16)
    top, left = rows.pad_before, cols.pad_before
    np.testing.assert_array_equal(batch[0, top : top + 10, left : left + 7, 0], image)
    np.testing.assert_array_equal(batch[0, top - 1, left : left + 7, 0], image[1])
    np.testing.assert_array_equal(out[..., 0], image)


def test_one_pixel_wide_image():
    image = np.linspace(0, 1, 700, dtype=np.float32)[:, None]
    out = predict_tiled(identity, image, tile_size=128, overlap=32, multiple=16)
    assert out.shape == (700, 1, 1)
    np.testing.assert_allclose(out[:, 0, 0], image[:, 0], atol=1e-6)


def test_accepts_a_channel_axis():
    image = np.random.default_rng(1).random((40, 50, 1), dtype=np.float32)
    np.testing.assert_allclose(predict_tiled(identity, image, tile_size=32, overlap=8)[..., 0], image[..., 0], atol=1e-6)


def test_position_dependent_predictor_blends_smoothly():
    # Each tile predicts a constant (its own index): the result changes only inside overlaps
    # and stays a weighted average of the tile values, i.e. within their range.
    calls = []

    def constant_per_tile(batch):
        out = np.empty_like(batch)
        for k in range(len(batch)):
            out[k] = len(calls)
            calls.append(k)
        return out

    out = predict_tiled(constant_per_tile, np.zeros((100, 300), np.float32), tile_size=64, overlap=16, batch_size=3)
    assert out.min() >= 0 and out.max() <= len(calls) - 1
    steps = np.abs(np.diff(out[..., 0], axis=1))
    assert steps.max() < 0.2  # no seams: a raised-cosine ramp, not a hard edge


@settings(max_examples=80, deadline=None)
@given(
    length=st.integers(1, 2000),
    tile=st.sampled_from([16, 32, 64, 128, 256]),
    overlap_frac=st.floats(0, 0.5),
    multiple=st.sampled_from([8, 16]),
)
def test_axis_plans_cover_the_axis_with_unit_weights(length, tile, overlap_frac, multiple):
    overlap = int(overlap_frac * tile)
    plan = plan_axis(length, tile, overlap, multiple)
    assert plan.tile % multiple == 0 and plan.tile <= max(tile, multiple)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.tile == plan.padded
    assert all(start % multiple == 0 for start in plan.starts), "tiles start on the network's pooling grid"
    assert plan.padded == length + plan.pad_before + plan.pad_after
    assert plan.pad_before + plan.pad_after < multiple or length < plan.tile
    gaps = np.diff(plan.starts)
    if len(gaps):
        # neighbours overlap by at least the requested overlap (to rounding)
        assert (plan.tile - gaps >= min(overlap, plan.tile - multiple) - 1).all()
    weights = axis_weights(plan, overlap)
    assert (weights > 0).all()
    total = np.zeros(plan.padded)
    for start, w in zip(plan.starts, weights):
        total[start : start + plan.tile] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tiles_are_not_larger_than_needed():
    # 520 pixels with 256-pixel tiles and 64 overlap: three tiles, each shrunk to 224.
    plan = plan_axis(520, 256, 64, 16)
    assert plan.tile == 224 and len(plan.starts) == 3
    assert plan_axis(161, 256, 64, 16).tile == 176
    assert plan_axis(1388, 256, 64, 16).tile == 256


def test_blend_window_is_positive_and_tapers_only_where_asked():
    w = blend_window(64, 16)
    assert (w > 0).all() and w[16:48].min() == 1.0 and w[0] < 0.01 and w[-1] < 0.01
    np.testing.assert_allclose(w[:16] + w[:16][::-1], 1.0)  # complementary ramps
    flat_start = blend_window(64, 16, taper_start=False)
    assert flat_start[0] == 1.0 and flat_start[-1] < 0.01


def test_bad_arguments():
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(TypeError, match="2-D"):
        predict_tiled(identity, np.zeros((2, 32, 32)), tile_size=32, overlap=8)
    with pytest.raises(ValueError, match="empty"):
        predict_tiled(identity, np.zeros((0, 5)), tile_size=32, overlap=8)
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(identity, image, tile_size=32, overlap=32)
    with pytest.raises(ValueError, match="batch_size"):
        predict_tiled(identity, image, tile_size=32, overlap=8, batch_size=0)
    with pytest.raises(ValueError, match="returned shape"):
        predict_tiled(lambda b: b[:, :8], image, tile_size=32, overlap=8)


def test_memory_is_bounded_by_batches():
    # A 1040 x 1388 image never has more than `batch_size` tiles in flight.
    record = Recorder(16)
    out = predict_tiled(record, np.zeros((1040, 1388), np.float32), tile_size=256, overlap=64, batch_size=8)
    assert out.shape == (1040, 1388, 2)
    assert max(s[0] for s in record.shapes) == 8
    assert sum(s[0] for s in record.shapes) == 6 * 7


def box_network(radius: int):
    """A 'network' that sees exactly ``radius`` pixels around each pixel (zero padding, as a U-Net's)."""

    def predict(batch):
        out = ndimage.uniform_filter(batch[..., 0], size=(1, 2 * radius + 1, 2 * radius + 1), mode="constant")
        return out[..., None]

    return predict


def block_network(batch):
    """A 'network' whose output depends on the 16-pixel grid: the mean of each 16x16 block (like pooling)."""
    b, h, w, _ = batch.shape
    means = batch[..., 0].reshape(b, h // 16, 16, w // 16, 16).mean(axis=(2, 4))
    return np.repeat(np.repeat(means, 16, axis=1), 16, axis=2)[..., None]


def test_context_needed_is_the_reach_of_the_network():
    image = np.random.default_rng(0).random((200, 232), dtype=np.float32)
    for radius in (3, 11, 24):
        context, errors = context_needed(box_network(radius), image, tolerance=1e-5)
        assert context == radius
        assert errors[: radius].max() > 1e-3 and errors[radius:].max() <= 1e-5


def test_tiles_on_the_grid_reproduce_a_grid_dependent_network():
    # Off the grid (the old tiling), the block means would differ everywhere a tile starts elsewhere.
    image = np.random.default_rng(1).random((300, 410), dtype=np.float32)
    tiled = predict_tiled(block_network, image, tile_size=128, overlap=32, batch_size=3)
    padded = np.pad(image, ((2, 2), (3, 3)), mode="reflect")  # to multiples of 16, split at both ends
    whole = block_network(padded[None, :, :, None])[0, 2:-2, 3:-3]
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_a_margin_of_the_context_makes_tiles_match_the_whole_image():
    radius = 10
    image = np.random.default_rng(2).random((256, 400), dtype=np.float32)
    whole = box_network(radius)(image[None, :, :, None])[0]
    blended = predict_tiled(box_network(radius), image, tile_size=128, overlap=48, context=0)
    matched = predict_tiled(box_network(radius), image, tile_size=128, overlap=48, context=radius)
    assert np.abs(blended - whole).max() > 1e-3  # ramps reach the edge, where a tile lacks context
    np.testing.assert_allclose(matched, whole, atol=1e-5)


def test_tune_tiling_sets_the_overlap_from_the_measured_context():
    from dsb.core.config import Config, PredictConfig, PreprocessConfig
    from dsb.workflows.tune import tune_tiling

    config = Config(preprocess=PreprocessConfig(diameter=0.0), predict=PredictConfig(tile_size=256, overlap=64))
    rng = np.random.default_rng(3)
    images = [(rng.random((160, 200)) * 255).astype(np.uint8) for _ in range(2)] + [np.zeros((40, 40), np.uint8)]
    predict, contexts = tune_tiling(box_network(20), config, images)
    assert contexts == [20, 20]  # the 40x40 image is too small to measure on
    # Rounded up to the grid of the default U-Net (8 pixels): overlap twice that plus one step.
    assert config.model.size_multiple() == 8
    assert (predict.context, predict.overlap, predict.tile_size) == (24, 56, 256)
    unchanged, none = tune_tiling(box_network(20), config, images[2:])
    assert unchanged == config.predict and none == []
