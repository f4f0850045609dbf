"""Cells grown around nuclei (dsb.workflows.cells): `dsb segment --cell-expansion`, `dsb measure --cell-expansion`,
dsb.measure(cell_expansion=...), for a marker outside the nucleus (a nuclear/cytoplasmic ratio)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import dsb
from conftest import dsb as run_dsb
from conftest import error_line, make_discs
from dsb.io.geojson import read_geojson_labels, write_geojson
from dsb.io.synthetic import nuclei_field, nuclei_volume
from dsb.workflows.cells import cell_measurements, grow_cells
from dsb.workflows.segment_files import measure_nuclei


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(0, 6), distance=st.floats(0.5, 9))
def test_cells_hold_their_nuclei_reach_no_further_than_asked_and_go_to_the_nearest(seed, count, distance):
    rng = np.random.default_rng(seed)
    nuclei = np.zeros((40, 48), np.int32)
    for k in range(count):  # small blobs anywhere, some touching, some cut by the edge
        r, c = rng.integers(0, 40), rng.integers(0, 48)
        nuclei[max(r - 2, 0): r + rng.integers(1, 5), max(c - 2, 0): c + rng.integers(1, 5)] = k * 7 + 3
    cells = grow_cells(nuclei, distance)
    assert cells.dtype == nuclei.dtype and set(np.unique(cells)) == set(np.unique(nuclei))
    np.testing.assert_array_equal(cells[nuclei > 0], nuclei[nuclei > 0])  # nuclei kept whole
    if not nuclei.any():
        assert not cells.any()
        return
    # Each pixel's distance to the nearest nucleus, and to the nearest pixel of its own cell's nucleus.
    nearest = ndimage.distance_transform_edt(nuclei == 0)
    assert not cells[nearest > distance].any() and cells[nearest <= distance].all()
    for value in np.unique(cells[(cells > 0) & (nuclei == 0)]):
        own = ndimage.distance_transform_edt(nuclei != value)
        grown = (cells == value) & (nuclei == 0)
        np.testing.assert_allclose(own[grown], nearest[grown])  # no nucleus nearer than its own


def test_a_stacks_frames_grow_on_their_own():
    stack = np.zeros((2, 20, 20), np.int32)
    stack[0, 8:12, 8:12] = 1
    cells = grow_cells(stack, 3)
    assert not cells[1].any() and (cells[0] > 0).sum() > 16
    np.testing.assert_array_equal(cells[0], grow_cells(stack[0], 3))
    with pytest.raises(ValueError, match="from 0 to 1000"):
        grow_cells(stack, -1)


def test_what_a_cell_holds_is_what_its_pixels_hold():
    rng = np.random.default_rng(4)
    nuclei = make_discs((48, 64), centres=((14, 14), (14, 26), (34, 44)), radius=6)  # two touching, one alone
    cells = grow_cells(nuclei, 5)
    intensity = rng.uniform(0, 100, nuclei.shape)
    channels = rng.uniform(0, 10, nuclei.shape + (2,))
    found = np.unique(nuclei[nuclei > 0])
    out = cell_measurements(nuclei, cells, intensity, found, channels=channels,
                            channel_columns=["mean_intensity_a", "mean_intensity_b"])
    for at, k in enumerate(found):
        cell, cytoplasm = cells == k, (cells == k) & (nuclei == 0)
        assert out["cell_area"][at] == cell.sum() and out["cytoplasm_area"][at] == cytoplasm.sum()
        assert out["cytoplasm_mean_intensity"][at] == pytest.approx(intensity[cytoplasm].mean())
        assert out["cell_mean_intensity"][at] == pytest.approx(intensity[cell].mean())
        assert out["cytoplasm_mean_intensity_b"][at] == pytest.approx(channels[..., 1][cytoplasm].mean())
        assert out["cell_mean_intensity_a"][at] == pytest.approx(channels[..., 0][cell].mean())
    assert out["cell_touches_edge"].tolist() == [False, False, False]
    # Grown by 7, the third nucleus's cell (rows 28 to 40 of 0..47) reaches the bottom edge; the two touching
    # ones' (rows 8 to 20) stop a pixel short of the top.
    assert cell_measurements(nuclei, grow_cells(nuclei, 7), intensity, found)["cell_touches_edge"].tolist() == [
        False, False, True]


def test_measure_nuclei_and_the_python_api_add_each_cell():
    nuclei = make_discs((48, 64), centres=((14, 14), (34, 44)), radius=6)
    ring = (grow_cells(nuclei, 4) > 0) & (nuclei == 0)
    marker = np.where(ring, 200, 10).astype(np.uint8)  # a cytoplasmic stain
    dna = np.where(nuclei > 0, 180, 5).astype(np.uint8)
    table = dsb.measure(nuclei, np.stack([dna, marker], axis=-1), channel=0, pixel_size=0.5, cell_expansion=4)
    assert table["cytoplasm_mean_intensity_c1"].tolist() == [200.0, 200.0]
    assert table["mean_intensity_c1"].tolist() == [10.0, 10.0]  # nuclear / cytoplasmic ratio 0.05
    assert table["cytoplasm_mean_intensity"].tolist() == [5.0, 5.0]  # the DNA stain outside the nucleus
    np.testing.assert_allclose(table["cytoplasm_area_um2"], table["cytoplasm_area"] * 0.25)
    assert (table["cell_area"] == table["area"] + table["cytoplasm_area"]).all()
    # A file's own numbering, far beyond its pixel count: the cells are numbered as the nuclei.
    huge = np.where(nuclei == 2, 4_000_000_000, nuclei.astype(np.int64))
    again = measure_nuclei(huge, marker.astype(float), cells=grow_cells(huge, 4))
    assert again["label"].tolist() == [1, 4_000_000_000]
    assert again["cytoplasm_mean_intensity"].tolist() == [200.0, 200.0]
    assert "cell_area" not in dsb.measure(nuclei, dna)
    with pytest.raises(ValueError, match="positive number of pixels"):
        dsb.measure(nuclei, dna, cell_expansion=0)  # as the command line and napari refuse it
    with pytest.raises(ValueError, match="cells"):
        measure_nuclei(nuclei, dna, cells=grow_cells(nuclei, 2)[:10])


@pytest.fixture
def two_channels(tmp_path):
    """A DNA stain and a cytoplasmic marker in a ring 5 px wide around each nucleus, as an ImageJ CYX TIFF."""
    image, truth = nuclei_field((128, 128), 16, seed=3)
    ring = (grow_cells(truth, 5) > 0) & (truth == 0)
    marker = np.where(ring, 180, 8).astype(np.uint8)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.stack([image, marker]), imagej=True, metadata={"axes": "CYX"})
    return path, truth


def test_dsb_segment_and_measure_grow_cells(tmp_path, two_channels):
    path, truth = two_channels
    result = run_dsb("segment", path, "--out", tmp_path / "out", "--channel", 0, "--cell-expansion", 5, "--overlay",
                     "--geojson")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    labels = tifffile.imread(summary["labels"].item())
    cells = tifffile.imread(summary["cells"].item())
    np.testing.assert_array_equal(cells, grow_cells(labels, 5))
    table = pd.read_csv(tmp_path / "out" / "cells_nuclei.csv")
    inner = table[~table["cell_touches_edge"]]
    # The marker lies outside the nuclei: high in each cytoplasm, low inside.
    assert (inner["cytoplasm_mean_intensity_c1"] > 100).all() and (inner["mean_intensity_c1"] < 60).all()
    # QuPath cells, each with its nucleus: read back as the nuclei.
    features = json.loads((tmp_path / "out" / "cells_nuclei.geojson").read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"cell"}
    assert all("nucleusGeometry" in f for f in features)
    np.testing.assert_array_equal(read_geojson_labels(tmp_path / "out" / "cells_nuclei.geojson", labels.shape),
                                  labels)
    # dsb measure grows the same cells from the label image.
    tifffile.imwrite(tmp_path / "cells_masks.tif", labels)
    measured = run_dsb("measure", path, "--out", tmp_path / "measured", "--channel", 0, "--cell-expansion", 5)
    assert measured.exit_code == 0, measured.output
    again = pd.read_csv(tmp_path / "measured" / "cells_nuclei.csv")
    pd.testing.assert_frame_equal(again, table.drop(columns="confidence"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "measured" / "cells_cells.tif"), cells)


def test_cell_expansion_in_micrometres_needs_a_pixel_size(tmp_path, two_channels):
    path, _ = two_channels
    result = run_dsb("segment", path, "--out", tmp_path / "out", "--cell-expansion-um", 2)
    error_line(result, 3, str(path), "no pixel size", "--cell-expansion-um")
    assert not (tmp_path / "out").exists()
    result = run_dsb("segment", path, "--out", tmp_path / "out", "--cell-expansion-um", 2, "--pixel-size", 0.4)
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "out" / "cells_labels.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "cells_cells.tif"), grow_cells(labels, 5))
    both = run_dsb("segment", path, "--out", tmp_path / "b", "--cell-expansion", 2, "--cell-expansion-um", 2)
    assert both.exit_code == 2 and "--cell-expansion-um (micrometres), not both" in both.stderr, both.stderr
    assert len(both.stderr.splitlines()) == 1
    for option, value in (("--cell-expansion", 1001), ("--cell-expansion", "nan"), ("--cell-expansion-um", "inf"),
                          ("--cell-expansion", 0)):
        bad = run_dsb("measure", path, "--out", tmp_path / "b", option, value)
        assert bad.exit_code == 2 and option in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert not (tmp_path / "b").exists()
    from dsb.cli import cli
    from dsb.workflows.cells import MAX_EXPANSION

    [option] = [p for p in cli.commands["segment"].params if p.name == "cell_expansion"]
    assert option.type.max == MAX_EXPANSION  # the command line's literal copy


def test_a_stitched_stacks_cells_carry_its_3d_labels(tmp_path):
    image, _ = nuclei_volume((6, 80, 80), diameter=18, seed=2)
    tifffile.imwrite(tmp_path / "vol.tif", image, imagej=True, metadata={"axes": "ZYX"})
    result = run_dsb("segment", tmp_path / "vol.tif", "--out", tmp_path / "out", "--diameter", 18, "--stitch",
                     "--cell-expansion", 3, "--overlay")
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    cells = tifffile.imread(tmp_path / "out" / "vol_cells.tif")
    assert cells.shape == labels.shape and labels.max() > 0
    np.testing.assert_array_equal(cells, grow_cells(labels, 3))  # each frame's, by the 3-D labels
    sections = pd.read_csv(tmp_path / "out" / "vol_nuclei.csv")
    for row in sections.sample(10, random_state=1).itertuples():
        assert row.cell_area == np.count_nonzero(cells[row.z] == row.label)


def test_block_wise_cells_are_those_of_the_whole_label_image(tmp_path):
    image, _ = nuclei_field((200, 200), 16, touching=True, seed=6)
    marker = (np.arange(200)[None, :] + np.arange(200)[:, None]).astype(np.uint16)  # a gradient: sums must add up
    tifffile.imwrite(tmp_path / "big.tif", np.stack([image.astype(np.uint16) * 40, marker]), imagej=True,
                     metadata={"axes": "CYX"})
    result = run_dsb("segment", tmp_path / "big.tif", "--out", tmp_path / "out", "--block-size", 160, "--diameter", 16,
                     "--channel", 0, "--cell-expansion", 10, "--geojson", "--pixel-size", 0.5)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    labels = tifffile.imread(summary["labels"].item())
    cells = tifffile.imread(summary["cells"].item())
    with tifffile.TiffFile(summary["cells"].item()) as tif:
        assert tif.pages[0].is_tiled  # the block-wise writer's, as the labels'
    np.testing.assert_array_equal(cells, grow_cells(labels, 10))  # grown across the blocks' faces
    # The same columns as dsb measure gives the whole label image in one piece.
    tifffile.imwrite(tmp_path / "big_masks.tif", labels)
    measured = run_dsb("measure", tmp_path / "big.tif", "--out", tmp_path / "measured", "--channel", 0,
                       "--cell-expansion", 10, "--pixel-size", 0.5)
    assert measured.exit_code == 0, measured.output
    whole = pd.read_csv(tmp_path / "measured" / "big_nuclei.csv").set_index("label")
    blocks = pd.read_csv(summary["measurements"].item()).set_index("label")
    columns = [c for c in whole.columns if c.startswith(("cell_", "cytoplasm_"))]
    assert len(columns) == 11  # 5 + 2 channels x 2 + 2 in micrometres
    pd.testing.assert_frame_equal(blocks[columns], whole.loc[blocks.index, columns], rtol=1e-5)
    # A PNG goes block-wise through a Zarr of its own: its cells are still a TIFF beside its labels.
    from PIL import Image

    sparse, _ = nuclei_field((480, 520), 16, count=12, seed=7)
    Image.fromarray(sparse).save(tmp_path / "png.png")
    result = run_dsb("segment", tmp_path / "png.png", "--out", tmp_path / "png", "--block-size", 160, "--diameter", 16,
                     "--cell-expansion", 150, "--geojson")  # cells reaching far beyond a block's margin
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "png" / "summary.csv")["cells"].item() == str(tmp_path / "png" / "png_cells.tif")
    png_labels = tifffile.imread(tmp_path / "png" / "png_labels.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "png" / "png_cells.tif"), grow_cells(png_labels, 150))
    # Each QuPath cell traced whole, as from the whole image's cells.
    whole = write_geojson(tmp_path / "whole.geojson", png_labels, cells=grow_cells(png_labels, 150))
    shapes = {f["properties"]["name"]: (f["geometry"], f["nucleusGeometry"])
              for f in json.loads(whole.read_text())["features"]}
    assert {f["properties"]["name"]: (f["geometry"], f["nucleusGeometry"]) for f in
            json.loads((tmp_path / "png" / "png_nuclei.geojson").read_text())["features"]} == shapes
    features = json.loads((tmp_path / "out" / "big_nuclei.geojson").read_text())["features"]
    assert len(features) == labels.max() and all(f["properties"]["objectType"] == "cell" for f in features)
    np.testing.assert_array_equal(read_geojson_labels(tmp_path / "out" / "big_nuclei.geojson", labels.shape), labels)
