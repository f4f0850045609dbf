"""A channel picked by its name (``dsb segment --channel DAPI``), found in each OME file wherever it
keeps it (dsb.io.channel_names), and the measurements named after the file's channels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import dsb as run_dsb
from conftest import error_line
from PIL import Image

from dsb.core.errors import BadDataError
from dsb.io.channel_names import channel_names, file_channel
from dsb.io.images import read_image
from dsb.io.synthetic import nuclei_field

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

DIAMETER = 24


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """The same field in three files that keep the DNA stain in different channels: OME-TIFFs with it
    first and second (named in another case), an OME-Zarr with it second; a marker in the odd nuclei."""
    root = tmp_path_factory.mktemp("plate")
    dna, truth = nuclei_field((224, 224), DIAMETER, count=14, seed=4)
    marker = np.where(truth % 2 == 1, 200, 10).astype(np.uint8)
    tifffile.imwrite(root / "a.ome.tif", np.stack([dna, marker]), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    tifffile.imwrite(root / "b.ome.tif", np.stack([marker, dna]), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "dapi"]}})
    for name, zarr_format in (("c.ome.zarr", 2), ("d.ome.zarr", 3)):
        group = zarr.open_group(str(root / name), mode="w", zarr_format=zarr_format)
        group.create_array("0", shape=(2, *dna.shape), dtype="uint8")[...] = np.stack([marker, dna])
        meta = {"multiscales": [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                                             {"name": "y", "type": "space"},
                                                             {"name": "x", "type": "space"}],
                                 "datasets": [{"path": "0", "coordinateTransformations": [
                                     {"type": "scale", "scale": [1, 1, 1]}]}]}],
                "omero": {"channels": [{"label": "GFP"}, {"label": "DAPI"}]}}
        group.attrs.update(meta if zarr_format == 2 else {"ome": {"version": "0.5", **meta}})
    tifffile.imwrite(root / "plain.tif", np.stack([dna, marker]))
    Image.fromarray(dna).save(root / "grey.png")
    return root, dna, truth


def test_channel_names_and_indices(plate):
    root, dna, _ = plate
    assert channel_names(root / "a.ome.tif") == ["DAPI", "GFP"]
    assert channel_names(root / "b.ome.tif") == ["GFP", "dapi"]
    assert channel_names(root / "c.ome.zarr") == channel_names(root / "d.ome.zarr") == ["GFP", "DAPI"]
    assert channel_names(root / "plain.tif") == channel_names(root / "grey.png") == []
    assert [file_channel(root / n, "DAPI") for n in ("a.ome.tif", "b.ome.tif", "c.ome.zarr")] == [0, 1, 1]
    assert file_channel(root / "plain.tif", 1) == 1 and file_channel(root / "plain.tif", " 1 ") == 1
    assert file_channel(root / "plain.tif", None) is None
    np.testing.assert_array_equal(read_image(root / "b.ome.tif", "dapi"), dna)
    with pytest.raises(BadDataError, match=r"no channel named 'RFP' \(its channels: 0 'DAPI', 1 'GFP'\)"):
        file_channel(root / "a.ome.tif", "RFP")
    with pytest.raises(BadDataError, match="names no channels"):
        read_image(root / "grey.png", "DAPI")


def test_dsb_segment_finds_the_dna_stain_by_name_in_every_file(plate, tmp_path):
    root, _, truth = plate
    out = tmp_path / "out"
    inputs = [root / n for n in ("a.ome.tif", "b.ome.tif", "c.ome.zarr", "d.ome.zarr")]
    result = run_dsb("segment", *inputs, "--out", out, "--channel", "DAPI", "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    odd = int((np.unique(truth[truth > 0]) % 2 == 1).sum())
    for name in ("a", "b", "c", "d"):
        table = pd.read_csv(out / f"{name}_nuclei.csv")
        assert len(table) == int(truth.max()), name
        # Named after the file's channels, so that the marker's column is one name in every table.
        assert int((table["mean_intensity_GFP"] > 105).sum()) == odd, name
        dapi = [c for c in table.columns if c.casefold() == "mean_intensity_dapi"]
        np.testing.assert_allclose(table[dapi[0]], table["mean_intensity"])


@pytest.mark.parametrize(("names", "channel", "words"), [
    (("a.ome.tif", "plain.tif"), "DAPI", ("plain.tif", "names no channels", "channel's number")),
    (("a.ome.tif",), "RFP", ("a.ome.tif", "no channel named 'RFP'", "0 'DAPI'")),
    (("c.ome.zarr",), "RFP", ("c.ome.zarr", "no channel named 'RFP'", "1 'DAPI'")),
])
def test_a_name_a_file_lacks_is_one_line_and_nothing_written(plate, tmp_path, names, channel, words):
    """Also when the file is the second of a run, whose first would be written."""
    root, _, _ = plate
    result = run_dsb("segment", *(root / n for n in names), "--out", tmp_path / "out", "--channel", channel)
    error_line(result, 3, *words)
    assert not (tmp_path / "out").exists()


def test_a_negative_or_empty_channel_is_a_usage_error(plate, tmp_path):
    root, _, _ = plate
    for value in ("-1", " "):
        result = run_dsb("segment", root / "a.ome.tif", "--out", tmp_path / "out", "--channel", value)
        assert result.exit_code == 2 and "--channel" in result.stderr, result.stderr


def test_a_name_two_channels_share_is_refused(tmp_path):
    """Case aside, 'dapi' names both channels: neither is taken without a word."""
    image = np.zeros((2, 64, 64), np.uint16)
    tifffile.imwrite(tmp_path / "twice.ome.tif", image, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "dapi"]}})
    result = run_dsb("segment", tmp_path / "twice.ome.tif", "--out", tmp_path / "out", "--channel", "dapi")
    error_line(result, 3, "twice.ome.tif", "has 2 channels named 'dapi'", "0 'DAPI', 1 'dapi'", "channel's number")
    assert not (tmp_path / "out").exists()


def test_the_mixed_channels_warning_names_a_files_channels(tmp_path):
    """Segmented whole, a file whose channels show different stains: the warning lists the names --channel takes."""
    from dsb.io.synthetic import nuclei_field

    image, _ = nuclei_field((256, 256), 20, seed=1)
    tifffile.imwrite(tmp_path / "a.ome.tif", np.stack([image[::-1, ::-1], image, image[:, ::-1] // 2]), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DAPI", "RFP"]}})
    result = run_dsb("segment", tmp_path / "a.ome.tif", "--out", tmp_path / "out", "--diameter", 20)
    assert result.exit_code == 0, result.output
    warning = pd.read_csv(tmp_path / "out" / "summary.csv")["warning"][0]
    assert "its channels are named (0 'GFP', 1 'DAPI', 2 'RFP'): give --channel NAME" in warning
