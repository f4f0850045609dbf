"""Block-wise segmentation and Dask clusters (dsb.workflows.blocks, dsb.workflows.cluster, dsb.io.bigimage).

A synthetic field whose nuclei cross every block edge is segmented block by
block, in this process and on a real two-worker LocalCluster on 127.0.0.1,
and compared with one-piece segmentation, nucleus for nucleus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

import dsb
from conftest import dsb as run_dsb
from conftest import error_line, same_nuclei
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.predict import predict_nuclei
from dsb.io.bigimage import open_source
from dsb.workflows import blocks, cluster
from dsb.workflows.segment_inputs import segment_inputs

BLOCK = 128
SHAPE = (384, 448)  # multiples of 16 and under one tile: one piece is one tile on the same grid
DIAMETER = 20


def _field(shape=SHAPE, spacing: int = 28, radius: int = 8, seed: int = 0) -> np.ndarray:
    """Bright blurred discs on a lattice that puts nuclei across every edge of a 128-px block grid."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    centres = [(r + rng.integers(-3, 4), c + rng.integers(-3, 4))
               for r in range(12, shape[0] - 10, spacing) for c in range(12, shape[1] - 10, spacing)]
    discs = np.zeros(shape, bool)
    for r, c in centres:
        discs |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    noise = rng.normal(0, 3, shape)
    return np.clip(ndimage.gaussian_filter(discs * 180.0, 1.5) + 15 + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return _field()


@pytest.fixture(scope="module")
def one_piece(field) -> np.ndarray:
    return dsb.segment(field, diameter=DIAMETER)


@pytest.fixture(scope="module")
def client():
    with cluster.cluster_client(workers=2) as client:
        yield client


def _no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []
    assert not hidden, hidden


# ---------------------------------------------------------------- the pieces


def test_plan_ownership_and_assembly():
    plan = blocks.plan_blocks((300, 250), 128, 32)
    assert plan.grid == (3, 2)
    assert plan.core(2, 1) == (256, 300, 128, 250)
    assert plan.extended(1, 0) == (96, 288, 0, 160)
    assert plan.neighbours(0, 0) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Block (1, 0) reads rows 96:288, columns 0:160: one nucleus centred in its core, one centred
    # below it (the next block's), one in its core that reaches the region's inner right edge.
    labels = np.zeros((192, 160), np.int32)
    labels[40:60, 40:60] = 7  # centre row 146: owned
    labels[170:190, 10:30] = 3  # centre row 276: block (2, 0)'s
    labels[100:110, 120:160] = 5  # centre column 139: block (1, 1)'s
    labels[60:70, 100:160] = 9  # centre column 129.5: block (1, 1)'s too
    labels[80:90, 90:160] = 2  # centre column 124.5: owned, and touches the inner edge
    owned, count, cut = blocks.own_nuclei(labels, plan, (1, 0))
    assert (count, cut) == (2, 1)
    # Numbered 1..count in label order.
    assert set(np.unique(owned[labels == 2])) == {1} and set(np.unique(owned[labels == 7])) == {2}
    assert not owned[labels == 3].any() and not owned[labels == 5].any()
    # The lazy array's offsets say how many may be cut, once for the image.
    with pytest.warns(UserWarning, match="1 nuclei reach the edge"):
        lazy_offsets = blocks._offsets_task(plan, [(4, 0), (0, 0), (2, 1)] + [(0, 0)] * (len(plan.indices()) - 3))
    assert lazy_offsets[(1, 0)] == 4
    offsets = blocks.block_offsets(plan, {(0, 0): 4, (0, 1): 0, (1, 0): 2})
    assert offsets[(1, 0)] == 4 and offsets[(1, 1)] == 6
    # Core (1, 1) gets the part of block (1, 0)'s nucleus 2 that crosses into it, with the offset.
    core = blocks.assemble_core(plan, (1, 1), {(1, 0): owned}, offsets)
    assert core.dtype == np.uint32
    assert set(np.unique(core)) == {0, 5}
    assert (core == 5).sum() == (owned[32:160, 128:] == 1).sum() > 0


def test_block_smaller_than_a_nucleus_is_refused():
    with pytest.raises(BadDataError, match="block size of 32 px is below"):
        blocks.plan_blocks((500, 500), 32, 112, path="big.zarr")


def test_open_source_layouts_and_non_images(tmp_path):
    assert open_source(np.zeros((3, 40, 50), np.uint16)).shape == (40, 50)
    assert open_source(np.zeros((3, 40, 50), np.uint16)).read(0, 2, 0, 3).shape == (2, 3, 3)
    with pytest.raises(BadDataError, match="not one 2-D image"):
        open_source(np.zeros((5, 40, 50), np.uint8))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("foo", shape=(3,), dtype="i4")
    with pytest.raises(BadDataError, match="no image"):
        open_source(tmp_path / "g.zarr")


# ---------------------------------------------------------------- against one piece


def test_blocks_match_one_piece_nucleus_for_nucleus(field, one_piece):
    labels = dsb.segment_blocks(field, diameter=DIAMETER, block_size=BLOCK)
    assert labels.chunksize == (BLOCK, BLOCK) and labels.dtype == np.uint32
    found = labels.compute(scheduler="threads")
    # Every inner block edge is crossed by a nucleus: the same label on both sides of it.
    for edge in range(BLOCK, SHAPE[0], BLOCK):
        assert ((found[edge - 1] == found[edge]) & (found[edge] > 0)).any(), edge
    for edge in range(BLOCK, SHAPE[1], BLOCK):
        assert ((found[:, edge - 1] == found[:, edge]) & (found[:, edge] > 0)).any(), edge
    assert one_piece.max() > 100
    assert found.max() == one_piece.max() and np.array_equal(np.unique(found), np.arange(found.max() + 1))
    assert same_nuclei(found, one_piece)
    # A Dask array in, read a block at a time: the same labels.
    import dask.array as da

    from_dask = dsb.segment_blocks(da.from_array(field, chunks=(100, 100)), diameter=DIAMETER, block_size=BLOCK)
    np.testing.assert_array_equal(from_dask.compute(scheduler="threads"), found)


def test_one_scale_and_contrast_estimated_from_a_sample(field):
    from dsb.inference.preprocess import preprocess_image
    from dsb.inference.scale import choose_scale

    model = dsb.load_model()
    settings = blocks.image_settings(open_source(field), model.network, model.config)
    whole = choose_scale(model.network, model.config, preprocess_image(field, model.config.preprocess))
    assert settings.estimated and settings.diameter == pytest.approx(whole.diameter)
    assert settings.kind == "fluorescence"
    # The sample is the whole image here, so every block sees one-piece segmentation's input.
    gray = blocks.network_input(field, model.config, settings)
    np.testing.assert_array_equal(gray, preprocess_image(field, model.config.preprocess))


def _dim_half_16bit(field: np.ndarray) -> np.ndarray:
    """``field`` above itself as a 16-bit camera image: bright counts on top, the bottom copy 40 times
    dimmer (under 1024 counts), as a plate's dim well or a slide's faint region."""
    bright = field.astype(np.uint16) * np.uint16(100)
    return np.concatenate([bright, bright // np.uint16(40)])


def test_every_block_of_a_16_bit_image_on_one_scale(field):
    # Each block read on its own scale (as_float divides by its own bit depth) made the dim half's
    # blocks, alone at most 10 bits, 64 times brighter than the same pixels seen whole.
    image = _dim_half_16bit(field)
    model = dsb.load_model()
    settings = blocks.image_settings(open_source(image), model.network, model.config, diameter=DIAMETER)
    assert settings.value_range == (0.0, 65535.0)
    whole = blocks.network_input(image, model.config, settings)
    dim = (slice(SHAPE[0] + 128, 2 * SHAPE[0]), slice(0, 256))
    np.testing.assert_array_equal(blocks.network_input(image[dim], model.config, settings), whole[dim])
    one_piece = dsb.segment(image, diameter=DIAMETER)
    found = dsb.segment_blocks(image, diameter=DIAMETER, block_size=BLOCK).compute(scheduler="threads")
    assert same_nuclei(found, one_piece)


def test_the_raw_range_of_a_block_wise_image_is_its_colours_and_nan_is_refused(field):
    model = dsb.load_model()
    rgba = np.dstack([field.astype(np.uint16) * np.uint16(16)] * 3 + [np.full(field.shape, 65535, np.uint16)])
    settings = blocks.image_settings(open_source(rgba), model.network, model.config, diameter=DIAMETER)
    assert settings.value_range == (0.0, 4095.0)  # 12-bit colour; the alpha channel is no brightness
    with pytest.raises(BadDataError, match="holds no finite pixel value"):
        blocks.image_settings(open_source(np.full((64, 64), np.nan, np.float32)), model.network, model.config)


def test_measurements_in_the_image_own_units_whole_or_block_wise(tmp_path, field):
    image = _dim_half_16bit(field)
    tifffile.imwrite(tmp_path / "slide.tif", image)
    tables = {}
    for how, extra in (("whole", []), ("blocks", ["--block-size", BLOCK])):
        result = run_dsb("segment", tmp_path / "slide.tif", "--out", tmp_path / how, "--diameter", DIAMETER, *extra)
        assert result.exit_code == 0, result.output
        table = pd.read_csv(tmp_path / how / "slide_nuclei.csv")
        tables[how] = table.sort_values(["centroid_row", "centroid_col"], ignore_index=True)
    whole, by_block = tables["whole"], tables["blocks"]
    assert len(whole) == len(by_block) > 50
    np.testing.assert_allclose(by_block[["centroid_row", "centroid_col", "area"]], whole[["centroid_row", "centroid_col", "area"]])
    # Counts, as the camera gave them: each nucleus's mean over its own pixels of the raw image.
    np.testing.assert_allclose(by_block["mean_intensity"], whole["mean_intensity"], rtol=1e-6)
    labels = tifffile.imread(tmp_path / "whole" / "slide_labels.tif")
    top = whole.iloc[0]
    first = labels[int(round(top["centroid_row"])), int(round(top["centroid_col"]))]
    assert top["mean_intensity"] == pytest.approx(image[labels == first].mean(), rel=1e-5) and top["mean_intensity"] > 1000


# ---------------------------------------------------------------- the command line, in process and on a cluster


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, field) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    zarr.create_array(store=str(root / "plate.zarr"), shape=field.shape, chunks=(100, 100), dtype=field.dtype)[...] = field
    (root / "fields").mkdir()
    Image.fromarray(field[:200, :240]).save(root / "fields" / "a.png")
    Image.fromarray(field[150:, 100:]).save(root / "fields" / "b.png")
    tifffile.imwrite(root / "slide.tif", field)
    ome = zarr.open_group(str(root / "well.ome.zarr"), mode="w", zarr_format=2)
    ome.create_array("0", shape=(1, *field.shape), chunks=(1, 128, 128), dtype=field.dtype)[...] = field[None]
    ome.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.65, 0.65]}]}],
    }]
    return root


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, inputs) -> Path:
    out = tmp_path_factory.mktemp("in-process")
    result = run_dsb("segment", inputs / "fields", inputs / "plate.zarr", inputs / "slide.tif",
                     inputs / "well.ome.zarr", "--out", out, "--diameter", DIAMETER, "--block-size", BLOCK)
    assert result.exit_code == 0, result.output
    return out


def test_zarr_tiff_and_ome_zarr_in_their_own_kinds(in_process, inputs, one_piece, field):
    summary = pd.read_csv(in_process / "summary.csv")
    assert summary["status"].tolist() == ["ok"] * 5
    plate = zarr.open_array(str(in_process / "plate_labels.zarr"), mode="r")
    assert plate.chunks == (BLOCK, BLOCK) and same_nuclei(plate[:], one_piece)
    with tifffile.TiffFile(in_process / "slide_labels.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.dtype == np.uint16
        np.testing.assert_array_equal(page.asarray(), plate[:])
    well = zarr.open_group(str(in_process / "well_labels.zarr"), mode="r")
    assert well.attrs["image-label"]["version"] == "0.4"
    (scale,) = well.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale == {"type": "scale", "scale": [0.65, 0.65]}
    assert [a["name"] for a in well.attrs["multiscales"][0]["axes"]] == ["y", "x"]
    np.testing.assert_array_equal(well["0"][:], plate[:])
    # Measured in micrometres where the input says its pixel size (the well's 0.65), in pixels elsewhere.
    rows = summary.set_index("file")
    assert rows.loc[str(inputs / "well.ome.zarr"), "pixel_size"] == 0.65
    assert rows["pixel_size"].isna().sum() == 4
    well_table = pd.read_csv(in_process / "well_nuclei.csv")
    np.testing.assert_allclose(well_table["area_um2"], well_table["area"] * 0.65 ** 2)
    table = pd.read_csv(in_process / "plate_nuclei.csv")
    assert table["label"].tolist() == list(range(1, int(plate[:].max()) + 1))
    # The measurements are in the image's coordinates: each centroid lies on its own nucleus.
    rows, cols = table["centroid_row"].round().astype(int), table["centroid_col"].round().astype(int)
    assert (plate[:][rows, cols] == table["label"]).mean() > 0.95
    # A nucleus is on the edge where the image's edge cuts it, whichever block it came from.
    whole = plate[:]
    edge = np.unique(np.concatenate([whole[0], whole[-1], whole[:, 0], whole[:, -1]]))
    assert set(table.loc[table["touches_edge"], "label"]) == set(edge[edge > 0].tolist())
    # Each nucleus's confidence, measured in the block that owns it, as in the whole image.
    model = dsb.load_model()
    whole = predict_nuclei(model.network, model.config, field, diameter=DIAMETER)
    inside = plate[:] > 0
    same = np.zeros(len(table) + 1, np.int64)
    same[plate[:][inside]] = whole.labels[inside]
    assert table["confidence"].between(model.config.postprocess.min_confidence, 1).all()
    np.testing.assert_allclose(table["confidence"], whole.confidence[same[1:] - 1], atol=0.01)
    assert summary.set_index("file").loc[str(inputs / "plate.zarr"), "nuclei"] == len(table)
    _no_leftovers(in_process)


def test_cells_of_zarr_and_ome_zarr_inputs_are_stores_of_their_kind(tmp_path, inputs, in_process):
    from dsb.workflows.cells import grow_cells

    result = run_dsb("segment", inputs / "plate.zarr", inputs / "well.ome.zarr", "--out", tmp_path,
                     "--diameter", DIAMETER, "--block-size", BLOCK, "--cell-expansion", 6)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("file")
    assert summary["cells"].tolist() == [str(tmp_path / "plate_cells.zarr"), str(tmp_path / "well_cells.zarr")]
    labels = zarr.open_array(str(in_process / "plate_labels.zarr"), mode="r")[:]
    cells = zarr.open_array(str(tmp_path / "plate_cells.zarr"), mode="r")
    assert cells.chunks == (BLOCK, BLOCK)
    np.testing.assert_array_equal(cells[:], grow_cells(labels, 6))
    well = zarr.open_group(str(tmp_path / "well_cells.zarr"), mode="r")  # an OME-Zarr label image too
    assert well.attrs["image-label"]["version"] == "0.4"
    np.testing.assert_array_equal(well["0"][:], cells[:])
    table = pd.read_csv(tmp_path / "well_nuclei.csv")
    np.testing.assert_allclose(table["cell_area_um2"], table["cell_area"] * 0.65 ** 2, rtol=1e-5)  # %.6g
    _no_leftovers(tmp_path)


def test_two_worker_cluster_equals_in_process(tmp_path, inputs, in_process):
    result = run_dsb("segment", inputs / "fields", inputs / "plate.zarr", "--out", tmp_path,
                     "--diameter", DIAMETER, "--block-size", BLOCK, "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "3 images segmented" in result.stdout
    for name in ("a_labels.tif", "b_labels.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / name), tifffile.imread(in_process / name))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "plate_labels.zarr"), mode="r")[:],
                                  zarr.open_array(str(in_process / "plate_labels.zarr"), mode="r")[:])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a_nuclei.csv"), pd.read_csv(in_process / "a_nuclei.csv"))
    _no_leftovers(tmp_path)


def test_cells_of_a_block_wise_image_grow_on_the_workers_as_in_process(tmp_path, client, inputs):
    from dsb.workflows.cells import grow_cells

    for out, given in (("workers", client), ("here", None)):
        segment_inputs([inputs / "plate.zarr"], out_dir=tmp_path / out, diameter=DIAMETER, block_size=BLOCK,
                       client=given, progress=False, cell_expansion=6)
    labels = zarr.open_array(str(tmp_path / "workers" / "plate_labels.zarr"), mode="r")[:]
    cells = zarr.open_array(str(tmp_path / "workers" / "plate_cells.zarr"), mode="r")[:]
    np.testing.assert_array_equal(cells, grow_cells(labels, 6))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "workers" / "plate_nuclei.csv"),
                                  pd.read_csv(tmp_path / "here" / "plate_nuclei.csv"))
    _no_leftovers(tmp_path / "workers")


def test_a_connected_client_runs_a_folder_and_loads_the_model_once_per_worker(tmp_path, client, inputs):
    summary = segment_inputs([inputs / "fields"], out_dir=tmp_path, diameter=DIAMETER, client=client,
                                     progress=False)
    assert summary["status"].tolist() == ["ok", "ok"]
    segment_inputs([inputs / "fields"], out_dir=tmp_path / "here", diameter=DIAMETER, progress=False)
    for name in ("a_labels.tif", "b_labels.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / name), tifffile.imread(tmp_path / "here" / name))
    # Each worker loaded the model once: a second run finds the same network objects in the workers'
    # caches (the lambda travels by value with cloudpickle).
    def networks():
        return client.run(lambda: sorted(id(v[0]) for v in __import__(
            "dsb.workflows.cluster", fromlist=["_"])._NETWORKS.values()))

    # The two local workers share this machine's cores out between them, one engine per share.
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        shares = client.run(lambda: sorted(__import__("os").sched_getaffinity(0)))
        assert sorted(sum(shares.values(), [])) == cores

    first = networks()
    assert any(first.values()) and all(len(ids) <= 1 for ids in first.values())
    segment_inputs([inputs / "fields"], out_dir=tmp_path / "again", diameter=DIAMETER, client=client,
                   progress=False, cell_expansion=4)
    again = networks()
    assert all(again[worker] == ids for worker, ids in first.items() if ids)
    # Cells grown on the workers, as in this process.
    from dsb.workflows.cells import grow_cells

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "a_cells.tif"),
                                  grow_cells(tifffile.imread(tmp_path / "a_labels.tif"), 4))
    assert "cytoplasm_area" in pd.read_csv(tmp_path / "again" / "a_nuclei.csv")


def test_a_killed_worker_is_replaced_and_the_labels_are_whole(tmp_path, client, field, one_piece):
    killed = threading.Event()
    pid = sorted(client.run(os.getpid).items())[0][1]  # a worker process this test's cluster started

    def kill_one_worker_mid_run():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            if any(p.suffix == ".npy" for p in tmp_path.glob(".*.blocks.*/*")):  # the first block is done
                os.kill(pid, signal.SIGKILL)
                killed.set()
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_one_worker_mid_run)
    watcher.start()
    labels = dsb.segment_blocks(field, diameter=DIAMETER, block_size=BLOCK, client=client, out=tmp_path / "x.zarr")
    watcher.join()
    assert killed.is_set()
    assert same_nuclei(labels.compute(scheduler="sync"), one_piece)
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------- bad input: one line, nonzero, nothing half-written


def test_a_zarr_that_is_not_an_image(tmp_path):
    zarr.open_group(str(tmp_path / "table.zarr"), mode="w").create_array("rows", shape=(10,), dtype="f8")
    out = tmp_path / "out"
    error_line(run_dsb("segment", tmp_path / "table.zarr", "--out", out), 3, "table.zarr", "no image")
    assert not out.exists() or not any(out.iterdir())


def test_a_block_below_the_nucleus_size(tmp_path, inputs):
    out = tmp_path / "out"
    error_line(run_dsb("segment", inputs / "plate.zarr", "--out", out, "--diameter", DIAMETER, "--block-size", 64),
               3, "plate.zarr", "--block-size 112")
    assert not out.exists() or not any(out.iterdir())


def test_an_unreachable_scheduler(tmp_path, inputs):
    out = tmp_path / "out"
    address = "tcp://127.0.0.1:9"
    error_line(run_dsb("segment", inputs / "plate.zarr", "--out", out, "--scheduler", address), 4, address)
    assert not out.exists()


def test_a_malformed_scheduler_address_is_a_usage_error(tmp_path, inputs):
    out = tmp_path / "out"
    result = run_dsb("segment", inputs / "plate.zarr", "--out", out, "--scheduler", "not-an-address")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "segment: usage error: " in line and "--scheduler" in line
    assert "'not-an-address' is not a Dask scheduler address (expected tcp://HOST:PORT)" in line
    assert not out.exists()
    # From Python, a bad address is bad data, not the environment's fault.
    with pytest.raises(BadDataError, match="not-an-address: is not a Dask scheduler address"):
        cluster._check_reachable("not-an-address")


def test_out_of_memory_leaves_nothing_half_written(tmp_path, inputs, monkeypatch):
    calls = []

    def assemble_then_fail(*args):
        calls.append(args)
        if len(calls) == 3:
            raise MemoryError
        return real(*args)

    real = blocks.assemble_core
    monkeypatch.setattr(blocks, "assemble_core", assemble_then_fail)
    out = tmp_path / "out"
    error_line(run_dsb("segment", inputs / "plate.zarr", inputs / "slide.tif", "--out", out, "--diameter", DIAMETER,
                       "--block-size", BLOCK), 4, "out of memory")
    assert not out.exists()  # nothing half-written, and no empty folder the run made


def test_workers_dying_until_dask_gives_up_is_one_line():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            cluster.cluster_client(workers=1) as client:
        with pytest.raises(EnvironmentProblem, match="workers died running a block"):
            list(cluster.run_tasks(os._exit, [(1,)], client=client, what="a block"))


def test_import_dsb_loads_no_dask():
    code = ("import sys, dsb, dsb.cli; dsb.segment_blocks; import dsb.io.bigimage; "
            "assert not {'dask', 'distributed', 'zarr'} & set(sys.modules), sorted(sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
