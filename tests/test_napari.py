"""The napari plugin without a viewer: its manifest, what it imports, the project folder, the label
TIFF writer and reader, the samples, frame-by-frame segmentation and the child process.

Nothing here needs Qt; the manifest test needs npe2 (skipped without it). The
plugin in a real viewer is tests/test_napari_viewer.py.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

import dsb
from conftest import CONFIG, make_discs
from dsb.api import LoadedModel
from dsb.core.errors import BadDataError
from dsb.io.annotations import find_samples, read_label_image
from dsb.napari.child import ChildFailed, child_events
from dsb.napari.finetuning import Progress
from dsb.napari.io import (
    get_geojson_reader,
    get_label_reader,
    read_geojson_layer,
    layer_z_step,
    read_label_layer,
    write_geojson_layer,
    write_labels_layer,
    write_rois_layer,
)
from dsb.napari.project import Project, check_correction, correction_name
from dsb.napari.samples import fluorescence_nuclei, stained_nuclei
from dsb.napari.segmentation import (
    FrameDone,
    VIEWER_PRECISIONS,
    ModelState,
    Segmented,
    frame_features,
    layer_frames,
    parse_cell_expansion,
    parse_diameter,
    parse_scale_factor,
    planes_axis,
    segment_frames,
)

MANIFEST = Path(dsb.__file__).parent / "napari" / "napari.yaml"
QT_FREE = ["dsb.napari", "dsb.napari.project", "dsb.napari.io", "dsb.napari.samples", "dsb.napari.finetuning",
           "dsb.napari.segmentation", "dsb.napari.child"]
GUI = ("napari", "PyQt6", "PyQt5", "PySide6", "qtpy", "magicgui", "vispy")


def _imported(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


# ---------------------------------------------------------------- manifest and imports


def test_manifest_is_valid_and_offers_widgets_samples_and_writers():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "dsb"
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert {w.command for w in manifest.contributions.widgets} == {"dsb.segment_widget", "dsb.finetune_widget"}
    assert len(manifest.contributions.sample_data) >= 1
    assert [(w.layer_types, w.filename_extensions) for w in manifest.contributions.writers] == [
        (["labels"], [".tif", ".tiff"]), (["labels"], [".zip"]), (["labels"], [".geojson", ".json"])]
    assert [(r.command, r.filename_patterns[-1]) for r in manifest.contributions.readers] == [
        ("dsb.read_labels", "*_labels.png"), ("dsb.read_geojson", "*.geojson")]
    for name in commands.values():  # every Qt-free command resolves; the widgets' modules exist
        module, attr = name.split(":")
        if module in QT_FREE:
            assert callable(getattr(importlib.import_module(module), attr))
        else:
            assert (Path(dsb.__file__).parent / "napari" / (module.rsplit(".", 1)[1] + ".py")).is_file()
    # Installed under the entry point napari looks for (npe2 validate dsb reads it from there).
    found = [ep.value for ep in entry_points(group="napari.manifest") if ep.name == "dsb"]
    assert found == ["dsb.napari:napari.yaml"]


def test_dsb_and_its_command_line_import_no_napari_nor_qt():
    loaded = _imported("import dsb, dsb.cli\nfrom click.testing import CliRunner\n"
                       "for args in (['--help'], ['segment', '--help'], ['train', '--help']):\n"
                       "    assert CliRunner().invoke(dsb.cli.cli, args).exit_code == 0")
    assert "dsb" in loaded and not loaded & set(GUI)
    # The plugin's Qt-free modules are that, and none of them brings in TensorFlow.
    loaded = _imported("import " + ", ".join(QT_FREE))
    assert not loaded & set(GUI) and not loaded & {"tensorflow", "keras"}


def test_the_widgets_keep_tensorflow_out_of_the_viewer():
    pytest.importorskip("napari")
    loaded = _imported("import dsb.napari.segment_widget, dsb.napari.finetune_widget")
    assert "napari" in loaded and not loaded & {"tensorflow", "keras"}


# ---------------------------------------------------------------- project folder


def test_corrections_are_saved_in_the_layout_dsb_train_reads(tmp_path):
    project = Project(tmp_path / "p")
    image = (make_discs((48, 40)) * 90).astype(np.uint8)
    labels = make_discs((48, 40))
    project.save_correction("cells", image, labels)
    rgb = np.stack([image, image // 2, image], axis=-1)
    project.save_correction("slide-t002", rgb, labels * 7, rgb=True)
    assert project.names() == ["cells", "slide-t002"]
    assert project.check() == 2
    samples = {s.id: s for s in find_samples(project.corrections)}
    assert sorted(samples) == ["corrections-cells", "corrections-slide-t002"]
    assert all(s.user for s in samples.values())
    np.testing.assert_array_equal(read_label_image(samples["corrections-slide-t002"].labels), labels)
    assert tifffile.imread(samples["corrections-slide-t002"].image).shape == (48, 40, 3)
    assert tifffile.imread(samples["corrections-cells"].labels).dtype == np.uint16
    # Saving again replaces the correction.
    fewer = np.where(labels == 2, 0, labels)
    project.save_correction("cells", image, fewer)
    assert project.names() == ["cells", "slide-t002"]
    assert read_label_image(project.corrections / "cells_masks.tif").max() == 1


def test_bad_corrections_are_refused_with_a_message(tmp_path):
    image = np.zeros((32, 32), np.uint8)
    with pytest.raises(BadDataError, match=r"shape \(16, 32\) but the image has \(32, 32\)"):
        check_correction(image, np.ones((16, 32), np.int32))
    with pytest.raises(BadDataError, match="no nucleus"):
        check_correction(image, np.zeros((32, 32), np.int32))
    with pytest.raises(BadDataError, match="float"):
        check_correction(image, np.ones((32, 32), np.float32))
    project = Project(tmp_path)
    with pytest.raises(BadDataError, match="not a usable file stem"):
        project.save_correction("../x", image, np.ones((32, 32), np.int32))
    with pytest.raises(BadDataError, match="no corrected image"):
        project.check()


def test_model_folders_are_numbered_and_names_made_safe(tmp_path):
    project = Project(tmp_path)
    assert project.new_model_dir() == tmp_path / "models" / "finetune-001"
    (tmp_path / "models" / "finetune-007").mkdir(parents=True)
    assert project.new_model_dir().name == "finetune-008"
    assert correction_name("a/b c.tif", 12) == "a_b_c_tif-t012"


# ---------------------------------------------------------------- writer and reader


def test_writer_writes_the_label_tiffs_of_the_command_line(tmp_path):
    small = make_discs((64, 64))
    [path] = write_labels_layer(str(tmp_path / "a.tif"), small, {})
    assert tifffile.imread(path).dtype == np.uint16
    np.testing.assert_array_equal(tifffile.imread(path), small)
    wide = small.astype(np.int64) * 40_000
    [path] = write_labels_layer(str(tmp_path / "b.tiff"), wide, {})
    assert tifffile.imread(path).dtype == np.uint32 and tifffile.imread(path).max() == 80_000
    stack = np.stack([small, small[::-1]])
    [path] = write_labels_layer(str(tmp_path / "c.tif"), stack, {})
    np.testing.assert_array_equal(tifffile.imread(path), stack)
    with pytest.raises(ValueError, match=r"\.tif"):
        write_labels_layer(str(tmp_path / "d.png"), stack, {})


def test_the_label_writer_keeps_a_layers_size_in_micrometres(tmp_path):
    """A layer whose scale and units give its pixels a length: its TIFF carries it, as dsb segment's does."""
    pint = pytest.importorskip("pint")
    from dsb.io.pixel_size import read_pixel_size

    units = pint.get_application_registry()
    small = make_discs((64, 64))
    in_nm = {"scale": (325.0, 325.0), "units": (units.nanometer, units.nanometer)}
    [path] = write_labels_layer(str(tmp_path / "a.tif"), small, in_nm)
    assert read_pixel_size(path).side == pytest.approx(0.325)
    [path] = write_labels_layer(str(tmp_path / "b.tif"), np.stack([small, small]),
                                {"scale": (1.0, 0.5, 0.5), "units": (units.second, units.micrometer, units.micrometer)})
    assert read_pixel_size(path).side == pytest.approx(0.5)
    for said in ({"scale": (0.5, 0.5), "units": (units.pixel, units.pixel)}, {"scale": (0.5, 0.25),
                 "units": (units.micrometer, units.micrometer)}, {}):
        [path] = write_labels_layer(str(tmp_path / "c.tif"), small, said)
        assert read_pixel_size(path) is None


def test_a_layers_z_step_in_micrometres():
    pint = pytest.importorskip("pint")
    units = pint.get_application_registry()
    um, nm = units.micrometer, units.nanometer
    layer = {"scale": (3.0, 500.0, 325.0, 325.0), "units": (units.second, nm, nm, nm)}
    assert layer_z_step(layer, 1) == pytest.approx(0.5)
    assert layer_z_step(layer, 0) is None  # seconds are no length
    assert layer_z_step({"scale": (2.0, 1.0, 1.0), "units": (units.pixel, um, um)}, 0) is None
    assert layer_z_step({"scale": (-2.0, 1.0, 1.0), "units": (um, um, um)}, 0) is None
    assert layer_z_step({"scale": (2.0, 1.0, 1.0)}, 0) is None and layer_z_step(layer, 7) is None


def test_the_roi_writer_writes_the_rois_of_the_command_line(tmp_path):
    from roifile import roiread

    small = make_discs((64, 64))
    [path] = write_rois_layer(str(tmp_path / "a_rois.zip"), small, {})
    assert [r.name for r in roiread(path)] == ["0001", "0002"]
    stack = np.stack([small, small[::-1] * 0])  # the second frame without nuclei
    [path] = write_rois_layer(str(tmp_path / "b.zip"), stack, {})
    assert [(r.name, r.position) for r in roiread(path)] == [("s1-0001", 1), ("s1-0002", 1)]
    # Time points of planes: the slices of the one multi-page TIFF the label writer saves, counted through.
    hyper = np.stack([stack, stack[::-1]])
    [path] = write_rois_layer(str(tmp_path / "c.zip"), hyper, {})
    assert [(r.name, r.position) for r in roiread(path)] == [
        ("s1-0001", 1), ("s1-0002", 1), ("s4-0001", 4), ("s4-0002", 4)]
    with pytest.raises(ValueError, match=r"\.zip"):
        write_rois_layer(str(tmp_path / "d.tif"), small, {})


def test_the_geojson_writer_writes_the_detections_of_the_command_line(tmp_path):
    import json

    small = make_discs((64, 64))
    stack = np.stack([np.stack([small, small * 0]), np.stack([small[::-1], small])])  # 2 x 2 frames

    def read(path):
        features = json.loads(Path(path).read_text())["features"]
        return [(f["properties"]["name"], f["geometry"].get("plane", {}).get("t"),
                 f["geometry"].get("plane", {}).get("z"), "measurements" in f["properties"]) for f in features]

    [path] = write_geojson_layer(str(tmp_path / "a.geojson"), small, {})
    assert read(path) == [("1", None, None, False), ("2", None, None, False)]
    # napari's T, Z, Y, X (unnamed axes: the last is the planes'), as dsb segment --geojson puts a hyperstack's.
    [path] = write_geojson_layer(str(tmp_path / "b.json"), stack, {})
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (1, 0), (1, 0), (1, 1), (1, 1)]
    [path] = write_geojson_layer(str(tmp_path / "c.json"), stack, {"axis_labels": ("z", "t", "y", "x")})
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 1), (1, 1)]
    [path] = write_geojson_layer(str(tmp_path / "d.json"), stack[1], {"axis_labels": ("time", "y", "x")})
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (1, 0), (1, 0)]
    [path] = write_geojson_layer(str(tmp_path / "e.json"), stack[1], {})  # one unnamed axis: pages, on t
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (1, 0), (1, 0)]
    [path] = write_geojson_layer(str(tmp_path / "f.json"), stack[1], {"axis_labels": ("Z", "y", "x")})
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (0, 1), (0, 1)]
    [path] = write_geojson_layer(str(tmp_path / "g.json"), stack[1], {"metadata": {"dsb_planes": 0}})  # joined in 3-D
    assert [(t, z) for _, t, z, _ in read(path)] == [(0, 0), (0, 0), (0, 1), (0, 1)]
    with pytest.raises(ValueError, match=r"\.geojson"):
        write_geojson_layer(str(tmp_path / "c.tif"), small, {})
    assert not (tmp_path / "c.tif").exists()


def test_reader_opens_label_images_as_labels_layers(tmp_path):
    path = tmp_path / "cells_masks.tif"
    tifffile.imwrite(path, (make_discs((64, 64)) * 5).astype(np.uint16))
    assert get_label_reader(str(path)) is read_label_layer
    assert get_label_reader(str(tmp_path / "cells.tif")) is None
    [(data, meta, kind)] = read_label_layer(str(path))
    assert kind == "labels" and meta["name"] == "cells_masks" and data.max() == 2


def test_qupath_objects_open_as_labels_on_their_image(tmp_path):
    from dsb.io.geojson import write_geojson

    labels = (make_discs((64, 80)) * 3).astype(np.int32)  # nuclei 3 and 6: named by their labels
    measured = pd.DataFrame({"label": [3, 6], "area": [50.0, 60.0], "index": [7.0, 8.0]})  # napari's name too
    write_geojson(tmp_path / "cells_nuclei.geojson", labels, measurements=measured)
    assert get_geojson_reader(str(tmp_path / "cells_nuclei.geojson")) is read_geojson_layer
    assert get_geojson_reader([str(tmp_path / "a.geojson"), str(tmp_path / "a.tif")]) is None
    # With no image beside it: the objects' extent, on the image pixel for pixel.
    [(data, meta, kind)] = read_geojson_layer(str(tmp_path / "cells_nuclei.geojson"))
    assert kind == "labels" and meta["name"] == "cells_nuclei" and "axis_labels" not in meta
    rows, cols = np.nonzero(labels)
    np.testing.assert_array_equal(data, labels[: rows.max() + 1, : cols.max() + 1])
    assert meta["features"]["index"].tolist() == [3, 6] and meta["features"]["area"].tolist() == [50.0, 60.0]
    # Named by the summary.csv of the run that wrote it (dsb segment --out is seldom the image's folder).
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "cells.tif", np.zeros((70, 90), np.uint8))
    pd.DataFrame({"file": [str(images / "cells.tif")], "geojson": [str(tmp_path / "cells_nuclei.geojson")]}).to_csv(
        tmp_path / "summary.csv", index=False)
    [(data, _, _)] = read_geojson_layer(str(tmp_path / "cells_nuclei.geojson"))
    assert data.shape == (70, 90)
    (tmp_path / "summary.csv").unlink()
    # With its image beside it (a stack of three frames, RGB): the image's size and frames, the objects (of
    # QuPath's first plane) on the first.
    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((3, 64, 80, 3), np.uint8), photometric="rgb")
    [(data, meta, _)] = read_geojson_layer([str(tmp_path / "cells_nuclei.geojson")])
    assert data.shape == (3, 64, 80) and meta["axis_labels"] == ("t", "y", "x")  # plain pages: QuPath's t
    assert meta["features"]["index"].tolist() == [3, 6]
    np.testing.assert_array_equal(data[0], labels)
    assert not data[1:].any()
    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((64, 80, 3), np.uint8), photometric="rgb")
    [(data, _, _)] = read_geojson_layer([str(tmp_path / "cells_nuclei.geojson")])
    np.testing.assert_array_equal(data, labels)
    tifffile.imwrite(tmp_path / "cells.ome.tif", np.zeros((64, 80), np.uint8))  # an OME-TIFF's name: cells
    (tmp_path / "cells.tif").unlink()
    [(data, _, _)] = read_geojson_layer(str(tmp_path / "cells_nuclei.geojson"))
    assert data.shape == (64, 80)
    (tmp_path / "cells.ome.tif").unlink()
    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((32, 40), np.uint8))  # objects beyond it: said
    with pytest.raises(BadDataError, match="beyond its image's 40 x 32"):
        read_geojson_layer(str(tmp_path / "cells_nuclei.geojson"))
    # A z-stack's: a stack named z, which the GeoJSON writer puts back on z.
    volume = np.stack([labels, labels, np.zeros_like(labels)])
    written = write_geojson(tmp_path / "vol.geojson", volume, "z")
    [(data, meta, _)] = read_geojson_layer(str(written))
    assert meta["axis_labels"] == ("z", "y", "x") and data.shape == (2, rows.max() + 1, cols.max() + 1)
    assert "features" not in meta
    assert len(meta["metadata"]["dsb_objects"]) == 4
    [again] = write_geojson_layer(str(tmp_path / "again.geojson"), data, meta)
    assert read_geojson_layer(again)[0][1]["axis_labels"] == ("z", "y", "x")
    # Beside its z-stack: as deep as the stack, the planes without objects empty.
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((4, 64, 80), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    [(data, meta, _)] = read_geojson_layer(str(written))
    assert data.shape == (4, 64, 80) and meta["axis_labels"] == ("z", "y", "x")
    np.testing.assert_array_equal(data[:3], volume) and not data[3].any()


# ---------------------------------------------------------------- samples and segmentation


def test_samples_are_nuclei_the_shipped_model_finds():
    model = dsb.load_model()
    [(grey, _, _)] = fluorescence_nuclei()
    [(rgb, meta, _)] = stained_nuclei()
    assert meta["rgb"] and rgb.shape == grey.shape + (3,)
    for data, is_rgb in ((grey, False), (rgb, True)):
        *steps, result = segment_frames(model, data, rgb=is_rgb)
        assert steps == [FrameDone(1, 1)] and isinstance(result, Segmented)
        assert 36 <= result.labels.max() <= 49  # a 7 x 7 grid of discs, some cut at the edge
        assert result.estimated and 17 < result.diameter < 27  # drawn at 22 px
        assert result.warning == ""  # grey, and stained tissue: their luminance is what the network reads


def test_a_colour_layer_of_separate_stains_is_warned_about():
    model = dsb.load_model()
    [(grey, _, _)] = fluorescence_nuclei()
    cytoplasm = np.where(ndimage.grey_dilation(grey, size=(21, 21)) > 60, 150, 8).astype(np.uint8)
    composite = np.stack([np.zeros_like(grey), cytoplasm, grey], axis=-1)
    *_, result = segment_frames(model, composite, rgb=True)
    assert "channels 1 (green) and 2 (blue)" in result.warning


def test_cells_grow_around_each_frames_nuclei():
    from dsb.workflows.cells import grow_cells

    model = dsb.load_model()
    frame = (make_discs((64, 64), centres=((20, 20), (44, 44)), radius=9) > 0) * 200 + 10
    stack = np.stack([frame, frame[:, ::-1]]).astype(np.uint8)
    *_, result = segment_frames(model, stack, diameter=18, cell_expansion=4)
    np.testing.assert_array_equal(result.cells, grow_cells(result.labels, 4))
    table = result.features((1,))
    cells = result.cells[1]
    assert table["cell_area"].tolist() == [np.count_nonzero(cells == k) for k in table["index"]]
    ring = [stack[1][(cells == k) & (result.labels[1] == 0)].mean() for k in table["index"]]
    np.testing.assert_allclose(table["cytoplasm_mean_intensity"], ring, atol=1e-3)  # the layer's own values
    *_, plain = segment_frames(model, stack, diameter=18)
    assert plain.cells is None and "cell_area" not in plain.features((0,))
    *_, joined = segment_frames(model, stack, diameter=18, cell_expansion=4, stitch=0)  # the frames as planes
    assert joined.stitched
    np.testing.assert_array_equal(joined.cells, grow_cells(joined.labels, 4))  # cells by the 3-D labels


def test_a_stack_is_segmented_frame_by_frame():
    model = dsb.load_model()
    frame = (make_discs((64, 64), centres=((20, 20), (44, 44)), radius=9) > 0) * 200 + 10
    stack = np.stack([frame, frame[:, ::-1], np.full_like(frame, 10)]).astype(np.uint8)
    events = list(segment_frames(model, stack, diameter=18))
    assert events[:3] == [FrameDone(1, 3), FrameDone(2, 3), FrameDone(3, 3)]
    result = events[-1]
    assert result.labels.shape == (3, 64, 64) and not result.estimated
    assert [int(f.max()) for f in result.labels] == [2, 2, 0]
    assert result.diameters == [18.0] * 3
    # Each frame's confidences, as the features of a layer that shows that frame.
    for at in (0, 1):
        table = result.features((at,))
        assert table["index"].tolist() == [1, 2]
        np.testing.assert_allclose(table["confidence"], result.confidences[at].round(3))
    assert result.features((2,))["index"].tolist() == []  # an empty frame: an empty table
    assert result.features((3,)) is None and result.features() is None  # no such frame; a stack needs one
    assert result.network == f"{model.engine}, {model.network.precision}"  # what the status line says computed it


def test_a_z_stack_is_stitched_into_3d_nuclei_with_each_frame_features():
    from dsb.io.synthetic import nuclei_volume

    model = dsb.load_model()
    image, truth = nuclei_volume((8, 96, 96), diameter=20, z_step=2.0, seed=11)
    *_, plain = segment_frames(model, image, diameter=20)
    *_, result = segment_frames(model, image, diameter=20, stitch=0)
    assert result.stitched and not plain.stitched
    labels = result.labels
    assert labels.max() == np.unique(labels).size - 1  # numbered 1..M through the planes
    assert abs(int(labels.max()) - int(truth.max())) <= 1
    assert np.array_equal(labels > 0, plain.labels > 0)  # joined, not redrawn
    for at in range(8):
        table = result.features((at,)).set_index("index")
        held = np.unique(labels[at][labels[at] > 0])
        areas = np.bincount(labels[at].ravel())
        assert table.loc[held, "area"].tolist() == areas[held].tolist()
        # Each nucleus's confidence is its section's, from the frame's own numbering.
        for own in np.unique(plain.labels[at][plain.labels[at] > 0]):
            new = int(np.bincount(labels[at][plain.labels[at] == own]).argmax())
            assert table.loc[new, "confidence"] == pytest.approx(round(float(plain.confidences[at][own - 1]), 3))
        assert table.drop(index=held)["confidence"].isna().all()  # nuclei of other planes
    *_, single = segment_frames(model, image[3], diameter=20, stitch=0)
    assert not single.stitched and single.volumes == []  # a single image has no planes to join
    # A time point of planes: each time point numbered on its own, the same nuclei in both.
    *_, both = segment_frames(model, np.stack([image[:4], image[:4]]), diameter=20, stitch=1)
    assert both.stitched and np.array_equal(both.labels[0], both.labels[1])
    assert both.labels[0].max() == np.unique(both.labels[0]).size - 1


def test_a_stitched_stack_shows_each_3d_nucleus_measured_through_its_planes():
    from dsb.io.synthetic import nuclei_volume

    model = dsb.load_model()
    image, _ = nuclei_volume((6, 96, 96), diameter=20, z_step=2.0, seed=5)
    # Two time points: the z-stack, then an empty one; planes on axis 1.
    movie = np.stack([image, np.zeros_like(image)])
    *_, result = segment_frames(model, movie, diameter=20, stitch=1, pixel_size=0.5, z_step=2.0)
    assert result.planes == 1 and len(result.volumes) == 2 and result.volumes[1].empty
    labels, volumes = result.labels[0], result.volumes[0].set_index("label")
    held = np.unique(labels[labels > 0])
    assert volumes.index.tolist() == held.tolist()
    voxels = np.bincount(labels.ravel())
    assert volumes["volume"].tolist() == voxels[held].tolist()
    spans = [np.flatnonzero((labels == k).any(axis=(1, 2))) for k in held]
    assert volumes["z_first"].tolist() == [s[0] for s in spans] and volumes["z_last"].tolist() == [s[-1] for s in spans]
    np.testing.assert_allclose(volumes["volume_um3"], voxels[held] * 0.5 ** 2 * 2.0)
    # Each frame's table has every 3-D nucleus of its time point, its section's features NaN where the
    # plane does not hold it; the 3-D columns the same in every plane.
    tables = [result.features((0, z)).set_index("index") for z in range(6)]
    three_d = ["z_first", "z_last", "centroid_z", "centroid_row_3d", "centroid_col_3d", "touches_edge_3d", "volume",
               "max_area", "mean_intensity_3d", "integrated_intensity_3d", "confidence_3d", "max_area_um2",
               "volume_um3", "equivalent_diameter_um_3d", "centroid_z_um"]
    assert tables[0].columns.tolist() == ["area", "eccentricity", "solidity", "mean_intensity", "confidence", *three_d]
    for z, table in enumerate(tables):
        assert table.index.tolist() == held.tolist()
        inside = np.isin(held, labels[z])
        assert table.loc[held[~inside], ["area", "confidence"]].isna().all().all()
        assert table.loc[held[inside], "area"].tolist() == np.bincount(labels[z].ravel())[held[inside]].tolist()
        pd.testing.assert_frame_equal(table[three_d], tables[0][three_d])
    assert tables[0]["volume"].tolist() == voxels[held].tolist()
    assert result.features((1, 3)).empty and "volume" in result.features((1, 3)).columns
    # Without a scale, sizes in voxels only; unstitched, no 3-D columns.
    *_, plain = segment_frames(model, image, diameter=20, stitch=0)
    assert "volume" in plain.features((0,)).columns and "volume_um3" not in plain.features((0,)).columns
    *_, apart = segment_frames(model, image, diameter=20)
    assert "volume" not in apart.features((0,)).columns and apart.planes is None


def test_the_planes_axis_is_the_one_the_layer_calls_z():
    assert planes_axis(["z"]) == (0, "") and planes_axis(["-3"]) == (0, "")
    assert planes_axis(["Z", "t"]) == (0, "") and planes_axis(["t", "-3"]) == (1, "")
    assert planes_axis(["time"]) == (None, "its axes are time points, with no z planes to join")
    assert planes_axis(["c", "t", "z"])[0] == 2


def test_frame_features_are_the_frame_own_table():
    confidences = [np.array([0.9, 0.8], np.float32), None, np.array([0.85], np.float32),
                   np.array([], np.float32)]
    lead = (2, 2)  # e.g. 2 time points of 2 planes, in numpy.ndindex order
    assert frame_features(confidences, lead, (1, 0))["confidence"].tolist() == pytest.approx([0.85])
    assert frame_features(confidences, lead, (0, 0))["index"].tolist() == [1, 2]
    assert frame_features(confidences, lead, (0, 1)) is None  # not known
    assert frame_features(confidences, lead, (2, 0)) is None and frame_features(confidences, lead, (1,)) is None
    single = frame_features([np.array([0.7], np.float32)], (), ())
    assert single["index"].tolist() == [1] and single["confidence"].tolist() == pytest.approx([0.7])


def test_a_scale_factor_is_typed_checked_and_predicts_larger():
    assert parse_scale_factor(" ") is None and parse_scale_factor("1.25") == 1.25
    for text in ("abc", "0.4", "3", "nan"):
        with pytest.raises(BadDataError, match=rf"scale factor: {text!r} is not a factor from 0\.5 to 2"):
            parse_scale_factor(text)
    shipped = dsb.load_model()
    sides = []

    def recording(batch):
        sides.append(batch.shape[1])
        return shipped.network(batch)

    model = LoadedModel(shipped.path, recording, shipped.config)
    frame = ((make_discs((64, 64), centres=((20, 20), (44, 44)), radius=9) > 0) * 200 + 10).astype(np.uint8)
    seen = {}
    for factor in (None, 1.5):
        sides.clear()
        *_, result = segment_frames(model, frame, diameter=18, scale_factor=factor)
        assert int(result.labels.max()) == 2 and result.diameters == [18.0]
        assert result.network == ""  # a plain callable: no engine to name
        seen[factor] = max(sides)
    # The frame at 20/18 of its size, and 1.5 times that, each padded to the U-Net's size multiple.
    multiple = shipped.config.model.size_multiple()
    for factor, side in ((None, round(64 * 20 / 18)), (1.5, round(1.5 * 64 * 20 / 18))):
        assert seen[factor] == side + (-side) % multiple
    assert seen[1.5] > seen[None]


def test_features_hold_each_nucleus_measurements_by_label():
    """The table the viewer shows under the cursor: dsb segment's area, shape and intensity, and the confidence."""
    from dsb.napari.segmentation import FEATURE_COLUMNS, frame_features

    labels = make_discs((64, 64))
    image = np.where(labels == 1, 100, np.where(labels == 2, 200, 5)).astype(np.uint8)
    measured = [measure_table(labels, image), None]
    table = frame_features([np.array([0.9, 0.8]), np.array([0.7])], (2,), (0,), measured)
    assert list(table.columns) == ["index", *FEATURE_COLUMNS, "confidence"]
    assert table["area"].tolist() == np.bincount(labels.ravel())[1:].tolist()
    assert table["mean_intensity"].tolist() == [100.0, 200.0]
    np.testing.assert_allclose(table["confidence"], [0.9, 0.8], rtol=1e-6)
    # A frame not measured (a layer segmented before) shows its confidences alone.
    assert list(frame_features([np.array([0.9, 0.8]), np.array([0.7])], (2,), (1,), measured).columns) == [
        "index", "confidence"]


def measure_table(labels, image):
    from dsb.workflows.segment_files import measure_nuclei

    return measure_nuclei(labels, image.astype(float))


def test_diameters_and_layer_shapes_are_checked():
    assert parse_diameter("") is None and parse_diameter(" 12 ") == 12.0
    for text in ("abc", "0", "-3", "nan", "um", "-2 um"):
        with pytest.raises(BadDataError, match="diameter"):
            parse_diameter(text)
    for text in ("9um", "9 µm", "9 \u03bcm", "9 micrometres", " 9 UM "):  # micro sign or Greek mu, any case
        assert parse_diameter(text, pixel_size=0.3) == pytest.approx(30.0)
    with pytest.raises(BadDataError, match="no size in micrometres"):
        parse_diameter("9 um")
    assert parse_cell_expansion(" ") is None and parse_cell_expansion("5 um", pixel_size=0.25) == 20.0
    for text in ("x", "0", "2000"):
        with pytest.raises(BadDataError) as caught:
            parse_cell_expansion(text)
        assert caught.value.where == "cells" and "\n" not in str(caught.value)
    assert layer_frames(np.zeros((4, 5, 6, 3)), rgb=True) == ((4,), (5, 6))
    with pytest.raises(BadDataError, match="colour axis"):
        layer_frames(np.zeros((5, 6, 2)), rgb=True)
    with pytest.raises(BadDataError, match="2-D image"):
        layer_frames(np.zeros(7), rgb=False)


def test_model_state_tells_listeners_and_refuses_a_folder_that_is_no_model(tmp_path):
    state = ModelState()
    seen = []
    state.listeners.append(lambda s: seen.append(s.path))
    state.set_model(tmp_path)
    state.set_model(tmp_path)  # the same: no news
    state.set_model("")
    assert seen == [tmp_path, None]
    state.set_model(tmp_path)
    with pytest.raises(BadDataError, match="config.json"):
        state.load()
    state.set_model(tmp_path / "missing")
    with pytest.raises(BadDataError, match="not found"):
        state.load()
    state.set_model(None)
    assert state.load() is state.load() and state.load().path.name == "default"


def test_model_state_loads_at_the_precision_chosen():
    from dsb.network.engines import resolve_precision

    state = ModelState()
    assert state.precision == "auto" and VIEWER_PRECISIONS[0] == "auto"
    state.precision = "float32"
    exact = state.load()
    assert exact.network.precision == "float32"
    state.precision = "auto"
    auto = state.load()
    assert auto.network.precision == resolve_precision("auto", auto.engine, auto.path)
    assert state.load() is auto  # once per folder, engine and precision
    state.precision = "float32"
    assert state.load() is exact


def test_model_state_reads_whether_the_model_was_tuned_for_tta(tmp_path):
    import dataclasses

    from dsb.core.config import save_config

    state = ModelState()
    assert state.tuned_tta() is False  # the shipped model: off
    save_config(CONFIG.replace(predict=dataclasses.replace(CONFIG.predict, tta=True)), tmp_path / "config.json")
    state.set_model(tmp_path)
    assert state.tuned_tta() is True
    (tmp_path / "config.json").write_text("not json")
    assert state.tuned_tta() is False  # unreadable: off, and state.load() will say why


def test_a_fine_tune_is_quantised_where_auto_runs_int8(tmp_path, monkeypatch):
    """After a fine-tune the new folder gets model.int8.onnx, calibrated on the project's corrections,
    on a machine whose auto runs int8 (no bfloat16 units, AVX2, the quantizer installed), and only there.
    The quantising itself (dsb.workflows.export.quantize_in_place) is tested on a fine-tuned run in
    test_finetune."""
    from dsb.napari import finetuning
    from dsb.network import engines
    from dsb.workflows import export

    project = Project(tmp_path / "p")
    run_dir = tmp_path / "p" / "models" / "finetune-001"
    calls = []
    monkeypatch.setattr(finetuning, "finetune_project",
                        lambda project, init, **_: finetuning.Outcome(run_dir, False, Path("init"), []))
    monkeypatch.setattr(finetuning, "export_onnx_in_place", lambda run: calls.append(("onnx", run)))
    monkeypatch.setattr(finetuning, "quantize_in_place", lambda run, data: calls.append(("int8", run, data)))
    monkeypatch.setattr(engines, "engine_installed", lambda engine: True)
    for bf16, int8, quantizer, made in ((True, True, True, False), (False, True, True, True),
                                        (False, False, True, False), (False, True, False, False)):
        calls.clear()
        monkeypatch.setattr(engines, "bfloat16_units", lambda: bf16)
        monkeypatch.setattr(engines, "int8_units", lambda: int8)
        if quantizer:
            monkeypatch.setattr(export, "require_quantizer", lambda: None)
        else:
            def missing():
                raise export.EnvironmentProblem("int8 export needs onnxruntime and onnx")
            monkeypatch.setattr(export, "require_quantizer", missing)
        assert export.int8_would_run() is made
        outcome = finetuning.finetune_and_export(project.path, None)
        assert outcome.run_dir == run_dir
        assert calls == [("onnx", run_dir)] + ([("int8", run_dir, project.corrections)] if made else [])


def test_a_napari_fine_tune_reads_its_grey_corrections_whatever_channel_its_model_learnt(tmp_path, monkeypatch):
    """Corrections are saved from grey layers: a fine-tune from a run that learnt from channel 1 of its
    images reads them whole (dsb train --channel would refuse a grey image's channel 1)."""
    import dataclasses

    from dsb.core.config import save_config
    from dsb.napari import finetuning

    init = tmp_path / "init"
    init.mkdir()
    save_config(CONFIG.replace(preprocess=dataclasses.replace(CONFIG.preprocess, channel=1)), init / "config.json")
    seen = []

    class Stop(Exception):
        pass

    def prepared(folder, preprocess, **_):
        seen.append(preprocess)
        raise Stop

    monkeypatch.setattr(Project, "check", lambda self: None)
    monkeypatch.setattr(finetuning, "load_prepared", prepared)
    with pytest.raises(Stop):
        finetuning.finetune_project(Project(tmp_path / "p"), init, epochs=1)
    assert [p.channel for p in seen] == [None]


def test_progress_fraction():
    assert Progress(1, 2, 1, 4, 0.5).fraction == 0.125
    assert Progress(2, 2, 4, 4, 0.5).fraction == 1.0
    assert math.isnan(Progress(1, 1, 1, 1, 0.5).val_loss)


# ---------------------------------------------------------------- the child process


def reports_then_fails(kind: str, *, report, cancel):
    """A child target for the tests: two reports, then the error asked for (or the cancel state)."""
    report("one")
    report("two")
    if kind == "bad data":
        raise BadDataError("is not a model", path="somewhere")
    if kind == "bug":
        raise KeyError("oops")
    if kind == "diverged":
        from dsb.training.divergence import Divergence, TrainingDiverged

        raise TrainingDiverged("run", Divergence(1, 2, "loss", float("nan")), learning_rate=10.0)
    return cancel.is_set()


def test_child_process_passes_reports_results_and_errors():
    sys.path.insert(0, str(Path(__file__).parent))  # the child imports this module by name
    try:
        assert list(child_events(reports_then_fails, "ok")) == ["one", "two", False]
        with pytest.raises(BadDataError, match="somewhere: is not a model"):
            list(child_events(reports_then_fails, "bad data"))
        with pytest.raises(ChildFailed, match="KeyError"):
            list(child_events(reports_then_fails, "bug"))
        # A subclass of one of them (training that diverged) comes back as that one, its line whole.
        with pytest.raises(BadDataError) as caught:
            list(child_events(reports_then_fails, "diverged"))
        assert str(caught.value) == ("run: training diverged (loss nan at epoch 1, step 2); no model was kept; "
                                     "start a new run with a lower --learning-rate (it was 10)")
        cancel = threading.Event()
        cancel.set()
        assert list(child_events(reports_then_fails, "ok", cancel=cancel))[-1] is True
    finally:
        sys.path.remove(str(Path(__file__).parent))
