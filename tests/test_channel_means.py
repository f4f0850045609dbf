"""Each nucleus measured in every channel when one channel is segmented (``dsb segment --channel``):
the DNA stain finds the nuclei, the other channels (a marker, a second stain) are measured in them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import dsb as run_dsb
from PIL import Image

from dsb.core.labels import label_means
from dsb.io.images import read_channels
from dsb.io.synthetic import nuclei_field
from dsb.workflows.segment_files import measure_nuclei

tifffile = pytest.importorskip("tifffile")

DIAMETER = 24
POSITIVE, NEGATIVE, BACKGROUND = 200, 10, 50


@pytest.fixture(scope="module")
def plate():
    """A DNA channel, a marker bright in the odd-numbered nuclei only, and an even background channel."""
    dna, truth = nuclei_field((256, 256), DIAMETER, count=20, seed=1)
    marker = np.where(truth % 2 == 1, POSITIVE, NEGATIVE).astype(np.uint8)
    flat = np.full(dna.shape, BACKGROUND, np.uint8)
    return dna, marker, flat, truth


def test_label_means_leave_out_what_is_not_finite():
    labels = np.array([[0, 1, 1, 2], [3, 3, 0, 2]])
    values = np.array([[5.0, 2.0, 4.0, np.nan], [1.0, np.inf, 7.0, np.nan]])
    np.testing.assert_array_equal(label_means(labels, values), [6.0, 3.0, np.nan, 1.0])
    np.testing.assert_array_equal(label_means(labels, values, 4)[4], np.nan)  # a label with no pixel


def test_measure_nuclei_in_every_channel(plate):
    dna, marker, flat, truth = plate
    channels = np.dstack([dna, marker, flat])
    table = measure_nuclei(truth, dna.astype(float), channels=channels)
    assert list(table.columns[-3:]) == ["mean_intensity_c0", "mean_intensity_c1", "mean_intensity_c2"]
    np.testing.assert_allclose(table["mean_intensity_c0"], table["mean_intensity"])
    expected = np.where(table["label"] % 2 == 1, POSITIVE, NEGATIVE)
    np.testing.assert_array_equal(table["mean_intensity_c1"], expected)
    assert (table["mean_intensity_c2"] == BACKGROUND).all()
    with pytest.raises(ValueError, match="must be"):
        measure_nuclei(truth, dna, channels=channels[:10])


def test_read_channels(tmp_path, plate):
    dna, marker, flat, _ = plate
    tifffile.imwrite(tmp_path / "cyx.tif", np.stack([dna, marker, flat, dna, marker]), imagej=True,
                     metadata={"axes": "CYX"})
    five = read_channels(tmp_path / "cyx.tif")  # more channels than read_image takes without --channel
    assert five.shape == (*dna.shape, 5)
    np.testing.assert_array_equal(five[:, :, 1], marker)
    Image.fromarray(dna).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_channels(tmp_path / "grey.png"), dna[:, :, None])  # one channel
    Image.fromarray(np.dstack([marker, flat, dna])).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_channels(tmp_path / "rgb.png")[:, :, 2], dna)
    movie = np.stack([np.stack([dna, marker]), np.stack([dna[::-1], marker[::-1]]), np.stack([dna, flat])])
    tifffile.imwrite(tmp_path / "tcyx.tif", movie, imagej=True, metadata={"axes": "TCYX"})
    frames = read_channels(tmp_path / "tcyx.tif", frames=True)
    assert frames.shape == (3, *dna.shape, 2)
    np.testing.assert_array_equal(frames[1, :, :, 1], marker[::-1])


def positives(table: pd.DataFrame) -> int:
    return int((table["mean_intensity_c1"] > (POSITIVE + NEGATIVE) / 2).sum())


@pytest.mark.parametrize("block_size", [None, 160])
def test_dsb_segment_measures_the_marker_in_the_nuclei_of_the_dna_channel(tmp_path, plate, block_size):
    """In one piece and block by block, a TIFF and a PNG: the marker's positive nuclei are counted
    where the DNA channel found them."""
    dna, marker, flat, truth = plate
    tifffile.imwrite(tmp_path / "plate.tif", np.stack([dna, marker, flat]), imagej=True, metadata={"axes": "CYX"})
    Image.fromarray(np.dstack([flat, marker, dna])).save(tmp_path / "rgb.png")  # the marker green, DNA blue
    out = tmp_path / "out"
    for name, channel in (("plate.tif", 0), ("rgb.png", 2)):
        extra = () if block_size is None else ("--block-size", block_size)
        result = run_dsb("segment", tmp_path / name, "--out", out, "--channel", channel, "--diameter", DIAMETER,
                         *extra)
        assert result.exit_code == 0, result.output
    odd = int((np.unique(truth[truth > 0]) % 2 == 1).sum())
    plate_table = pd.read_csv(out / "plate_nuclei.csv")
    rgb_table = pd.read_csv(out / "rgb_nuclei.csv")
    assert len(plate_table) == len(rgb_table) == int(truth.max())
    assert positives(plate_table) == positives(rgb_table) == odd
    # Each nucleus's mean in the segmented channel is its mean_intensity.
    np.testing.assert_allclose(plate_table["mean_intensity_c0"], plate_table["mean_intensity"])
    np.testing.assert_allclose(rgb_table["mean_intensity_c2"], rgb_table["mean_intensity"])
    assert (plate_table["mean_intensity_c2"] == BACKGROUND).all()
    assert (rgb_table["mean_intensity_c0"] == BACKGROUND).all()


def test_a_stack_and_an_image_without_a_picked_channel(tmp_path, plate):
    dna, marker, _, truth = plate
    movie = np.stack([np.stack([dna, marker]), np.stack([dna[::-1], marker[::-1]])])
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TCYX"})
    Image.fromarray(dna).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    result = run_dsb("segment", tmp_path / "movie.tif", "--out", out, "--channel", 0, "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "movie_nuclei.csv")
    odd = int((np.unique(truth[truth > 0]) % 2 == 1).sum())
    assert table.groupby("t").apply(positives, include_groups=False).tolist() == [odd, odd]
    # Segmented from its luminance (no --channel), an image gets no channel columns; with --channel 0
    # a grey image gets its one, so that the tables of a folder of mixed files have the same columns.
    result = run_dsb("segment", tmp_path / "grey.png", "--out", out, "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    assert not [c for c in pd.read_csv(out / "grey_nuclei.csv").columns if c.startswith("mean_intensity_c")]
    for extra in ((), ("--block-size", 160)):
        result = run_dsb("segment", tmp_path / "grey.png", "--out", out / "c0", "--diameter", DIAMETER,
                         "--channel", 0, *extra)
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out / "c0" / "grey_nuclei.csv")
        assert [c for c in table.columns if c.startswith("mean_intensity_c")] == ["mean_intensity_c0"], extra
        np.testing.assert_allclose(table["mean_intensity_c0"], table["mean_intensity"])
