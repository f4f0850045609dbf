"""Grey conversion, polarity, image types and contrast stretch: synthetic images and the real data."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from conftest import make_discs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.color import rgb2gray

from dsb.core.config import PreprocessConfig
from dsb.inference.preprocess import (
    IMAGE_TYPES,
    as_float,
    image_stats,
    image_type,
    intensity_range,
    normalize_polarity,
    preprocess_image,
    stained_gray,
    stretch,
    to_gray,
    to_uint8,
)

LABELS = make_discs((64, 64), ((20, 20), (44, 44)), 8)
RNG = np.random.default_rng(0)


def _noisy(image: np.ndarray, sd: float = 4.0) -> np.ndarray:
    return np.clip(image + RNG.normal(0, sd, image.shape), 0, 255).astype(np.uint8)


def fluorescence(alpha: bool = True) -> np.ndarray:
    grey = np.where(LABELS > 0, 170.0, 15.0)
    channels = [grey, grey, grey] + ([np.full_like(grey, 255)] if alpha else [])
    return _noisy(np.stack(channels, axis=-1))


def brightfield() -> np.ndarray:
    return _noisy(np.where(LABELS > 0, 90.0, 215.0))  # 2-D grey


def stained(eosin: bool = False) -> np.ndarray:
    """Purple nuclei on a light pink background; ``eosin`` adds a dense pink strip (colours from real images)."""
    img = np.empty((64, 64, 3), np.float64)
    img[:] = (225, 190, 215)
    if eosin:
        img[:, 48:][LABELS[:, 48:] == 0] = (195, 31, 101)
    img[LABELS > 0] = (155, 68, 167)
    return _noisy(img)


def _contrast(gray: np.ndarray, labels: np.ndarray = LABELS) -> float:
    return float(gray[labels > 0].mean() - gray[labels == 0].mean())


# ---------------------------------------------------------------- as_float / to_gray


def test_as_float_scales_by_bit_depth():
    assert as_float(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    twelve_bit = np.array([[0, 4095]], np.uint16)  # 12-bit camera data stored in 16 bits
    assert as_float(twelve_bit).tolist() == [[0.0, 1.0]]
    full = np.array([[0, 65535]], np.uint16)
    assert as_float(full).tolist() == [[0.0, 1.0]]
    assert as_float(np.array([[True, False]])).dtype == np.float32
    assert as_float(np.array([[0.25, 0.5]])).tolist() == [[0.25, 0.5]]
    np.testing.assert_allclose(as_float(np.array([[-1.0, 3.0]])), [[0.0, 1.0]])


def test_signed_images_with_negative_values_are_scaled_from_their_own_range_as_floats_are():
    background_at_minus_300 = np.where(LABELS > 0, -100, -300).astype(np.int16)
    floats = background_at_minus_300.astype(np.float32)
    np.testing.assert_array_equal(as_float(background_at_minus_300), as_float(floats))
    assert as_float(background_at_minus_300).tolist()[20][20] == 1.0  # not clipped to 0 with the background
    np.testing.assert_array_equal(preprocess_image(background_at_minus_300), preprocess_image(floats))
    assert _contrast(preprocess_image(background_at_minus_300)) > 0.9
    assert image_type(background_at_minus_300) == "fluorescence"
    # A signed image of no negative value keeps its unsigned reading: an int16 of 0..4095 is 12-bit data.
    twelve_bit = np.where(LABELS > 0, 3000, 100).astype(np.int16)
    np.testing.assert_array_equal(as_float(twelve_bit), as_float(twelve_bit.astype(np.uint16)))
    assert intensity_range(twelve_bit) == (0.0, 4095.0)
    assert intensity_range(np.array([[-5, 0, 7]], np.int32)) == (-5.0, 7.0)
    # A block read with its whole image's range converts as the whole does.
    whole = intensity_range(background_at_minus_300)
    np.testing.assert_array_equal(as_float(background_at_minus_300[:10, :10], whole),
                                  as_float(background_at_minus_300)[:10, :10])


def test_to_gray_matches_skimage_luminance_and_ignores_alpha():
    rgba = fluorescence(alpha=True)
    rgba[..., 3] = RNG.integers(0, 256, rgba.shape[:2])
    gray = to_gray(rgba)
    assert gray.dtype == np.float32 and gray.shape == (64, 64)
    np.testing.assert_allclose(gray, rgb2gray(rgba[..., :3]), atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 40), (32, 40, 1), (32, 40, 2)])
def test_to_gray_takes_grey_layouts(shape):
    image = RNG.integers(0, 256, shape).astype(np.uint8)
    expected = (image if image.ndim == 2 else image[..., 0]) / 255
    np.testing.assert_allclose(to_gray(image), expected, atol=1e-6)


def test_to_gray_rejects_stacks():
    with pytest.raises(TypeError, match="1 to 4 channels"):
        to_gray(np.zeros((8, 8, 5), np.uint8))


# ---------------------------------------------------------------- image types


def test_image_type_of_each_kind():
    assert image_type(fluorescence()) == "fluorescence"
    assert image_type(fluorescence(alpha=False)) == "fluorescence"
    assert image_type(brightfield()) == "brightfield"
    assert image_type(brightfield()[..., None].repeat(3, axis=-1)) == "brightfield"
    assert image_type(stained()) == "stained"
    assert image_type(stained(eosin=True)) == "stained"


def test_image_type_of_16_bit_images():
    assert image_type((fluorescence(alpha=False)[..., 0].astype(np.uint16) * 16)) == "fluorescence"
    assert image_type((brightfield().astype(np.uint16) * 16)) == "brightfield"  # 12-bit data: still light


def test_image_stats_are_in_unit_range():
    brightness, colour = image_stats(stained())
    assert 0.7 < brightness <= 1 and 0.05 < colour < 1
    assert image_stats(brightfield())[1] == 0.0


# ---------------------------------------------------------------- polarity, stretch


def test_normalize_polarity():
    bf = brightfield()
    gray = to_gray(bf)
    assert _contrast(gray) < 0
    assert _contrast(normalize_polarity(gray, bf)) > 0
    assert _contrast(normalize_polarity(gray)) > 0  # decided from the grey image itself
    fl = fluorescence()
    np.testing.assert_array_equal(normalize_polarity(to_gray(fl), fl), to_gray(fl))
    np.testing.assert_array_equal(normalize_polarity(gray, bf, polarity="keep"), gray)
    np.testing.assert_allclose(normalize_polarity(gray, bf, polarity="invert"), 1 - gray)
    with pytest.raises(ValueError, match="polarity"):
        normalize_polarity(gray, polarity="upside-down")


def test_stretch_maps_percentiles_to_unit_range():
    gray = np.linspace(0.2, 0.6, 1001, dtype=np.float32).reshape(7, 143)
    out = stretch(gray, low=0, high=100)
    assert out.min() == 0 and out.max() == pytest.approx(1)
    out = stretch(gray, low=10, high=90)
    assert (out == 0).mean() == pytest.approx(0.1, abs=0.01) and (out == 1).mean() == pytest.approx(0.1, abs=0.01)
    assert not stretch(np.full((5, 5), 0.3)).any()  # a flat image: zeros, no division by zero
    with pytest.raises(ValueError, match="percentiles"):
        stretch(gray, low=50, high=50)


def test_to_uint8_rounds_and_clips():
    assert to_uint8(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]])).tolist() == [[0, 0, 128, 255, 255]]


# ---------------------------------------------------------------- the whole pipeline


@pytest.mark.parametrize("make", [fluorescence, brightfield, stained])
def test_preprocess_gives_bright_nuclei_in_unit_range(make):
    out = preprocess_image(make(), PreprocessConfig())
    assert out.dtype == np.float32 and out.shape == (64, 64)
    assert 0 <= out.min() and out.max() <= 1
    assert _contrast(out) > 0.5


def test_preprocess_polarity_override():
    bf = brightfield()
    assert _contrast(preprocess_image(bf, PreprocessConfig(polarity="keep"))) < 0
    assert _contrast(preprocess_image(fluorescence(), PreprocessConfig(polarity="invert"))) < 0


def test_stained_channels_and_eosin():
    """Why "both" is the default: dense eosin is bright in inverted luminance, not in hematoxylin."""
    image = stained(eosin=True)
    eosin = np.zeros(LABELS.shape, bool)
    eosin[:, 48:] = LABELS[:, 48:] == 0
    nuclei = LABELS > 0
    lum = stained_gray(image, channel="luminance")
    assert lum[eosin].mean() > lum[nuclei].mean()
    for channel in ("both", "hematoxylin"):
        gray = stained_gray(image, channel=channel)
        assert gray[nuclei].mean() > gray[eosin].mean() + 0.5, channel
    np.testing.assert_allclose(preprocess_image(image), stained_gray(image, channel="both", low=0.5, high=99.8))
    with pytest.raises(ValueError, match="channel"):
        stained_gray(image, channel="eosin")


def test_preprocess_accepts_16_bit_and_known_kind():
    image = brightfield().astype(np.uint16) * 257
    out = preprocess_image(image)
    assert _contrast(out) > 0.5
    np.testing.assert_array_equal(preprocess_image(image, kind="brightfield"), out)


def test_config_rejects_bad_preprocess_values():
    from dsb.core.config import Config
    from dsb.core.errors import BadDataError

    with pytest.raises(BadDataError, match="stained_channel"):
        Config.from_dict({"preprocess": {"stained_channel": "eosin"}})
    with pytest.raises(BadDataError, match="percentile"):
        Config.from_dict({"preprocess": {"percentile_low": 50, "percentile_high": 10}})


# ---------------------------------------------------------------- real images


def _types(stage_dir):
    from dsb.io.images import image_path, list_ids, read_image

    return {i: image_type(read_image(image_path(stage_dir, i))) for i in list_ids(stage_dir)}


@pytest.fixture(scope="module")
def train_types(train_dir):
    return _types(train_dir)


def test_real_training_image_types(train_types):
    counts = collections.Counter(train_types.values())
    print("stage1_train types:", dict(counts))
    # Checked by eye on thumbnails: the grey brightfield images are the 16 of 1024x1024.
    assert counts == {"fluorescence": 541, "brightfield": 16, "stained": 107}


def test_real_test_image_types(test_dir):
    counts = collections.Counter(_types(test_dir).values())
    print("stage1_test types:", dict(counts))
    assert sum(counts.values()) == 65
    assert set(counts) <= set(IMAGE_TYPES) and counts["fluorescence"] >= 45 and counts["stained"] >= 8


def test_real_polarity_per_type(train_dir, train_types):
    """Nuclei come out brighter than background on real images of every type (a sample; all in test_dataset)."""
    from dsb.io.images import image_path, read_image, read_labels

    by_type = collections.defaultdict(list)
    for image_id, kind in sorted(train_types.items()):
        by_type[kind].append(image_id)
    failures = []
    for kind in IMAGE_TYPES:
        ids = by_type[kind][:: max(1, len(by_type[kind]) // 16)]
        ok = 0
        for image_id in ids:
            raw = read_image(image_path(train_dir, image_id))
            labels, _ = read_labels(train_dir / image_id, raw.shape[:2], return_fixes=True)
            if _contrast(preprocess_image(raw), labels) > 0:
                ok += 1
            else:
                failures.append((kind, image_id))
        print(f"{kind}: {ok}/{len(ids)} with brighter nuclei")
        assert ok / len(ids) >= 0.98, failures


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_image_stats_of_uint8_sorted_by_radix_match_the_float_figures(channels):
    # uint8 medians come from a radix sort (speed): the same brightness and colourfulness as in float.
    from dsb.inference.preprocess import as_float, image_stats

    rng = np.random.default_rng(channels or 0)
    for shape in [(1, 1), (1, 2), (7, 5), (64, 33)]:
        image = rng.integers(0, 256, shape + ((channels,) if channels else ()), dtype=np.uint8)
        brightness, colourfulness = image_stats(image)
        values = as_float(image)
        if channels is None or channels < 3:
            expected = (float(np.median(values if channels is None else values[..., 0])), 0.0)
        else:
            top, bottom = values[..., :3].max(-1), values[..., :3].min(-1)
            expected = (float(np.median(top)), float((top - bottom).mean()))
        assert (brightness, colourfulness) == pytest.approx(expected, abs=1e-6)


def _percentile_cases():
    rng = np.random.default_rng(7)
    yield rng.random((37, 51)).astype(np.float32)
    yield (np.round(rng.random((64, 64)) * 255) / 255).astype(np.float32)  # an 8-bit image's levels
    sparse = rng.random((80, 60)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.8] = 0  # mostly background, many ties
    yield sparse
    yield np.full((9, 9), 0.25, np.float32)
    yield np.array([[0.7]], np.float32)
    yield (rng.random((30, 30)) - 0.4).astype(np.float32)  # negatives: the fallback
    with_nan = rng.random((20, 20)).astype(np.float32)
    with_nan[3, 4] = np.nan
    yield with_nan
    yield np.array([[0.0, np.inf, 0.5]], np.float32)


@pytest.mark.parametrize("q", [[0.5, 99.8], [0.0, 100.0], [12.5, 50.0, 87.3]])
def test_percentiles_from_bit_histograms_equal_numpy_to_the_bit(q):
    from dsb.inference.preprocess import _percentiles

    for values in _percentile_cases():
        with np.errstate(invalid="ignore"):  # numpy warns on inf - inf
            ours, numpy_says = _percentiles(values, q), np.percentile(values, q)
        assert ours.dtype == numpy_says.dtype
        np.testing.assert_array_equal(ours, numpy_says)


# ---------------------------------------------------------------- 8-bit images by level


def _grey_rgb(levels: np.ndarray, alpha: bool) -> np.ndarray:
    return np.stack([levels] * 3 + ([np.full_like(levels, 255)] if alpha else []), axis=-1)


@settings(max_examples=60, deadline=None)
@given(
    levels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)),
    layout=st.sampled_from(["grey", "rgb", "rgba"]),
    polarity=st.sampled_from(["auto", "keep", "invert"]),
    q=st.tuples(st.floats(0, 50), st.floats(50, 100)).filter(lambda q: q[0] < q[1]),
)
def test_preprocess_of_8_bit_grey_images_by_level_equals_every_pixel_to_the_bit(levels, layout, polarity, q):
    # 8-bit grey images (RGB with equal channels included) are preprocessed on their 256 levels and
    # looked up: the same bits as the steps on every pixel, np.percentile's percentiles included.
    image = levels if layout == "grey" else _grey_rgb(levels, layout == "rgba")
    config = PreprocessConfig(polarity=polarity, percentile_low=q[0], percentile_high=q[1])
    kind = image_type(image)
    gray = levels.astype(np.float32) / np.float32(255)
    assert to_gray(image).dtype == np.float32
    np.testing.assert_array_equal(to_gray(image), gray)  # equal channels: luminance is the channel
    if polarity == "invert" or (polarity == "auto" and kind != "fluorescence"):
        gray = 1 - gray
    lo, hi = np.percentile(gray, q)
    if hi - lo < 1e-6:
        expected = np.zeros_like(gray)
    else:
        expected = np.clip((gray - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    got = preprocess_image(image, config)
    assert got.dtype == np.float32 and got.shape == levels.shape
    np.testing.assert_array_equal(got, expected)


def test_equal_channels_are_grey_and_unequal_ones_keep_the_luminance_weights():
    levels = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    image = _grey_rgb(levels, alpha=False)
    np.testing.assert_array_equal(to_gray(image), to_gray(levels))
    image[3, 4, 2] ^= 1  # one channel of one pixel off: a colour image, weighted as rgb2gray
    np.testing.assert_allclose(to_gray(image), rgb2gray(image), atol=1e-6)
    assert to_gray(image)[3, 4] != to_gray(levels)[3, 4]


@settings(max_examples=40, deadline=None)
@given(image=hnp.arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([3, 4]))))
def test_hematoxylin_of_8_bit_images_from_level_tables_equals_rgb2hed_to_the_float32_bit(image):
    from skimage.color import rgb2hed

    from dsb.inference.preprocess import hematoxylin

    expected = rgb2hed(as_float(image[..., :3]))[..., 0].astype(np.float32)
    np.testing.assert_array_equal(hematoxylin(image), expected)


def test_hematoxylin_of_many_8_bit_colours_equals_rgb2hed():
    # Every seventh row of all 2^24 colours laid out in 4096 x 4096 (2.4 million colours): no sum of
    # level tables rounds to another float32 than rgb2hed's product.
    from skimage.color import rgb2hed

    from dsb.inference.preprocess import hematoxylin

    every = np.arange(1 << 24, dtype=np.uint32)
    image = np.stack([every >> 16, (every >> 8) & 255, every & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    rows = image[::7]  # all of them would need 1.2 GB of float64 temporaries in rgb2hed
    expected = rgb2hed(as_float(rows))[..., 0].astype(np.float32)
    np.testing.assert_array_equal(hematoxylin(rows), expected)


def test_infinite_pixels_count_as_missing_ones_and_large_floats_keep_their_contrast():
    from dsb.inference.preprocess import as_float

    image = np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8)
    nan, inf = image.copy(), image.copy()
    nan[2:4, 2:4], inf[2:4, 2:4] = np.nan, np.inf
    inf[5, 5] = -np.inf
    nan[5, 5] = np.nan
    np.testing.assert_array_equal(as_float(inf), as_float(nan))
    assert as_float(inf).max() == 1.0 and np.isfinite(as_float(inf)).all()
    # float64 values beyond float32's range: scaled in float64, not cast to infinity first.
    with np.errstate(all="raise"):
        np.testing.assert_allclose(as_float(image.astype(np.float64) * 1e300), as_float(image), atol=1e-6)
