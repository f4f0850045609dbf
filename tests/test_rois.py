"""Outlines along the pixels' edges (dsb.core.outlines) and Fiji ROI sets of them (dsb.io.rois), as
`dsb segment --rois` writes them."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from roifile import ROI_TYPE, roiread
from scipy import ndimage
from skimage.draw import polygon2mask

from dsb.core.outlines import label_outlines
from dsb.io.rois import write_rois
from dsb.io.synthetic import nuclei_field


def _filled(polygon, shape):
    """The pixels whose centres lie inside ``polygon`` ((row, col) corners), as Fiji fills a traced ROI."""
    return polygon2mask(shape, polygon)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 6), st.booleans(), st.integers(0, 2**31 - 1))
def test_each_outline_holds_exactly_its_objects_pixels(height, width, values, smooth, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, values + 1, (height, width))
    if smooth:
        labels = ndimage.median_filter(labels, 3)
    # One piece each, as a nucleus is: each label's largest 8-connected piece. Its outline holds its
    # holes (and whatever lies in them).
    clean = np.zeros_like(labels)
    for k in range(1, values + 1):
        pieces, n = ndimage.label(labels == k, np.ones((3, 3)))
        if n:
            clean[pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))] = k
    found, outlines = label_outlines(clean)
    assert found.tolist() == sorted(set(np.unique(clean).tolist()) - {0})
    for k, outline in zip(found, outlines):
        assert np.all(outline % 1 == 0.5)  # pixel corners
        steps = np.diff(np.vstack([outline, outline[:1]]), axis=0)
        assert np.all((steps == 0).sum(axis=1) == 1)  # along the pixels' edges, one axis at a time
        np.testing.assert_array_equal(_filled(outline, clean.shape), ndimage.binary_fill_holes(clean == k))


def test_touching_nuclei_holes_and_pieces():
    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole: the outline holds it
    labels[1:6, 6:9] = 2  # touching 1 along a whole side
    labels[7, 7] = labels[8, 8] = 3  # touching at a corner only: one outline through it
    labels[10, 1:3] = 4
    labels[10, 8] = 4  # a second, smaller piece: the larger is outlined
    found, outlines = label_outlines(labels)
    assert found.tolist() == [1, 2, 3, 4]
    one, two, three, four = (_filled(o, labels.shape) for o in outlines)
    np.testing.assert_array_equal(one, ndimage.binary_fill_holes(labels == 1))
    np.testing.assert_array_equal(two, labels == 2)
    np.testing.assert_array_equal(three, labels == 3)
    assert four.sum() == 2 and four[10, 1:3].all()
    assert len(outlines[0]) == 4  # a square: its four corners, none on its straight sides


def test_a_field_of_nuclei_as_a_fiji_roi_set(tmp_path):
    _, labels = nuclei_field((200, 260), 18, touching=True, seed=2)
    path = write_rois(tmp_path / "field_rois.zip", labels)
    rois = roiread(path)
    assert [r.name for r in rois] == [f"{k:04d}" for k in range(1, labels.max() + 1)]
    assert zipfile.ZipFile(path).namelist() == [f"{r.name}.roi" for r in rois]
    for k, roi in enumerate(rois, start=1):
        assert roi.roitype == ROI_TYPE.TRACED
        # Fiji's pixel (x, y) spans x .. x + 1: the polygon in its coordinates holds the nucleus's pixels.
        corners = roi.coordinates()[:, ::-1] - 0.5
        np.testing.assert_array_equal(_filled(corners, labels.shape), labels == k)
        assert (roi.left, roi.top) == tuple(roi.coordinates().min(axis=0))
        assert (roi.right, roi.bottom) == tuple(roi.coordinates().max(axis=0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_stacks_rois_carry_their_frames_position(tmp_path):
    labels = np.zeros((2, 3, 10, 10), np.uint16)
    labels[1, 2, 2:5, 3:7] = 1
    labels[0, 0, 0, 0] = 1
    labels[0, 0, 5:7, 5:7] = 2
    rois = roiread(write_rois(tmp_path / "h_rois.zip", labels, "tz"))
    assert [(r.name, r.t_position, r.z_position) for r in rois] == [
        ("t1-z1-0001", 1, 1), ("t1-z1-0002", 1, 1), ("t2-z3-0001", 2, 3)]
    rois = roiread(write_rois(tmp_path / "s_rois.zip", labels[1], "f"))  # one unnamed axis: slices
    assert [(r.name, r.position) for r in rois] == [("s3-0001", 3)]


def test_coordinates_past_imagejs_16_bits_keep_their_float_copy():
    """ImageJ's integer coordinates end at 60535 (roifile then stores floats): kept, so Fiji reads them."""
    from roifile import ImagejRoi

    from dsb.io.rois import imagej_rois

    labels = np.zeros((4, 61_000), np.int32)
    labels[1:3, 60_990:60_995] = 7
    back = ImagejRoi.frombytes(imagej_rois(labels)[0].tobytes())
    assert back.coordinates().min(axis=0).tolist() == [60_990, 1] and back.coordinates().max(axis=0).tolist() == [
        60_995, 3]


def test_no_nuclei_is_an_empty_set_and_a_bad_shape_is_refused(tmp_path):
    path = write_rois(tmp_path / "none_rois.zip", np.zeros((5, 5), np.int32))
    assert zipfile.ZipFile(path).namelist() == []
    with pytest.raises(ValueError, match="must be"):
        write_rois(tmp_path / "x.zip", np.zeros((2, 5, 5), np.int32))
    assert not (tmp_path / "x.zip").exists()


def test_dsb_segment_rois_for_images_and_stacks(tmp_path):
    from conftest import dsb as run_dsb

    image, _ = nuclei_field((128, 128), 20, seed=5)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "one.tif", image)
    tifffile.imwrite(tmp_path / "in" / "movie.tif", np.stack([image, image[::-1]]), imagej=True,
                     metadata={"axes": "TYX"})
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "in", "--out", out, "--rois", "--diameter", 20)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("file")
    assert summary["rois"].tolist() == [str(out / "movie_rois.zip"), str(out / "one_rois.zip")]
    labels = tifffile.imread(out / "one_labels.tif")
    rois = roiread(out / "one_rois.zip")
    table = pd.read_csv(out / "one_nuclei.csv")
    assert [int(r.name) for r in rois] == table["label"].tolist() and len(rois) >= 5
    for roi in rois:
        np.testing.assert_array_equal(_filled(roi.coordinates()[:, ::-1] - 0.5, labels.shape),
                                      labels == int(roi.name))
    movie = roiread(out / "movie_rois.zip")
    stack = tifffile.imread(out / "movie_labels.tif")
    assert {r.position for r in movie} == {1, 2}
    assert sum(r.position == 2 for r in movie) == stack[1].max()
    # Without --rois, none.
    result = run_dsb("segment", tmp_path / "in" / "one.tif", "--out", tmp_path / "plain", "--diameter", 20)
    assert result.exit_code == 0 and not (tmp_path / "plain" / "one_rois.zip").exists()
    assert pd.read_csv(tmp_path / "plain" / "summary.csv")["rois"].isna().all()


def test_block_wise_images_get_no_rois_and_say_so(tmp_path):
    from conftest import dsb as run_dsb

    image, _ = nuclei_field((200, 200), 16, seed=6)
    tifffile.imwrite(tmp_path / "big.tif", image)
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "big.tif", "--out", out, "--rois", "--block-size", 96, "--diameter", 16)
    assert result.exit_code == 0, result.output
    assert "big.tif: segmented block-wise: no overlay or ROIs are written for it" in result.output
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["status"] == "ok" and "block-wise" in row["warning"] and pd.isna(row["rois"])
    assert not (out / "big_rois.zip").exists() and (out / "big_labels.tif").exists()
