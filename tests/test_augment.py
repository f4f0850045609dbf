"""Stain, colour and grey-level augmentation (dsb.training.augment): identity at 0, ranges, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from dsb.training.augment import (
    add_noise,
    colour_jitter,
    gaussian_blur,
    random_gamma,
    stain_jitter,
)


def _stained(seed=0, shape=(40, 48)):
    """A lavender background with purple discs, like the stained training images."""
    rng = np.random.default_rng(seed)
    rgb = np.empty(shape + (3,), np.float32)
    rgb[:] = (0.85, 0.78, 0.9)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for r, c in rng.integers(6, min(shape) - 6, size=(4, 2)):
        rgb[(rr - r) ** 2 + (cc - c) ** 2 < 25] = (0.35, 0.2, 0.55)
    return np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1).astype(np.float32)


def _gray(seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (32, 32)).astype(np.float32)


COLOUR = [
    lambda x, r: stain_jitter(x, r, scale=0.3, shift=0.02),
    lambda x, r: colour_jitter(x, r, hue=0.1, saturation=0.3, brightness=0.3),
]
GREY = [
    lambda x, r: gaussian_blur(x, r, max_sigma=2.0),
    lambda x, r: add_noise(x, r, std=0.05, shot=0.05),
    lambda x, r: random_gamma(x, r, strength=0.5),
]


def test_zero_strength_is_the_identity():
    rgb, gray = _stained(), _gray()
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(stain_jitter(rgb, rng, scale=0.0, shift=0.0), rgb, atol=1e-6)
    np.testing.assert_allclose(colour_jitter(rgb, rng, hue=0, saturation=0, brightness=0), rgb, atol=1e-6)
    np.testing.assert_array_equal(gaussian_blur(gray, rng, max_sigma=0.0), gray)
    np.testing.assert_array_equal(add_noise(gray, rng, std=0.0, shot=0.0), gray)
    np.testing.assert_array_equal(random_gamma(gray, rng, strength=0.0), gray)
    # Nothing was drawn.
    assert rng.random() == np.random.default_rng(0).random()


def test_stain_jitter_without_change_gives_the_image_back():
    """Concentrations are not clipped at 0 (unlike rgb2hed), so a = 1, b = 0 is exact."""
    rgb = _stained()
    out = stain_jitter(rgb, np.random.default_rng(0), scale=1e-9, shift=0.0)
    np.testing.assert_allclose(out, rgb, atol=1e-4)


@pytest.mark.parametrize("k", range(len(COLOUR)))
def test_colour_jitter_keeps_shape_range_dtype_and_is_seeded(k):
    rgb = _stained()
    outs = [COLOUR[k](rgb, np.random.default_rng(s)) for s in (1, 1, 2)]
    for out in outs:
        assert out.shape == rgb.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    assert np.abs(outs[0] - rgb).mean() > 1e-3  # the colour changed


def test_colour_functions_take_uint8_rgba():
    rgba = np.dstack([(_stained() * 255).astype(np.uint8), np.full((40, 48), 255, np.uint8)])
    out = stain_jitter(rgba, np.random.default_rng(0), scale=0.2, shift=0.01)
    assert out.shape == (40, 48, 3) and out.dtype == np.float32


def test_stain_jitter_changes_the_stain_balance_and_keeps_nuclei_darkest():
    from skimage.color import rgb2hed

    rgb = _stained()
    nuclei = rgb[..., 0] < 0.5
    for seed in range(5):
        out = stain_jitter(rgb, np.random.default_rng(seed), scale=0.3, shift=0.012)
        before, after = rgb2hed(rgb).mean((0, 1)), rgb2hed(out).mean((0, 1))
        assert not np.allclose(before, after, atol=1e-3)
        lum = out @ np.array([0.2125, 0.7154, 0.0721], np.float32)
        assert lum[nuclei].mean() < lum[~nuclei].mean() - 0.1


@pytest.mark.parametrize("k", range(len(GREY)))
def test_grey_augmentations_keep_shape_range_dtype_and_are_seeded(k):
    gray = _gray()
    outs = [GREY[k](gray, np.random.default_rng(s)) for s in (1, 1, 2)]
    for out in outs:
        assert out.shape == gray.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    assert not np.array_equal(outs[0], gray)


def test_shot_noise_grows_with_the_signal():
    rng = np.random.default_rng(0)
    dark = add_noise(np.full((64, 64), 0.05, np.float32), rng, std=0.0, shot=0.1)
    bright = add_noise(np.full((64, 64), 0.8, np.float32), rng, std=0.0, shot=0.1)
    assert bright.std() > 2 * dark.std()


def test_bad_arguments_name_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="`scale`"):
        stain_jitter(_stained(), rng, scale=-0.1, shift=0.0)
    with pytest.raises(ValueError, match="`hue`"):
        colour_jitter(_stained(), rng, hue=0.7, saturation=0, brightness=0)
    with pytest.raises(TypeError, match="`rgb`"):
        stain_jitter(_gray(), rng, scale=0.1, shift=0.0)
    with pytest.raises(TypeError, match="`gray`"):
        random_gamma(np.zeros((4, 4), np.uint8), rng, strength=0.1)
    with pytest.raises(ValueError, match="`min_sigma`"):
        gaussian_blur(_gray(), rng, max_sigma=1.0, min_sigma=2.0)
