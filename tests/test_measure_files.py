"""dsb measure: the tables of dsb segment for label images made elsewhere or corrected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import dsb as run_dsb
from conftest import error_line
from PIL import Image
from roifile import roiread

import dsb
from dsb.io.synthetic import nuclei_field
from dsb.workflows.measure_files import MEASURE_SUMMARY_COLUMNS
from dsb.workflows.segment_files import MEASUREMENT_COLUMNS


@pytest.fixture
def field(tmp_path):
    """A synthetic field and its true labels, the labels numbered 3, 6, 9... as a hand-made file may be."""
    image, labels = nuclei_field((160, 200), 18, seed=4)
    return image, (labels * 3).astype(np.uint16)


def test_measuring_dsb_segments_labels_gives_its_table(tmp_path, field):
    image, _ = field
    (tmp_path / "imgs").mkdir()
    tifffile.imwrite(tmp_path / "imgs" / "a.tif", image)
    assert run_dsb("segment", tmp_path / "imgs", "--out", tmp_path / "seg", "--diameter", 18).exit_code == 0
    result = run_dsb("measure", tmp_path / "imgs", "--labels", tmp_path / "seg", "--out", tmp_path / "meas", "--rois")
    assert result.exit_code == 0, result.output
    segmented = pd.read_csv(tmp_path / "seg" / "a_nuclei.csv")
    measured = pd.read_csv(tmp_path / "meas" / "a_nuclei.csv")
    pd.testing.assert_frame_equal(measured, segmented.drop(columns="confidence"))
    summary = pd.read_csv(tmp_path / "meas" / "summary.csv")
    assert list(summary.columns) == list(MEASURE_SUMMARY_COLUMNS)
    assert summary.iloc[0][["file", "labels", "status", "nuclei"]].tolist() == [
        str(tmp_path / "imgs" / "a.tif"), str(tmp_path / "seg" / "a_labels.tif"), "ok", len(measured)]
    assert [int(r.name) for r in roiread(tmp_path / "meas" / "a_rois.zip")] == measured["label"].tolist()
    assert f"{len(measured)} nuclei of 1 image measured into" in result.stdout


def test_label_images_beside_their_images_keep_their_values(tmp_path, field):
    image, labels = field
    folder = tmp_path / "cellpose"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(labels.astype(np.uint8)).save(folder / "a_cp_masks.png")  # Cellpose's name
    tifffile.imwrite(folder / "b.tif", image[::-1])
    tifffile.imwrite(folder / "b_masks.tif", labels[::-1])
    result = run_dsb("measure", folder, "--out", tmp_path / "out", "--overlay")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["file"].tolist() == [str(folder / "a.png"), str(folder / "b.tif")]  # no label file as an image
    table = pd.read_csv(tmp_path / "out" / "a_nuclei.csv")
    assert list(table.columns) == [c for c in MEASUREMENT_COLUMNS if c != "confidence"]
    assert table["label"].tolist() == sorted(set(np.unique(labels).tolist()) - {0})  # 3, 6, 9...
    row = table.iloc[1]
    own = labels == row["label"]
    assert row["area"] == own.sum() and row["mean_intensity"] == pytest.approx(image[own].mean(), rel=1e-5)
    assert Image.open(tmp_path / "out" / "b_overlay.png").size == image.shape[::-1]


def test_stardist_layout_channels_and_micrometres(tmp_path, field):
    image, labels = field
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    two = np.stack([image, 255 - image]).astype(np.uint8)  # DNA stain in channel 0, a marker in 1
    tifffile.imwrite(tmp_path / "images" / "w1.ome.tif", two, ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Name": ["DAPI", "GFP"]}})
    tifffile.imwrite(tmp_path / "masks" / "w1.tif", labels)  # StarDist: the image's own name
    result = run_dsb("measure", tmp_path / "images", "--labels", tmp_path / "masks", "--out", tmp_path / "out",
                     "--channel", "dapi")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "w1_nuclei.csv")
    assert table["mean_intensity"].tolist() == pytest.approx(table["mean_intensity_DAPI"].tolist())
    np.testing.assert_allclose(table["mean_intensity_GFP"], 255 - table["mean_intensity_DAPI"], rtol=1e-4)
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.25, rtol=1e-5)
    assert pd.read_csv(tmp_path / "out" / "summary.csv")["pixel_size"].tolist() == [0.5]


def test_bad_pairs_are_one_line_each(tmp_path, field):
    image, labels = field
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    result = run_dsb("measure", folder, "--out", tmp_path / "out")
    error_line(result, 3, "a.tif", "has no label image in", "a_masks.tif, a_labels.tif, a_cp_masks.png or a_masks.geojson")
    assert not (tmp_path / "out").exists()  # told before anything is written
    tifffile.imwrite(folder / "a_masks.tif", labels)
    tifffile.imwrite(folder / "a_labels.tif", labels)
    result = run_dsb("measure", folder, "--out", tmp_path / "out")
    error_line(result, 3, "a.tif", "has 2 label images (a_masks.tif, a_labels.tif)")
    (folder / "a_labels.tif").unlink()
    tifffile.imwrite(folder / "b.tif", image)
    tifffile.imwrite(folder / "b_masks.tif", labels[:100])  # of another size
    tifffile.imwrite(folder / "c.tif", image)
    tifffile.imwrite(folder / "c_masks.tif", labels.astype(np.float32) + 0.5)
    result = run_dsb("measure", folder, "--out", tmp_path / "out")
    error_line(result, 3, "b_masks.tif", "label image is 100x200 but its image b.tif is 160x200")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_nuclei.csv"]  # whole, as are those before
    result = run_dsb("measure", folder, "--out", tmp_path / "out", "--skip-bad")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("file")
    assert summary["status"].tolist() == ["ok", "skipped", "skipped"]
    assert "not whole numbers" in summary.loc[str(folder / "c.tif"), "error"]
    assert "skipped: " in result.stderr and "1 image measured" in result.stdout
    (folder / "a_masks.tif").unlink()
    result = run_dsb("measure", folder / "a.tif", "--out", tmp_path / "none", "--skip-bad")
    error_line(result, 3, "no image to measure", "all skipped", "has no label image")


def test_a_bad_pair_leaves_no_new_output_folder(tmp_path, field):
    image, labels = field
    tifffile.imwrite(tmp_path / "b.tif", image)
    tifffile.imwrite(tmp_path / "b_masks.tif", labels[:100])
    result = run_dsb("measure", tmp_path / "b.tif", "--out", tmp_path / "new" / "out")
    error_line(result, 3, "b_masks.tif", "label image is 100x200 but its image b.tif is 160x200")
    assert not (tmp_path / "new").exists()


def test_dsb_measure_in_python(field):
    image, labels = field
    table = dsb.measure(labels, image)
    assert list(table.columns) == [c for c in MEASUREMENT_COLUMNS if c != "confidence"]
    assert table["label"].tolist() == sorted(set(np.unique(labels).tolist()) - {0})
    two = np.stack([image, 255 - image])  # channels first, as a TIFF stores them
    table = dsb.measure(labels, two, channel=0, pixel_size=0.5)
    np.testing.assert_allclose(table["mean_intensity_c1"], 255 - table["mean_intensity_c0"])
    np.testing.assert_allclose(table["mean_intensity"], table["mean_intensity_c0"])
    np.testing.assert_allclose(table["major_axis_um"], table["major_axis_length"] / 2)
    with pytest.raises(ValueError, match="shape"):
        dsb.measure(labels[:10], image)
    with pytest.raises(ValueError, match="pixel size"):
        dsb.measure(labels, image, pixel_size=-1)
    with pytest.raises(ValueError, match="no channel 2"):
        dsb.measure(labels, two, channel=2)
    with pytest.raises(TypeError):
        dsb.measure(labels.astype(float), image)


def test_a_files_own_label_values_may_reach_billions(tmp_path, field):
    """Measured as 1..K, each row named by its value: no table sized by the largest value."""
    from dsb.core.outlines import label_outlines

    image, labels = field
    huge = labels.astype(np.uint32)
    huge[huge == labels.max()] = 4_000_000_000
    table = dsb.measure(huge, image)
    assert table["label"].iloc[-1] == 4_000_000_000
    pd.testing.assert_frame_equal(table.iloc[:-1], dsb.measure(labels, image).iloc[:-1])
    found, outlines = label_outlines(huge)
    assert found[-1] == 4_000_000_000 and len(outlines) == len(table)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "v.tif", image)
    tifffile.imwrite(tmp_path / "in" / "v_masks.tif", huge)
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "out", "--rois")
    assert result.exit_code == 0, result.output
    assert roiread(tmp_path / "out" / "v_rois.zip")[-1].name == "4000000000"


def test_pairs_by_the_outputs_name_in_any_case_and_from_the_inputs(tmp_path, field):
    image, labels = field
    for folder in ("ome", "up", "imgs", "labs", "two"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "ome" / "a.ome.tiff", image, ome=True)
    tifffile.imwrite(tmp_path / "ome" / "a_labels.tif", labels)  # as dsb segment names a.ome.tiff's
    tifffile.imwrite(tmp_path / "up" / "B.TIF", image)
    tifffile.imwrite(tmp_path / "up" / "B_MASKS.TIF", labels)
    tifffile.imwrite(tmp_path / "imgs" / "c.tif", image)
    tifffile.imwrite(tmp_path / "labs" / "c_masks.tif", labels)  # given on the command line
    result = run_dsb("measure", tmp_path / "ome", tmp_path / "up", tmp_path / "imgs" / "c.tif",
                     tmp_path / "labs" / "c_masks.tif", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert [Path(p).name for p in summary["labels"]] == ["a_labels.tif", "B_MASKS.TIF", "c_masks.tif"]
    # A folder of label files beside the folder of images pairs as well.
    result = run_dsb("measure", tmp_path / "imgs", tmp_path / "labs", "--out", tmp_path / "out2")
    assert result.exit_code == 0, result.output
    # A label file without its image, and two label images of one image, are each one line.
    result = run_dsb("measure", tmp_path / "labs" / "c_masks.tif", "--out", tmp_path / "out3")
    error_line(result, 3, "c_masks.tif", "is a label image, of an image 'c' not given")
    tifffile.imwrite(tmp_path / "two" / "d.tif", image)
    tifffile.imwrite(tmp_path / "two" / "d_masks.tif", labels)
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "two" / "d_masks.png")
    result = run_dsb("measure", tmp_path / "two", "--out", tmp_path / "out4")
    error_line(result, 3, "d.tif", "has 2 label images (d_masks.tif, d_masks.png)")


def test_label_images_as_stardist_cellpose_and_fiji_save_them(tmp_path, field):
    """masks/NAME.ome.tif beside images/NAME.ome.tif; Cellpose's NAME.ome_cp_masks.png; a 32-bit float
    label image of whole values (Fiji's); a multi-channel image measured without a channel is warned of."""
    image, labels = field
    for folder in ("sd/images", "sd/masks", "cp"):
        (tmp_path / folder).mkdir(parents=True)
    tifffile.imwrite(tmp_path / "sd" / "images" / "w0.ome.tif", image, ome=True)
    tifffile.imwrite(tmp_path / "sd" / "masks" / "w0.ome.tif", labels.astype(np.float32))
    result = run_dsb("measure", tmp_path / "sd" / "images", "--labels", tmp_path / "sd" / "masks",
                     "--out", tmp_path / "o1")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "o1" / "w0_nuclei.csv")["label"].tolist() == sorted(set(labels.ravel()) - {0})
    # The folder of label files named as their images, given as an input: pointed to --labels.
    result = run_dsb("measure", tmp_path / "sd" / "images", tmp_path / "sd" / "masks", "--out", tmp_path / "o2")
    error_line(result, 3, "would write the same output files", "give the label images' folder as --labels")
    two = np.stack([image, image[::-1, ::-1]], axis=-1)  # a second image, not transparency, beside the first
    tifffile.imwrite(tmp_path / "cp" / "w1.ome.tif", np.moveaxis(two, -1, 0), ome=True, metadata={"axes": "CYX"})
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "cp" / "w1.ome_cp_masks.png")
    result = run_dsb("measure", tmp_path / "cp", "--out", tmp_path / "o3")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "o3" / "summary.csv")
    assert Path(summary["labels"][0]).name == "w1.ome_cp_masks.png"
    assert "--channel N" in summary["warning"][0] and "dsb: warning:" in result.stderr
    with pytest.warns(UserWarning, match="channel=N"):
        dsb.measure(labels, two)


def test_when_skip_bad_skips_every_input_each_reason_is_said(tmp_path, field):
    image, labels = field
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)  # no label image
    tifffile.imwrite(tmp_path / "in" / "b.tif", image)
    tifffile.imwrite(tmp_path / "in" / "b_masks.tif", labels[:50])  # of another size
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "out", "--skip-bad")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("skipped: ") and "a.tif" in lines[0] and "has no label image" in lines[0]
    assert lines[1].startswith("skipped: ") and "b.tif" in lines[1] and "label image is 50x200" in lines[1]
    assert lines[2].startswith("dsb: error: ") and "no image to measure (all skipped" in lines[2]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.tif").write_text("not an image")
    (tmp_path / "bad" / "y.png").write_bytes(b"")
    result = run_dsb("segment", tmp_path / "bad", "--out", tmp_path / "s", "--skip-bad")
    assert result.exit_code == 3 and result.stderr.count("skipped: ") == 2, result.stderr


def test_a_stack_measured_frame_by_frame_and_in_3d_as_dsb_segment_measures_it(tmp_path):
    """A z-stack corrected in napari (its labels saved as napari's writer saves them: the frames one after
    another) measures as dsb segment --stitch measured it; a time series frame by frame."""
    from dsb.io.synthetic import nuclei_volume

    volume, _ = nuclei_volume((6, 96, 96), 20, z_step=2.0, seed=12)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", volume, imagej=True,
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"}, resolution=(2.0, 2.0))
    seg = tmp_path / "seg"
    result = run_dsb("segment", tmp_path / "in", "--out", seg, "--stitch", "--diameter", 20)
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(seg / "stack_labels.tif")
    tifffile.imwrite(tmp_path / "in" / "stack_masks.tif", labels, photometric="minisblack")  # pages, no axes
    out = tmp_path / "out"
    result = run_dsb("measure", tmp_path / "in", "--out", out, "--volumes", "--geojson")
    assert result.exit_code == 0, result.output
    drop, order = ["confidence"], ["z", "label"]  # segment keeps each plane's rows in its own numbering's order

    def table(path):
        return pd.read_csv(path).drop(columns=[c for c in drop if c in pd.read_csv(path)]).sort_values(order) \
            .reset_index(drop=True)

    pd.testing.assert_frame_equal(table(out / "stack_nuclei.csv"), table(seg / "stack_nuclei.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "stack_nuclei3d.csv"),
                                  pd.read_csv(seg / "stack_nuclei3d.csv").drop(columns=drop))
    assert "volume_um3" in pd.read_csv(out / "stack_nuclei3d.csv").columns  # the file's pixel size and z step
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["nuclei"] == labels.max() and row["measurements_3d"] == str(out / "stack_nuclei3d.csv")
    # Without --volumes, the sections only; --z-step without it is a usage error.
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "plain")
    assert result.exit_code == 0 and not (tmp_path / "plain" / "stack_nuclei3d.csv").exists()
    assert run_dsb("measure", tmp_path / "in", "--out", tmp_path / "x", "--z-step", 1).exit_code == 2
    # A time series has no planes to measure in 3-D: frame by frame, and said.
    tifffile.imwrite(tmp_path / "in" / "stack.tif", volume, imagej=True, metadata={"axes": "TYX"})
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "movie", "--volumes")
    assert result.exit_code == 0 and "a time series with no z planes: --volumes left its frames apart" in result.output
    assert not (tmp_path / "movie" / "stack_nuclei3d.csv").exists()
    # A label stack of other frames than its image's: one line naming it.
    tifffile.imwrite(tmp_path / "in" / "stack_masks.tif", labels[:4], photometric="minisblack")
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "bad")
    error_line(result, 3, "stack_masks.tif", "label stack is 4 x 96 x 96 but its image stack.tif is 6 t x 96 x 96")
    # Labels numbered plane by plane, each plane in its own order, are no 3-D nuclei: measured, and said.
    tifffile.imwrite(tmp_path / "in" / "stack.tif", volume, imagej=True, metadata={"axes": "ZYX"})
    shuffled = labels.copy()
    shuffled[1::2] = np.where(labels[1::2] > 0, labels.max() + 1 - labels[1::2], 0)  # odd planes numbered backwards
    assert labels.max() >= 2
    tifffile.imwrite(tmp_path / "in" / "stack_masks.tif", shuffled, imagej=True, metadata={"axes": "ZYX"})
    result = run_dsb("measure", tmp_path / "in" / "stack.tif", "--out", tmp_path / "apart", "--volumes")
    assert result.exit_code == 0 and "are its labels numbered plane by plane?" in result.output


def test_a_label_stack_is_put_in_its_images_order_of_time_points_and_planes(tmp_path):
    from dsb.io.annotations import read_label_stack

    labels = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)  # t, z, y, x
    tifffile.imwrite(tmp_path / "tz.tif", labels, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "zt.tif", labels.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "pages.tif", labels.reshape(6, 4, 5), photometric="minisblack")
    np.testing.assert_array_equal(read_label_stack(tmp_path / "tz.tif", labels.shape, "tz"), labels)
    np.testing.assert_array_equal(read_label_stack(tmp_path / "pages.tif", labels.shape, "tz"), labels)
    # Stored with Z before T (an OME z-stack's order, saved as a hyperstack): put in the image's order.
    ome = labels.transpose(1, 0, 2, 3)
    tifffile.imwrite(tmp_path / "ome.ome.tif", ome, metadata={"axes": "ZTYX"})
    np.testing.assert_array_equal(read_label_stack(tmp_path / "ome.ome.tif", labels.shape, "tz"), labels)
    with pytest.raises(dsb.core.errors.BadDataError, match=r"label stack is 3 t x 2 z x 4 x 5 but its image is "):
        read_label_stack(tmp_path / "zt.tif", labels.shape, "tz")  # named T, Z but holding Z, T: refused


def test_a_label_file_of_no_nuclei_is_warned_about(tmp_path, field):
    image, labels = field
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", np.zeros_like(labels))
    tifffile.imwrite(tmp_path / "b.tif", image)
    (tmp_path / "b_masks.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                              '"geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, '
                                              '"properties": {}}]}')
    tifffile.imwrite(tmp_path / "c.tif", image)
    tifffile.imwrite(tmp_path / "c_masks.tif", labels)
    result = run_dsb("measure", tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False).set_index("file")
    assert "a_masks.tif) hold no label above 0" in summary.loc[str(tmp_path / "a.tif"), "warning"]
    assert "b_masks.geojson) hold no objects dsb reads as nuclei" in summary.loc[str(tmp_path / "b.tif"), "warning"]
    assert summary.loc[str(tmp_path / "c.tif"), "warning"] == ""
    assert sum("hold no" in line for line in result.stderr.splitlines()) == 2  # said on stderr too


def test_a_binary_mask_is_measured_object_by_object_and_warned_about(tmp_path, field):
    """0/255 over separate nuclei is a binary mask: one nucleus of solidity 0.2 before; a label image of two
    values whose one label has a stray fragment keeps its labels."""
    image, labels = field
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", np.where(labels > 0, 255, 0).astype(np.uint8))
    stray = labels.copy()
    stray[0:2, 0:2] = labels.max()  # a fragment of the last label, apart from it
    tifffile.imwrite(tmp_path / "b.tif", image)
    tifffile.imwrite(tmp_path / "b_masks.tif", stray)
    result = run_dsb("measure", tmp_path / "a.tif", tmp_path / "b.tif", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False).set_index("file")
    objects = len(np.unique(labels)) - 1
    assert summary.loc[str(tmp_path / "a.tif"), "nuclei"] == objects > 1
    note = (f"a_masks.tif: a binary mask (one value, {objects} separate objects), not a label image: each object "
            "taken as one nucleus; touching nuclei stay merged, give each its own value")
    assert summary.loc[str(tmp_path / "a.tif"), "warning"] == note
    table = pd.read_csv(tmp_path / "out" / "a_nuclei.csv")
    assert table["label"].tolist() == list(range(1, objects + 1)) and table["solidity"].min() > 0.8
    assert table["area"].sum() == (labels > 0).sum()
    assert summary.loc[str(tmp_path / "b.tif"), "warning"] == ""
    kept = pd.read_csv(tmp_path / "out" / "b_nuclei.csv")
    assert kept["label"].tolist() == sorted(set(np.unique(labels).tolist()) - {0})
    assert [line for line in result.stderr.splitlines() if "binary mask" in line] == [
        f"dsb: warning: {tmp_path / 'a.tif'}: {note}"]


def test_the_tables_keep_exact_counts_and_sub_pixel_centres_far_from_the_origin(tmp_path):
    """Six significant digits wrote 48,725,937 counts as 4.87259e+07 and a centroid at column 100,010.5 as 100010."""
    labels = np.zeros((16, 100_020), np.uint16)
    labels[2:14, 10:40] = 1
    labels[5:8, 100_010:100_012] = 2
    image = np.full(labels.shape, 100, np.uint16)
    image[labels == 1] = 54321
    tifffile.imwrite(tmp_path / "w.tif", image)
    tifffile.imwrite(tmp_path / "w_masks.tif", labels)
    result = run_dsb("measure", tmp_path / "w.tif", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "w_nuclei.csv").set_index("label")
    assert table.loc[1, "integrated_intensity"] == 12 * 30 * 54321 * 1.0
    assert table.loc[2, "centroid_col"] == 100_010.5 and table.loc[2, "centroid_row"] == 6.0
