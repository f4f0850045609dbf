"""The project's synthetic nuclei fields (dsb.io.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from dsb.io.synthetic import nuclei_field


def _aspects(labels: np.ndarray) -> np.ndarray:
    return np.array([p.axis_major_length / max(p.axis_minor_length, 1e-6) for p in regionprops(labels)])


OLD_FIELD = (9, [[12, 25], [75, 55], [46, 18], [69, 14], [38, 50]])


def _assert_the_old_field(labels: np.ndarray) -> None:
    """``nuclei_field((96, 96), 16, seed=3)`` as the project has always drawn it: its count of nuclei
    and the first five centres to the pixel, taken from the code before ``size_spread``."""
    from scipy import ndimage

    centres = np.rint(ndimage.center_of_mass(labels > 0, labels, range(1, 6))).astype(int).tolist()
    assert (int(labels.max()), centres) == OLD_FIELD


def test_elongation_sets_how_rod_like_the_nuclei_get():
    _, round_ish = nuclei_field((256, 256), 24, seed=1)
    _, rods = nuclei_field((256, 256), 24, elongation=4.0, seed=1)
    assert _aspects(round_ish).max() < 1.7  # up to 1.5 : 1, drawn in pixels
    assert np.median(_aspects(rods)) > 2.0
    assert _aspects(rods).max() > 3.0
    # The default is the field the project always drew.
    np.testing.assert_array_equal(nuclei_field((96, 96), 16, seed=3)[1], nuclei_field((96, 96), 16, elongation=1.5, seed=3)[1])
    _assert_the_old_field(nuclei_field((96, 96), 16, elongation=1.5, seed=3)[1])


def test_elongation_under_one_is_refused():
    with pytest.raises(ValueError, match="elongation"):
        nuclei_field((64, 64), 10, elongation=0.5)


def test_size_spread_mixes_small_nuclei_against_large_ones():
    from dsb.inference.scale import nucleus_diameters

    _, one = nuclei_field((300, 300), 24, touching=True, seed=2)
    _, mixed = nuclei_field((300, 300), 24, touching=True, size_spread=1.0, seed=2)
    small, large = np.percentile(nucleus_diameters(mixed), [10, 90])
    assert large / small > 2.2, "half to twice the median: a wide range in one field"
    assert np.percentile(nucleus_diameters(one), 90) / np.percentile(nucleus_diameters(one), 10) < 1.5
    # Small nuclei are pressed against large ones.
    d = np.sqrt(4 * np.bincount(mixed.ravel()) / np.pi)
    a = np.concatenate([mixed[:, :-1].ravel(), mixed[:-1].ravel()])
    b = np.concatenate([mixed[:, 1:].ravel(), mixed[1:].ravel()])
    pairs = np.unique(np.stack([a, b], 1)[(a > 0) & (b > 0) & (a != b)], axis=0)
    assert (np.maximum(d[pairs[:, 0]], d[pairs[:, 1]]) > 1.8 * np.minimum(d[pairs[:, 0]], d[pairs[:, 1]])).sum() >= 10
    # 0 is the one-size field the project always drew.
    _assert_the_old_field(nuclei_field((96, 96), 16, size_spread=0, seed=3)[1])
    with pytest.raises(ValueError, match="size_spread"):
        nuclei_field((64, 64), 10, size_spread=-1)
