"""measure_regions and convex_areas: skimage's regionprops figures, by bincounts over the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.draw import ellipse
from skimage.measure import regionprops_table

from dsb.core.labels import convex_areas, measure_regions

PROPERTIES = {"label": "label", "centroid-0": "centroid_row", "centroid-1": "centroid_col",
              "bbox-0": "bbox_min_row", "bbox-1": "bbox_min_col", "bbox-2": "bbox_max_row", "bbox-3": "bbox_max_col",
              "area": "area", "perimeter": "perimeter", "eccentricity": "eccentricity",
              "axis_major_length": "major_axis_length", "axis_minor_length": "minor_axis_length",
              "solidity": "solidity", "intensity_mean": "mean_intensity"}
# Figures of ours, checked against regionprops' below (orientation_deg is its orientation turned to Fiji's Angle).
OWN = {"orientation_deg", "circularity", "integrated_intensity"}


def _assert_as_regionprops(labels, intensity):
    expected = regionprops_table(labels, intensity_image=intensity, properties=(
        "label", "centroid", "bbox", "area", "perimeter", "eccentricity", "axis_major_length", "axis_minor_length",
        "orientation", "solidity", "area_convex", "intensity_mean"))
    got = measure_regions(labels, intensity)
    assert set(got) == set(PROPERTIES.values()) | OWN
    for theirs, ours in PROPERTIES.items():
        assert got[ours].shape == expected[theirs].shape, ours
        # A square root turns an eigenvalue's rounding (1e-17) into 1e-8 of an axis.
        atol = 1e-6 if ours.endswith("axis_length") else 1e-9
        np.testing.assert_allclose(got[ours], expected[theirs], rtol=0, atol=atol, err_msg=ours)
    # Fiji's angle: counter-clockwise from the rows as shown, [0, 180); regionprops' is 90 less.
    angle = got["orientation_deg"]
    assert ((angle >= 0) & (angle < 180)).all()
    turned = np.mod(angle - np.degrees(expected["orientation"]) - 90, 180)
    round_ = got["eccentricity"] > 1e-6  # a circle's axis is any: only elongated shapes have one angle
    np.testing.assert_allclose(np.minimum(turned, 180 - turned)[round_], 0, atol=1e-6)
    with np.errstate(divide="ignore"):
        circ = np.where(expected["perimeter"] > 0, 4 * np.pi * expected["area"] / expected["perimeter"] ** 2, 1)
    np.testing.assert_allclose(got["circularity"], np.minimum(circ, 1), rtol=1e-12)
    np.testing.assert_allclose(got["integrated_intensity"], expected["intensity_mean"] * expected["area"], rtol=1e-9)
    assert convex_areas(labels)[got["label"]].tolist() == expected["area_convex"].astype(int).tolist()


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
    assert all(len(v) == 0 for v in got.values()) and set(got) == set(PROPERTIES.values()) | OWN
    assert convex_areas(np.zeros((3, 3), np.int32)).tolist() == [0.0]


@pytest.mark.parametrize("degrees", [0, 30, 60, 90, 120, 150, 179])
def test_the_angle_is_fijis(degrees):
    # An ellipse turned counter-clockwise as shown by `degrees` reads as `degrees` (0 along the rows).
    labels = np.zeros((101, 101), np.int32)
    labels[ellipse(50, 50, 8, 30, rotation=np.deg2rad(degrees))] = 1
    angle = measure_regions(labels, np.ones(labels.shape))["orientation_deg"][0]
    assert min(abs(angle - degrees), 180 - abs(angle - degrees)) < 1.0


def test_solidity_tells_two_merged_nuclei_from_one():
    yy, xx = np.mgrid[:80, :120]
    one = ((yy - 40) ** 2 + (xx - 40) ** 2 < 15 ** 2).astype(np.int32)
    two = one | ((yy - 40) ** 2 + (xx - 66) ** 2 < 15 ** 2)  # the second overlaps by 4 pixels
    solidity = [measure_regions(m, np.ones(m.shape))["solidity"][0] for m in (one, two)]
    assert solidity[0] > 0.95 and solidity[1] < 0.93


def test_hulls_of_shapes_with_holes_pieces_and_concave_sides():
    labels = np.zeros((40, 60), np.int64)
    labels[2:30, 2:30] = 4
    labels[10:20, 10:30] = 0  # a bite out of its right side
    labels[5:8, 40:58] = 7
    labels[35:38, 40:42] = 7  # a second piece far below: the hull spans both
    labels[20:39, 45] = 9  # a line, one pixel wide
    labels[[0, 1, 2], [50, 51, 52]] = 11  # a diagonal: the centres beside it lie outside the hull
    labels[0, 59] = 70000  # one pixel, a large label
    got = convex_areas(labels)
    expected = regionprops_table(labels, properties=("label", "area_convex"))
    assert got[expected["label"]].tolist() == expected["area_convex"].astype(int).tolist()
    assert got[4] == 28 * 28 and got[9] == 19 and got[11] == 3 and got[70000] == 1 and got[1] == 0


def test_a_field_of_touching_nuclei_measures_as_regionprops():
    from dsb.io.synthetic import nuclei_field

    image, labels = nuclei_field((256, 256), 20, touching=True, elongation=2.0, seed=3)
    assert labels.max() > 50
    _assert_as_regionprops(labels, image.astype(np.float64))


def test_labels_over_many_rows_are_counted_in_batches(monkeypatch):
    """Labels scattered over the image (an intensity image read as labels) span far more rows than they
    have pixels: the rows are counted a bounded batch at a time, to the same convex areas."""
    from dsb.core import labels as module

    labels = np.random.default_rng(1).integers(0, 300, (120, 150))
    expected = regionprops_table(labels, properties=("label", "area_convex"))
    monkeypatch.setattr(module, "_ROWS_AT_ONCE", 500)
    got = convex_areas(labels)
    assert got[expected["label"]].tolist() == expected["area_convex"].astype(int).tolist()
