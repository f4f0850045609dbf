"""dsb segment: measurements on discs, label TIFFs, bad inputs, and a tiny model end to end."""

from __future__ import annotations

import errno
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import make_discs
from PIL import Image

from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.predict import Nuclei
from dsb.workflows import segment_files
from dsb.workflows.segment_files import (
    MEASUREMENT_COLUMNS,
    SUMMARY_COLUMNS,
    measure_nuclei,
    segment_paths,
    summary_row,
)

CENTRES = ((20, 20), (40, 44))
RADIUS = 8


def disc_image(shape=(64, 64), centres=CENTRES, radius=RADIUS, *, dtype=np.uint8) -> np.ndarray:
    """Bright discs on a dark background, at the top of ``dtype``'s range."""
    top = np.iinfo(dtype).max
    return (make_discs(shape, centres, radius) > 0).astype(dtype) * top


# ---------------------------------------------------------------- measurements


def test_measure_nuclei_on_discs():
    labels = make_discs((64, 64), CENTRES, RADIUS)
    intensity = np.where(labels == 1, 0.25, np.where(labels == 2, 0.75, 0.0))
    table = measure_nuclei(labels, intensity)

    assert list(table.columns) == [c for c in MEASUREMENT_COLUMNS if c != "confidence"]
    assert table["label"].tolist() == [1, 2]
    disc_area = sum(1 for r in range(-RADIUS, RADIUS + 1) for c in range(-RADIUS, RADIUS + 1)
                    if r * r + c * c <= RADIUS**2)
    assert table["area"].tolist() == [disc_area, disc_area]
    np.testing.assert_allclose(table[["centroid_row", "centroid_col"]].to_numpy(), CENTRES)
    # bbox max is exclusive, like a slice.
    assert table.loc[0, ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]].tolist() == [
        12, 12, 29, 29]
    np.testing.assert_allclose(table["mean_intensity"], [0.25, 0.75])
    assert (table["eccentricity"] < 0.05).all()
    # A digital disc's perimeter is near the circle's.
    np.testing.assert_allclose(table["perimeter"], 2 * math.pi * RADIUS, rtol=0.15)
    # Its shape: both axes its diameter, round and convex; the sum of its intensity, its mean times its area.
    np.testing.assert_allclose(table[["major_axis_length", "minor_axis_length"]], 2 * RADIUS, rtol=0.05)
    assert (table["circularity"] > 0.9).all() and (table["solidity"] > 0.9).all()
    assert table["orientation_deg"].between(0, 180, inclusive="left").all()
    np.testing.assert_allclose(table["integrated_intensity"], [0.25 * disc_area, 0.75 * disc_area])


def test_mean_intensity_leaves_out_nan_pixels():
    labels = np.zeros((4, 6), np.int32)
    labels[1:3, 1:3] = 1
    labels[1:3, 4:6] = 2
    intensity = np.ones((4, 6), np.float32)
    intensity[1, 1] = np.nan  # one of nucleus 1's four pixels
    intensity[1:3, 4:6] = np.nan  # all of nucleus 2's
    intensity[0, 0] = np.inf  # background: no nucleus's business
    table = measure_nuclei(labels, intensity)
    assert table["mean_intensity"].iloc[0] == 1.0 and np.isnan(table["mean_intensity"].iloc[1])
    assert table["integrated_intensity"].iloc[0] == 3.0 and np.isnan(table["integrated_intensity"].iloc[1])
    assert table["area"].tolist() == [4, 4]


def test_measure_nuclei_carries_each_nucleus_confidence_by_its_label():
    labels = make_discs((64, 64), CENTRES, RADIUS)
    labels[labels == 2] = 3  # a gap in the numbering: label 2 has no pixel
    table = measure_nuclei(labels, np.ones((64, 64)), np.array([0.9, np.nan, 0.55], np.float32))
    assert list(table.columns) == list(MEASUREMENT_COLUMNS)
    assert table["label"].tolist() == [1, 3]
    np.testing.assert_allclose(table["confidence"], [0.9, 0.55])
    with pytest.raises(ValueError, match=r"`confidence` \(shape \(2,\)\).*label 1..3"):
        measure_nuclei(labels, np.ones((64, 64)), np.array([0.9, 0.5]))


def test_measure_nuclei_without_nuclei_has_the_columns_and_no_rows():
    table = measure_nuclei(np.zeros((10, 12), np.int32), np.zeros((10, 12)), np.zeros(0))
    assert list(table.columns) == list(MEASUREMENT_COLUMNS)
    assert len(table) == 0


def test_measure_nuclei_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"`intensity` \(shape \(10, 10\)\).*\(shape \(10, 12\)\)"):
        measure_nuclei(np.zeros((10, 12), np.int32), np.zeros((10, 10)))
    with pytest.raises(TypeError, match="integers"):
        measure_nuclei(np.zeros((10, 12), np.float32), np.zeros((10, 12)))


# ---------------------------------------------------------------- segment_paths with a stand-in model


@pytest.fixture
def threshold_model(monkeypatch):
    """Replace the network by a threshold on the grey image, to test the plumbing fast."""
    from skimage.measure import label

    from dsb.inference.preprocess import to_gray

    calls = []

    def predictor(model_dir, *, tta, diameter=None, engine="auto", precision="float32", scale_factor=None):
        calls.append((model_dir, tta))

        def nuclei(raw):
            labels = label(to_gray(raw) > 0.5).astype(np.int32)
            # A stand-in confidence per nucleus: 1 / its label.
            return Nuclei(labels, 11.5, 1.0, True, confidence=1 / np.arange(1, labels.max() + 1, dtype=np.float32))

        return nuclei

    monkeypatch.setattr(segment_files, "_predictor", predictor)
    return calls


def write_images(folder):
    """One image of each kind a microscope folder holds; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = disc_image()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    paths = {
        "grey": folder / "grey.png",
        "rgb": folder / "rgb.jpg",
        "rgba": folder / "rgba.png",
        "deep": folder / "deep.tif",
        "thin": folder / "thin.png",
    }
    Image.fromarray(grey).save(paths["grey"])
    Image.fromarray(rgb).save(paths["rgb"], quality=95)
    Image.fromarray(rgba).save(paths["rgba"])
    tifffile.imwrite(paths["deep"], disc_image(dtype=np.uint16))
    Image.fromarray(np.full((50, 1), 255, np.uint8)).save(paths["thin"])
    return paths


def test_segment_paths_writes_labels_measurements_overlays_and_summary(tmp_path, threshold_model):
    paths = write_images(tmp_path / "in")
    out = tmp_path / "out"
    summary = segment_paths([tmp_path / "in"], out_dir=out, model_dir=tmp_path, overlay=True, tta=True,
                            progress=False)

    assert threshold_model == [(tmp_path, True)]
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["file"].tolist() == [str(paths[k]) for k in ("deep", "grey", "rgb", "rgba", "thin")]
    assert (summary["status"] == "ok").all()
    assert summary.set_index("file").loc[str(paths["grey"]), "nuclei"] == 2
    for stem in ("grey", "rgb", "rgba", "deep"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == (64, 64)
        table = pd.read_csv(out / f"{stem}_nuclei.csv")
        assert list(table.columns) == list(MEASUREMENT_COLUMNS)
        assert len(table) == 2
        np.testing.assert_allclose(table[["centroid_row", "centroid_col"]], CENTRES, atol=0.5)
        np.testing.assert_allclose(table["confidence"], [1.0, 0.5])
        assert Image.open(out / f"{stem}_overlay.png").size == (64, 64)
    assert tifffile.imread(out / "thin_labels.tif").shape == (50, 1)
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv", keep_default_na=False), summary,
                                  check_dtype=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_bad_image_stops_before_anything_is_written(tmp_path, threshold_model):
    write_images(tmp_path / "in")
    (tmp_path / "in" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "in" / "zero.tif").write_bytes(b"")
    (tmp_path / "in" / "readme.txt").write_text("not an image, and not an image suffix either")
    out = tmp_path / "out"
    with pytest.raises(BadDataError) as info:
        segment_paths([tmp_path / "in"], out_dir=out, model_dir=tmp_path, progress=False)
    assert str(info.value).startswith(str(tmp_path / "in" / "zero.tif"))  # the first bad one, by name
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert threshold_model == []  # not even the model was loaded


def test_skip_bad_records_and_goes_on_without_printing(tmp_path, threshold_model, capsys):
    paths = write_images(tmp_path / "in")
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(b"garbage")
    stack = tmp_path / "in" / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 32, 32), np.uint16))
    summary = segment_paths([tmp_path / "in", tmp_path / "missing.png"], out_dir=tmp_path / "out",
                            model_dir=tmp_path, skip_bad=True, progress=False)
    by_file = summary.set_index("file")
    assert by_file.loc[str(corrupt), "status"] == "skipped"
    assert "stacks and time series are not supported" in by_file.loc[str(stack), "error"]
    assert by_file.loc[str(tmp_path / "missing.png"), "error"] == "no such file or folder"
    assert (by_file.loc[[str(p) for p in paths.values()], "status"] == "ok").all()
    skipped = [str(skip) for skip in summary.attrs["skipped"]]
    assert any(line.startswith(f"{corrupt}: ") for line in skipped)
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in skipped and len(skipped) == 3
    assert capsys.readouterr().err == ""  # the library records; the command line prints
    assert not (tmp_path / "out" / "corrupt_labels.tif").exists()


@pytest.mark.parametrize("inputs, skip_bad, message", [
    (lambda d: [d / "empty"], False, "empty: folder holds no images"),
    (lambda d: [d / "a" / "x.png", d / "b" / "x.png"], False, "same name 'x'"),
    (lambda d: [d / "empty", d / "gone"], True, "no image to segment"),
])
def test_inputs_that_cannot_be_segmented(tmp_path, threshold_model, inputs, skip_bad, message):
    (tmp_path / "empty").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(disc_image()).save(tmp_path / sub / "x.png")
    with pytest.raises(BadDataError, match=message):
        segment_paths(inputs(tmp_path), out_dir=tmp_path / "out", model_dir=tmp_path, skip_bad=skip_bad,
                      progress=False)
    assert not (tmp_path / "out").exists()


def test_a_bad_scale_factor_is_said_before_any_image_is_read(tmp_path, threshold_model):
    # Only bad inputs and skip_bad: without the early check the user would hear "no image to segment".
    with pytest.raises(BadDataError, match=r"scale_factor: is 2\.5, expected a number in \[0\.5, 2\]"):
        segment_paths([tmp_path / "gone.png"], out_dir=tmp_path / "out", model_dir=tmp_path, skip_bad=True,
                      progress=False, scale_factor=2.5)
    assert not (tmp_path / "out").exists() and threshold_model == []


def test_unwritable_destination_and_full_disk(tmp_path, threshold_model, monkeypatch):
    write_images(tmp_path / "in")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(EnvironmentProblem, match=str(blocker)):
        segment_paths([tmp_path / "in" / "grey.png"], out_dir=blocker / "out", model_dir=tmp_path, progress=False)

    def full(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\x00 half a TIFF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    out = tmp_path / "out"
    with pytest.raises(EnvironmentProblem, match="no space left on device"):
        segment_paths([tmp_path / "in" / "grey.png"], out_dir=out, model_dir=tmp_path, progress=False)
    assert list(out.iterdir()) == []  # neither the label image nor its temporary


# ---------------------------------------------------------------- a real (tiny, untrained) model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with an untrained two-level U-Net: fast, and enough to exercise the real path."""
    from dsb.core.config import Config, ModelConfig, PredictConfig, save_config
    from dsb.network.unet import build_unet

    run = tmp_path_factory.mktemp("tiny_run")
    config = Config(
        model=ModelConfig(depth=2, base_filters=4, dropout=(0.0,), batch_norm=False),
        predict=PredictConfig(tile_size=32, overlap=8, batch_size=4),
    )
    build_unet(config.model).save(run / "model.keras")
    save_config(config, run / "config.json")
    return run


def test_segment_paths_with_a_tiny_model(tmp_path, tiny_run):
    paths = write_images(tmp_path / "in")
    Image.fromarray(disc_image((37, 83))).save(tmp_path / "in" / "odd.png")
    out = tmp_path / "out"
    summary = segment_paths([tmp_path / "in"], model_dir=tiny_run, out_dir=out, overlay=True, progress=False)

    assert (summary["status"] == "ok").all() and len(summary) == len(paths) + 1
    for path, shape in [(paths["grey"], (64, 64)), (paths["deep"], (64, 64)), (paths["thin"], (50, 1)),
                        (tmp_path / "in" / "odd.png", (37, 83))]:
        labels = tifffile.imread(out / f"{path.stem}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == shape
        table = pd.read_csv(out / f"{path.stem}_nuclei.csv")
        assert list(table.columns) == list(MEASUREMENT_COLUMNS)
        # Whatever an untrained net finds, the CSV describes exactly the label image.
        assert sorted(table["label"]) == sorted(set(np.unique(labels)) - {0})
        assert table["area"].sum() == (labels > 0).sum()
        assert table["confidence"].between(0, 1).all()
        assert Image.open(out / f"{path.stem}_overlay.png").size == shape[::-1]


def test_summary_says_how_sure_the_estimate_is_and_the_cli_warns(tmp_path):
    """The shipped model on a field of 24-pixel nuclei (confirmed at half the scale) and on a blank
    image (nothing to measure): summary.csv says which estimate is sure, and `dsb segment` names
    the unsure image on stderr."""
    from click.testing import CliRunner

    from dsb.cli import cli
    from dsb.io.synthetic import nuclei_field

    images = tmp_path / "images"
    images.mkdir()
    field, _ = nuclei_field((256, 256), 24, seed=2)
    Image.fromarray(field).save(images / "field.png")
    Image.fromarray(np.full((128, 128), 12, np.uint8)).save(images / "blank.png")
    result = CliRunner().invoke(cli, ["segment", str(images), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("file")
    field_row, blank_row = summary.loc[str(images / "field.png")], summary.loc[str(images / "blank.png")]
    assert bool(field_row["diameter_estimated"]) and bool(field_row["diameter_sure"])
    assert field_row["diameter"] == pytest.approx(24, rel=0.25)
    assert not bool(blank_row["diameter_sure"]) and blank_row["nuclei"] == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("dsb: warning:")]
    assert len(warnings) == 1 and str(images / "blank.png") in warnings[0]
    assert "no nuclei found; if it holds some, give --diameter" in warnings[0]  # not an unsure size
    assert "1 with no nuclei found" in result.stdout and "unsure" not in result.output


def test_a_signed_image_of_negative_values_is_segmented_as_its_float_copy_and_measured_in_its_values(tmp_path):
    """The shipped model on int16 discs at -100 on a background of -300: clipping below 0 lost them all."""
    centres = ((30, 30), (30, 90), (90, 40), (95, 95))
    signed = np.where(make_discs((128, 128), centres, 9) > 0, -100, -300).astype(np.int16)
    tifffile.imwrite(tmp_path / "neg16.tif", signed)
    tifffile.imwrite(tmp_path / "negf32.tif", signed.astype(np.float32))
    summary = segment_paths([tmp_path / "neg16.tif", tmp_path / "negf32.tif"], out_dir=tmp_path / "out",
                            progress=False).set_index("file")
    assert summary["nuclei"].tolist() == [4, 4]
    table = pd.read_csv(tmp_path / "out" / "neg16_nuclei.csv")
    assert (table["mean_intensity"] == -100).all()
    assert (table["integrated_intensity"] == -100 * table["area"]).all()


def test_the_cli_names_images_of_an_unsure_estimate(tmp_path, monkeypatch):
    """An image with nuclei whose size was not confirmed, beside one with none found: each its own line."""
    from click.testing import CliRunner

    from dsb.cli import cli
    from dsb.workflows import segment_inputs

    def fake(paths, **kwargs):
        rows = [summary_row("a.png", "ok", nuclei=40, diameter=12.5, estimated=True, sure=False),
                summary_row("b.png", "ok", nuclei=0, diameter=float("nan"), estimated=True, sure=False)]
        summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
        summary.attrs["skipped"] = []
        return summary

    monkeypatch.setattr(segment_inputs, "segment_inputs", fake)
    (tmp_path / "a.png").write_bytes(b"")
    result = CliRunner().invoke(cli, ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("dsb: warning:")]
    assert warnings[0] == ("dsb: warning: b.png: no nuclei found; if it holds some, give --diameter (or --channel "
                           "for the DNA stain of a multi-channel image)")
    assert warnings[1].startswith("dsb: warning: a.png: the nucleus diameter estimate (12.5 px) is unsure")
    assert "2 images segmented into" in result.stdout
    assert "1 with an unsure diameter estimate, 1 with no nuclei found" in result.stdout


def test_an_ome_tiff_is_named_as_its_ome_zarr_and_two_inputs_of_one_name_are_refused(tmp_path):
    """a.ome.tif writes a_labels.tif, as a.ome.zarr writes a_labels.zarr; an image and a store of one
    name would write the same a_nuclei.csv, and are refused before anything is written."""
    zarr = pytest.importorskip("zarr")
    from conftest import dsb, error_line

    image = disc_image((96, 96), ((30, 30), (60, 64)), 10)
    tifffile.imwrite(tmp_path / "a.ome.tif", image, ome=True)
    tifffile.imwrite(tmp_path / "b.tif", image)
    store = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=image.shape, dtype=image.dtype)
    store[...] = image
    result = dsb("segment", tmp_path / "a.ome.tif", tmp_path / "b.tif", "--out", tmp_path / "out", "--diameter", 20)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_labels.tif", "a_nuclei.csv", "b_labels.tif", "b_nuclei.csv", "summary.csv"]
    result = dsb("segment", tmp_path / "a.ome.tif", tmp_path / "a.zarr", "--out", tmp_path / "both")
    error_line(result, 3, "a.zarr", "same output files as", "a.ome.tif", "same name 'a'")
    assert not (tmp_path / "both").exists()


def test_nuclei_the_edge_cuts_are_marked():
    labels = make_discs((64, 64), ((5, 30), (32, 32), (58, 60)), 8)  # cut at the top, inside, cut at the corner
    table = measure_nuclei(labels, np.ones((64, 64)))
    assert table["touches_edge"].tolist() == [True, False, True]
    assert table["touches_edge"].dtype == bool
