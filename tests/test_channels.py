"""Multi-channel images: one channel picked out (dsb.io.channels, read_image, dsb.segment, dsb segment
--channel, block-wise), and a warning where a colour image's luminance may hide its nuclei
(dsb.inference.preprocess.mixed_channels).

A fluorescence composite (a DNA stain in blue beside a cytoplasm stain in green over most of the
field) is what a biologist's microscope writes: segmented from its luminance, the nuclei are lost in
the cytoplasm; from its blue channel, every one is found.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

import dsb
from conftest import dsb as run_dsb
from conftest import error_line
from dsb.core.errors import BadDataError
from dsb.inference.preprocess import mixed_channels
from dsb.io.channels import axis_roles, pick_channel
from dsb.io.images import read_image
from dsb.io.synthetic import nuclei_field
from dsb.kaggle.metric import image_score

tifffile = pytest.importorskip("tifffile")

DIAMETER = 24


@pytest.fixture(scope="module")
def cells():
    """A field of nuclei, its truth, and a cytoplasm stain around each nucleus covering most of the field."""
    nuclei, truth = nuclei_field((384, 384), DIAMETER, seed=0, count=70)
    bodies = ndimage.grey_dilation(truth, size=(25, 25)) > 0
    rng = np.random.default_rng(0)
    cytoplasm = np.clip(ndimage.gaussian_filter(bodies * 140.0 + rng.normal(0, 20, bodies.shape) * bodies, 2) + 10,
                        0, 255).astype(np.uint8)
    return nuclei, truth, cytoplasm


@pytest.fixture(scope="module")
def composite(cells) -> np.ndarray:
    nuclei, _, cytoplasm = cells
    return np.dstack([np.full_like(nuclei, 5), cytoplasm, nuclei])  # red empty, green cytoplasm, blue DNA


def _found(truth, labels) -> float:
    score = image_score(truth, labels)
    return score.tp[0] / score.n_true


# ---------------------------------------------------------------- which axis holds the channels


@pytest.mark.parametrize(("shape", "axes", "channel", "roles", "channels"), [
    ((512, 640), None, None, "yx", 1),
    ((512, 640, 3), None, None, "yxc", 3),
    ((512, 640, 1), None, None, "yxc", 1),
    ((3, 512, 640), None, None, "cyx", 3),
    ((5, 512, 640), None, 4, "cyx", 5),  # more than four channels, one picked
    ((512, 640, 7), None, 0, "yxc", 7),
    ((1, 1, 6, 512, 640), None, 2, "--cyx", 6),
    ((1, 2, 1, 256, 256), "TCZYX", None, "-c-yx", 2),
    ((256, 256, 3), "YXS", None, "yxc", 3),
    ((3, 256, 256), "QYX", None, "cyx", 3),  # tifffile's made-up name: the shape decides
    ((512, 640), None, 0, "yx", 1),  # channel 0 of a grey image is the image
])
def test_axis_roles(shape, axes, channel, roles, channels):
    assert axis_roles(shape, axes, channel=channel) == (roles, channels)


@pytest.mark.parametrize(("shape", "axes", "channel", "words"), [
    ((256, 256, 6), None, None,
     ["not one 2-D image: it has 6 channels, more than 4, or is a stack", "N that holds the nuclei, 0 to 5"]),
    ((6, 256, 256), "CYX", None,
     ["6 channels", "channel N that holds the nuclei, 0 to 5 (--channel N, or channel=N in Python)"]),
    ((3, 256, 256), "ZYX", None, ["not one 2-D image", "stacks"]),
    ((4, 3, 256, 256), "TCYX", 1, ["not one 2-D image"]),
    ((256, 256, 3), None, 3, ["has 3 channels (0 to 2), so it has no channel 3"]),
    ((256, 256), None, 1, ["has one channel, so it has no channel 1"]),
])
def test_axis_roles_refuses(shape, axes, channel, words):
    with pytest.raises(BadDataError) as caught:
        axis_roles(shape, axes, channel=channel, path="cells.tif")
    assert str(caught.value).startswith("cells.tif: ")
    for word in words:
        assert word in str(caught.value)


def test_pick_channel_first_or_last():
    stack = np.arange(5 * 8 * 9).reshape(5, 8, 9)
    np.testing.assert_array_equal(pick_channel(stack, 3), stack[3])
    np.testing.assert_array_equal(pick_channel(np.moveaxis(stack, 0, -1), 3), stack[3])
    np.testing.assert_array_equal(pick_channel(stack[None, None], 3), stack[3])
    rgb = np.moveaxis(stack[:3], 0, -1)
    assert pick_channel(rgb, None) is not None and pick_channel(rgb, None).shape == (8, 9, 3)
    assert pick_channel(np.moveaxis(rgb, -1, 0), None).shape == (8, 9, 3)  # channel-first to channel-last
    with pytest.raises(ValueError, match="0 or more"):
        pick_channel(stack, -1)
    with pytest.raises(TypeError, match="must be an int"):
        pick_channel(stack, 1.0)


# ---------------------------------------------------------------- reading files


def test_read_one_channel_of_a_tiff_png_and_grey(tmp_path, cells, composite):
    nuclei, _, cytoplasm = cells
    five = np.stack([cytoplasm, nuclei, cytoplasm // 2, nuclei // 3, cytoplasm]).astype(np.uint16) * 200
    tifffile.imwrite(tmp_path / "imagej.tif", five, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "plain.tif", np.moveaxis(five, 0, -1))  # (H, W, 5), no axis names
    for name in ("imagej.tif", "plain.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name, channel=1), five[1])
        with pytest.raises(BadDataError, match="--channel N") as caught:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
        with pytest.raises(BadDataError, match="no channel 5"):
            read_image(tmp_path / name, channel=5)
    Image.fromarray(composite).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", channel=2), nuclei)
    assert read_image(tmp_path / "rgb.png").shape == (*nuclei.shape, 3)  # unchanged without a channel
    Image.fromarray(nuclei).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", channel=0), nuclei)
    with pytest.raises(BadDataError, match="has one channel, so it has no channel 2"):
        read_image(tmp_path / "grey.png", channel=2)


# ---------------------------------------------------------------- the warning


def test_mixed_channels_flags_composites_only(cells, composite):
    nuclei, _, cytoplasm = cells
    why = mixed_channels(composite)
    assert why is not None and "channels 1 (green) and 2 (blue)" in why
    assert mixed_channels(np.dstack([nuclei] * 3)) is None  # grey stored as RGB
    assert mixed_channels(np.dstack([nuclei, nuclei // 2, nuclei])) is None  # tinted grey
    assert mixed_channels(np.dstack([0 * nuclei, 0 * nuclei, nuclei])) is None  # one stain in blue
    assert mixed_channels(nuclei) is None
    # Grey+alpha whose alpha is transparency, opaque or with clear parts; and a second image as "alpha".
    assert mixed_channels(np.dstack([nuclei, np.full_like(nuclei, 255)])) is None
    assert mixed_channels(np.dstack([nuclei, (nuclei > 50).astype(np.uint8) * 255])) is None
    assert "second channel (1)" in mixed_channels(np.dstack([nuclei, cytoplasm]))
    # Four channels, the DNA stain last (a TIFF of three markers and DAPI): read as RGBA, DAPI left out.
    assert "fourth channel (3)" in mixed_channels(np.dstack([cytoplasm, cytoplasm // 2, cytoplasm // 3, nuclei]))
    assert mixed_channels(np.dstack([nuclei] * 3 + [np.full_like(nuclei, 255)])) is None
    # A brightfield picture with anti-aliased transparency is no fluorescence image.
    light = 255 - nuclei // 2
    assert mixed_channels(np.dstack([light, ndimage.uniform_filter(light, 5)])) is None
    stained, _ = nuclei_field((256, 256), 20, kind="stained", seed=2)
    assert mixed_channels(stained) is None
    # 16-bit and float composites too.
    assert mixed_channels(composite.astype(np.uint16) * 257) is not None
    assert mixed_channels(composite.astype(np.float32) / 255) is not None


def test_mixed_channels_is_quiet_on_the_competition_images(train_dir):
    """No stage1_train image (grey fluorescence and brightfield stored as RGB, stained tissue) is
    flagged."""
    paths = sorted(train_dir.glob("*/images/*.png"))
    assert len(paths) > 600
    flagged = [p.name for p in paths if mixed_channels(read_image(p)) is not None]
    assert flagged == []


# ---------------------------------------------------------------- segmenting


def test_segment_a_composite_by_its_dna_channel(cells, composite):
    _, truth, _ = cells
    model = dsb.load_model()
    with pytest.warns(UserWarning, match="channel=N"):
        mixed = dsb.segment(composite, model, diameter=DIAMETER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a picked channel is not questioned
        picked = dsb.segment(composite, model, diameter=DIAMETER, channel=2)
        first = dsb.segment(np.moveaxis(composite, -1, 0), model, diameter=DIAMETER, channel=2)
    assert _found(truth, picked) >= 0.95
    assert _found(truth, mixed) < 0.5  # the luminance is mostly the cytoplasm stain
    np.testing.assert_array_equal(first, picked)
    np.testing.assert_array_equal(picked, dsb.segment(composite[..., 2], model, diameter=DIAMETER))
    with pytest.raises(ValueError, match="no channel 3"):
        dsb.segment(composite, model, channel=3)
    with pytest.raises(TypeError, match="6 channels, more than 4.*channel=N"):
        dsb.segment(np.zeros((32, 32, 6), np.uint8), model)
    # Channels first, as read_image takes them: the same labels.
    np.testing.assert_array_equal(dsb.segment(np.dstack([cells[0]] * 3).transpose(2, 0, 1), model, diameter=DIAMETER),
                                  dsb.segment(cells[0], model, diameter=DIAMETER))


def test_cli_channel_and_warning(tmp_path, cells, composite):
    nuclei, truth, cytoplasm = cells
    five = np.stack([cytoplasm, nuclei, cytoplasm // 2, nuclei // 3, cytoplasm]).astype(np.uint16) * 200
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "five.tif", five, imagej=True, metadata={"axes": "CYX"})
    Image.fromarray(composite).save(inputs / "rgb.png")

    # Five channels and none picked: one line naming the file; nothing written.
    result = run_dsb("segment", inputs, "--out", tmp_path / "none", "--diameter", DIAMETER)
    error_line(result, 3, inputs / "five.tif", "5 channels", "--channel N")
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())

    # The composite alone: segmented from its luminance, with a warning on stderr and in the summary.
    result = run_dsb("segment", inputs / "rgb.png", "--out", tmp_path / "lum", "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    assert f"dsb: warning: {inputs / 'rgb.png'}: a colour fluorescence image" in result.stderr
    assert "--channel N" in result.stderr
    summary = pd.read_csv(tmp_path / "lum" / "summary.csv")
    assert "correlation" in summary.loc[0, "warning"]

    # Channel 1 of the TIFF and channel 2 of the PNG hold the same nuclei: the same labels, and the
    # TIFF's measurements in its own 16-bit counts of that channel.
    result = run_dsb("segment", inputs / "five.tif", "--out", tmp_path / "tif", "--diameter", DIAMETER,
                     "--channel", 1)
    assert result.exit_code == 0, result.output
    result = run_dsb("segment", inputs / "rgb.png", "--out", tmp_path / "png", "--diameter", DIAMETER,
                     "--channel", 2)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    labels = tifffile.imread(tmp_path / "tif" / "five_labels.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "png" / "rgb_labels.tif"))
    assert _found(truth, labels) >= 0.95
    table = pd.read_csv(tmp_path / "tif" / "five_nuclei.csv")
    first = table.iloc[0]
    assert first["mean_intensity"] == pytest.approx(five[1][labels == first["label"]].mean(), rel=1e-5)
    assert pd.isna(pd.read_csv(tmp_path / "tif" / "summary.csv").loc[0, "warning"])

    # A channel the image lacks: one line naming the file and its channels.
    result = run_dsb("segment", inputs / "rgb.png", "--out", tmp_path / "bad", "--channel", 3)
    error_line(result, 3, inputs / "rgb.png", "has 3 channels (0 to 2), so it has no channel 3")
    result = run_dsb("segment", inputs / "rgb.png", "--out", tmp_path / "bad", "--channel", -1)
    assert result.exit_code == 2


def test_block_wise_reads_only_the_channel(tmp_path, cells, composite):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask.array")
    nuclei, _, cytoplasm = cells
    grey = dsb.segment_blocks(nuclei, diameter=DIAMETER, block_size=160).compute(scheduler="threads")
    stack = np.stack([cytoplasm, cytoplasm // 2, nuclei, cytoplasm, nuclei // 2, cytoplasm])  # six channels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a picked channel is not questioned
        found = dsb.segment_blocks(stack, diameter=DIAMETER, block_size=160, channel=2).compute(scheduler="threads")
    assert found.max() > 50
    np.testing.assert_array_equal(found, grey)
    with pytest.warns(UserWarning, match="channel=N"):
        dsb.segment_blocks(composite, diameter=DIAMETER, block_size=160)
    # An OME-Zarr of six channels through the command line.
    group = zarr.open_group(str(tmp_path / "well.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype)[...] = stack
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                                              {"name": "y", "type": "space"},
                                                              {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0"}]}]
    result = run_dsb("segment", tmp_path / "well.ome.zarr", "--out", tmp_path / "out", "--diameter", DIAMETER,
                     "--block-size", 160, "--channel", 2)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "out" / "well_labels.zarr"), mode="r")["0"][:],
                                  found)
    result = run_dsb("segment", tmp_path / "well.ome.zarr", "--out", tmp_path / "out2", "--block-size", 160)
    error_line(result, 3, "well.ome.zarr", "6 channels", "--channel N")


def test_cluster_tasks_read_the_channel_too(tmp_path, cells, composite):
    """The tasks a Dask cluster runs per image (here in this process: no client) check and segment
    the same channel as one process does."""
    from dsb.io.folders import Skips
    from dsb.network.model_folder import default_model_dir
    from dsb.workflows.cluster import ModelSpec
    from dsb.workflows.calibration import Calibration
    from dsb.workflows.segment_inputs import segment_folder

    nuclei, _, cytoplasm = cells
    tifffile.imwrite(tmp_path / "five.tif", np.stack([cytoplasm, nuclei, cytoplasm, nuclei, cytoplasm]))
    Image.fromarray(nuclei).save(tmp_path / "grey.png")
    spec = ModelSpec(str(default_model_dir()))
    skips = Skips(skip_bad=True)
    rows = segment_folder({"five": tmp_path / "five.tif", "grey": tmp_path / "grey.png"}, spec=spec,
                          out_dir=tmp_path, client=None, skips=skips, progress=False, channel=1,
                          scales={str(tmp_path / n): Calibration(diameter=DIAMETER) for n in ("five.tif", "grey.png")})
    assert list(rows) == [str(tmp_path / "five.tif")] and rows[str(tmp_path / "five.tif")]["warning"] == ""
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "five_labels.tif"),
                                  dsb.segment(nuclei, diameter=DIAMETER))
    # Each nucleus measured in the five channels, as in one process.
    table = pd.read_csv(tmp_path / "five_nuclei.csv")
    np.testing.assert_allclose(table["mean_intensity_c1"], table["mean_intensity"])
    np.testing.assert_allclose(table["mean_intensity_c3"], table["mean_intensity"])
    assert "mean_intensity_c4" in table and "mean_intensity_c5" not in table
    (skip,) = skips.records
    assert skip.path == str(tmp_path / "grey.png") and "no channel 1" in skip.message


def test_a_png_source_keeps_its_channel_in_another_process(tmp_path, composite):
    """A block-wise PNG source goes to a Dask worker as its path; the worker decodes the file again
    and reads the same channel."""
    import pickle

    from dsb.io.bigimage import open_source

    Image.fromarray(composite).save(tmp_path / "rgb.png")
    source = open_source(tmp_path / "rgb.png", channel=2)
    again = pickle.loads(pickle.dumps(source))
    assert again._array is None  # no pixels travel
    np.testing.assert_array_equal(again.read(10, 40, 20, 90), composite[10:40, 20:90, 2])
    assert source.channels == again.channels == 1


def test_images_read_again_keep_the_channel(tmp_path, cells):
    """Images beyond the reading cache are decoded a second time for prediction, with the same channel."""
    from dsb.io.folders import Skips, find_images, read_images

    nuclei, _, cytoplasm = cells
    for k in range(3):
        tifffile.imwrite(tmp_path / f"f{k}.tif", np.stack([cytoplasm, np.roll(nuclei, k), cytoplasm, cytoplasm,
                                                           cytoplasm]))
    images, _ = find_images([tmp_path])
    checked = read_images(images, Skips(), cache_bytes=0, channel=1)
    got = {path.name: raw for _, path, raw in checked.images(Skips())}
    assert sorted(got) == ["f0.tif", "f1.tif", "f2.tif"]
    for k in range(3):
        np.testing.assert_array_equal(got[f"f{k}.tif"], np.roll(nuclei, k))


def test_a_bad_large_input_stops_before_anything_is_written(tmp_path, cells, composite):
    zarr = pytest.importorskip("zarr")
    nuclei, _, cytoplasm = cells
    Image.fromarray(nuclei).save(tmp_path / "small.png")
    zarr.create_array(store=str(tmp_path / "six.zarr"), shape=(6, *nuclei.shape), chunks=(1, 128, 128),
                      dtype=nuclei.dtype)[...] = np.stack([cytoplasm, nuclei] * 3)
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "small.png", tmp_path / "six.zarr", "--out", out, "--block-size", 160)
    error_line(result, 3, "six.zarr", "6 channels", "--channel N")
    assert not out.exists() or not any(out.iterdir())
    # Skipped, the other images are segmented, and the summary says why.
    result = run_dsb("segment", tmp_path / "small.png", tmp_path / "six.zarr", "--out", out, "--block-size", 160,
                     "--skip-bad", "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["skipped", "ok"] and "6 channels" in summary.loc[0, "error"]
    # The block-wise path warns as one piece does.
    Image.fromarray(composite).save(tmp_path / "rgb.png")
    result = run_dsb("segment", tmp_path / "rgb.png", "--out", tmp_path / "blocks", "--block-size", 160,
                     "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    assert "a colour fluorescence image" in pd.read_csv(tmp_path / "blocks" / "summary.csv").loc[0, "warning"]
    assert f"dsb: warning: {tmp_path / 'rgb.png'}: a colour fluorescence image" in result.stderr
