"""measure_regions: skimage's regionprops figures, by bincounts over the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table

from dsb.core.labels import measure_regions

PROPERTIES = {"label": "label", "centroid-0": "centroid_row", "centroid-1": "centroid_col",
              "bbox-0": "bbox_min_row", "bbox-1": "bbox_min_col", "bbox-2": "bbox_max_row", "bbox-3": "bbox_max_col",
              "area": "area", "perimeter": "perimeter", "eccentricity": "eccentricity",
              "intensity_mean": "mean_intensity"}


def _assert_as_regionprops(labels, intensity):
    expected = regionprops_table(labels, intensity_image=intensity, properties=(
        "label", "centroid", "bbox", "area", "perimeter", "eccentricity", "intensity_mean"))
    got = measure_regions(labels, intensity)
    assert set(got) == set(PROPERTIES.values())
    for theirs, ours in PROPERTIES.items():
        assert got[ours].shape == expected[theirs].shape, ours
        np.testing.assert_allclose(got[ours], expected[theirs], rtol=0, atol=1e-9, err_msg=ours)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8), st.booleans(), st.integers(0, 2**31 - 1),
       st.sampled_from([np.int32, np.uint16, np.int64]))
def test_the_figures_are_regionprops_own(height, width, values, smooth, seed, dtype):
    # Random labels: objects of several pieces, touching each other and the image's edge, single pixels.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, values + 1, (height, width))
    if smooth:  # blobs rather than speckle
        labels = ndimage.median_filter(labels, 3)
    _assert_as_regionprops(labels.astype(dtype), rng.random((height, width)))


def test_gaps_in_the_numbering_large_labels_and_far_coordinates():
    labels = np.zeros((300, 2000), np.int32)
    labels[280:290, 1900:1990] = 70000  # far from the origin: moments about the object's own corner
    labels[5:6, 3:40] = 3  # one pixel thin: eccentricity 1
    labels[100, 100] = 9  # one pixel: eccentricity 0
    _assert_as_regionprops(labels, np.random.default_rng(0).random(labels.shape))
    got = measure_regions(labels, np.ones(labels.shape))
    assert got["label"].tolist() == [3, 9, 70000]
    assert got["eccentricity"][0] == pytest.approx(1.0) and got["eccentricity"][1] == 0.0


def test_an_image_without_objects_measures_nothing():
    got = measure_regions(np.zeros((4, 5), np.int32), np.zeros((4, 5)))
    assert all(len(v) == 0 for v in got.values()) and set(got) == set(PROPERTIES.values())
