"""A z-stack's nuclei joined into 3-D ones: dsb.core.stitch, dsb.workflows.volumes and ``dsb segment --stitch``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import dsb as run_dsb
from dsb.core.labels import overlapping_pairs
from dsb.core.stitch import greedy_matches, stitch_planes
from dsb.io.pixel_size import read_z_step
from dsb.io.synthetic import nuclei_volume
from dsb.io.writers import write_labels
from dsb.workflows.segment_files import measure_nuclei
from dsb.workflows.volumes import Stitch, measure_volumes, stitch_axis

tifffile = pytest.importorskip("tifffile")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images split their pixels into the same objects, whatever their numbers."""
    if not np.array_equal(a > 0, b > 0):
        return False
    ai, bi, *_ = overlapping_pairs(a.ravel(), b.ravel())
    return len(np.unique(ai)) == len(ai) and len(np.unique(bi)) == len(bi)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 5)), max_size=25, unique_by=lambda p: p[:2]))
def test_greedy_matches_chooses_as_one_pair_at_a_time_would(pairs):
    a = np.array([p[0] for p in pairs], int)
    b = np.array([p[1] for p in pairs], int)
    score = np.array([p[2] for p in pairs], float)  # ties, taken in the order given
    taken_a, taken_b, expected = set(), set(), []
    for k in np.argsort(-score, kind="stable"):
        if a[k] not in taken_a and b[k] not in taken_b:
            taken_a.add(a[k])
            taken_b.add(b[k])
            expected.append((int(a[k]), int(b[k])))
    got_a, got_b = greedy_matches(a, b, score)
    assert list(zip(got_a.tolist(), got_b.tolist())) == expected


@pytest.mark.parametrize("offset", [0, 4_000_000_000])
def test_whole_nuclei_numbered_anew_in_each_plane_stitch_back_into_themselves(offset):
    _, truth = nuclei_volume((16, 96, 96), diameter=16, z_step=2.0, seed=2)
    rng = np.random.default_rng(0)
    planes = np.zeros(truth.shape, np.int64)
    for z, plane in enumerate(truth):  # each plane its own numbering, in another order
        numbers = rng.permutation(int(truth.max()) + 1) + 1 + offset
        planes[z] = np.where(plane > 0, numbers[plane], 0)
    stitched = stitch_planes(planes)
    assert stitched.dtype == np.int32
    assert same_partition(stitched, truth)
    assert stitched.max() == truth.max()
    # Numbered in the order they begin: by plane, then by their own label there.
    firsts = [int(np.nonzero(stitched == k)[0].min()) for k in range(1, stitched.max() + 1)]
    assert firsts == sorted(firsts)


def test_two_nuclei_under_one_the_more_alike_takes_its_label_and_a_gap_splits():
    planes = np.zeros((4, 1, 12), np.int32)
    planes[0, 0, 0:6] = 1   # 6 px
    planes[0, 0, 6:8] = 2   # 2 px: wholly under the next plane's nucleus too
    planes[1, 0, 0:8] = 5   # covers both; more like 1 (IoU 6/8) than 2 (2/8)
    planes[2, 0, 10:12] = 3  # apart from every nucleus above: a new one
    planes[3, 0, 0:8] = 4   # nothing above it in plane 2: a new nucleus, although plane 1 had one here
    out = stitch_planes(planes)[:, 0]
    assert out[0, :8].tolist() == [1] * 6 + [2] * 2
    assert out[1, :8].tolist() == [1] * 8
    assert out[2, 10:].tolist() == [3, 3]
    assert out[3, :8].tolist() == [4] * 8


def test_the_overlap_is_a_share_of_the_smaller_nucleus():
    planes = np.zeros((2, 1, 20), np.int32)
    planes[0, 0, 0:20] = 1
    planes[1, 0, 8:12] = 7  # a cap: a fifth of the section above (IoU 0.2), wholly under it
    assert stitch_planes(planes, 1.0).max() == 1
    planes[0, 0, 10:] = 0
    planes[1, 0, 8:12] = 7  # half of its 4 pixels under the 10 above
    assert stitch_planes(planes, 0.5).max() == 1
    assert stitch_planes(planes, 0.6).max() == 2


def test_stitch_planes_refuses_what_it_cannot_take():
    with pytest.raises(TypeError, match="must be 3-D"):
        stitch_planes(np.zeros((4, 4), int))
    with pytest.raises(TypeError, match="must hold integers"):
        stitch_planes(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="min_overlap"):
        stitch_planes(np.zeros((2, 4, 4), int), 0)


def test_stitch_settings_are_checked_when_made():
    with pytest.raises(ValueError, match="overlap must be in"):
        Stitch(min_overlap=0)
    with pytest.raises(ValueError, match="z step"):
        Stitch(z_step=-1.0)
    assert Stitch(z_step=0.5).min_overlap == 0.5


def test_stitch_axis():
    assert stitch_axis("z") == 0
    assert stitch_axis("tz") == 1
    assert stitch_axis("zt") == 0
    assert stitch_axis("f") == 0
    assert stitch_axis("t") is None


def test_volumes_from_the_sections_are_the_nuclei_measured_in_3d():
    image, truth = nuclei_volume((12, 80, 96), diameter=18, z_step=2.0, seed=5)
    sections = []
    for z in range(truth.shape[0]):
        table = measure_nuclei(truth[z], image[z].astype(float))
        table.insert(0, "z", z)
        sections.append(table)
    volumes = measure_volumes(pd.concat(sections, ignore_index=True), z="z", planes=12, pixel_size=0.5, z_step=1.5)
    assert volumes["label"].tolist() == list(range(1, truth.max() + 1))
    for row in volumes.itertuples():
        zz, yy, xx = np.nonzero(truth == row.label)
        assert row.volume == zz.size
        assert (row.z_first, row.z_last) == (zz.min(), zz.max())
        assert len(np.unique(zz)) == zz.max() - zz.min() + 1
        np.testing.assert_allclose([row.centroid_z, row.centroid_row, row.centroid_col],
                                   [zz.mean(), yy.mean(), xx.mean()], atol=1e-9)
        values = image[zz, yy, xx].astype(float)
        np.testing.assert_allclose([row.integrated_intensity, row.mean_intensity], [values.sum(), values.mean()])
        assert row.max_area == max(np.count_nonzero(truth[z] == row.label) for z in np.unique(zz))
        np.testing.assert_allclose(row.volume_um3, zz.size * 0.25 * 1.5)
        np.testing.assert_allclose(np.pi / 6 * row.equivalent_diameter_um ** 3, row.volume_um3)
        np.testing.assert_allclose(row.centroid_z_um, zz.mean() * 1.5)
        edge = zz.min() == 0 or zz.max() == 11 or yy.min() == 0 or xx.min() == 0 or yy.max() == 79 or xx.max() == 95
        assert row.touches_edge == edge


def test_volumes_leave_out_pixels_without_a_value():
    labels = np.zeros((3, 6, 6), np.int32)
    labels[0, 1:3, 1:3] = labels[1, 1:3, 1:3] = 1   # 8 voxels
    labels[2, 4:6, 4:6] = 2                           # 4 voxels, every one NaN
    image = np.full(labels.shape, 10.0)
    image[1, 1, 1:3] = np.nan                         # half of nucleus 1's second section
    image[2] = np.nan
    channels = np.stack([image * 0 + 5.0, image * 0 + 5.0], axis=-1)
    channels[0, ..., 1] = np.nan                      # a channel without a value in nucleus 1's first section
    sections = []
    for z in range(3):
        table = measure_nuclei(labels[z], image[z], channels=channels[z])
        table.insert(0, "z", z)
        sections.append(table)
    volumes = measure_volumes(pd.concat(sections, ignore_index=True), z="z", planes=3).set_index("label")
    assert volumes.loc[1, "mean_intensity"] == 10.0
    assert volumes.loc[1, "integrated_intensity"] == 60.0
    assert volumes.loc[1, "volume"] == 8
    # Each channel's mean over the sections that have one: c1 has none in nucleus 1's first.
    assert volumes.loc[1, "mean_intensity_c0"] == volumes.loc[1, "mean_intensity_c1"] == 5.0
    assert np.isnan(volumes.loc[2, "mean_intensity_c0"])
    assert np.isnan(volumes.loc[2, "mean_intensity"]) and np.isnan(volumes.loc[2, "integrated_intensity"])


def test_the_z_step_is_read_from_ome_and_imagej_files_and_written_with_the_labels(tmp_path):
    stack = np.zeros((3, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 0.75, "unit": "um"})
    assert read_z_step(tmp_path / "ij.tif") == pytest.approx(0.75)
    tifffile.imwrite(tmp_path / "a.ome.tif", stack, metadata={"axes": "ZYX", "PhysicalSizeZ": 400,
                                                              "PhysicalSizeZUnit": "nm"})
    assert read_z_step(tmp_path / "a.ome.tif") == pytest.approx(0.4)
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    assert read_z_step(tmp_path / "plain.tif") is None
    assert read_z_step(tmp_path / "a.png") is None
    write_labels(tmp_path / "labels.tif", np.ones((3, 8, 8), np.int32), "z", pixel_size=0.25, z_step=1.5)
    assert read_z_step(tmp_path / "labels.tif") == pytest.approx(1.5)


@pytest.fixture(scope="module")
def volume():
    return nuclei_volume((10, 128, 128), diameter=20, z_step=2.0, seed=11)


def test_dsb_segment_stitch_counts_each_nucleus_of_a_z_stack_once(tmp_path, volume):
    image, truth = volume
    tifffile.imwrite(tmp_path / "vol.tif", image, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    plain = run_dsb("segment", tmp_path / "vol.tif", "--out", tmp_path / "planes", "--diameter", 20)
    assert plain.exit_code == 0, plain.output
    result = run_dsb("segment", tmp_path / "vol.tif", "--out", tmp_path / "out", "--diameter", 20, "--stitch",
                     "--rois")
    assert result.exit_code == 0, result.output
    per_plane = pd.read_csv(tmp_path / "planes" / "summary.csv")["nuclei"].item()
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    labels = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    volumes = pd.read_csv(summary["measurements_3d"].item())
    sections = pd.read_csv(tmp_path / "out" / "vol_nuclei.csv")
    # The shipped model finds each of these isolated nuclei; stitched, each is counted once.
    found = same_partition_count(truth, labels)
    assert found >= 0.9 * truth.max()
    assert summary["nuclei"].item() == len(volumes) == len(np.unique(labels)) - 1
    assert abs(len(volumes) - truth.max()) <= 2
    assert per_plane == len(sections) > 3 * len(volumes)
    # One label per 3-D nucleus in the label TIFF, the sections' table and the ROIs' names alike.
    for row in sections.sample(20, random_state=0).itertuples():
        assert labels[row.z, int(row.centroid_row), int(row.centroid_col)] in (row.label, 0)
    assert set(sections["label"]) == set(volumes["label"])
    # Each plane's rows by 3-D label, as dsb measure lists them.
    assert sections.groupby("z")["label"].apply(lambda k: k.is_monotonic_increasing).all()
    for row in volumes.itertuples():
        assert row.volume == np.count_nonzero(labels == row.label)
    np.testing.assert_allclose(volumes["volume_um3"], volumes["volume"] * 0.25 * 1.0)
    import roifile

    names = {roi.name for roi in roifile.roiread(tmp_path / "out" / "vol_rois.zip")}
    assert {int(n.rsplit("-", 1)[1]) for n in names} == set(volumes["label"])
    assert read_z_step(tmp_path / "out" / "vol_labels.tif") == pytest.approx(1.0)


def same_partition_count(truth: np.ndarray, pred: np.ndarray) -> int:
    """True 3-D nuclei matched by a predicted one at IoU above 0.5."""
    ai, bi, inter, area_t, area_p, _, _ = overlapping_pairs(truth.ravel(), pred.ravel().astype(np.int64))
    iou = inter / (area_t[ai] + area_p[bi] - inter)
    return len(np.unique(ai[iou > 0.5]))


def test_stitch_options_and_a_time_series(tmp_path, volume):
    image, _ = volume
    tifffile.imwrite(tmp_path / "movie.tif", image[:3], imagej=True, metadata={"axes": "TYX"})
    result = run_dsb("segment", tmp_path / "movie.tif", "--out", tmp_path / "out", "--diameter", 20, "--stitch")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert "no z planes" in summary["warning"].item()
    assert "no z planes" in result.output
    assert summary["measurements_3d"].isna().item()
    assert not (tmp_path / "out" / "movie_nuclei3d.csv").exists()
    assert "--stitch: no input is a z-stack" not in result.stderr  # the time series said why itself
    tifffile.imwrite(tmp_path / "plane.tif", image[4])
    result = run_dsb("segment", tmp_path / "plane.tif", "--out", tmp_path / "flat", "--diameter", 20, "--stitch")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["dsb: warning: --stitch: no input is a z-stack (a TIFF of Z planes, or "
                                          "of pages without axis names), so nothing was stitched"]
    for args, message in [(["--z-step", "1"], "--z-step is for --stitch"),
                          (["--stitch-overlap", "0.3"], "--stitch-overlap is for --stitch"),
                          (["--stitch", "--stitch-overlap", "0"], "--stitch-overlap"),
                          (["--stitch", "--z-step", "-1"], "--z-step")]:
        bad = run_dsb("segment", tmp_path / "movie.tif", "--out", tmp_path / "bad", *args)
        assert bad.exit_code == 2, (args, bad.output)
        (line,) = bad.stderr.splitlines()
        assert "segment: usage error: " in line and message in line, (args, line)
    assert not (tmp_path / "bad").exists()


def test_each_time_point_of_a_hyperstack_and_unnamed_pages_are_stitched(tmp_path, volume):
    image, _ = volume
    tifffile.imwrite(tmp_path / "tz.tif", np.stack([image, image[::-1]]), imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "pages.tif", image, photometric="minisblack")  # ten pages, no axis names
    result = run_dsb("segment", tmp_path / "tz.tif", tmp_path / "pages.tif", "--out", tmp_path / "out",
                     "--diameter", 20, "--stitch", "--z-step", 2)  # and no pixel size
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("file")
    tz = pd.read_csv(tmp_path / "out" / "tz_nuclei3d.csv")
    pages = pd.read_csv(tmp_path / "out" / "pages_nuclei3d.csv")
    labels = tifffile.imread(tmp_path / "out" / "tz_labels.tif")  # T, Z, Y, X
    # Each time point numbers its own 3-D nuclei from 1; the second is the first upside down.
    assert list(tz.columns[:2]) == ["t", "label"]
    first, second = tz[tz["t"] == 0], tz[tz["t"] == 1]
    assert len(first) == len(second) == len(pages) == labels[0].max() == labels[1].max()
    assert sorted(first["volume"]) == sorted(second["volume"]) == sorted(pages["volume"])
    assert summary.loc[str(tmp_path / "tz.tif"), "nuclei"] == 2 * len(pages)
    assert summary.loc[str(tmp_path / "pages.tif"), "nuclei"] == len(pages)
    assert "its pages were taken as the planes of a z-stack" in summary.loc[str(tmp_path / "pages.tif"), "warning"]
    assert "a z step without a pixel size" in summary.loc[str(tmp_path / "tz.tif"), "warning"]
