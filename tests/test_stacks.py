"""TIFF stacks (time series, the planes of a volume) in ``dsb segment``: frame by frame, one label
stack and one table with the frame of each nucleus (dsb.io.images.read_stack,
dsb.workflows.segment_files.segment_stack)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dsb
from conftest import dsb as run_dsb
from conftest import error_line
from dsb.core.errors import BadDataError
from dsb.io.channels import axis_roles
from dsb.io.images import read_stack, stack_frames
from dsb.io.synthetic import nuclei_field

tifffile = pytest.importorskip("tifffile")

DIAMETER = 20


@pytest.fixture(scope="module")
def movie():
    """Four frames of nuclei (each field its own) and their truth; a second channel of something else."""
    fields = [nuclei_field((192, 224), DIAMETER, seed=k, count=25) for k in range(4)]
    return np.stack([f[0] for f in fields]), np.stack([f[1] for f in fields])


@pytest.mark.parametrize(("shape", "axes", "channel", "roles"), [
    ((10, 2, 256, 256), "TCYX", 0, "tcyx"),
    ((10, 5, 256, 256), "TZYX", None, "tzyx"),
    ((5, 256, 256), "ZYX", None, "zyx"),
    ((9, 64, 80), "QYX", None, "fyx"),  # plain multi-page: the shape decides
    ((9, 64, 80), None, None, "fyx"),
    ((9, 64, 80, 3), None, None, "fyxc"),
    ((3, 64, 80), None, None, "cyx"),  # three planes read as colour, as a 2-D image's
    ((64, 80), None, None, "yx"),
])
def test_frame_roles(shape, axes, channel, roles):
    assert axis_roles(shape, axes, channel=channel, frames=True)[0] == roles


def test_frames_only_where_asked_and_not_beside_a_side():
    with pytest.raises(BadDataError, match="stacks and time series are not supported"):
        axis_roles((5, 256, 256), "ZYX")
    with pytest.raises(BadDataError, match="not one 2-D image"):
        axis_roles((256, 256, 6), frames=True)  # six values beside a side: channels, not frames


def test_read_stack(tmp_path, movie):
    frames, _ = movie
    two = np.stack([frames, 255 - frames], axis=1)
    tifffile.imwrite(tmp_path / "t.tif", two, imagej=True, metadata={"axes": "TCYX"})
    assert stack_frames(tmp_path / "t.tif", 1) == "t"
    stack, roles = read_stack(tmp_path / "t.tif", 1)
    assert roles == "t"
    np.testing.assert_array_equal(stack, 255 - frames)
    with pytest.raises(BadDataError, match="no channel 2"):
        stack_frames(tmp_path / "t.tif", 2)
    tifffile.imwrite(tmp_path / "one.tif", frames[0])
    assert stack_frames(tmp_path / "one.tif") == ""
    assert read_stack(tmp_path / "one.tif")[1] == ""
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    assert stack_frames(tmp_path / "broken.tif") == ""  # its reading names the problem


def test_dsb_segment_a_time_series_frame_by_frame(tmp_path, movie):
    frames, truth = movie
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "movie.tif", np.stack([frames, 255 - frames], axis=1), imagej=True,
                     metadata={"axes": "TCYX"})
    six = np.concatenate([frames, frames[:2]])
    tifffile.imwrite(inputs / "planes.tif", six, photometric="minisblack")  # pages without axis names
    tifffile.imwrite(inputs / "still.tif", frames[3])
    out = tmp_path / "out"
    result = run_dsb("segment", inputs, "--out", out, "--channel", 0, "--diameter", DIAMETER, "--overlay")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("file")
    assert list(summary.index) == [str(inputs / n) for n in ("movie.tif", "planes.tif", "still.tif")]
    assert (summary["status"] == "ok").all()

    model = dsb.load_model()
    each = [dsb.segment(frame, model, diameter=DIAMETER) for frame in frames]
    with tifffile.TiffFile(out / "movie_labels.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TYX"
        labels = tif.asarray()
    assert labels.shape == frames.shape
    for k in range(4):
        np.testing.assert_array_equal(labels[k], each[k])  # each frame as an image of its own
        assert labels[k].max() >= 20  # numbered from 1 in each frame
    table = pd.read_csv(out / "movie_nuclei.csv")
    assert list(table.columns[:2]) == ["t", "label"]
    assert table.groupby("t")["label"].max().tolist() == [int(e.max()) for e in each]
    assert summary.loc[str(inputs / "movie.tif"), "nuclei"] == len(table) == sum(int(e.max()) for e in each)
    # Measured in the frame the nucleus is in, in the picked channel's values.
    row = table[(table["t"] == 2) & (table["label"] == 5)].iloc[0]
    assert row["mean_intensity"] == pytest.approx(frames[2][labels[2] == 5].mean(), rel=1e-5)
    assert tifffile.imread(out / "movie_overlay.tif").shape == (*frames.shape, 3)

    # Without axis names, pages are channels when a channel is picked (here the first page, one image) ...
    np.testing.assert_array_equal(tifffile.imread(out / "planes_labels.tif"), labels[0])
    # ... and frames when none is.
    result = run_dsb("segment", inputs / "planes.tif", "--out", out, "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    planes = pd.read_csv(out / "planes_nuclei.csv")
    assert planes.columns[0] == "frame" and sorted(planes["frame"].unique()) == list(range(6))
    np.testing.assert_array_equal(tifffile.imread(out / "planes_labels.tif"), np.concatenate([labels, labels[:2]]))
    assert "t" not in pd.read_csv(out / "still_nuclei.csv").columns


def test_a_stack_without_the_channel_is_one_line(tmp_path, movie):
    frames, _ = movie
    tifffile.imwrite(tmp_path / "movie.tif", np.stack([frames, frames], axis=1), imagej=True,
                     metadata={"axes": "TCYX"})
    result = run_dsb("segment", tmp_path / "movie.tif", "--out", tmp_path / "out", "--channel", 3)
    error_line(result, 3, tmp_path / "movie.tif", "has 2 channels (0 to 1), so it has no channel 3")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_slices_before_time_points_are_written_in_imagej_order(tmp_path, movie):
    """An OME-TIFF stored Z, T, Y, X: the labels come back as ImageJ orders a hyperstack, time points
    first, and the table names each nucleus's z and t."""
    frames, _ = movie
    volume = np.stack([frames[:2], frames[2:]])  # z = 2, t = 2
    tifffile.imwrite(tmp_path / "zt.ome.tif", volume, ome=True, metadata={"axes": "ZTYX"})
    result = run_dsb("segment", tmp_path / "zt.ome.tif", "--out", tmp_path / "out", "--diameter", DIAMETER,
                     "--overlay")
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(tmp_path / "out" / "zt_labels.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"
        labels = tif.asarray()
    model = dsb.load_model()
    np.testing.assert_array_equal(labels[1, 0], dsb.segment(volume[0, 1], model, diameter=DIAMETER))  # t 1, z 0
    table = pd.read_csv(tmp_path / "out" / "zt_nuclei.csv")
    assert list(table.columns[:3]) == ["z", "t", "label"]
    assert table[(table["z"] == 0) & (table["t"] == 1)]["label"].max() == labels[1, 0].max()
    with tifffile.TiffFile(tmp_path / "out" / "zt_overlay.tif") as tif:
        assert tif.series[0].axes == "TZYXS" and tif.series[0].shape == (2, 2, *frames.shape[1:], 3)


def test_a_damaged_or_empty_frame_stops_the_run_before_anything_is_written(tmp_path, movie):
    frames, _ = movie
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", frames[0])
    tifffile.imwrite(inputs / "b.tif", frames, imagej=True, metadata={"axes": "TYX"})
    whole = (inputs / "b.tif").read_bytes()
    (inputs / "b.tif").write_bytes(whole[: len(whole) // 2])  # the last frames' pages cut off
    out = tmp_path / "out"
    result = run_dsb("segment", inputs, "--out", out)
    error_line(result, 3, inputs / "b.tif", "corrupt or truncated TIFF")  # one line: tifffile's own are kept in
    assert not out.exists() or not any(out.iterdir())
    # A float stack with one frame of NaN: that frame named.
    nan = frames.astype(np.float32)
    nan[2] = np.nan
    tifffile.imwrite(inputs / "b.tif", nan, imagej=True, metadata={"axes": "TYX"})
    result = run_dsb("segment", inputs, "--out", out)
    error_line(result, 3, inputs / "b.tif", "frame 2 (t) holds no finite pixel value")
    assert not out.exists() or not any(out.iterdir())
    # Skipped, in its place in the summary.
    result = run_dsb("segment", inputs, "--out", out, "--skip-bad", "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["file"].tolist() == [str(inputs / "a.tif"), str(inputs / "b.tif")]
    assert summary["status"].tolist() == ["ok", "skipped"]


def test_the_summary_keeps_the_order_given_with_a_refused_file(tmp_path, movie):
    frames, _ = movie
    tifffile.imwrite(tmp_path / "a.tif", frames[0])
    tifffile.imwrite(tmp_path / "b.tif", np.dstack([frames[1]] * 6))  # six channels, none picked
    tifffile.imwrite(tmp_path / "c.tif", frames, imagej=True, metadata={"axes": "TYX"})
    result = run_dsb("segment", tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif", "--out",
                     tmp_path / "out", "--skip-bad", "--diameter", DIAMETER)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["file"].tolist() == [str(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif")]
    assert summary["status"].tolist() == ["ok", "skipped", "ok"] and "6 channels" in summary.loc[1, "error"]


def test_unnamed_pages_say_how_they_were_read(tmp_path, movie):
    """A plain multi-page TIFF leaves the shape to decide between frames, channels and colour: the
    summary and stderr say which reading was taken, so a z-stack cut to one page is not silent."""
    frames, _ = movie
    six = np.concatenate([frames, frames[:2]])
    tifffile.imwrite(tmp_path / "six.tif", six, photometric="minisblack")
    tifffile.imwrite(tmp_path / "three.tif", frames[:3], photometric="minisblack")
    tifffile.imwrite(tmp_path / "named.tif", six, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([frames[0]] * 3))  # colour samples: nothing to say
    for extra, expected in (([], {"six.tif": "read as the frames of a stack", "three.tif": "colour channels"}),
                            (["--channel", 0], {"six.tif": "read as 6 channels, of which channel 0"})):
        out = tmp_path / f"out{len(extra)}"
        result = run_dsb("segment", tmp_path, "--out", out, "--diameter", DIAMETER, *extra)
        assert result.exit_code == 0, result.output
        summary = pd.read_csv(out / "summary.csv").set_index("file")["warning"].fillna("")
        for name in ("six.tif", "three.tif", "named.tif", "rgb.tif"):
            said = summary[str(tmp_path / name)]
            if name in expected:
                assert expected[name] in said, (name, said)
                assert f"dsb: warning: {tmp_path / name}: {said}" in result.stderr
            else:
                assert "pages" not in said, (name, said)
    assert tifffile.imread(tmp_path / "out2" / "six_labels.tif").ndim == 2  # one page, as it said


def test_a_stack_too_large_for_one_piece_is_refused_in_one_line(tmp_path, movie):
    frames, _ = movie
    tifffile.imwrite(tmp_path / "movie.tif", frames, imagej=True, metadata={"axes": "TYX"})
    result = run_dsb("segment", tmp_path / "movie.tif", "--out", tmp_path / "out", "--block-size", 128)
    error_line(result, 3, tmp_path / "movie.tif", "is a stack (of time points)", "give no --block-size")


def test_a_tiff_of_several_series_says_only_the_first_was_read(tmp_path):
    from dsb.io.images import tiff_page_note

    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(np.zeros((48, 64), np.uint8))
        tif.write(np.zeros((20, 30), np.uint16))  # another size and type: a second series
    note = tiff_page_note(tmp_path / "two.tif")
    assert "holds 2 series" in note and "48 x 64 (YX)" in note
    result = run_dsb("segment", tmp_path / "two.tif", "--out", tmp_path / "out")  # said on stderr and in the summary
    assert result.exit_code == 0 and f"{tmp_path / 'two.tif'}: it holds 2 series" in result.stderr
    assert "holds 2 series" in pd.read_csv(tmp_path / "out" / "summary.csv")["warning"].item()
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((3, 48, 64), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    assert tiff_page_note(tmp_path / "one.tif") == ""
