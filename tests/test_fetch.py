"""Fetching the competition data: local sources, the Kaggle path with a fake client, errors, idempotence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SAMPLE_CSV,
    TRAIN_CSV,
    assert_nothing_complete,
    inner_zips,
    png_bytes,
    stage_entries,
    write_zip,
)

from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.kaggle import fetch as fetch_module
from dsb.kaggle import kaggle_api
from dsb.kaggle.fetch import FetchSummary, fetch, verify

REPO = Path(__file__).resolve().parents[1]


def _bundle(path: Path, inner: Path) -> Path:
    """Kaggle's download: the inner zips inside one zip."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(inner.glob("*.zip")):
            zf.write(p, p.name)
    return path


def _snapshot(dest: Path) -> dict[str, int]:
    return {str(p.relative_to(dest)): p.stat().st_mtime_ns for p in sorted(dest.rglob("*"))}


def _assert_fetched(dest: Path, summary: FetchSummary, *, train=(3, 2), test=3):
    assert summary.stage("stage1_train").images == train[0]
    assert summary.stage("stage1_train").masks == train[0] * train[1]
    assert summary.stage("stage1_test").images == test and summary.stage("stage1_test").masks == 0
    assert (dest / "stage1_train" / "0000abcd" / "images" / "0000abcd.png").is_file()
    assert len(list((dest / "stage1_train" / "0001abcd" / "masks").glob("*.png"))) == train[1]
    assert (dest / "stage1_train_labels.csv").read_bytes() == TRAIN_CSV
    assert (dest / "stage1_sample_submission.csv").read_bytes() == SAMPLE_CSV
    assert summary.csvs == ("stage1_sample_submission.csv", "stage1_train_labels.csv")
    leftovers = [p.name for p in dest.iterdir() if p.name.startswith(".") and not p.name.startswith(".fetched")]
    assert leftovers == []


# ---------------------------------------------------------------- local sources


def test_fetch_from_a_folder_of_inner_zips(tmp_path):
    source = inner_zips(tmp_path / "src")
    dest = tmp_path / "data"
    summary = fetch(dest, source=source)
    _assert_fetched(dest, summary)
    assert str(summary).startswith("stage1_train: 3 images, 6 masks; stage1_test: 3 images; CSVs: ")
    assert set(summary.fetched) == {
        "stage1_train", "stage1_test", "stage1_train_labels.csv", "stage1_sample_submission.csv"
    }
    assert json.loads((dest / ".fetched-stage1_train.json").read_text())["masks"] == 6
    assert verify(dest).stages == summary.stages


def test_fetch_from_kaggles_bundle(tmp_path):
    bundle = _bundle(tmp_path / "data-science-bowl-2018.zip", inner_zips(tmp_path / "inner", extra_stage=True))
    dest = tmp_path / "data"
    summary = fetch(dest, source=bundle)
    _assert_fetched(dest, summary)
    assert [s.name for s in summary.stages] == ["stage1_train", "stage1_test", "stage2_test_final"]
    assert summary.stage("stage2_test_final").images == 2


def test_fetch_from_a_zip_of_stage_folders(tmp_path):
    entries = {}
    entries.update(stage_entries(3, 2, prefix="dsb/stage1_train/"))
    entries.update(stage_entries(3, 0, prefix="dsb/stage1_test/"))
    entries["dsb/stage1_train_labels.csv"] = TRAIN_CSV
    entries["dsb/stage1_sample_submission.csv"] = SAMPLE_CSV
    entries["__MACOSX/dsb/._stage1_train_labels.csv"] = b"junk"
    source = write_zip(tmp_path / "unpacked.zip", entries)
    dest = tmp_path / "data"
    _assert_fetched(dest, fetch(dest, source=source))


def test_fetch_from_an_unzipped_folder_and_adopt_in_place(tmp_path):
    first = tmp_path / "first"
    fetch(first, source=inner_zips(tmp_path / "src"))
    (first / "stage1_train" / ".cache").mkdir()  # e.g. `dsb prepare` run on the stage folder
    (first / "stage1_train" / ".cache" / "x.npz").write_bytes(b"x")
    second = tmp_path / "second"
    summary = fetch(second, source=first)
    _assert_fetched(second, summary)
    assert not (second / "stage1_train" / ".cache").exists()

    # a folder unzipped by hand, fetched onto itself: verified and recorded, nothing copied
    for marker in first.glob(".fetched*"):
        marker.unlink()
    again = fetch(first, source=first)
    assert again.stages == summary.stages and (first / ".fetched.json").is_file()


def test_second_fetch_leaves_files_alone(tmp_path):
    # How fast it is, is bench/bench_fetch.py's to measure.
    source = inner_zips(tmp_path / "src")
    dest = tmp_path / "data"
    fetch(dest, source=source)
    before = _snapshot(dest)
    summary = fetch(dest, source=tmp_path / "gone")  # a complete destination needs no source
    assert summary.fetched == () and str(summary).endswith("(already there)")
    assert _snapshot(dest) == before


def test_fetch_finishes_what_an_earlier_fetch_left(tmp_path):
    source = inner_zips(tmp_path / "src")
    dest = tmp_path / "data"
    fetch(dest, source=source)
    train_marker = (dest / ".fetched-stage1_train.json").stat().st_mtime_ns
    shutil.rmtree(dest / "stage1_test")
    summary = fetch(dest, source=source)
    assert "stage1_test" in summary.fetched and "stage1_train" not in summary.fetched
    assert (dest / ".fetched-stage1_train.json").stat().st_mtime_ns == train_marker
    _assert_fetched(dest, summary)
    forced = fetch(dest, source=source, force=True)
    assert "stage1_train" in forced.fetched


# ---------------------------------------------------------------- errors


def test_missing_source_and_missing_stage(tmp_path):
    with pytest.raises(BadDataError, match="source not found"):
        fetch(tmp_path / "data", source=tmp_path / "nope.zip")
    source = inner_zips(tmp_path / "src")
    (source / "stage1_test.zip").unlink()
    with pytest.raises(BadDataError, match="holds no stage1_test") as info:
        fetch(tmp_path / "data", source=source)
    assert info.value.exit_code == 3
    assert_nothing_complete(tmp_path / "data")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_crc"])
def test_corrupt_or_truncated_zip(tmp_path, damage):
    source = inner_zips(tmp_path / "src")
    path = source / "stage1_train.zip"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        write_zip(path, stage_entries(3, 2), compression=zipfile.ZIP_STORED)
        raw = bytearray(path.read_bytes())
        at = raw.index(b"IDAT") + 10  # inside the stored pixels of the first image
        raw[at : at + 4] = b"\xff\xff\xff\xff"
        path.write_bytes(bytes(raw))
    dest = tmp_path / "data"
    with pytest.raises(BadDataError, match="corrupt or truncated zip") as info:
        fetch(dest, source=source)
    assert "stage1_train.zip" in str(info.value) and "\n" not in str(info.value)
    assert not (dest / "stage1_train").exists()
    assert_nothing_complete(dest)


def test_truncated_bundle(tmp_path):
    bundle = _bundle(tmp_path / "b.zip", inner_zips(tmp_path / "inner"))
    bundle.write_bytes(bundle.read_bytes()[:-200])
    with pytest.raises(BadDataError, match="corrupt or truncated zip"):
        fetch(tmp_path / "data", source=bundle)


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"notes.txt": b"x"}, "unexpected entry 'notes.txt'"),
        ({"a/b/c.png": png_bytes(np.zeros((4, 4), np.uint8))}, "unexpected entry 'a/b/c.png'"),
        ({"x1/masks/m.png": png_bytes(np.zeros((4, 4), np.uint8))}, "holds no {ImageId}/images"),
        ({"x1/images/other.png": png_bytes(np.zeros((4, 4), np.uint8))}, "must be named x1.png"),
        (
            {**stage_entries(1, 0, prefix="one/"), **stage_entries(1, 0, prefix="two/")},
            "several top folders",
        ),
    ],
)
def test_unexpected_layout(tmp_path, entries, words):
    source = inner_zips(tmp_path / "src")
    write_zip(source / "stage1_train.zip", entries)
    with pytest.raises(BadDataError, match=words.replace("{", r"\{").replace("}", r"\}")):
        fetch(tmp_path / "data", source=source)
    assert_nothing_complete(tmp_path / "data")


def test_bad_image_or_mask_inside_a_zip(tmp_path):
    source = inner_zips(tmp_path / "src")
    entries = stage_entries(2, 1)
    entries["0001abcd/masks/wide.png"] = png_bytes(np.zeros((24, 40), np.uint8))
    write_zip(source / "stage1_train.zip", entries)
    with pytest.raises(BadDataError, match="mask is 24x40 but its image is 24x32") as info:
        fetch(tmp_path / "data", source=source)
    # Named as it is in the source: the temporary folder it was unpacked to is gone.
    assert str(info.value).startswith(f"{source / 'stage1_train.zip'}: 0001abcd/masks/wide.png: ")
    assert_nothing_complete(tmp_path / "data")

    entries = stage_entries(2, 1)
    entries["0001abcd/images/0001abcd.png"] = b"\x89PNG\r\n\x1a\nbroken"
    write_zip(source / "stage1_train.zip", entries)
    with pytest.raises(BadDataError, match="unreadable image"):
        fetch(tmp_path / "data", source=source)
    assert_nothing_complete(tmp_path / "data")


def test_interrupted_fetch_never_looks_complete(tmp_path, monkeypatch):
    source = inner_zips(tmp_path / "src")
    dest = tmp_path / "data"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "_verify_stage", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch(dest, source=source)
    assert not (dest / "stage1_train").exists() and not (dest / "stage1_test").exists()
    assert_nothing_complete(dest)
    monkeypatch.undo()
    _assert_fetched(dest, fetch(dest, source=source))


def test_verify_finds_changes(tmp_path):
    dest = tmp_path / "data"
    fetch(dest, source=inner_zips(tmp_path / "src"))
    mask = dest / "stage1_train" / "0001abcd" / "masks" / "mask01.png"
    mask.unlink()
    with pytest.raises(BadDataError, match="holds 3 images and 5 masks, but the fetch left 3 and 6"):
        verify(dest)
    mask.write_bytes(b"")
    with pytest.raises(BadDataError, match="unreadable mask") as info:
        verify(dest)
    assert str(info.value).startswith(str(mask))
    with pytest.raises(BadDataError, match="no stage1_train"):
        verify(tmp_path)


# ---------------------------------------------------------------- the Kaggle path


class FakeKaggle:
    """Stands in for kaggle's KaggleApi: same method names, no network."""

    COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"

    def __init__(self, bundle: Path | None = None, error: Exception | None = None, reply: str = "ok"):
        self.bundle, self.error, self.reply = bundle, error, reply
        self.calls = []

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("download", competition, path))
        if self.error:
            raise self.error
        Path(path, f"{competition}.zip").write_bytes(self.bundle.read_bytes())

    def competition_submit(self, file_name, message, competition, quiet=False):
        self.calls.append(("submit", file_name, message, competition))
        if self.error:
            raise self.error
        return type("Reply", (), {"message": self.reply})()


class HTTPError(Exception):
    def __init__(self, status):
        super().__init__(f"{status} Client Error")
        self.response = type("Response", (), {"status_code": status})()


def test_fetch_through_the_api_with_a_fake_client(tmp_path):
    bundle = _bundle(tmp_path / "bundle.zip", inner_zips(tmp_path / "inner"))
    client = FakeKaggle(bundle)
    dest = tmp_path / "data"
    summary = fetch(dest, client=client)
    _assert_fetched(dest, summary)
    assert client.calls[0][:2] == ("download", "data-science-bowl-2018")
    assert not (dest / ".download").exists()  # the bundle is removed once extracted and verified
    fetch(dest, client=client)
    assert len(client.calls) == 1  # complete: no second download


def test_download_errors_are_one_line(tmp_path):
    with pytest.raises(EnvironmentProblem, match="accept the rules") as info:
        fetch(tmp_path / "data", client=FakeKaggle(error=HTTPError(403)))
    assert info.value.exit_code == 4 and "\n" not in str(info.value)
    with pytest.raises(EnvironmentProblem, match="cannot reach Kaggle"):
        fetch(tmp_path / "data", client=FakeKaggle(error=ConnectionError("Name or service not known")))
    assert_nothing_complete(tmp_path / "data")
    assert not (tmp_path / "data" / ".download").exists()


def test_submit_with_a_fake_client(tmp_path):
    csv = tmp_path / "submission.csv"
    csv.write_text("ImageId,EncodedPixels\n")
    client = FakeKaggle(reply="Successfully submitted")
    assert kaggle_api.submit(csv, "first try", client=client) == "Successfully submitted"
    assert client.calls == [("submit", str(csv), "first try", "data-science-bowl-2018")]
    with pytest.raises(BadDataError, match="file not found"):
        kaggle_api.submit(tmp_path / "none.csv", "x", client=client)
    with pytest.raises(EnvironmentProblem, match="401"):
        kaggle_api.submit(csv, "x", client=FakeKaggle(error=HTTPError(401)))
    with pytest.raises(EnvironmentProblem, match="upload failed"):
        kaggle_api.submit(csv, "x", client=FakeKaggle(reply=FakeKaggle.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE))


NO_NETWORK = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from dsb.core.errors import DsbError
from dsb.kaggle.fetch import fetch
from dsb.kaggle.kaggle_api import authenticate
for call in (authenticate, lambda: fetch(sys.argv[1])):
    try:
        call()
        print("NO ERROR")
    except DsbError as exc:
        print(f"{exc.exit_code}|{exc}")
print("ATTEMPTS", len(attempts))
"""


def test_no_credentials_and_no_source(tmp_path):
    """Without credentials kaggle is never asked to reach the network and the error is one line."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, str(tmp_path / "data")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stderr
    # fetch alone points to the way round Kaggle: a local copy.
    expected = [f"4|{kaggle_api.NO_CREDENTIALS}", f"4|{kaggle_api.NO_CREDENTIALS}, or pass --source DIR", "ATTEMPTS 0"]
    assert lines == expected, result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # nothing created without a way to get the data


# ---------------------------------------------------------------- the real files


@pytest.fixture
def big_dest(tmp_path):
    """A destination removed after the test: pytest's own clean-up of 30,000 files takes minutes."""
    dest = tmp_path / "data"
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.slow
def test_fetch_the_real_competition_files(shared_data, big_dest):
    dest = big_dest
    summary = fetch(dest, source=shared_data)
    assert summary.stage("stage1_train").images == 664 and summary.stage("stage1_train").masks == 28986
    assert summary.stage("stage1_test").images == 65 and summary.stage("stage1_test").masks == 0
    assert {"stage1_train_labels.csv", "stage1_sample_submission.csv"} <= set(summary.csvs)
    marker = (dest / ".fetched.json").stat().st_mtime_ns
    image = next((dest / "stage1_train").iterdir()) / "images"
    image_mtime = next(image.iterdir()).stat().st_mtime_ns
    again = fetch(dest, source=shared_data)
    assert again.fetched == () and again.stages == summary.stages
    assert (dest / ".fetched.json").stat().st_mtime_ns == marker
    assert next(image.iterdir()).stat().st_mtime_ns == image_mtime
