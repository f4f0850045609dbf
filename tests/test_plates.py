"""OME-Zarr high-content screening plates (dsb.io.ome.plate_wells, dsb.workflows.plates): each field of each
well segmented as the image it holds, and each well's counts and medians in PLATE_wells.csv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from conftest import dsb as run_dsb  # noqa: E402
from conftest import error_line, same_nuclei  # noqa: E402
from dsb.core.errors import BadDataError  # noqa: E402
from dsb.io.images import image_header, image_name, read_channels, read_image, read_stack  # noqa: E402
from dsb.io.ome import is_plate, is_plate_field, plate_wells  # noqa: E402
from dsb.io.pixel_size import read_pixel_size, read_z_step  # noqa: E402
from dsb.io.synthetic import nuclei_field  # noqa: E402
from dsb.io.synthetic import write_plate as synthetic_plate  # noqa: E402
from dsb.workflows.plates import WELL_COLUMNS, well_table  # noqa: E402

SHAPE = (160, 192)
PIXEL = 0.5
# Wells and the nucleus diameters of their fields: two fields in A/1, one in B/2 (sparser, larger nuclei).
WELLS = {("A", "1"): (16, 20), ("B", "2"): (24,)}


def _image(diameter: float, seed: int) -> np.ndarray:
    return nuclei_field(SHAPE, diameter, seed=seed)[0]


def write_plate(path: Path, wells=WELLS, *, version: str = "0.4", axes: str = "tczyx", data=None) -> dict:
    """A plate of ``wells`` ({(row, column): diameters of its fields}); returns each field's 2-D image by path.
    ``data`` makes a field's stored array from its image (default: singleton axes around it)."""
    images, stored, seed = {}, {}, 0
    for well, diameters in wells.items():
        stored[well] = []
        for diameter in diameters:
            seed += 1
            image = _image(diameter, seed)
            stored[well].append(image.reshape((1,) * (len(axes) - 2) + image.shape) if data is None else data(image))
            images[str(path.joinpath(*well, str(len(stored[well]) - 1)))] = image
    fields = synthetic_plate(path, stored, axes=axes, pixel_size=PIXEL, version=version)
    assert list(images) == [str(f) for f in fields]
    return images


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_plate_lists_its_wells_and_fields_in_either_version(tmp_path, version):
    plate = tmp_path / "screen.ome.zarr"
    write_plate(plate, version=version)
    wells, problems = plate_wells(plate)
    assert problems == []
    assert [(w.name, w.row, w.column) for w in wells] == [("A1", "A", "1"), ("B2", "B", "2")]
    assert wells[0].fields == (plate / "A" / "1" / "0", plate / "A" / "1" / "1")
    assert is_plate(plate) and not is_plate(plate / "A" / "1") and not is_plate(tmp_path)
    assert is_plate_field(plate / "B" / "2" / "0") and not is_plate_field(plate / "B" / "2")
    assert image_name(plate / "B" / "2" / "0") == "screen_B_2_0"


def test_what_a_plate_lacks_is_named_and_the_rest_kept(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate)
    root = zarr.open_group(str(plate), mode="r+")
    meta = dict(root.attrs["plate"])
    meta["wells"] = [*meta["wells"], {"path": "C/3"}, {"path": "../elsewhere"}, "B/2", {"path": "A/1"}]
    root.attrs["plate"] = meta
    well = zarr.open_group(str(plate / "A" / "1"), mode="r+")
    well.attrs["well"] = {"images": [{"path": "0"}, {"path": "1"}, {"path": "7"}, {"path": "../../B/2/0"}, "1"]}
    wells, problems = plate_wells(plate)
    # Each well once, in the order listed; one the plate lacks holds no field.
    assert [(w.name, len(w.fields), w.listed) for w in wells] == [("A1", 2, 5), ("B2", 1, 1), ("C3", 0, 0)]
    said = {(str(p.path), p.message) for p in problems}
    assert said == {(str(plate / "A" / "1" / "7"), "a field the well lists is not in it"),
                    (str(plate / "A" / "1"), "lists a field {'path': '../../B/2/0'} whose path is no name in the well"),
                    (str(plate / "A" / "1"), "lists a field '1' whose path is no name in the well"),
                    (str(plate / "C" / "3"), "a well the plate lists is not in it"),
                    (str(plate), "lists a well {'path': '../elsewhere'} whose path is no ROW/COLUMN"),
                    (str(plate), "lists a well 'B/2' whose path is no ROW/COLUMN")}
    well.attrs["well"] = {"images": []}
    assert plate_wells(plate)[1][0].message == "its 'well' metadata list no fields"
    root.attrs["plate"] = {"wells": []}
    with pytest.raises(BadDataError, match="list no wells"):
        plate_wells(plate)


def test_a_field_reads_as_the_image_it_holds(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    images = write_plate(plate, {("A", "1"): (18,)})
    field = next(iter(images))
    image = images[field]
    # Its singleton t, c and z are no axes, as tifffile drops them from a TIFF's series.
    np.testing.assert_array_equal(read_image(field), image)
    assert read_channels(field).shape == (*SHAPE, 1)
    assert image_header(field).shape == SHAPE and image_header(field).axes == "YX"
    two = write_plate(tmp_path / "two.ome.zarr", {("A", "1"): (18,)},
                      data=lambda im: np.stack([im, 255 - im])[None, :, None])
    (field,) = two
    np.testing.assert_array_equal(read_image(field, 1), 255 - two[field])
    assert read_channels(field).shape == (*SHAPE, 2)
    stacked = write_plate(tmp_path / "z.ome.zarr", {("A", "1"): (18,)},
                          data=lambda im: np.stack([im, im[::-1], im[:, ::-1]])[None, None])
    (field,) = stacked
    frames, axes = read_stack(field)
    assert axes == "z" and frames.shape == (3, *SHAPE)
    np.testing.assert_array_equal(frames[1], stacked[field][::-1])


def _tables(summary: pd.DataFrame, wells: dict) -> dict[str, pd.DataFrame]:
    """Each well's nuclei, its fields' tables one after another."""
    rows = summary.set_index("file")
    return {well: pd.concat([pd.read_csv(rows.loc[f, "measurements"]) for f in fields], ignore_index=True)
            for well, fields in wells.items()}


def test_dsb_segment_of_a_plate_segments_each_field_and_tells_each_well(tmp_path):
    plate = tmp_path / "screen.ome.zarr"
    images = write_plate(plate)
    out = tmp_path / "out"
    result = run_dsb("segment", plate, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert f"{out / 'screen_wells.csv'}: each well's nuclei" in result.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary["file"].tolist() == list(images) and (summary["status"] == "ok").all()
    assert summary["pixel_size"].tolist() == [PIXEL] * 3  # each field's own OME-Zarr scale
    # Each field is segmented as its image is on its own.
    for (field, image), labels in zip(images.items(), summary["labels"]):
        assert Path(labels).name == f"{image_name(field)}_labels.tif"
        tifffile.imwrite(tmp_path / "alone.tif", image)
        alone = run_dsb("segment", tmp_path / "alone.tif", "--out", tmp_path / "alone")
        assert alone.exit_code == 0, alone.stderr
        assert same_nuclei(tifffile.imread(labels), tifffile.imread(tmp_path / "alone" / "alone_labels.tif"))
    # The wells: counts from the summary, medians over every nucleus of the well's fields.
    wells = pd.read_csv(out / "screen_wells.csv", dtype={"column": str})
    assert list(wells.columns[: len(WELL_COLUMNS)]) == list(WELL_COLUMNS)
    fields = {"A1": list(images)[:2], "B2": list(images)[2:]}
    tables = _tables(summary, fields)
    counts = summary.set_index("file")["nuclei"]
    for _, row in wells.iterrows():
        assert row["fields"] == row["segmented"] == len(fields[row["well"]])
        assert row["nuclei"] == sum(counts[f] for f in fields[row["well"]]) == len(tables[row["well"]])
        assert row["nuclei_per_field"] == pytest.approx(row["nuclei"] / row["fields"])
        table = tables[row["well"]]
        for column in ("area", "mean_intensity", "area_um2"):
            assert row[f"median_{column}"] == pytest.approx(table[column].median(), rel=1e-5)
        assert "median_perimeter" not in wells.columns and "median_label" not in wells.columns
    assert wells["well"].tolist() == ["A1", "B2"] and wells["column"].tolist() == ["1", "2"]
    # Larger nuclei in B2's field: the medians tell the wells apart.
    assert wells.loc[1, "median_area"] > wells.loc[0, "median_area"]
    # dsb measure of the same labels gives the same wells.
    measured = run_dsb("measure", plate, "--labels", out, "--out", tmp_path / "measured")
    assert measured.exit_code == 0, measured.stderr
    again = pd.read_csv(tmp_path / "measured" / "screen_wells.csv", dtype={"column": str})
    pd.testing.assert_frame_equal(again[list(WELL_COLUMNS)], wells[list(WELL_COLUMNS)])


def test_a_plate_s_cells_and_channels_reach_its_wells(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate, {("A", "1"): (18,)}, data=lambda im: np.stack([im, 255 - im])[None, :, None])
    out = tmp_path / "out"
    result = run_dsb("segment", plate, "--out", out, "--channel", 0, "--cell-expansion", 4)
    assert result.exit_code == 0, result.stderr
    wells = pd.read_csv(out / "p_wells.csv")
    table = pd.read_csv(out / "p_A_1_0_nuclei.csv")
    for column in ("mean_intensity_c1", "cytoplasm_mean_intensity_c1", "cell_area", "cell_area_um2"):
        assert wells.loc[0, f"median_{column}"] == pytest.approx(table[column].median(), rel=1e-5)


def test_a_field_larger_than_the_block_size_goes_block_by_block(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    images = write_plate(plate, {("A", "1"): (16,)})
    out = tmp_path / "out"
    result = run_dsb("segment", plate, "--out", out, "--block-size", 144, "--diameter", 16)
    assert result.exit_code == 0, result.stderr
    summary = pd.read_csv(out / "summary.csv")
    (labels,) = summary["labels"]
    assert labels.endswith("p_A_1_0_labels.zarr")  # an OME-Zarr label image, as an OME-Zarr image's
    (field,) = images  # segmented as the same image in a TIFF is, block by block
    tifffile.imwrite(tmp_path / "alone.tif", images[field])
    alone = run_dsb("segment", tmp_path / "alone.tif", "--out", tmp_path / "alone", "--block-size", 144,
                    "--diameter", 16)
    assert alone.exit_code == 0, alone.stderr
    assert same_nuclei(zarr.open_group(labels, mode="r")["0"][:],
                       tifffile.imread(tmp_path / "alone" / "alone_labels.tif"))
    wells = pd.read_csv(out / "p_wells.csv")
    assert wells.loc[0, "nuclei"] == summary.loc[0, "nuclei"] > 0


def test_a_plate_missing_a_well_stops_or_is_skipped(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate)
    root = zarr.open_group(str(plate), mode="r+")
    root.attrs["plate"] = {**root.attrs["plate"], "wells": [{"path": "A/1"}, {"path": "C/3"}, {"path": "B/2"}]}
    out = tmp_path / "out"
    error_line(run_dsb("segment", plate, "--out", out), 3, plate / "C" / "3", "a well the plate lists is not in it")
    assert not out.exists()  # nothing written
    result = run_dsb("segment", plate, "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["skipped", "ok", "ok", "ok"]
    assert summary.loc[0, "file"] == str(plate / "C" / "3")
    wells = pd.read_csv(out / "p_wells.csv")
    assert wells["well"].tolist() == ["A1", "C3", "B2"]  # the plate's order; C3 a well with nothing segmented
    assert wells.loc[1, ["fields", "segmented"]].tolist() == [0, 0] and np.isnan(wells.loc[1, "nuclei"])
    # A well given alone is no image: one line that says what to give.
    error_line(run_dsb("segment", plate / "A" / "1", "--out", tmp_path / "o2"), 3, "is a well of an OME-Zarr plate")


def test_a_well_table_of_fields_skipped_or_empty(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate, {("A", "1"): (16, 16), ("A", "2"): (16,)})
    wells, _ = plate_wells(plate)
    a1, a2 = wells
    pd.DataFrame({"label": [1, 2, 3], "area": [10, 20, 40], "mean_intensity": [1.0, np.nan, 3.0],
                  "perimeter": [1, 2, 3]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame(columns=["label", "area", "mean_intensity"]).to_csv(tmp_path / "none.csv", index=False)
    # A field spelled otherwise than the plate spells it is the same field.
    summary = pd.DataFrame({"file": [str(a1.fields[0]) + "/", str(a1.fields[1]), str(a2.fields[0])],
                            "status": ["ok", "skipped", "ok"], "nuclei": [3, 0, 0],
                            "measurements": [str(tmp_path / "one.csv"), "", str(tmp_path / "none.csv")]})
    table = well_table(wells, summary, "p").set_index("well")
    assert table.loc["A1", ["plate", "fields", "segmented", "nuclei", "nuclei_per_field"]].tolist() == [
        "p", 2, 1, 3, 3.0]
    assert table.loc["A1", "median_area"] == 20 and table.loc["A1", "median_mean_intensity"] == 2.0
    assert table.loc["A2", "nuclei"] == 0 and np.isnan(table.loc["A2", "median_area"])
    assert "median_perimeter" not in table.columns and "median_label" not in table.columns
    # A well none of whose fields was segmented counts no nuclei: it is not a well without them.
    failed = well_table(wells, summary.assign(status=["ok", "skipped", "skipped"])).set_index("well")
    assert failed.loc["A2", "segmented"] == 0 and np.isnan(failed.loc["A2", "nuclei"])
    # A field's table gone between segmenting and the wells: named.
    (tmp_path / "one.csv").unlink()
    with pytest.raises(BadDataError, match="cannot read the field's measurements") as caught:
        well_table(wells, summary)
    said = "cannot read the field's measurements (No such file or directory)"
    assert str(caught.value) == f"{tmp_path / 'one.csv'}: {said}"


def test_a_plate_on_dask_workers_gives_what_one_process_does(tmp_path):
    pytest.importorskip("distributed")
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate)
    here, there = tmp_path / "here", tmp_path / "there"
    assert run_dsb("segment", plate, "--out", here).exit_code == 0
    result = run_dsb("segment", plate, "--out", there, "--workers", 2)
    assert result.exit_code == 0, result.stderr
    ours, theirs = (pd.read_csv(out / "summary.csv") for out in (here, there))
    assert theirs["nuclei"].tolist() == ours["nuclei"].tolist()
    for a, b in zip(ours["labels"], theirs["labels"]):
        np.testing.assert_array_equal(tifffile.imread(a), tifffile.imread(b))
    pd.testing.assert_frame_equal(pd.read_csv(here / "p_wells.csv"), pd.read_csv(there / "p_wells.csv"))


def test_plates_are_named_by_their_folder_however_given(tmp_path, monkeypatch):
    plate = tmp_path / "plate42"  # a plate folder need not end in .zarr
    write_plate(plate, {("A", "1"): (16,), ("B", "2"): (16,)})
    monkeypatch.chdir(plate)
    result = run_dsb("segment", ".", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*_labels.tif")) == [
        "plate42_A_1_0_labels.tif", "plate42_B_2_0_labels.tif"]
    assert pd.read_csv(tmp_path / "out" / "plate42_wells.csv")["nuclei"].gt(0).all()
    # Two plates of one name would write one wells table: refused before anything is written.
    monkeypatch.chdir(tmp_path)
    write_plate(tmp_path / "other" / "plate42", {("C", "3"): (16,)})
    error_line(run_dsb("segment", "plate42", "other/plate42", "--out", "two"), 3, "other/plate42",
               "would write the same wells table as plate42")
    assert not (tmp_path / "two").exists()


def test_time_series_and_z_stack_fields_count_nuclei_not_sections(tmp_path):
    timed = write_plate(tmp_path / "t.ome.zarr", {("A", "1"): (18,), ("A", "2"): (18,)},
                        data=lambda im: np.stack([im, im[::-1], im[:, ::-1]])[:, None, None])
    result = run_dsb("segment", tmp_path / "t.ome.zarr", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.stderr
    wells = pd.read_csv(tmp_path / "t" / "t_wells.csv")
    assert wells[["well", "t"]].values.tolist() == [["A1", 0], ["A1", 1], ["A1", 2], ["A2", 0], ["A2", 1], ["A2", 2]]
    for field, image in timed.items():  # each time point's nuclei, as the field's table has them
        table = pd.read_csv(tmp_path / "t" / f"{image_name(field)}_nuclei.csv")
        rows = wells[wells["well"] == ("A1" if "/A/1/" in field else "A2")]
        assert rows["nuclei"].tolist() == table.groupby("t").size().tolist()
        assert rows["median_area"].tolist() == pytest.approx(table.groupby("t")["area"].median().tolist())
    write_plate(tmp_path / "z.ome.zarr", {("A", "1"): (18,)}, axes="czyx",
                data=lambda im: np.stack([im, im, im])[None])
    result = run_dsb("segment", tmp_path / "z.ome.zarr", "--out", tmp_path / "z", "--stitch")
    assert result.exit_code == 0, result.stderr
    wells = pd.read_csv(tmp_path / "z" / "z_wells.csv")
    solids = pd.read_csv(tmp_path / "z" / "z_A_1_0_nuclei3d.csv")
    sections = pd.read_csv(tmp_path / "z" / "z_A_1_0_nuclei.csv")
    assert wells.loc[0, "nuclei"] == len(solids) < len(sections)  # each 3-D nucleus once, not each plane's
    assert wells.loc[0, "median_volume"] == pytest.approx(solids["volume"].median())


FIELD_META = {"version": "0.4", "axes": [{"name": a} for a in "tczyx"], "datasets": [{"path": "0"}]}


@pytest.mark.parametrize("attrs, said", [
    ({"multiscales": {"datasets": []}}, "name no levels"),  # a dict, not a list of them
    ({"multiscales": [{**FIELD_META, "axes": [{"type": "space"}] * 5}]}, None),  # unnamed: read by the shape
    ({"multiscales": [FIELD_META], "ome": "0.5"}, None),  # an `ome` that is no dict holds no 0.5 metadata
])
def test_a_field_s_odd_metadata_is_one_line_or_read(tmp_path, attrs, said):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate, {("A", "1"): (18,)})
    field = zarr.open_group(str(plate / "A" / "1" / "0"), mode="r+")
    field.attrs.clear()
    field.attrs.update(attrs)
    result = run_dsb("segment", plate, "--out", tmp_path / "out")
    if said is None:
        assert result.exit_code == 0, result.stderr
    else:
        error_line(result, 3, plate / "A" / "1" / "0", said)


def test_a_bad_plate_skipped_leaves_the_others_their_wells(tmp_path):
    write_plate(tmp_path / "good.ome.zarr", {("A", "1"): (18,)})
    write_plate(tmp_path / "bad.ome.zarr", {("A", "1"): (18,)})
    zarr.open_group(str(tmp_path / "bad.ome.zarr"), mode="r+").attrs["plate"] = "yes"
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "bad.ome.zarr", tmp_path / "good.ome.zarr", "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.stderr
    assert "list no wells" in result.stderr
    assert (out / "good_wells.csv").is_file() and not (out / "bad_wells.csv").exists()


def test_broken_metadata_is_named_and_scales_not_as_ngff_says_give_no_pixel_size(tmp_path):
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate, {("A", "1"): (18,), ("B", "2"): (18,)})
    (plate / "A" / "1" / ".zattrs").write_text("{ not json")
    (plate / "B" / "2" / "0" / "0" / ".zarray").write_text("")
    wells, problems = plate_wells(plate)
    assert [(w.name, w.fields) for w in wells] == [("A1", ()), ("B2", (plate / "B" / "2" / "0",))]
    assert str(problems[0].path) == str(plate / "A" / "1") and "cannot open the Zarr store" in problems[0].message
    error_line(run_dsb("segment", plate / "B" / "2" / "0", "--out", tmp_path / "o"), 3, plate / "B" / "2" / "0",
               "cannot open its level '0'")
    # A scale of another length than the axes is no pixel size (not a pixel of 1 in the other unit).
    write_plate(plate, {("A", "1"): (18,)})
    field = zarr.open_group(str(plate / "A" / "1" / "0"), mode="r+")
    meta = field.attrs["multiscales"]
    meta[0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [0.65, 0.65]}]
    field.attrs["multiscales"] = meta
    assert read_pixel_size(plate / "A" / "1" / "0") is None


def test_a_z_stack_field_s_z_step_and_a_blank_time_point(tmp_path):
    plate = tmp_path / "z.ome.zarr"
    write_plate(plate, {("A", "1"): (18,)}, axes="zyx", data=lambda im: np.stack([im, im, im]))
    field = zarr.open_group(str(plate / "A" / "1" / "0"), mode="r+")
    meta = field.attrs["multiscales"]
    meta[0]["axes"][0]["unit"] = "micrometer"
    meta[0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, PIXEL, PIXEL]}]
    field.attrs["multiscales"] = meta
    assert read_z_step(plate / "A" / "1" / "0") == 2.0
    result = run_dsb("segment", plate, "--out", tmp_path / "z", "--stitch")
    assert result.exit_code == 0, result.stderr
    solids = pd.read_csv(tmp_path / "z" / "z_A_1_0_nuclei3d.csv")
    np.testing.assert_allclose(solids["volume_um3"], solids["volume"] * 2.0 * PIXEL**2)
    # A time point without a nucleus in any well still has its rows: a blank frame is no missing one.
    blank = np.zeros(SHAPE, np.uint8)
    write_plate(tmp_path / "t.ome.zarr", {("A", "1"): (18,), ("A", "2"): (18,)},
                data=lambda im: np.stack([im, blank])[:, None, None])
    result = run_dsb("segment", tmp_path / "t.ome.zarr", "--out", tmp_path / "t", "--diameter", 18)
    assert result.exit_code == 0, result.stderr
    wells = pd.read_csv(tmp_path / "t" / "t_wells.csv")
    assert wells[["well", "t"]].values.tolist() == [["A1", 0], ["A1", 1], ["A2", 0], ["A2", 1]]
    assert wells["nuclei"].tolist()[1::2] == [0, 0] and (wells["nuclei"].to_numpy()[::2] > 0).all()


def test_a_damaged_field_on_dask_workers_is_one_line(tmp_path):
    pytest.importorskip("distributed")
    plate = tmp_path / "p.ome.zarr"
    write_plate(plate)
    (chunk,) = [p for p in (plate / "A" / "1" / "0" / "0").iterdir() if not p.name.startswith(".")]
    chunk.write_bytes(b"not a compressed chunk")  # damaged: the field's header reads, its pixels do not
    # In a process of its own: the workers' logs go to its stderr, which this process's runner does not see.
    result = subprocess.run([sys.executable, "-m", "dsb", "segment", str(plate), "--out", str(tmp_path / "out"),
                             "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"dsb: error: {plate / 'A' / '1' / '0'}: cannot read its pixels ("), line


def test_a_folder_of_plates_is_named_and_a_plate_after_it_still_read(tmp_path):
    write_plate(tmp_path / "screen" / "p.ome.zarr", {("A", "1"): (18,)})
    write_plate(tmp_path / "q.ome.zarr", {("A", "1"): (18,)})
    # The folder first: its problem said, then the plate given after it segmented as any plate.
    result = run_dsb("segment", tmp_path / "screen", tmp_path / "q.ome.zarr", "--out", tmp_path / "out",
                     "--skip-bad")
    assert result.exit_code == 0, result.stderr
    assert "but OME-Zarr plates: give them (FOLDER/*.zarr)" in result.stderr
    assert (tmp_path / "out" / "q_wells.csv").is_file()
