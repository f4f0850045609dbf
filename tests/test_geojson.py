"""Nuclei as GeoJSON detections for QuPath (dsb.io.geojson), as `dsb segment --geojson` and `dsb measure
--geojson` write them, whole images, stacks and images segmented block by block."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.draw import polygon2mask

from conftest import dsb as run_dsb
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.core.labels import renumber
from dsb.io.annotations import read_label_image
from dsb.io.geojson import (nucleus_features, read_geojson_labels, read_geojson_objects, write_features,
                            write_geojson)
from dsb.io.synthetic import nuclei_field, nuclei_volume


def _filled(feature, shape) -> np.ndarray:
    """The pixels whose centres lie inside a feature's polygons (QuPath's x, y with pixel x spanning x .. x + 1),
    each ring checked as GeoJSON and JTS want it: closed, no corner passed twice."""
    geometry = feature["geometry"]
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    assert geometry["type"] in ("Polygon", "MultiPolygon") and polygons
    filled = np.zeros(shape, bool)
    for polygon in polygons:  # its outside less its holes; the polygons do not overlap
        inside = np.zeros(shape, bool)
        for at, ring in enumerate(polygon):
            ring = np.asarray(ring, float)
            assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 5  # closed
            assert len(np.unique(ring[:-1], axis=0)) == len(ring) - 1  # a simple ring
            area = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
            assert (area > 0) == (at == 0)  # RFC 7946: the outside counterclockwise, holes clockwise
            mask = polygon2mask(shape, ring[:, ::-1] - 0.5)
            assert not (filled & mask).any() if at == 0 else (inside >= mask).all()
            inside = mask if at == 0 else inside & ~mask
        filled |= inside
    return filled


def _read(path) -> list[dict]:
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    return collection["features"]


def test_each_detection_holds_exactly_its_nucleus_and_carries_its_measurements(tmp_path):
    _, labels = nuclei_field((96, 128), 18, seed=3)
    n = int(labels.max())
    table = pd.DataFrame({"label": np.arange(1, n + 1), "area": np.bincount(labels.ravel())[1:],
                          "touches_edge": np.arange(n) % 2 == 0, "confidence": np.r_[np.nan, np.full(n - 1, 0.9)],
                          "note": ["text"] * n})
    features = _read(write_geojson(tmp_path / "a.geojson", labels, measurements=table))
    assert [f["properties"]["name"] for f in features] == [str(k) for k in range(1, n + 1)]
    for k, feature in enumerate(features, start=1):
        assert feature["type"] == "Feature" and feature["properties"]["objectType"] == "detection"
        assert feature["geometry"]["type"] == "Polygon" and "plane" not in feature["geometry"]
        np.testing.assert_array_equal(_filled(feature, labels.shape), labels == k)
        measured = feature["properties"]["measurements"]
        assert measured["area"] == (labels == k).sum() and measured["touches_edge"] == float(k % 2 == 1)
        assert ("confidence" in measured) == (k > 1)  # a missing value is left out, not NaN
        assert "label" not in measured and "note" not in measured  # numbers only, the label is the name
    # Without measurements, the shapes alone; no nuclei, an empty collection.
    assert "measurements" not in _read(write_geojson(tmp_path / "b.geojson", labels))[0]["properties"]
    assert _read(write_geojson(tmp_path / "c.geojson", np.zeros((4, 4), int))) == []


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(1, 5), st.booleans(), st.integers(0, 2**31 - 1))
def test_every_nucleus_is_a_valid_geometry_of_exactly_its_pixels(height, width, values, smooth, seed):
    """Random labels, in pieces, with holes, nuclei inside others' holes, pixels meeting only at corners:
    each detection's polygons (each ring simple, holes inside their outside) fill exactly its nucleus."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, values + 1, (height, width))
    if smooth:
        labels = ndimage.median_filter(labels, 3)
    features = list(nucleus_features(labels))
    assert [int(f["properties"]["name"]) for f in features] == sorted(set(np.unique(labels).tolist()) - {0})
    for feature in features:
        k = int(feature["properties"]["name"])
        np.testing.assert_array_equal(_filled(feature, labels.shape), labels == k)
    with tempfile.TemporaryDirectory() as folder:  # and read back, they are the labels again
        path = write_features(Path(folder) / "a.geojson", features)
        np.testing.assert_array_equal(read_geojson_labels(path, labels.shape), labels)


def test_pixels_meeting_at_a_corner_are_one_nucleus_of_two_polygons():
    [feature] = nucleus_features(np.array([[5, 0], [0, 5]]))
    assert feature["geometry"]["type"] == "MultiPolygon"
    assert sorted(feature["geometry"]["coordinates"]) == [
        [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]], [[[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]]]


def test_a_block_is_placed_and_named_in_its_image():
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 2:5] = 1
    [feature] = nucleus_features(labels * 41, pd.DataFrame({"label": [41], "area": [6]}), origin=(100, 200))
    assert feature["properties"]["name"] == "41" and feature["properties"]["measurements"] == {"area": 6.0}
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert ring.min(axis=0).tolist() == [202, 101] and ring.max(axis=0).tolist() == [205, 103]  # x, y


def test_block_wise_detections_are_traced_from_the_label_image_as_written():
    from dsb.workflows.blocks import block_features, plan_blocks

    plan = plan_blocks((24, 48), 24, 8)  # two blocks side by side, each reading 8 pixels of the other
    labels = np.zeros((24, 48), np.uint32)
    labels[4:12, 18:30] = 7  # block (0, 0)'s nucleus (its centre in its core), reaching into (0, 1)
    labels[6:10, 28:31] = 8  # block (0, 1)'s, which lost two columns of pixels to 7 where they met
    labels[14:20, 40:46] = 9
    table = pd.DataFrame({"label": [9, 7, 8], "area": [36, 96, 4]})
    features = list(block_features(plan, {(0, 0): (7, 1), (0, 1): (8, 2)}, labels, table))
    assert [f["properties"]["name"] for f in features] == ["7", "8", "9"]
    for feature in features:
        k = int(feature["properties"]["name"])
        np.testing.assert_array_equal(_filled(feature, labels.shape), labels == k)
        assert feature["properties"]["measurements"]["area"] == table.set_index("label").loc[k, "area"]


def test_a_stacks_detections_lie_on_their_planes(tmp_path):
    _, one = nuclei_field((64, 64), 16, seed=4)
    labels = np.stack([np.stack([one, one[::-1]]), np.stack([one[:, ::-1], np.zeros_like(one)])])  # t, z
    table = pd.concat([pd.DataFrame({"t": t, "z": z, "label": np.arange(1, labels[t, z].max() + 1),
                                     "area": np.bincount(labels[t, z].ravel())[1:]})
                       for t in range(2) for z in range(2)])
    features = _read(write_geojson(tmp_path / "s.geojson", labels, "tz", measurements=table))
    assert len(features) == 3 * int(one.max())
    for feature in features:
        plane = feature["geometry"]["plane"]
        assert plane["c"] == -1 and "t" not in feature["properties"]["measurements"]
        k = int(feature["properties"]["name"])
        frame = labels[plane["t"], plane["z"]]
        np.testing.assert_array_equal(_filled(feature, frame.shape), frame == k)
        assert feature["properties"]["measurements"]["area"] == (frame == k).sum()
    # The pages of a plain multi-page TIFF are time points, as QuPath's Bio-Formats reader opens such a file.
    pages = _read(write_geojson(tmp_path / "f.geojson", labels[0], "f"))
    assert {(f["geometry"]["plane"]["t"], f["geometry"]["plane"]["z"]) for f in pages} == {(0, 0), (1, 0)}
    for frames, bad, match in (("tz", labels[0], "expected 4"), ("tf", labels, "at most one time"),
                               ("cz", labels, "give roles of")):
        with pytest.raises(ValueError, match=match):
            write_geojson(tmp_path / "x.geojson", bad, frames)
    with pytest.raises(ValueError, match=r"frame columns \['t', 'z'\]"):
        write_geojson(tmp_path / "x.geojson", labels, "tz", measurements=table.drop(columns="z"))
    assert not (tmp_path / "x.geojson").exists()


def test_a_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield {"type": "Feature", "geometry": None, "properties": {}}
        raise OSError("disk full")

    with pytest.raises(EnvironmentProblem, match="a.geojson: disk full"):  # one line naming the file
        write_features(tmp_path / "a.geojson", broken())
    assert list(tmp_path.iterdir()) == []


def test_dsb_segment_and_measure_geojson_for_images_stacks_and_blocks(tmp_path):
    image, _ = nuclei_field((128, 128), 20, seed=5)
    volume, _ = nuclei_volume((4, 96, 96), 20, z_step=2.0, seed=6)
    big, _ = nuclei_field((200, 200), 16, seed=6)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "one.tif", image)
    tifffile.imwrite(tmp_path / "in" / "stack.tif", volume, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "big.tif", big)
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "in", tmp_path / "big.tif", "--out", out, "--geojson", "--stitch",
                     "--block-size", 160, "--diameter", 18)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("file")
    assert summary["geojson"].tolist() == [str(out / f"{n}_nuclei.geojson") for n in ("one", "stack", "big")]
    assert "block-wise" not in result.output  # nothing asked for is missing
    for name in ("one", "big"):
        labels, table = tifffile.imread(out / f"{name}_labels.tif"), pd.read_csv(out / f"{name}_nuclei.csv")
        features = _read(out / f"{name}_nuclei.geojson")
        assert sorted(int(f["properties"]["name"]) for f in features) == table["label"].tolist()
        assert len(features) == labels.max() >= 5
        for feature in features:
            k = int(feature["properties"]["name"])
            np.testing.assert_array_equal(_filled(feature, labels.shape), labels == k)
            assert feature["properties"]["measurements"]["area"] == table.set_index("label").loc[k, "area"]
    # A stitched z-stack: each section on its plane, named by its 3-D nucleus, with its section's measurements
    # and its 3-D nucleus's (those a section has too named _3d).
    stack, sections = tifffile.imread(out / "stack_labels.tif"), pd.read_csv(out / "stack_nuclei.csv")
    volumes = pd.read_csv(out / "stack_nuclei3d.csv").set_index("label")
    features = _read(out / "stack_nuclei.geojson")
    assert len(features) == len(sections)
    for feature in features:
        z, k = feature["geometry"]["plane"]["z"], int(feature["properties"]["name"])
        np.testing.assert_array_equal(_filled(feature, stack.shape[1:]), stack[z] == k)
        measured = feature["properties"]["measurements"]
        assert measured["area"] == (stack[z] == k).sum() and measured["volume"] == volumes.loc[k, "volume"]
        assert measured["confidence_3d"] == pytest.approx(volumes.loc[k, "confidence"], rel=1e-5)
        assert measured["z_first"] == volumes.loc[k, "z_first"] and "z" not in measured
    # dsb measure writes the same for corrected labels.
    measured = tmp_path / "measured"
    result = run_dsb("measure", tmp_path / "in" / "one.tif", "--labels", out, "--out", measured, "--geojson")
    assert result.exit_code == 0, result.output
    again = {f["properties"]["name"]: f["geometry"] for f in _read(measured / "one_nuclei.geojson")}
    assert again == {f["properties"]["name"]: f["geometry"] for f in _read(out / "one_nuclei.geojson")}
    assert pd.read_csv(measured / "summary.csv")["geojson"].tolist() == [str(measured / "one_nuclei.geojson")]
    # The stack's detections, back from QuPath beside its image: the same sections and 3-D nuclei.
    back = tmp_path / "back"
    back.mkdir()
    shutil.copy(tmp_path / "in" / "stack.tif", back / "stack.tif")
    shutil.copy(out / "stack_nuclei.geojson", back / "stack_masks.geojson")
    result = run_dsb("measure", back / "stack.tif", "--out", tmp_path / "again", "--volumes")
    assert result.exit_code == 0, result.output
    again = pd.read_csv(tmp_path / "again" / "stack_nuclei3d.csv")
    pd.testing.assert_frame_equal(again, volumes.reset_index()[again.columns])
    # Objects on planes the image has not: said, naming the file.
    shutil.copy(tmp_path / "in" / "stack.tif", back / "short.tif")
    with tifffile.TiffFile(back / "stack.tif") as tif:
        short = tif.asarray()[:2]
    tifffile.imwrite(back / "short.tif", short, imagej=True, metadata={"axes": "ZYX"})
    shutil.copy(out / "stack_nuclei.geojson", back / "short_masks.geojson")
    result = run_dsb("measure", back / "short.tif", "--out", tmp_path / "short")
    assert result.exit_code == 3 and "short_masks.geojson" in result.stderr and "has 2 planes" in result.stderr


# ---------------------------------------------------------------- the way back: QuPath's objects as labels


def _feature(rings, name=None, kind="Polygon", plane=None, object_type="annotation", **extra) -> dict:
    geometry = {"type": kind, "coordinates": rings}
    if plane is not None:
        geometry["plane"] = plane
    properties = {"objectType": object_type} | ({} if name is None else {"name": name})
    return {"type": "Feature", "geometry": geometry, "properties": properties, **extra}


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_dsb_detections_read_back_as_the_labels_they_came_from(tmp_path):
    _, labels = nuclei_field((96, 128), 14, touching=True, seed=8)
    labels = np.where(labels > 0, labels * 3 + 100, 0)  # named by values the file keeps
    path = write_geojson(tmp_path / "a_masks.geojson", labels)
    np.testing.assert_array_equal(read_geojson_labels(path, labels.shape), labels)
    np.testing.assert_array_equal(read_label_image(path, labels.shape), renumber(labels)[0])
    assert read_geojson_labels(path).shape == tuple(np.max(np.argwhere(labels), axis=0) + 1)  # the extent


def test_qupath_objects_holes_overlaps_cells_and_points(tmp_path):
    square = [[0, 0], [6, 0], [6, 6], [0, 6], [0, 0]]
    hole = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]
    whole = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    features = [
        _feature([whole], name="Tissue"),  # the region detection ran in (it holds the others): not a nucleus
        _feature([square, hole], name="Nucleus A", object_type="detection"),  # named by no number: after the largest
        _feature([[[4, 4], [8, 4], [8, 8], [4, 8], [4, 4]]], name="5", object_type="detection"),  # overlaps: first wins
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},  # not a nucleus
        _feature([[[0, 8], [9, 8], [9, 10], [0, 10], [0, 8]]], object_type="cell",  # a cell: its nucleus counts
                 nucleusGeometry={"type": "Polygon", "coordinates": [[[1, 8], [3, 8], [3, 10], [1, 10], [1, 8]]]}),
    ]
    labels = read_geojson_labels(_write(tmp_path / "q.geojson", features), (10, 10))
    expected = np.zeros((10, 10), np.int32)
    expected[0:6, 0:6] = 6
    expected[2:4, 2:4] = 0
    expected[4:8, 4:8] = np.where(expected[4:8, 4:8] == 0, 5, expected[4:8, 4:8])
    expected[8:10, 1:3] = 7
    np.testing.assert_array_equal(labels, expected)
    # A nucleus drawn by hand beside the detections (an annotation holding no other object) is a nucleus.
    beside = _feature([[[7, 0], [9, 0], [9, 2], [7, 2], [7, 0]]])
    drawn_too = read_geojson_labels(_write(tmp_path / "more.geojson", [*features, beside]), (10, 10))
    np.testing.assert_array_equal(drawn_too[0:2, 7:9], 8)
    np.testing.assert_array_equal(np.where(drawn_too == 8, 0, drawn_too), expected)
    # Nuclei drawn by hand are annotations, nuclei all but the region holding them.
    small = _feature([[[7, 7], [9, 7], [9, 9], [7, 9], [7, 7]]])
    region = _feature([whole], name="Region")
    drawn = read_geojson_labels(_write(tmp_path / "drawn.geojson", [region, _feature([square]), small]))
    assert drawn.shape == (9, 9) and np.bincount(drawn.ravel()).tolist() == [81 - 40, 36, 4]  # the region is not one
    # Drawn either way round (QuPath keeps the order it was drawn in): a nucleus beside another is no region.
    clockwise = _feature([[[6, 0], [6, 3], [9, 3], [9, 0], [6, 0]]])
    both = read_geojson_labels(_write(tmp_path / "ways.geojson", [_feature([square]), clockwise]), (10, 10))
    assert np.bincount(both.ravel()).tolist() == [100 - 45, 36, 9]
    # A bare list of features (QuPath's other export), and a MultiPolygon as one nucleus.
    path = tmp_path / "list.geojson"
    path.write_text(json.dumps([_feature([[square], [[[7, 7], [9, 7], [9, 9], [7, 9], [7, 7]]]], kind="MultiPolygon")]))
    assert np.bincount(read_geojson_labels(path, (10, 10)).ravel()).tolist() == [60, 40]
    # A GeometryCollection (QuPath's, after shape operations): its polygons, not its points.
    collection = {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [square]},
                                                               {"type": "Point", "coordinates": [9, 9]}]}
    path.write_text(json.dumps([{"type": "Feature", "geometry": collection, "properties": {}}]))
    assert np.bincount(read_geojson_labels(path, (10, 10)).ravel()).tolist() == [64, 36]


def test_bad_geojson_is_one_line_naming_the_file(tmp_path):
    bad = {"notjson.geojson": "{not json", "other.geojson": json.dumps({"type": "Topology"}),
           "planes.geojson": json.dumps({"type": "FeatureCollection", "features": [
               _feature([[[0, 0], [2, 0], [2, 2], [0, 0]]], plane={"c": -1, "z": z, "t": 0}) for z in (0, 3)]}),
           "rings.geojson": json.dumps([_feature([[1, 2, 3]])]),
           "nan.geojson": json.dumps([_feature([[[0, 0], [2, 0], [2, float("nan")], [0, 0]]])]),
           "beyond.geojson": json.dumps([_feature([[[0, 0], [9, 0], [9, 2], [0, 0]]])]),  # a 4 x 4 image
           "plane.geojson": json.dumps([_feature([[[0, 0], [2, 0], [2, 2], [0, 0]]], plane={"z": [1]})])}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BadDataError) as caught:
            read_geojson_labels(tmp_path / name, (4, 4))
        assert caught.value.path == str(tmp_path / name) and "\n" not in str(caught.value)
    collection = '{"type": "GeometryCollection", "geometries": ['
    deep = '[{"type": "Feature", "properties": {}, "geometry": ' + collection * 3000 + "]}" * 3000 + "}]"
    for name, text in {"nested.geojson": "[" * 100_000 + "]" * 100_000, "collections.geojson": deep}.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BadDataError, match="nested too deeply") as caught:
            read_geojson_labels(tmp_path / name, (4, 4))
        assert caught.value.path == str(tmp_path / name)
    # A region far beyond the image is passed over, read along its rows, never filled; a nucleus there is said.
    huge = [_feature([[[-5, -5], [10 ** 6, -5], [10 ** 6, 10 ** 6], [-5, 10 ** 6], [-5, -5]]]),
            _feature([[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]])]
    assert read_geojson_labels(_write(tmp_path / "region.geojson", huge), (4, 4)).sum() == 4
    huge[0]["properties"]["objectType"] = "detection"
    with pytest.raises(BadDataError, match="beyond its image's 4 x 4"):
        read_geojson_labels(_write(tmp_path / "huge.geojson", huge), (4, 4))
    # A byte-order mark, as Windows tools write, is passed over.
    (tmp_path / "bom.geojson").write_bytes(b"\xef\xbb\xbf" + json.dumps([huge[1]]).encode())
    assert read_geojson_labels(tmp_path / "bom.geojson", (4, 4)).sum() == 4
    assert "2 planes" in str(pytest.raises(BadDataError, read_geojson_labels, tmp_path / "planes.geojson").value)
    assert "beyond its image's 4 x 4" in str(pytest.raises(BadDataError, read_geojson_labels, tmp_path / "beyond.geojson",
                                                           (4, 4)).value)


def test_dsb_measure_and_training_take_qupath_labels(tmp_path):
    from dsb.io.annotations import find_samples, read_sample

    image, truth = nuclei_field((96, 96), 16, seed=9)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    write_geojson(tmp_path / "in" / "a_masks.geojson", truth)
    result = run_dsb("measure", tmp_path / "in", "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "m" / "a_nuclei.csv")
    assert table["label"].tolist() == list(range(1, int(truth.max()) + 1))
    assert table["area"].tolist() == np.bincount(truth.ravel())[1:].tolist()
    [sample] = find_samples(tmp_path / "in")
    _, labels, _ = read_sample(sample)
    np.testing.assert_array_equal(labels, truth)
    # Named among the inputs; and named as the image in a --labels folder or a masks/ folder.
    result = run_dsb("measure", tmp_path / "in" / "a.tif", tmp_path / "in" / "a_masks.geojson", "--out", tmp_path / "m2")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m2" / "a_nuclei.csv"), table)
    for folder in ("labels", "layout/masks"):
        (tmp_path / folder).mkdir(parents=True)
        write_geojson(tmp_path / folder / "a.geojson", truth)
    result = run_dsb("measure", tmp_path / "in" / "a.tif", "--labels", tmp_path / "labels", "--out", tmp_path / "m3")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m3" / "a_nuclei.csv"), table)
    (tmp_path / "layout" / "images").mkdir()
    tifffile.imwrite(tmp_path / "layout" / "images" / "a.tif", image)
    [sample] = find_samples(tmp_path / "layout")
    np.testing.assert_array_equal(read_sample(sample)[1], truth)
    # A GeoJSON not named as a label file, among the inputs: one line naming it.
    (tmp_path / "in" / "shapes.geojson").write_text("[]")
    result = run_dsb("measure", tmp_path / "in" / "a.tif", tmp_path / "in" / "shapes.geojson", "--out", tmp_path / "m4")
    assert result.exit_code != 0 and "shapes.geojson: is a GeoJSON file not named as a label file" in result.output


def test_a_stacks_objects_read_back_on_their_planes_with_their_measurements(tmp_path):
    _, volume = nuclei_volume((4, 48, 64), diameter=14, seed=5)
    stack = np.stack([volume, volume[:, :, ::-1]])  # (t, z, y, x); one 3-D nucleus keeps its label through z
    path = write_geojson(tmp_path / "v_nuclei.geojson", stack, "tz")
    labels, planes, table = read_geojson_objects(path, stack.shape[-2:])
    assert planes == "tz" and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, stack[:, : labels.shape[1]])
    assert not stack[:, labels.shape[1]:].any()  # frames up to the last plane holding objects
    assert list(table.columns[:4]) == ["label", "t", "z", "object_type"] and set(table["object_type"]) == {"detection"}
    sections = {(t, z, k) for t in range(2) for z in range(stack.shape[1]) for k in np.unique(stack[t, z]) if k}
    assert set(zip(table["t"], table["z"], table["label"])) == sections and len(table) == len(sections)
    # One plane of a time series: frames on t only; measurements as columns, in the file's units.
    frames = stack[:, 1]
    measured = pd.DataFrame({"t": [0, 1], "label": [int(frames[0].max()), int(frames[1].max())],
                             "area": [10.5, 20.25], "touches_edge": [True, False]})
    path = write_geojson(tmp_path / "m.geojson", frames, "t", measured)
    labels, planes, table = read_geojson_objects(path, frames.shape[-2:])
    assert planes == "t" and labels.shape == frames.shape
    rows = table.set_index(["t", "label"]).loc[[(0, measured["label"][0]), (1, measured["label"][1])]]
    assert rows["area"].tolist() == [10.5, 20.25] and rows["touches_edge"].tolist() == [1.0, 0.0]
    assert table["area"].isna().sum() == len(table) - 2  # the others were not measured


def test_qupath_classes_and_older_measurement_lists_are_columns(tmp_path):
    square = [[0, 0], [3, 0], [3, 3], [0, 3], [0, 0]]
    other = [[5, 5], [8, 5], [8, 8], [5, 8], [5, 5]]
    features = [
        _feature([square], object_type="detection", classification={"name": "Tumor", "color": [200, 0, 0]},
                 measurements={"Nucleus: Area": 9.0, "Note": "text"}),
        _feature([other], name="3", object_type="detection",
                 measurements=[{"name": "Nucleus: Area", "value": 9}, {"name": "Hematoxylin OD mean", "value": 0.5}]),
    ]
    for feature in features:  # QuPath keeps these in the properties
        feature["properties"].update({k: feature.pop(k) for k in ("classification", "measurements") if k in feature})
    labels, planes, table = read_geojson_objects(_write(tmp_path / "c.geojson", features), (10, 10))
    assert planes == "" and np.bincount(labels.ravel()).tolist() == [82, 0, 0, 9, 9]  # unnamed: after the largest
    assert table["label"].tolist() == [4, 3] and table["classification"][0] == "Tumor"
    assert pd.isna(table["classification"][1])
    assert table["Nucleus: Area"].tolist() == [9.0, 9.0] and "Note" not in table  # numbers only
    assert np.isnan(table["Hematoxylin OD mean"][0]) and table["Hematoxylin OD mean"][1] == 0.5
    bad = [_feature([square], plane={"c": -1, "z": -2, "t": 0})]
    with pytest.raises(BadDataError, match="counts its planes from 0"):
        read_geojson_objects(_write(tmp_path / "neg.geojson", bad))
    far = [_feature([square], plane={"c": -1, "z": 0, "t": 10 ** 9})]
    with pytest.raises(BadDataError, match="at most 10000"):
        read_geojson_objects(_write(tmp_path / "far.geojson", far))
    late = [_feature([square], plane={"c": -1, "z": 0, "t": 9999})]  # 10,000 planes of an image 2048 square
    with pytest.raises(BadDataError, match="GiB of labels"):
        read_geojson_objects(_write(tmp_path / "late.geojson", late), (2048, 2048))


def test_a_point_inside_any_ring_even_a_thin_or_bent_one():
    from dsb.io.geojson import _inside, _point_inside

    shapes = {"square": [[0, 0], [6, 0], [6, 4], [0, 4]],
              "thin-spined C": [[0.6, 0], [20, 0], [20, 6], [0.9, 6], [0.9, 34], [20, 34], [20, 40], [0.6, 40]],
              "U": [[0, 0], [3, 0], [3, 20], [9, 20], [9, 0], [12, 0], [12, 23], [0, 23]],
              "diagonal sliver": [[0, 0], [1.2, 0], [30, 28.8], [30, 30], [28.8, 30], [0, 1.2]]}
    for name, ring in shapes.items():
        ring = np.asarray(ring, float)
        for drawn in (ring, ring[::-1]):
            point = _point_inside(drawn)
            assert _inside(drawn, np.array([point]))[0], name
            assert all(type(v) is float for v in point) and (np.asarray(point) % 1 == 0.5).all(), name


def test_a_large_region_is_told_by_its_rows_not_its_area(tmp_path):
    # A whole-slide region around a few nuclei: found without filling its million-pixel square.
    region = _feature([[[0, 0], [4000, 0], [4000, 4000], [0, 4000], [0, 0]]], name="Tissue")
    nuclei = [_feature([[[x, 10], [x + 5, 10], [x + 5, 15], [x, 15], [x, 10]]]) for x in (10, 3000)]
    labels, _, table = read_geojson_objects(_write(tmp_path / "slide.geojson", [region, *nuclei]))
    assert len(table) == 2 and np.bincount(labels.ravel())[1:].tolist() == [25, 25]


def test_a_stacks_objects_go_on_its_frames_as_dsb_segment_put_them(tmp_path):
    from dsb.io.annotations import read_label_stack

    _, volume = nuclei_volume((3, 40, 48), diameter=12, seed=4)
    pages = write_geojson(tmp_path / "pages.geojson", volume, "t")  # a plain TIFF's pages, on QuPath's t
    np.testing.assert_array_equal(read_label_stack(pages, (3, 40, 48), "f"), volume)
    movie = np.stack([volume, volume[:, ::-1], np.zeros_like(volume)])  # (t, z): the last time point empty
    both = write_geojson(tmp_path / "both.geojson", movie, "tz")
    np.testing.assert_array_equal(read_label_stack(both, (3, 3, 40, 48), "tz"), movie)
    with pytest.raises(BadDataError, match="plane 1, but its image has 0 time points"):
        read_label_stack(both, (3, 40, 48), "z")
    late = write_geojson(tmp_path / "late.geojson", np.zeros((1000, 4, 4), np.int32) + np.eye(4, dtype=np.int32)[None] *
                         (np.arange(1000) == 999)[:, None, None], "t")  # one object, on time point 999
    with pytest.raises(BadDataError, match="plane 999, but its image has 3 time points"):  # said before any GiB
        read_label_stack(late, (3, 2048, 2048), "t")


def test_qupath_0_2_and_0_3_objects_say_their_type_in_their_id(tmp_path):
    cell = [[0, 0], [12, 0], [12, 12], [0, 12], [0, 0]]
    nucleus = [[4, 4], [8, 4], [8, 8], [4, 8], [4, 4]]
    features = [{"type": "Feature", "id": "PathCellObject", "geometry": {"type": "Polygon", "coordinates": [cell]},
                 "nucleusGeometry": {"type": "Polygon", "coordinates": [nucleus]}, "properties": {}},
                {"type": "Feature", "id": "PathDetectionObject",
                 "geometry": {"type": "Polygon", "coordinates": [[[20, 0], [40, 0], [40, 20], [20, 20], [20, 0]]]},
                 "properties": {}},
                {"type": "Feature", "id": "PathDetectionObject",  # inside the one before: no region among detections
                 "geometry": {"type": "Polygon", "coordinates": [[[22, 2], [24, 2], [24, 4], [22, 4], [22, 2]]]},
                 "properties": {}}]
    labels, _, table = read_geojson_objects(_write(tmp_path / "old.geojson", features), (20, 40))
    assert table["object_type"].tolist() == ["cell", "detection", "detection"]
    # The cell's nucleus, not the cell; the large detection whole (a detection is no region), the small one
    # under it keeps no pixel (the first object keeps an overlap).
    assert np.bincount(labels.ravel()).tolist() == [800 - 16 - 400, 16, 400]
