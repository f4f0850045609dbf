"""Micrometres in ``dsb segment``: the pixel size a file's metadata hold (dsb.io.pixel_size), a
nucleus diameter given in micrometres made each file's pixels (dsb.workflows.calibration), and
measurements and label TIFFs that carry the pixel size."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import dsb as run_dsb
from conftest import error_line
from PIL import Image

from dsb.core.errors import BadDataError
from dsb.io.pixel_size import PixelSize, read_pixel_size, to_micrometres
from dsb.io.synthetic import nuclei_field
from dsb.io.writers import write_labels, write_rgb_stack
from dsb.workflows.calibration import Calibration, calibrate, check_micrometres
from dsb.workflows.segment_files import MICROMETRE_COLUMNS, measure_nuclei

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

DIAMETER_UM = 12.0  # the nuclei of `field`: 24 pixels of 0.5 micrometres


@pytest.fixture(scope="module")
def field():
    image, truth = nuclei_field((192, 192), 24, count=14, seed=3)
    return image, truth


def imagej_tiff(path, image, size_um, unit="um", **metadata):
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / size_um, 1 / size_um),
                     metadata={"unit": unit, **metadata})
    return path


# ---------------------------------------------------------------- reading the metadata


@pytest.mark.parametrize(("value", "unit", "um"), [
    (325, "nm", 0.325), (0.5, "micron", 0.5), (0.5, "\u00b5m", 0.5), (0.5, "\\u00B5m", 0.5), (0.5, "um", 0.5),
    (1e-3, "mm", 1.0), (2, "micrometer", 2.0), (1, "pixel", None), (1, "inch", None), (0, "um", None),
    ("x", "um", None), (1, None, None),
])
def test_to_micrometres(value, unit, um):
    got = to_micrometres(value, unit)
    assert got == um if um is None else got == pytest.approx(um)


def test_pixel_size_of_imagej_ome_and_plain_tiffs(tmp_path, field):
    image = field[0]
    assert read_pixel_size(imagej_tiff(tmp_path / "ij.tif", image, 0.325, unit="micron")) == PixelSize(
        pytest.approx(0.325), pytest.approx(0.325), "ImageJ")
    assert read_pixel_size(imagej_tiff(tmp_path / "mu.tif", image, 0.5, unit="\\u00B5m")).side == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "ome.tif", image, ome=True, metadata={
        "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 650, "PhysicalSizeYUnit": "nm"})
    ome = read_pixel_size(tmp_path / "ome.tif")
    assert ome.source == "OME-XML" and ome.side == pytest.approx(0.65) and ome.square
    # Micrometres where the OME-XML names no unit.
    tifffile.imwrite(tmp_path / "ome-um.tif", image, ome=True, metadata={"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    assert read_pixel_size(tmp_path / "ome-um.tif").side == pytest.approx(0.2)
    # A plain TIFF's resolution counts in centimetres; in inches it is a printer's, not a pixel size.
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(1e4 / 0.4, 1e4 / 0.4), resolutionunit="CENTIMETER")
    assert read_pixel_size(tmp_path / "cm.tif") == PixelSize(pytest.approx(0.4), pytest.approx(0.4),
                                                             "TIFF resolution")
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "plain.tif", image)
    tifffile.imwrite(tmp_path / "ij-plain.tif", image, imagej=True)
    Image.fromarray(image).save(tmp_path / "a.png")
    for name in ("dpi.tif", "plain.tif", "ij-plain.tif", "a.png"):
        assert read_pixel_size(tmp_path / name) is None, name
    tifffile.imwrite(tmp_path / "wide.tif", image, imagej=True, resolution=(2.0, 1.0), metadata={"unit": "um"})
    wide = read_pixel_size(tmp_path / "wide.tif")
    assert (wide.y, wide.x, wide.square) == (pytest.approx(1.0), pytest.approx(0.5), False)
    assert str(wide) == "0.5 x 1 \u00b5m (width x height)"  # as Fiji says it
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(BadDataError, match="broken.tif"):
        read_pixel_size(tmp_path / "broken.tif")


def test_metadata_that_make_no_sense_are_no_pixel_size(tmp_path, field):
    image = field[0]
    # An image editor's 72 dpi in metric units (28.35 per centimetre): 353 micrometres a pixel.
    tifffile.imwrite(tmp_path / "72dpi-cm.tif", image, resolution=(28.35, 28.35), resolutionunit="CENTIMETER")
    # Centimetres named, no resolution tags (tifffile reads 1 per centimetre).
    with tifffile.TiffWriter(tmp_path / "no-tags.tif") as tif:
        tif.write(image, resolutionunit="CENTIMETER")
    # A unit ImageJ reads as a number; OME-XML with one side only.
    tifffile.imwrite(tmp_path / "unit-1.tif", image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": 1})
    tifffile.imwrite(tmp_path / "one-side.tif", image, ome=True, metadata={"PhysicalSizeX": 0.5})
    for name in ("72dpi-cm.tif", "no-tags.tif", "unit-1.tif", "one-side.tif"):
        assert read_pixel_size(tmp_path / name) is None, name
    # An OME-Zarr whose scale holds a null, or whose datasets are missing.
    for name, meta in (("null.zarr", {"axes": [{"name": "y", "unit": "micrometer"}, {"name": "x", "unit": "micrometer"}],
                                      "datasets": [{"path": "0", "coordinateTransformations": [
                                          {"type": "scale", "scale": [None, 0.5]}]}]}),
                       ("bare.zarr", {"axes": [{"name": "y", "unit": "micrometer"}, {"name": "x"}]})):
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        group.attrs["multiscales"] = [meta]
        assert read_pixel_size(tmp_path / name) is None, name


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_pixel_size_of_an_ome_zarr(tmp_path, field, zarr_format):
    group = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("0", shape=(1, 192, 192), dtype="uint8")
    meta = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                        {"name": "y", "type": "space", "unit": "micrometer"},
                                        {"name": "x", "type": "space", "unit": "micrometer"}],
             "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.65, 0.65]}]}],
             # A scale of the whole multiscale applies after the level's own.
             "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]}]
    group.attrs.update({"multiscales": meta} if zarr_format == 2 else {"ome": {"version": "0.5", "multiscales": meta}})
    assert read_pixel_size(tmp_path / "a.ome.zarr") == PixelSize(pytest.approx(1.3), pytest.approx(1.3), "OME-Zarr")
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(8, 8), dtype="uint8")
    assert read_pixel_size(tmp_path / "plain.zarr") is None


def test_label_files_carry_the_pixel_size(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9] = 1
    for name, written, frames in (("a.tif", labels, ""), ("wide.tif", labels * 70_000, ""),
                                  ("stack.tif", np.stack([labels, 2 * labels]), "t")):
        path = write_labels(tmp_path / name, written, frames, pixel_size=0.325)
        assert read_pixel_size(path).side == pytest.approx(0.325), name
        np.testing.assert_array_equal(tifffile.imread(path), written)
    assert read_pixel_size(write_labels(tmp_path / "none.tif", labels)) is None
    rgb = [np.zeros((20, 30, 3), np.uint8)] * 2
    path = write_rgb_stack(tmp_path / "overlay.tif", rgb, (2,), "t", pixel_size=0.5)
    assert read_pixel_size(path).side == pytest.approx(0.5)


# ---------------------------------------------------------------- one file's scale


def test_calibrate(tmp_path, field):
    ij = imagej_tiff(tmp_path / "ij.tif", field[0], 0.5)
    assert calibrate(ij) == Calibration(pytest.approx(0.5), None, "")
    assert calibrate(ij, diameter_um=12).diameter == pytest.approx(24)
    assert calibrate(ij, diameter=30).diameter == 30
    given = calibrate(ij, diameter_um=12, pixel_size=0.25)
    assert given.pixel_size == 0.25 and given.diameter == pytest.approx(48)
    assert "ImageJ" in given.note and "0.5 \u00b5m" in given.note and "0.25 \u00b5m was used" in given.note
    assert calibrate(ij, pixel_size=0.5001).note == ""  # metadata a rounding apart agree
    Image.fromarray(field[0]).save(tmp_path / "a.png")
    with pytest.raises(BadDataError, match="no pixel size in its metadata.*--pixel-size") as caught:
        calibrate(tmp_path / "a.png", diameter_um=12)
    assert str(caught.value.path).endswith("a.png")
    assert calibrate(tmp_path / "a.png", diameter_um=12, pixel_size=0.5).diameter == pytest.approx(24)
    with pytest.raises(BadDataError, match="0.01 pixels"):
        calibrate(ij, diameter_um=0.005)
    tifffile.imwrite(tmp_path / "wide.tif", field[0], imagej=True, resolution=(2.0, 1.0), metadata={"unit": "um"})
    wide = calibrate(tmp_path / "wide.tif")
    assert wide.pixel_size is None and "not square" in wide.note
    with pytest.raises(BadDataError, match="not square"):
        calibrate(tmp_path / "wide.tif", diameter_um=12)
    # An unreadable file is for its reading to name, unless the scale needs its metadata.
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    assert calibrate(tmp_path / "broken.tif", pixel_size=0.5) == Calibration(0.5, None, "")
    with pytest.raises(ValueError, match="positive finite number of micrometres"):
        check_micrometres(-1)
    with pytest.raises(ValueError, match="nucleus diameter must be a positive finite"):
        check_micrometres(float("nan"), "nucleus diameter")


def test_measurements_in_micrometres(field):
    _, truth = field
    pixels = measure_nuclei(truth, np.ones(truth.shape))
    table = measure_nuclei(truth, np.ones(truth.shape), pixel_size=0.5)
    assert list(table.columns) == list(pixels.columns) + list(MICROMETRE_COLUMNS)
    np.testing.assert_allclose(table["area_um2"], pixels["area"] * 0.25)
    np.testing.assert_allclose(table["perimeter_um"], pixels["perimeter"] * 0.5)
    np.testing.assert_allclose(table["equivalent_diameter_um"], 2 * np.sqrt(pixels["area"] / math.pi) * 0.5)
    # The synthetic nuclei are 24 pixels across: 12 micrometres.
    assert table["equivalent_diameter_um"].median() == pytest.approx(DIAMETER_UM, rel=0.15)


# ---------------------------------------------------------------- dsb segment


@pytest.fixture(scope="module")
def two_objectives(tmp_path_factory, field):
    """The same nuclei seen through two objectives: 0.5 micrometres a pixel, and enlarged twice at 0.25."""
    root = tmp_path_factory.mktemp("objectives")
    image, _ = field
    imagej_tiff(root / "x20.tif", image, 0.5)
    imagej_tiff(root / "x40.tif", np.kron(image, np.ones((2, 2), image.dtype)), 0.25)
    return root


def test_a_diameter_in_micrometres_holds_at_every_magnification(tmp_path, two_objectives, field):
    out = tmp_path / "out"
    result = run_dsb("segment", two_objectives / "x20.tif", two_objectives / "x40.tif", "--out", out,
                     "--diameter-um", DIAMETER_UM)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("file")
    x20, x40 = (summary.loc[str(two_objectives / name)] for name in ("x20.tif", "x40.tif"))
    assert (x20["diameter"], x40["diameter"]) == (pytest.approx(24), pytest.approx(48))
    assert (x20["pixel_size"], x40["pixel_size"]) == (0.5, 0.25)
    assert x20["diameter_um"] == x40["diameter_um"] == pytest.approx(DIAMETER_UM)
    assert not x20["diameter_estimated"] and not x40["diameter_estimated"]
    truth_count = int(field[1].max())
    tables = [pd.read_csv(out / f"{name}_nuclei.csv") for name in ("x20", "x40")]
    for table in tables:
        assert len(table) == truth_count
        assert set(MICROMETRE_COLUMNS) <= set(table.columns)
    # The same nuclei measure the same in micrometres through either objective.
    sizes = [np.sort(t["equivalent_diameter_um"].to_numpy()) for t in tables]
    np.testing.assert_allclose(sizes[0], sizes[1], rtol=0.08)
    assert read_pixel_size(out / "x40_labels.tif").side == pytest.approx(0.25)


def test_pixel_size_given_overrules_the_metadata_and_says_so(tmp_path, two_objectives, field):
    Image.fromarray(field[0]).save(tmp_path / "plain.png")
    out = tmp_path / "out"
    result = run_dsb("segment", two_objectives / "x20.tif", tmp_path / "plain.png", "--out", out,
                     "--pixel-size", 0.4, "--diameter", 24)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary["pixel_size"].tolist() == [0.4, 0.4]
    assert summary["diameter_um"].tolist() == [pytest.approx(9.6)] * 2
    assert "ImageJ" in summary.loc[0, "warning"] and summary.loc[1, "warning"] == ""
    assert f"{two_objectives / 'x20.tif'}: its metadata (ImageJ) say 0.5" in result.stderr
    assert "equivalent_diameter_um" in pd.read_csv(out / "plain_nuclei.csv").columns


def test_without_a_pixel_size_nothing_changes(tmp_path, field):
    Image.fromarray(field[0]).save(tmp_path / "plain.png")
    result = run_dsb("segment", tmp_path / "plain.png", "--out", tmp_path / "out", "--diameter", 24)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False)
    assert summary.loc[0, "pixel_size"] == "" and summary.loc[0, "diameter_um"] == ""
    assert not set(MICROMETRE_COLUMNS) & set(pd.read_csv(tmp_path / "out" / "plain_nuclei.csv").columns)
    assert read_pixel_size(tmp_path / "out" / "plain_labels.tif") is None


def test_a_diameter_in_micrometres_for_a_file_without_a_pixel_size(tmp_path, two_objectives, field):
    Image.fromarray(field[0]).save(tmp_path / "plain.png")
    out = tmp_path / "out"
    # Refused before anything is written, in one line naming the file.
    result = run_dsb("segment", two_objectives / "x20.tif", tmp_path / "plain.png", "--out", out,
                     "--diameter-um", DIAMETER_UM)
    error_line(result, 3, "plain.png", "no pixel size", "--pixel-size")
    assert not out.exists()
    # Skipped with --skip-bad, as is a file whose pixels are not square, beside a stack (whose path
    # through dsb segment differs).
    tifffile.imwrite(tmp_path / "wide.tif", field[0], imagej=True, resolution=(2.0, 1.0), metadata={"unit": "um"})
    stack = tmp_path / "stack.tif"
    imagej_tiff(stack, np.stack([field[0], field[0][::-1]]), 0.5, axes="TYX")
    result = run_dsb("segment", two_objectives / "x20.tif", tmp_path / "plain.png", tmp_path / "wide.tif", stack,
                     "--out", out, "--diameter-um", DIAMETER_UM, "--skip-bad")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("file")
    assert summary["status"].tolist() == ["ok", "skipped", "skipped", "ok"]
    assert "not square" in summary.loc[str(tmp_path / "wide.tif"), "error"]
    assert float(summary.loc[str(stack), "diameter"]) == pytest.approx(24)
    assert read_pixel_size(out / "stack_labels.tif").side == pytest.approx(0.5)
    assert "area_um2" in pd.read_csv(out / "stack_nuclei.csv").columns
    # Every input skipped: the one line says why, not only that nothing was left.
    result = run_dsb("segment", tmp_path / "plain.png", "--out", tmp_path / "none", "--diameter-um", DIAMETER_UM,
                     "--skip-bad")
    error_line(result, 3, "no image to segment", "plain.png: has no pixel size")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("args", "words"), [
    (("--diameter", 20, "--diameter-um", 10), ("--diameter", "--diameter-um", "not both")),
    (("--pixel-size", 0), ("--pixel-size",)),
    (("--diameter-um", "-3"), ("--diameter-um",)),
])
def test_bad_scale_options(tmp_path, two_objectives, args, words):
    result = run_dsb("segment", two_objectives / "x20.tif", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and all(w in result.stderr for w in words), result.stderr
    assert not (tmp_path / "out").exists()


def test_block_wise_in_micrometres(tmp_path, two_objectives):
    out = tmp_path / "out"
    result = run_dsb("segment", two_objectives / "x40.tif", "--out", out, "--diameter-um", DIAMETER_UM,
                     "--block-size", 320)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "diameter"] == pytest.approx(48) and summary.loc[0, "pixel_size"] == 0.25
    with tifffile.TiffFile(out / "x40_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled  # the block-wise writer's
    assert read_pixel_size(out / "x40_labels.tif").side == pytest.approx(0.25)
    table = pd.read_csv(out / "x40_nuclei.csv")
    assert table["equivalent_diameter_um"].median() == pytest.approx(DIAMETER_UM, rel=0.15)


def test_ome_zarr_labels_lie_at_the_scale_summary_says(tmp_path, field):
    """The whole multiscale's scale (applied after the level's) is read, and written to the labels."""
    image, truth = field
    group = zarr.open_group(str(tmp_path / "well.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=image.shape, chunks=(96, 96), dtype=image.dtype)[...] = image
    group.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                                   {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.25, 0.25]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [2, 2]}]}]
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "well.ome.zarr", "--out", out, "--diameter-um", DIAMETER_UM)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "pixel_size"] == 0.5 and summary.loc[0, "diameter"] == pytest.approx(24)
    assert read_pixel_size(out / "well_labels.zarr").side == pytest.approx(0.5)
    assert len(pd.read_csv(out / "well_nuclei.csv")) == int(truth.max())
