"""The project's synthetic nuclei fields (dsb.io.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from dsb.io.synthetic import nuclei_field


def _aspects(labels: np.ndarray) -> np.ndarray:
    return np.array([p.axis_major_length / max(p.axis_minor_length, 1e-6) for p in regionprops(labels)])


def test_elongation_sets_how_rod_like_the_nuclei_get():
    _, round_ish = nuclei_field((256, 256), 24, seed=1)
    _, rods = nuclei_field((256, 256), 24, elongation=4.0, seed=1)
    assert _aspects(round_ish).max() < 1.7  # up to 1.5 : 1, drawn in pixels
    assert np.median(_aspects(rods)) > 2.0
    assert _aspects(rods).max() > 3.0
    # The default is the field the project always drew.
    np.testing.assert_array_equal(nuclei_field((96, 96), 16, seed=3)[1], nuclei_field((96, 96), 16, elongation=1.5, seed=3)[1])


def test_elongation_under_one_is_refused():
    with pytest.raises(ValueError, match="elongation"):
        nuclei_field((64, 64), 10, elongation=0.5)
