"""Bad input, as a user of the `dsb` command sees it: one line, a fixed exit status, nothing half-written.

Every command meets the inputs that real microscopy folders and hand-edited
CSVs hold: corrupt, empty and non-image files, odd image layouts (which must
work), wrong masks, malformed CSVs, broken run folders and configs, outputs
that cannot be written and full disks. Each failure must be one line on
stderr naming the file, the row or key and what is wrong, exit 2 (usage),
3 (bad data) or 4 (environment) without a traceback, and leave the previous
output in place with no temporary files. The library-level checks live in the
per-module test files; these drive `dsb.cli.cli` through click's CliRunner,
and a real `python -m dsb` process where the process's own stderr matters.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import (
    STAGE,
    assert_nothing_complete,
    disc_image,
    dsb,
    error_line,
    group_raising,
    inner_zips,
    make_discs,
    png,
    png_bytes,
    stage_entries,
    truth,
    write_stage,
    write_zip,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dsb.kaggle.rle import labels_to_rles

REPO = Path(__file__).resolve().parents[1]

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- helpers


def temporaries(folder: Path) -> list[str]:
    """Hidden temporary files or folders left anywhere under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p) for p in folder.rglob(".*") if ".tmp" in p.name or "scratch" in p.name)


def submission_text(rows, *, newline: str = "\n") -> str:
    return newline.join(["ImageId,EncodedPixels", *(f"{i},{r}" for i, r in rows)]) + newline


def perfect_rows(ids=tuple(STAGE)):
    return [(i, rle) for i in ids for rle in labels_to_rles(truth(i))]


def solution_text(rows=None, *, newline: str = "\n") -> str:
    rows = perfect_rows() if rows is None else rows
    lines = ["ImageId,EncodedPixels,Height,Width"] + [f"{i},{rle},{STAGE[i][0][0]},{STAGE[i][0][1]}" for i, rle in rows]
    return newline.join(lines) + newline


@pytest.fixture
def stage(tmp_path) -> Path:
    return write_stage(tmp_path / "stage1_train")


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file where a folder is expected: nothing can be created below it, even as root."""
    path = tmp_path / "a_file"
    path.write_text("a file, not a folder\n")
    return path


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name, ...)``: renaming a finished temporary onto one of these names fails with ENOSPC.

    With ``times``, only the first so many such renames fail.
    """
    real = os.replace

    def arm(*names, error: BaseException = ENOSPC, times: int | None = None):
        failures = []

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name in names and (times is None or len(failures) < times):
                failures.append(dst)
                raise error
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    return arm


# ---------------------------------------------------------------- the CSV commands: score, validate, submit

# (what, EncodedPixels of img_b's row, words its message must hold); img_b is 32x36 = 1152 pixels.
BAD_RLES = [
    ("odd number of values", "1 2 3", "odd number of values"),
    ("zero length", "100 0", "length 0"),
    ("negative length", "100 -2", "'-2' is not a non-negative integer"),
    ("unsorted runs", "300 2 100 2", "starts not ascending"),
    ("overlapping runs", "100 4 102 2", "runs overlap"),
    ("run beyond the image", "1150 10", "beyond the image"),
    ("pixel 0", "0 3", "numbered from 1"),
    ("not a number", "12x 3", "'12x' is not a non-negative integer"),
]


def bad_submission(tmp_path, rle: str) -> Path:
    rows = perfect_rows(["img_a"]) + [("img_b", rle)] + perfect_rows(["img_c"])
    path = tmp_path / "sub.csv"
    path.write_text(submission_text(rows))
    return path


def bad_row() -> str:
    """The place of img_b's row in :func:`bad_submission`'s file."""
    row = len(perfect_rows(["img_a"])) + 1
    return f"row {row} (line {row + 1})"


@pytest.mark.parametrize("what, rle, words", BAD_RLES, ids=[c[0] for c in BAD_RLES])
def test_score_names_the_bad_row(tmp_path, stage, what, rle, words):
    sub = bad_submission(tmp_path, rle)
    solution = tmp_path / "solution.csv"
    solution.write_text(solution_text())
    for truth_path in (solution, stage):
        error_line(dsb("score", sub, "--truth", truth_path), 3, sub, bad_row(), "img_b", words)


@pytest.mark.parametrize("what, rle, words", BAD_RLES, ids=[c[0] for c in BAD_RLES])
def test_validate_and_submit_name_the_bad_row(tmp_path, stage, monkeypatch, what, rle, words):
    from dsb.kaggle import kaggle_api

    sub = bad_submission(tmp_path, rle)
    error_line(dsb("validate", sub, "--images", stage), 3, sub, bad_row(), "img_b", words, "not a valid")
    monkeypatch.setattr(kaggle_api, "authenticate", lambda: pytest.fail("validation must come before Kaggle"))
    error_line(dsb("submit", sub, "-m", "x", "--images", stage), 3, sub, bad_row(), words, "not submitted")


def test_validate_lists_every_problem_one_line_each(tmp_path, stage):
    rows = [("img_a", "1 2 3"), ("img_b", "5 0"), ("img_zz", "1 1")]  # img_c has no row at all
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(rows))
    result = dsb("validate", sub, "--images", stage)
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 5 and lines[-1] == f"dsb: error: {sub}: 4 problems; not a valid submission"
    assert [line.split(": ")[1] for line in lines[:3]] == ["row 1 (line 2)", "row 2 (line 3)", "row 3 (line 4)"]
    assert "unknown ImageId" in lines[2] and "img_c" in lines[3] and "no row for this image" in lines[3]
    assert all(line.startswith(f"{sub}: ") for line in lines[:4])


@pytest.mark.parametrize(
    "what, text, words",
    [
        ("wrong header", "Id,Pixels\nimg_a,1 2\n", ["line 1", "header is 'Id,Pixels'", "ImageId,EncodedPixels"]),
        ("no header", "img_a,1 2\nimg_b,3 4\n", ["line 1", "header is 'img_a,1 2'"]),
        ("zero-byte file", "", ["empty file"]),
        ("three fields", "ImageId,EncodedPixels\nimg_a,1 2,7\n", ["row 1 (line 2)", "3 fields, expected 2"]),
        ("empty id", "ImageId,EncodedPixels\n,1 2\n", ["row 1 (line 2)", "empty ImageId"]),
        ("not UTF-8", "ImageId,EncodedPixels\nimg_\xe9,1 2\n", ["not UTF-8"]),
    ],
)
def test_malformed_submission_csv(tmp_path, stage, what, text, words):
    sub = tmp_path / "sub.csv"
    sub.write_bytes(text.encode("latin-1"))
    solution = tmp_path / "solution.csv"
    solution.write_text(solution_text())
    error_line(dsb("validate", sub, "--images", stage), 3, sub, *words)
    error_line(dsb("score", sub, "--truth", solution), 3, sub, *words)


def test_unknown_id_and_overlapping_masks_in_a_submission(tmp_path, stage):
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows() + [("img_zz", "1 4")]))
    error_line(dsb("score", sub, "--truth", stage), 3, sub, "row 6 (line 7)", "unknown ImageId 'img_zz'")
    assert dsb("score", sub, "--truth", stage, "--allow-extra").stdout.splitlines()[-1] == "1.000000"
    error_line(dsb("validate", sub, "--images", stage), 3, sub, "row 6 (line 7)", "img_zz", "unknown ImageId")

    first_a = labels_to_rles(truth("img_a"))[0]
    sub.write_text(submission_text([("img_a", first_a), ("img_a", first_a)] + perfect_rows(["img_b", "img_c"])))
    for args in (("score", sub, "--truth", stage), ("validate", sub, "--images", stage)):
        error_line(dsb(*args), 3, sub, "row 2 (line 3)", "img_a", "overlaps the mask in row 1")


def test_windows_line_endings_are_fine_everywhere(tmp_path, stage, monkeypatch):
    from dsb.kaggle import kaggle_api

    sub = tmp_path / "sub.csv"
    sub.write_bytes(submission_text(perfect_rows(), newline="\r\n").encode())
    solution = tmp_path / "solution.csv"
    solution.write_bytes(solution_text(newline="\r\n").encode())
    for truth_path in (solution, stage):
        result = dsb("score", sub, "--truth", truth_path)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "1.000000" and result.stderr == ""
    result = dsb("validate", sub, "--images", stage)
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{sub}: valid\n", "")

    submitted = []

    class Client:
        def competition_submit(self, file_name, message, competition, quiet=True):
            submitted.append((Path(file_name).read_bytes(), message, competition))

    monkeypatch.setattr(kaggle_api, "authenticate", lambda: Client())
    result = dsb("submit", sub, "-m", "crlf", "--images", stage)
    assert result.exit_code == 0, result.stderr
    assert submitted == [(sub.read_bytes(), "crlf", "data-science-bowl-2018")]


@pytest.mark.parametrize(
    "what, text, words",
    [
        ("no Height and Width", submission_text(perfect_rows()),
         ["line 1", "ImageId,EncodedPixels,Height,Width[,Usage]", "not a solution"]),
        ("conflicting sizes of one id",
         solution_text() + "img_a,1 1,41,48\n",
         ["row 6 (line 7)", "'img_a' is 41x48 here but 40x48 in row 1"]),
        ("size not a number", solution_text().replace(",32,36\n", ",32,wide\n", 1),
         ["row 3 (line 4)", "Width 'wide' is not a positive integer"]),
        ("size of 5000 digits", solution_text().replace(",32,36\n", ",32," + "9" * 5000 + "\n", 1),
         ["row 3 (line 4)", "is too large for an image's side"]),
        ("image too large to score", solution_text().replace(",32,36\n", ",32,100000000\n", 1),
         ["row 3 (line 4)", "over the 268,435,456 pixels"]),
        ("bad RLE in the truth", solution_text([("img_a", "5 3 1 1")] + perfect_rows(["img_b", "img_c"])),
         ["row 1 (line 2)", "img_a", "starts not ascending"]),
        ("missing header", solution_text().split("\n", 1)[1], ["line 1", "header is"]),
    ],
)
def test_malformed_solution_csv(tmp_path, what, text, words):
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))
    solution = tmp_path / "solution.csv"
    solution.write_text(text)
    error_line(dsb("score", sub, "--truth", solution), 3, solution, *words)


def test_duplicate_ids_of_one_size_in_a_solution_are_fine(tmp_path):
    # Many rows per image is how a solution lists nuclei: the same size every time is no conflict.
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))
    solution = tmp_path / "solution.csv"
    solution.write_text(solution_text())
    result = dsb("score", sub, "--truth", solution)
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "1.000000"


@pytest.mark.parametrize(
    "what, damage, words",
    [
        ("corrupt mask", lambda s: (s / "img_b" / "masks" / "m1.png").write_bytes(b"\x89PNG\r\n\x1a\nxx"),
         ["img_b/masks/m1.png", "not an image file"]),
        ("zero-byte mask", lambda s: (s / "img_b" / "masks" / "m1.png").write_bytes(b""),
         ["img_b/masks/m1.png", "empty file (0 bytes)"]),
        ("mask of the wrong size", lambda s: png(s / "img_b" / "masks" / "m2.png", np.zeros((32, 35), np.uint8)),
         ["img_b/masks/m2.png", "mask is 32x35 but its image is 32x36"]),
        ("corrupt image", lambda s: (s / "img_c" / "images" / "img_c.png").write_bytes(b"GIF89a..."),
         ["img_c/images/img_c.png", "not an image file"]),
        ("zero-byte image", lambda s: (s / "img_c" / "images" / "img_c.png").write_bytes(b""),
         ["img_c/images/img_c.png", "empty file"]),
    ],
)
def test_bad_files_in_a_truth_or_images_folder(tmp_path, stage, what, damage, words):
    damage(stage)
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))
    error_line(dsb("score", sub, "--truth", stage), 3, stage, *words)
    if "image" in what and "mask" not in what:
        error_line(dsb("validate", sub, "--images", stage), 3, stage, *words)


def test_overlapping_and_empty_truth_masks_are_resolved_by_file_order(tmp_path, stage):
    # m0.png sorts first and covers part of img_a's first disc; the earlier mask keeps shared pixels,
    # so the disc loses them; an empty mask is skipped.
    square = np.zeros((40, 48), np.uint8)
    square[4:12, 4:12] = 255
    png(stage / "img_a" / "masks" / "m0.png", square)
    png(stage / "img_a" / "masks" / "m9.png", np.zeros((40, 48), np.uint8))
    resolved = np.zeros((40, 48), np.int32)
    resolved[square > 0] = 1
    for k in (1, 2):
        resolved[(truth("img_a") == k) & (resolved == 0)] = k + 1
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text([("img_a", r) for r in labels_to_rles(resolved)] + perfect_rows(["img_b", "img_c"])))
    result = dsb("score", sub, "--truth", stage)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1.000000"


def test_empty_or_imageless_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))
    error_line(dsb("validate", sub, "--images", empty), 3, empty, "holds no images")
    error_line(dsb("score", sub, "--truth", empty), 3, empty, "holds no images")
    result = dsb("validate", sub, "--images", tmp_path / "missing")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "'--images'" in result.stderr and "does not exist" in result.stderr


def test_score_per_image_output_that_cannot_be_written(tmp_path, stage, blocker, full_disk):
    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))
    error_line(dsb("score", sub, "--truth", stage, "--per-image", blocker / "per_image.csv"), 4, blocker)

    out = tmp_path / "out" / "per_image.csv"
    out.parent.mkdir()
    out.write_text("previous good table\n")
    full_disk("per_image.csv")
    error_line(dsb("score", sub, "--truth", stage, "--per-image", out), 4, out, "no space left on device")
    assert out.read_text() == "previous good table\n"
    assert temporaries(out.parent) == []


def test_submit_without_credentials_or_with_a_failed_upload(tmp_path, stage, monkeypatch):
    from dsb.core.errors import EnvironmentProblem
    from dsb.kaggle import kaggle_api

    sub = tmp_path / "sub.csv"
    sub.write_text(submission_text(perfect_rows()))

    def no_credentials():
        raise EnvironmentProblem(kaggle_api.NO_CREDENTIALS)

    monkeypatch.setattr(kaggle_api, "authenticate", no_credentials)
    error_line(dsb("submit", sub, "-m", "x", "--images", stage), 4, "no Kaggle credentials")
    result = dsb("submit", sub, "-m", "x", "--images", stage, "--skip-without-credentials")
    assert result.exit_code == 0 and "was not submitted" in result.stdout

    class Refusing:
        def competition_submit(self, *args, **kwargs):
            raise ConnectionError("connection reset by peer\nand a second line")

    monkeypatch.setattr(kaggle_api, "authenticate", lambda: Refusing())
    error_line(dsb("submit", sub, "-m", "x", "--images", stage), 4, sub, "cannot reach Kaggle")
    assert sub.read_text() == submission_text(perfect_rows())  # the CSV stays where it is


# ---------------------------------------------------------------- fetch


def _source(tmp_path) -> Path:

    return inner_zips(tmp_path / "src")


def test_fetch_bad_sources(tmp_path):

    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "data"
    error_line(dsb("fetch", "--source", empty, "--dest", dest, "--quiet"), 3, empty)

    source = _source(tmp_path)
    (source / "stage1_train.zip").write_bytes(b"")
    error_line(dsb("fetch", "--source", source, "--dest", dest), 3, source / "stage1_train.zip")
    assert_nothing_complete(dest)

    entries = stage_entries(2, 1)
    entries["0001abcd/images/0001abcd.png"] = b"\x89PNG\r\n\x1a\nbroken"
    write_zip(source / "stage1_train.zip", entries)
    error_line(dsb("fetch", "--source", source, "--dest", dest), 3,
               source / "stage1_train.zip", "0001abcd/images/0001abcd.png", "unreadable image")
    assert_nothing_complete(dest)
    assert not (dest / "stage1_train").exists()

    entries = stage_entries(2, 1)
    entries["0001abcd/masks/wide.png"] = png_bytes(np.zeros((24, 40), np.uint8))
    write_zip(source / "stage1_train.zip", entries)
    line = error_line(dsb("fetch", "--source", source, "--dest", dest), 3,
                      source / "stage1_train.zip", "0001abcd/masks/wide.png", "mask is 24x40 but its image is 24x32")
    assert ".tmp" not in line  # the file is named where the user can find it, not in a temporary folder
    assert_nothing_complete(dest)
    assert temporaries(dest) == []


def test_fetch_takes_every_image_layout(tmp_path):

    source = _source(tmp_path)
    layouts = {
        "grey": np.full((20, 30), 90, np.uint8),
        "rgb": np.full((20, 30, 3), 90, np.uint8),
        "rgba": np.full((20, 30, 4), 90, np.uint8),
        "deep": np.full((20, 30), 4000, np.uint16),
        "thin": np.full((20, 1), 90, np.uint8),
    }
    entries = {}
    for name, image in layouts.items():
        entries[f"{name}/images/{name}.png"] = png_bytes(image)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[2:5, :1] = 255
        entries[f"{name}/masks/m.png"] = png_bytes(mask)
    write_zip(source / "stage1_train.zip", entries)
    result = dsb("fetch", "--source", source, "--dest", tmp_path / "data", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "stage1_train: 5 images, 5 masks" in result.stdout and result.stderr == ""


def test_fetch_into_an_unwritable_or_full_destination(tmp_path, blocker, monkeypatch):

    source = _source(tmp_path)
    error_line(dsb("fetch", "--source", source, "--dest", blocker / "data"), 4, blocker)

    dest = tmp_path / "data"
    real = shutil.copyfileobj

    def full(src, dst, *args, **kwargs):
        dst.write(src.read(10))  # a partial file, then the disk is full
        raise ENOSPC

    monkeypatch.setattr(shutil, "copyfileobj", full)
    error_line(dsb("fetch", "--source", source, "--dest", dest), 4, dest, "no space left on device")
    assert_nothing_complete(dest)
    assert not (dest / "stage1_train").exists() and temporaries(dest) == []

    monkeypatch.setattr(shutil, "copyfileobj", real)
    assert dsb("fetch", "--source", source, "--dest", dest).exit_code == 0  # and a second try succeeds


def test_fetch_without_source_or_credentials(tmp_path, monkeypatch):
    from dsb.core.errors import EnvironmentProblem
    from dsb.kaggle import kaggle_api

    def no_credentials():
        raise EnvironmentProblem(kaggle_api.NO_CREDENTIALS)

    monkeypatch.setattr(kaggle_api, "authenticate", no_credentials)
    error_line(dsb("fetch", "--dest", tmp_path / "data"), 4, "no Kaggle credentials", "--source DIR")
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------- prepare


def _config(tmp_path, data: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


BAD_CONFIGS = [
    ("unknown key", {"train": {"epochs": 2, "epoch_count": 3}}, ["key 'train.epoch_count'", "unknown key"]),
    ("unknown section", {"trainig": {}}, ["key 'trainig'", "unknown key"]),
    ("wrong type", {"train": {"batch_size": "8"}}, ["key 'train.batch_size'", "is '8' (str), expected int"]),
    ("bool for a number", {"model": {"depth": True}}, ["key 'model.depth'", "expected int"]),
    ("list for an object", {"preprocess": [1, 2]}, ["key 'preprocess'", "expected an object"]),
    ("bad value", {"train": {"crop_size": 40}}, ["train.crop_size", "multiple of 16"]),
    ("dropout above 1", {"model": {"dropout": [1.5]}}, ["model.dropout", "expected rates in [0, 1)"]),
    ("negative steps", {"train": {"steps_per_epoch": -1}}, ["train.steps_per_epoch", "expected at least 0"]),
    ("negative border", {"preprocess": {"border_width": -1}}, ["preprocess.border_width", "expected at least 0"]),
    ("contact by size, no diameter", {"preprocess": {"contact_follows_size": True, "diameter": 0}},
     ["preprocess.contact_follows_size", "needs a canonical diameter"]),
    ("contact by size, not a bool", {"preprocess": {"contact_follows_size": "yes"}},
     ["key 'preprocess.contact_follows_size'", "expected bool"]),
]


@pytest.mark.parametrize("what, data, words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_prepare_and_train_refuse_a_bad_config(tmp_path, stage, what, data, words):
    config = _config(tmp_path, data)
    error_line(dsb("prepare", "--data", stage.parent, "--config", config), 3, config, *words)
    error_line(dsb("train", "--data", stage.parent, "--config", config, "--out", tmp_path / "run"), 3, config, *words)
    assert not (tmp_path / "run").exists() and not (stage.parent / ".cache").exists()


def test_config_that_is_not_json(tmp_path, stage):
    config = tmp_path / "config.json"
    config.write_text('{"train": {"epochs": 2,}}')
    error_line(dsb("prepare", "--data", stage.parent, "--config", config), 3, config, "not valid JSON", "line 1")


@pytest.mark.parametrize(
    "what, damage, words",
    [
        ("corrupt image", lambda s: (s / "img_b" / "images" / "img_b.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0"),
         ["img_b/images/img_b.png", "not an image file"]),
        ("truncated image", lambda s: (s / "img_b" / "images" / "img_b.png").write_bytes(
            (s / "img_b" / "images" / "img_b.png").read_bytes()[:60]), ["img_b/images/img_b.png", "corrupt"]),
        ("zero-byte image", lambda s: (s / "img_b" / "images" / "img_b.png").write_bytes(b""),
         ["img_b/images/img_b.png", "empty file (0 bytes)"]),
        ("no image file", lambda s: (s / "img_b" / "images" / "img_b.png").unlink(),
         ["img_b/images/img_b.png", "file not found"]),
        ("mask of the wrong size", lambda s: png(s / "img_c" / "masks" / "m3.png", np.zeros((36, 41), np.uint8)),
         ["img_c/masks/m3.png", "mask is 36x41 but its image is 36x40"]),
        ("corrupt mask", lambda s: (s / "img_c" / "masks" / "m1.png").write_text("not a png"),
         ["img_c/masks/m1.png", "not an image file"]),
        ("no masks folder", lambda s: shutil.rmtree(s / "img_a" / "masks"), ["img_a", "no masks/ folder"]),
    ],
)
def test_prepare_names_the_bad_file(tmp_path, stage, what, damage, words):
    damage(stage)
    error_line(dsb("prepare", "--data", stage.parent), 3, *words)
    cache = stage.parent / ".cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_prepare_an_empty_folder(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    error_line(dsb("prepare", "--data", empty), 3, empty, "no stage1_train/ folder")
    (empty / "stage1_train").mkdir()
    error_line(dsb("prepare", "--data", empty), 3, empty / "stage1_train", "holds no images")


def write_layouts(stage, layouts: dict, labels) -> None:
    """One training sample per image layout, each with a mask per disc of ``labels``, plus a
    one-pixel-wide strip ``thin`` with its mask."""
    for name, image in layouts.items():
        png(stage / name / "images" / f"{name}.png", image)
        for k in (1, 2):
            png(stage / name / "masks" / f"m{k}.png", ((labels == k) * 255).astype(np.uint8))
    thin = np.zeros((30, 1), np.uint8)
    thin[5:12] = 200
    png(stage / "thin" / "images" / "thin.png", thin)
    png(stage / "thin" / "masks" / "m1.png", np.where(thin > 0, 255, 0).astype(np.uint8))


def test_prepare_takes_every_image_layout_and_settles_mask_overlaps(tmp_path):
    stage = tmp_path / "data" / "stage1_train"
    labels = make_discs((30, 40), ((10, 10), (18, 28)), 6)
    grey = disc_image(labels)
    layouts = {
        "grey": grey,
        "grey_alpha": np.stack([grey, np.full_like(grey, 255)], axis=-1),
        "rgb": np.repeat(grey[..., None], 3, axis=2),
        "rgba": np.concatenate([np.repeat(grey[..., None], 3, axis=2), np.full((30, 40, 1), 255, np.uint8)], 2),
        "deep": grey.astype(np.uint16) * 250,
    }
    write_layouts(stage, layouts, labels)
    # Training data: a mask m0 overlaps m1 (most of disc 1, plus a bar reaching out of it),
    # and a mask m9 has no pixel.
    overlap = ((labels == 1) * 255).astype(np.uint8)
    overlap[:, 13:] = 0
    overlap[8:12, 14:24] = 255
    png(stage / "grey" / "masks" / "m0.png", overlap)
    png(stage / "grey" / "masks" / "m9.png", np.zeros((30, 40), np.uint8))

    result = dsb("prepare", "--data", tmp_path / "data")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "6 images" in result.stderr and "Traceback" not in result.stderr
    fixes = [line for line in result.stderr.splitlines() if line.strip().startswith("grey:")]
    assert len(fixes) == 1 and "overlap" in fixes[0] and "m1.png" in fixes[0] and "empty" in fixes[0]

    from dsb.core.config import PreprocessConfig
    from dsb.training.cache import load_prepared

    prepared = load_prepared(tmp_path / "data", PreprocessConfig(), workers=1)
    by_id = dict(zip(prepared.ids, prepared.labels))
    assert sorted(by_id) == sorted([*layouts, "thin"])
    grey_labels = by_id["grey"]
    # m0 came first by name and keeps every pixel it covers; m1 keeps the rest of its disc.
    assert (grey_labels[overlap > 0] == 1).all()
    assert set(np.unique(grey_labels[(labels == 1) & (overlap == 0)])) == {2}
    assert (grey_labels[labels == 2] == 3).all() and grey_labels.max() == 3
    assert by_id["thin"].shape == (30, 1) and by_id["thin"].max() == 1

    # The same data built again (a fresh cache folder) gives the same labels.
    shutil.rmtree(tmp_path / "data" / ".cache")
    again = load_prepared(tmp_path / "data", PreprocessConfig(), workers=1)
    assert again.checksum == prepared.checksum


def test_prepare_cache_that_cannot_be_written(tmp_path, stage, monkeypatch, full_disk):
    data = stage.parent
    (data / ".cache").write_text("a file where the cache folder goes\n")
    error_line(dsb("prepare", "--data", data), 4, data / ".cache")
    (data / ".cache").unlink()

    assert dsb("prepare", "--data", data).exit_code == 0
    (cache,) = (data / ".cache").iterdir()
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    png(stage / "img_b" / "masks" / "m2.png", np.zeros((32, 36), np.uint8))  # the data change: rebuild

    def full(file, *args, **kwargs):
        Path(file).write_bytes(b"PK\x03\x04 half an archive")
        raise ENOSPC

    monkeypatch.setattr(np, "savez_compressed", full)
    error_line(dsb("prepare", "--data", data), 4, cache, "no space left on device")
    assert [p.name for p in (data / ".cache").iterdir()] == [cache.name]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # the previous cache is whole
    assert temporaries(data) == []
    monkeypatch.undo()

    # The new cache is complete but cannot take the old one's place: the old one stays in place.
    full_disk(cache.name, times=1)
    error_line(dsb("prepare", "--data", data), 4, cache, "no space left on device")
    assert [p.name for p in (data / ".cache").iterdir()] == [cache.name]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before


# ---------------------------------------------------------------- a tiny model for the Keras commands


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained two-level U-Net run folder whose validation images are those of :data:`STAGE`."""
    pytest.importorskip("keras")
    from dsb.core.config import Config, ModelConfig, PredictConfig, save_config
    from dsb.network.unet import build_unet

    run = tmp_path_factory.mktemp("tiny") / "run"
    run.mkdir()
    config = Config(
        model=ModelConfig(depth=2, base_filters=4, dropout=(0.0,), batch_norm=False),
        predict=PredictConfig(tile_size=32, overlap=8, batch_size=4),
        validation_ids=("img_a", "img_b"),
    )
    build_unet(config.model).save(run / "model.keras")
    save_config(config, run / "config.json")
    return run


def copy_run(tiny_run, dest: Path, *, drop: str | None = None, config: dict | None = None) -> Path:
    shutil.copytree(tiny_run, dest)
    if drop:
        (dest / drop).unlink()
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def _tiny_config(tiny_run) -> dict:
    return json.loads((tiny_run / "config.json").read_text())


def _with(data: dict, section: str, key: str, value) -> dict:
    data = json.loads(json.dumps(data))
    data[section][key] = value
    return data


BAD_RUNS = [
    ("no config", {"drop": "config.json"}, ["no config.json here"]),
    ("no weights", {"drop": "model.keras"}, ["no model.keras here"]),
    ("unknown key", {"config": lambda c: _with(c, "predict", "tile", 64)}, ["config.json", "key 'predict.tile'"]),
    ("wrong type", {"config": lambda c: _with(c, "predict", "tile_size", 32.5)},
     ["config.json", "key 'predict.tile_size'", "expected int"]),
    ("not JSON", {"config": lambda c: "not json"}, ["config.json", "expected a JSON object"]),
    ("negative split ratio", {"config": lambda c: _with(c, "postprocess", "split_ratio", -1)},
     ["config.json", "postprocess.split_ratio", "expected 0 (off) or more"]),
    ("tta not a bool", {"config": lambda c: _with(c, "predict", "tta", "yes")},
     ["config.json", "key 'predict.tta'", "expected bool"]),
]


def bad_run(tiny_run, tmp_path, how: dict) -> Path:
    config = how.get("config")
    return copy_run(tiny_run, tmp_path / "run", drop=how.get("drop"),
                    config=None if config is None else config(_tiny_config(tiny_run)))


def test_damaged_model_file(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "model.keras").write_bytes(b"PK\x03\x04 not a whole zip")
    flat = tmp_path / "images"
    png(flat / "x.png", np.zeros((20, 20), np.uint8))
    error_line(dsb("predict", run, "--images", flat, "--out", tmp_path / "o.csv"), 3,
               run / "model.keras", "cannot load the model: damaged or not a Keras model")
    assert not (tmp_path / "o.csv").exists()
    (run / "model.keras").write_bytes((tiny_run / "model.keras").read_bytes()[:3000])  # a copy cut short
    result = dsb("export", run, "--out", tmp_path / "export")
    error_line(result, 3, run / "model.keras", "damaged or not a Keras model")
    assert "File not found" not in result.stderr  # Keras's words for a file that is there


def test_model_file_of_another_run_shape(tiny_run, tmp_path):
    # Weights saved from another U-Net: Keras explains over dozens of lines and warnings; dsb in one.
    import zipfile

    from dsb.core.config import ModelConfig
    from dsb.network.unet import build_unet

    run = copy_run(tiny_run, tmp_path / "run")
    build_unet(ModelConfig(depth=2, base_filters=8, dropout=(0.0,), batch_norm=False)).save(tmp_path / "other.keras")
    good = (run / "model.keras").read_bytes()
    (tmp_path / "good.keras").write_bytes(good)
    with zipfile.ZipFile(tmp_path / "good.keras") as mine, zipfile.ZipFile(tmp_path / "other.keras") as other, \
            zipfile.ZipFile(run / "model.keras", "w") as mixed:
        for name in mine.namelist():
            mixed.writestr(name, other.read(name) if name.endswith(".h5") else mine.read(name))
    images = tmp_path / "images"
    png(images / "x.png", disc_image(truth("img_a")))
    error_line(dsb("predict", run, "--images", images, "--out", tmp_path / "o.csv"), 3, run / "model.keras",
               "cannot load the model")
    error_line(dsb("segment", images, "--model", run, "--out", tmp_path / "seg"), 3, run / "model.keras")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "seg").exists()


# ---------------------------------------------------------------- predict


def flat_images(folder: Path) -> dict[str, tuple[int, int]]:
    """A flat folder with one image of each layout a microscope folder holds; returns id -> shape."""
    import tifffile

    labels = make_discs((40, 44), ((14, 14), (26, 30)), 6)
    grey = disc_image(labels)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    png(folder / "grey.png", grey)
    png(folder / "grey_alpha.png", np.stack([grey, np.full_like(grey, 255)], axis=-1))
    png(folder / "rgb.png", rgb)
    png(folder / "rgba.png", np.concatenate([rgb, np.full((40, 44, 1), 255, np.uint8)], axis=2))
    png(folder / "deep.png", grey.astype(np.uint16) * 250)
    tifffile.imwrite(folder / "deep_tiff.tif", grey.astype(np.uint16) * 250)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=95)
    png(folder / "thin.png", np.full((37, 1), 200, np.uint8))
    png(folder / "flat.png", np.full((1, 29), 200, np.uint8))
    png(folder / "dot.png", np.full((1, 1), 200, np.uint8))
    return {"grey": (40, 44), "grey_alpha": (40, 44), "rgb": (40, 44), "rgba": (40, 44), "deep": (40, 44),
            "deep_tiff": (40, 44), "photo": (40, 44), "thin": (37, 1), "flat": (1, 29), "dot": (1, 1)}


def test_predict_takes_every_image_layout(tiny_run, tmp_path):
    from dsb.kaggle.submission import read_submission, validate_submission

    shapes = flat_images(tmp_path / "images")
    out = tmp_path / "sub.csv"
    result = dsb("predict", tiny_run, "--images", tmp_path / "images", "--out", out, "--labels", tmp_path / "labels")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stderr == "" and f"in {len(shapes)} images, validated" in result.stdout
    df = read_submission(out)
    assert sorted(set(df["ImageId"])) == sorted(shapes)
    assert validate_submission(df, shapes) == []
    for image_id, shape in shapes.items():
        assert np.asarray(Image.open(tmp_path / "labels" / f"{image_id}.png")).shape == shape


def _tiff_bytes(array: np.ndarray) -> bytes:
    import io
    import warnings

    import tifffile

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a zero-size array is what we want written
        tifffile.imwrite(buffer, array)
    return buffer.getvalue()


BAD_FILES = [
    ("corrupt PNG", "bad.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR garbage", "corrupt or truncated image"),
    ("truncated PNG", "bad.png", None, "corrupt or truncated image"),
    ("zero-byte file", "bad.png", b"", "empty file (0 bytes)"),
    ("non-image file", "notes.txt", b"some notes\n", "not an image file"),
    ("text named .tif", "bad.tif", b"not a tiff", "corrupt or unreadable TIFF"),
    ("complex TIFF", "bad.tif", _tiff_bytes(np.ones((40, 40), np.complex64)), "holds complex64 values"),
    ("TIFF of no frames", "bad.tif", _tiff_bytes(np.zeros((0, 40, 40), np.uint8)), "holds no pixels"),
]


def _write_bad(folder: Path, name: str, data: bytes | None) -> Path:
    path = folder / name
    if data is None:  # the first half of a real PNG
        png(path, np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
        data = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("what, name, data, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_predict_stops_at_a_bad_image_or_skips_it(tiny_run, tmp_path, what, name, data, words):
    images = tmp_path / "images"
    png(images / "a.png", disc_image(truth("img_a")))
    png(images / "z.png", disc_image(truth("img_b")))
    bad = _write_bad(images, name, data)
    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    out.write_text("previous good submission\n")
    labels = tmp_path / "labels"

    error_line(dsb("predict", tiny_run, "--images", images, "--out", out, "--labels", labels), 3, bad, words)
    assert out.read_text() == "previous good submission\n"
    assert not labels.exists()  # made for the run, and not left behind empty
    assert temporaries(tmp_path) == []

    result = dsb("predict", tiny_run, "--images", images, "--out", out, "--skip-bad")
    assert result.exit_code == 0, (result.stderr, result.exception)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"skipped: {bad}: ") and words in line and "1 skipped" in result.stdout
    table = pd.read_csv(out, keep_default_na=False)
    if bad.suffix in (".png", ".tif"):
        # An image that could not be read still gets its row, an empty one, so Kaggle takes the file.
        assert sorted(set(table["ImageId"])) == ["a", "bad", "z"]
        assert table.loc[table["ImageId"] == "bad", "EncodedPixels"].tolist() == [""]
        assert "2 images, validated; 1 skipped (1 image given an empty row, as if without nuclei)" in result.stdout
    else:  # a file that is no image at all is not one of the images
        assert sorted(set(table["ImageId"])) == ["a", "z"]


def test_predict_skips_bad_samples_of_a_stage_folder(tiny_run, tmp_path):
    stage = write_stage(tmp_path / "stage")
    (stage / "img_b" / "images" / "img_b.png").write_bytes(b"")
    (stage / "img_c" / "images" / "img_c.png").unlink()
    out = tmp_path / "sub.csv"
    result = dsb("predict", tiny_run, "--images", stage, "--out", out)
    error_line(result, 3, stage / "img_")
    assert not out.exists()
    result = dsb("predict", tiny_run, "--images", stage, "--out", out, "--skip-bad")
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("skipped: ") for line in lines)
    assert any("img_b.png: empty file" in line for line in lines) and any("img_c" in line for line in lines)
    # img_b, unreadable, and img_c, whose folder lacks its image, answer with an empty row each.
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["ImageId"]) == {"img_a", "img_b", "img_c"}
    for skipped in ("img_b", "img_c"):
        assert table.loc[table["ImageId"] == skipped, "EncodedPixels"].tolist() == [""]


def test_predict_an_empty_folder_or_only_bad_images(tiny_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(dsb("predict", tiny_run, "--images", empty, "--out", tmp_path / "o.csv"), 3, empty, "holds no images")
    (empty / "bad.png").write_bytes(b"")
    result = dsb("predict", tiny_run, "--images", empty, "--out", tmp_path / "o.csv", "--skip-bad")
    assert result.exit_code == 3 and "none of the 1 images could be read" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("what, how, words", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_predict_and_segment_refuse_a_bad_run_folder(tiny_run, tmp_path, what, how, words):
    run = bad_run(tiny_run, tmp_path, how)
    images = tmp_path / "images"
    png(images / "x.png", disc_image(truth("img_a")))
    error_line(dsb("predict", run, "--images", images, "--out", tmp_path / "o.csv"), 3, run, *words)
    error_line(dsb("segment", images, "--model", run, "--out", tmp_path / "seg"), 3, run, *words)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "seg").exists()


def test_predict_outputs_that_cannot_be_written(tiny_run, tmp_path, blocker, full_disk, monkeypatch):
    images = tmp_path / "images"
    png(images / "x.png", disc_image(truth("img_a")))
    png(images / "y.png", disc_image(truth("img_b")))
    error_line(dsb("predict", tiny_run, "--images", images, "--out", blocker / "o.csv"), 4, blocker)
    error_line(dsb("predict", tiny_run, "--images", images, "--out", tmp_path / "o.csv", "--labels",
                   blocker / "labels"), 4, blocker)
    assert not (tmp_path / "o.csv").exists()

    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    out.write_text("previous good submission\n")
    labels = tmp_path / "labels"
    full_disk("sub.csv")
    error_line(dsb("predict", tiny_run, "--images", images, "--out", out, "--labels", labels), 4, out,
               "no space left on device")
    assert out.read_text() == "previous good submission\n"
    assert temporaries(tmp_path) == []

    # Ctrl-C while the CSV is written: exit 130, the previous file untouched, no temporaries.
    full_disk("sub.csv", error=KeyboardInterrupt())
    result = dsb("predict", tiny_run, "--images", images, "--out", out)
    assert result.exit_code == 130 and result.stderr == "dsb: interrupted\n"
    assert out.read_text() == "previous good submission\n" and temporaries(tmp_path) == []

    # A write that fills the disk half way through the CSV.
    from dsb.workflows import predict_folder

    def half(df, path):
        Path(path).write_text("ImageId,EncodedPix")
        raise ENOSPC

    monkeypatch.setattr(predict_folder, "write_submission", half)
    labels = tmp_path / "labels2"
    error_line(dsb("predict", tiny_run, "--images", images, "--out", out, "--labels", labels), 4, out,
               "no space left on device")
    assert out.read_text() == "previous good submission\n" and temporaries(tmp_path) == []
    assert not labels.exists()  # label images wait until the CSV is written and validated; its folder, made, goes


# ---------------------------------------------------------------- segment


def _not_warnings(stderr: str) -> list[str]:
    """stderr's lines but the warnings about unsure diameter estimates."""
    return [line for line in stderr.splitlines() if not line.startswith("dsb: warning: ")]


def test_segment_takes_every_image_layout(tiny_run, tmp_path):
    import tifffile

    shapes = flat_images(tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("a folder's other files are left alone\n")
    out = tmp_path / "out"
    result = dsb("segment", tmp_path / "images", "--model", tiny_run, "--out", out, "--overlay")
    assert result.exit_code == 0, (result.stderr, result.exception)
    # The untrained tiny model's size estimates are unsure: warnings, and nothing else.
    assert _not_warnings(result.stderr) == [] and f"{len(shapes)} images segmented" in result.stdout
    for name, shape in shapes.items():
        assert tifffile.imread(out / f"{name}_labels.tif").shape == shape
        assert (out / f"{name}_nuclei.csv").is_file() and (out / f"{name}_overlay.png").is_file()
    assert temporaries(out) == []


@pytest.mark.parametrize("what, name, data, words", BAD_FILES[:3] + BAD_FILES[4:], ids=[
    c[0] for c in BAD_FILES[:3] + BAD_FILES[4:]])
def test_segment_stops_at_a_bad_image_or_skips_it(tiny_run, tmp_path, what, name, data, words):
    images = tmp_path / "images"
    png(images / "a.png", disc_image(truth("img_a")))
    bad = _write_bad(images, name, data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_labels.tif").write_bytes(b"previous good labels")

    error_line(dsb("segment", images, "--model", tiny_run, "--out", out), 3, bad, words)
    assert [p.name for p in out.iterdir()] == ["a_labels.tif"]
    assert (out / "a_labels.tif").read_bytes() == b"previous good labels"

    result = dsb("segment", images, "--model", tiny_run, "--out", out, "--skip-bad")
    assert result.exit_code == 0, (result.stderr, result.exception)
    (line,) = _not_warnings(result.stderr)
    assert line.startswith(f"skipped: {bad}: ") and words in line
    assert "1 image segmented" in result.stdout and "1 skipped" in result.stdout
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("file")
    assert summary.loc[str(bad), "status"] == "skipped" and summary.loc[str(images / "a.png"), "status"] == "ok"


def test_segment_on_workers_leaves_no_output_folder_when_it_stops_at_a_bad_image(tiny_run, tmp_path):
    pytest.importorskip("distributed")
    images = tmp_path / "images"
    png(images / "a.png", disc_image(truth("img_a")))
    bad = _write_bad(images, "bad.tif", b"not a tiff")
    out = tmp_path / "new" / "out"
    error_line(dsb("segment", images, "--model", tiny_run, "--out", out, "--workers", 2), 3, bad, "corrupt")
    assert not (tmp_path / "new").exists()


def test_segment_an_empty_folder_or_a_non_image_file(tiny_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(dsb("segment", empty, "--model", tiny_run, "--out", tmp_path / "out"), 3, empty, "holds no images")
    notes = tmp_path / "notes.txt"
    notes.write_text("x\n")
    error_line(dsb("segment", notes, "--model", tiny_run, "--out", tmp_path / "out"), 3, notes, "suffix '.txt'")
    assert not (tmp_path / "out").exists()


def test_segment_a_float_image_with_no_finite_value(tiny_run, tmp_path):
    import tifffile

    # A failed computation saved as an image: nothing to segment, and no silent "0 nuclei".
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((40, 40), np.nan, np.float32))
    error_line(dsb("segment", nan, "--model", tiny_run, "--out", tmp_path / "out"), 3, nan,
               "holds no finite pixel value")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    some = tmp_path / "some.tif"
    data = np.full((40, 40), np.nan, np.float32)
    data[10:20, 10:20] = 0.5
    tifffile.imwrite(some, data)
    assert dsb("segment", some, "--model", tiny_run, "--out", tmp_path / "out2").exit_code == 0


def test_segment_outputs_that_cannot_be_written(tiny_run, tmp_path, blocker, full_disk):
    images = tmp_path / "images"
    png(images / "a.png", disc_image(truth("img_a")))
    error_line(dsb("segment", images, "--model", tiny_run, "--out", blocker / "out"), 4, blocker)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_nuclei.csv").write_text("previous good table\n")
    full_disk("a_nuclei.csv")
    error_line(dsb("segment", images, "--model", tiny_run, "--out", out), 4, out / "a_nuclei.csv",
               "no space left on device")
    assert (out / "a_nuclei.csv").read_text() == "previous good table\n"
    assert temporaries(out) == []


# ---------------------------------------------------------------- tune


@pytest.mark.parametrize("what, how, words", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_tune_refuses_a_bad_run_folder(tiny_run, tmp_path, stage, what, how, words):
    run = bad_run(tiny_run, tmp_path, how)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    error_line(dsb("tune", run, "--data", stage.parent), 3, run, *words)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_tune_data_that_does_not_fit_the_run(tiny_run, tmp_path, stage):
    run = copy_run(tiny_run, tmp_path / "run", config=_tiny_config(tiny_run) | {"validation_ids": ["img_a", "img_zz"]})
    error_line(dsb("tune", run, "--data", stage.parent), 3, stage, "'img_zz' is not in this folder")
    run = copy_run(tiny_run, tmp_path / "run2", config=_tiny_config(tiny_run) | {"validation_ids": []})
    error_line(dsb("tune", run, "--data", stage.parent), 3, run / "config.json", "key 'validation_ids'", "is empty")
    # The same run has nothing to score either: the same line names its config, and says why it can be so.
    for command in (["evaluate", run], ["evaluate", run, "--zoom", "1,2"]):
        error_line(dsb(*command, "--data", stage.parent), 3, run / "config.json", "key 'validation_ids'",
                   "no validation images to score", "fine-tune")
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(dsb("tune", tiny_run, "--data", empty), 3, empty, "no stage1_train/ folder")
    png(stage / "img_b" / "masks" / "m2.png", np.zeros((31, 36), np.uint8))
    error_line(dsb("tune", tiny_run, "--data", stage.parent), 3, "img_b/masks/m2.png", "mask is 31x36")


def test_tune_that_cannot_write_keeps_the_run_as_it_was(tiny_run, tmp_path, stage, full_disk, monkeypatch):
    # The tiny network may score every setting alike, and then the search keeps the one it started
    # from; make it always find another, so that the failed write below has a real change to undo.
    from dsb.workflows import tune as tune_module

    search = tune_module.search_postprocess

    def search_that_finds_a_change(*args, **kwargs):
        best, table = search(*args, **kwargs)
        return dataclasses.replace(best, min_size=best.min_size + 1), table

    monkeypatch.setattr(tune_module, "search_postprocess", search_that_finds_a_change)
    started = _tiny_config(tiny_run)["postprocess"]["min_size"]
    tuned = copy_run(tiny_run, tmp_path / "tuned")
    assert dsb("tune", tuned, "--data", stage.parent).exit_code == 0
    assert _tiny_config(tuned)["postprocess"]["min_size"] != started and (tuned / "tuning.csv").is_file()

    run = copy_run(tiny_run, tmp_path / "run")
    before = (run / "config.json").read_bytes()
    full_disk("tuning.csv")
    error_line(dsb("tune", run, "--data", stage.parent), 4, run / "tuning.csv", "no space left on device")
    assert (run / "config.json").read_bytes() == before and not (run / "tuning.csv").exists()
    assert temporaries(run) == []


# ---------------------------------------------------------------- evaluate and export


@pytest.mark.parametrize("what, how, words", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_evaluate_and_export_refuse_a_bad_run_folder(tiny_run, tmp_path, stage, what, how, words):
    run = bad_run(tiny_run, tmp_path, how)
    error_line(dsb("evaluate", run, "--data", stage.parent), 3, run, *words)
    error_line(dsb("export", run, "--out", tmp_path / "export"), 3, run, *words)
    assert not (tmp_path / "export").exists()


def test_evaluate_bad_data_and_outputs(tiny_run, tmp_path, stage, blocker, full_disk):
    png(stage / "img_a" / "masks" / "m1.png", np.zeros((40, 47), np.uint8))
    error_line(dsb("evaluate", tiny_run, "--data", stage.parent), 3, "img_a/masks/m1.png", "mask is 40x47")
    shutil.rmtree(stage / "img_a")
    error_line(dsb("evaluate", tiny_run, "--data", stage.parent), 3, stage, "'img_a' is not in this folder")

    write_stage(stage, {"img_a": STAGE["img_a"]})
    error_line(dsb("evaluate", tiny_run, "--data", stage.parent, "--per-image", blocker / "t.csv"), 4, blocker)
    out = tmp_path / "per_image.csv"
    out.write_text("previous good table\n")
    full_disk("per_image.csv")
    error_line(dsb("evaluate", tiny_run, "--data", stage.parent, "--per-image", out), 4, out, "no space left")
    assert out.read_text() == "previous good table\n" and temporaries(tmp_path) == []


def test_export_never_replaces_what_is_not_an_export(tiny_run, tmp_path, blocker, full_disk):
    run = copy_run(tiny_run, tmp_path / "runs" / "run")
    (run / "checkpoints").mkdir()
    for out in (run, tmp_path / "runs", tmp_path):  # the run itself, its parent, a project folder
        before = sorted(str(p) for p in out.rglob("*"))
        error_line(dsb("export", run, "--out", out), 3, out)
        assert sorted(str(p) for p in out.rglob("*")) == before
    error_line(dsb("export", run, "--out", blocker / "export"), 4, blocker)

    out = tmp_path / "export"
    assert dsb("export", run, "--out", out).exit_code == 0
    assert dsb("export", run, "--out", out).exit_code == 0  # an earlier export is replaced
    # After the second export: model.keras holds a zip timestamp, so exports differ byte-wise.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full_disk("export", times=1)
    error_line(dsb("export", run, "--out", out), 4, out, "no space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and temporaries(tmp_path) == []

    note = tmp_path / "note.md"
    note.write_bytes(b"trained on the \xe9t\xe9 data")
    error_line(dsb("export", run, "--out", tmp_path / "export2", "--note", note), 3, note, "not UTF-8")

    # A package folder that is refused stops the command before an earlier export is replaced.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    error_line(dsb("export", run, "--out", out, "--bioimageio", busy), 3, busy, "holds more than a bioimage.io")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------- train


def test_train_bad_data_and_run_folders(tmp_path, stage, blocker):
    pytest.importorskip("keras")
    config = _config(tmp_path, {"train": {"crop_size": 32, "batch_size": 2, "epochs": 1, "steps_per_epoch": 1}})
    base = ("train", "--config", config, "--data")
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(dsb(*base, empty, "--out", tmp_path / "run"), 3, empty, "no stage1_train/ folder")

    # A run folder that cannot be made fails before the data are read (no cache built).
    error_line(dsb(*base, stage.parent, "--out", blocker / "run"), 4, blocker)
    assert not (stage.parent / ".cache").exists()

    used = tmp_path / "used"
    used.mkdir()
    (used / "model.keras").write_bytes(b"someone's model")
    error_line(dsb(*base, stage.parent, "--out", used), 3, used, "exists and is not empty")
    assert (used / "model.keras").read_bytes() == b"someone's model"
    error_line(dsb("train", "--data", stage.parent, "--out", tmp_path / "nothing", "--resume"), 3,
               tmp_path / "nothing", "nothing to resume")

    (stage / "img_c" / "images" / "img_c.png").write_bytes(b"")
    error_line(dsb(*base, stage.parent, "--out", tmp_path / "run"), 3, "img_c/images/img_c.png", "empty file")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_train_on_a_full_disk_leaves_a_resumable_run(tmp_path, stage, full_disk):
    pytest.importorskip("keras")
    from dsb.training import latest_checkpoint

    config = _config(tmp_path, {
        "model": {"depth": 2, "base_filters": 4, "dropout": [0.0]},
        "train": {"crop_size": 32, "batch_size": 2, "epochs": 2, "steps_per_epoch": 1, "validation_fraction": 0.0},
    })
    run = tmp_path / "run"
    full_disk("history.csv")  # written first at the end of epoch 1
    result = dsb("train", "--config", config, "--data", stage.parent, "--out", run, "--seed", 1)
    assert result.exit_code == 4, (result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert lines[-1] == f"dsb: error: {run / 'history.csv'}: no space left on device"
    assert sum("dsb: error" in line for line in lines) == 1 and "Traceback" not in result.stderr
    assert temporaries(run) == [] and not (run / "history.csv").exists()
    assert latest_checkpoint(run)[1]["epoch"] == 1  # complete up to the failed write: resumable


def test_odd_image_layouts_train_tune_evaluate_and_report(tmp_path):
    # Grey, RGBA, 16-bit, a one-pixel-wide strip and a single pixel: training data as good as any.
    pytest.importorskip("keras")
    stage = tmp_path / "data" / "stage1_train"
    labels = make_discs((30, 40), ((10, 10), (18, 28)), 6)
    grey = disc_image(labels)
    rgba = np.concatenate([np.repeat(grey[..., None], 3, axis=2), np.full((30, 40, 1), 255, np.uint8)], 2)
    write_layouts(stage, {"grey": grey, "rgba": rgba, "deep": grey.astype(np.uint16) * 250}, labels)
    png(stage / "dot" / "images" / "dot.png", np.full((1, 1), 200, np.uint8))
    png(stage / "dot" / "masks" / "m1.png", np.full((1, 1), 255, np.uint8))
    config = _config(tmp_path, {
        "model": {"depth": 2, "base_filters": 4, "dropout": [0.0]},
        "train": {"crop_size": 32, "batch_size": 2, "epochs": 1, "steps_per_epoch": 2, "validation_fraction": 0.4},
        "predict": {"tile_size": 32, "overlap": 8, "batch_size": 4},
    })
    run, data = tmp_path / "run", tmp_path / "data"
    for args in (("train", "--config", config, "--data", data, "--out", run, "--seed", 1),
                 ("tune", run, "--data", data),
                 ("evaluate", run, "--data", data),
                 ("predict", run, "--images", stage, "--out", tmp_path / "sub.csv"),
                 ("report", run, "--submission", tmp_path / "sub.csv", "--truth", stage, "--out", tmp_path / "r.html")):
        result = dsb(*args)
        assert result.exit_code == 0, (args[0], result.stderr, result.exception)
    assert (tmp_path / "r.html").is_file()
    assert set(pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)["ImageId"]) == {
        "grey", "rgba", "deep", "thin", "dot"}


# ---------------------------------------------------------------- report


def test_report_bad_inputs(tmp_path, stage, blocker, full_disk):
    from dsb.core.config import Config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(Config(), run / "config.json")
    sub = bad_submission(tmp_path, "1 2 3")
    out = tmp_path / "report.html"
    error_line(dsb("report", run, "--submission", sub, "--truth", stage, "--out", out), 3, sub,
               bad_row(), "odd number of values")
    solution = tmp_path / "solution.csv"
    solution.write_text(submission_text(perfect_rows()))
    sub.write_text(submission_text(perfect_rows()))
    error_line(dsb("report", run, "--submission", sub, "--truth", solution, "--out", out), 3, solution,
               "not a solution")
    (run / "history.csv").write_text("epoch,val\n1,2\n")
    error_line(dsb("report", run, "--out", out), 3, run / "history.csv", "no 'loss' column")
    (run / "history.csv").unlink()
    (run / "config.json").write_text(json.dumps({"postprocess": {"min_size": "12"}}))
    error_line(dsb("report", run, "--out", out), 3, run / "config.json", "key 'postprocess.min_size'")
    save_config(Config(), run / "config.json")
    assert not out.exists()

    error_line(dsb("report", run, "--out", blocker / "report.html"), 4, blocker)
    out.write_text("previous good report\n")
    full_disk("report.html")
    error_line(dsb("report", run, "--submission", sub, "--truth", stage, "--out", out), 4, out,
               "no space left on device")
    assert out.read_text() == "previous good report\n" and temporaries(tmp_path) == []


def test_report_usage_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    result = dsb("report", run, "--submission", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.stderr


# ---------------------------------------------------------------- --debug and a real process


def test_debug_shows_the_traceback_of_a_bad_input(tmp_path, stage):
    sub = bad_submission(tmp_path, "1 2 3")
    result = dsb("--debug", "validate", sub, "--images", stage)
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1].startswith("dsb: error: ")


def test_warnings_from_libraries_are_one_line_too():
    import warnings

    import click


    group = group_raising(RuntimeError("unused"))

    @click.command("chatty")
    def chatty():
        warnings.warn("Skipping variable loading:\n  the file has 3 variables,\n  the layer has 2", UserWarning)
        click.echo("done")

    group.commands["chatty"] = chatty
    result = CliRunner().invoke(group, ["chatty"])
    assert result.exit_code == 0 and result.stdout == "done\n"
    assert result.stderr == "dsb: warning: Skipping variable loading: the file has 3 variables, the layer has 2\n"


def test_a_real_process_says_one_line(tiny_run, tmp_path):
    # The backend's start-up messages on file descriptor 2 must not bury the error line.
    images = tmp_path / "images"
    png(images / "a.png", disc_image(truth("img_a")))
    bad = _write_bad(images, "bad.png", b"")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "dsb", "predict", str(tiny_run), "--images", str(images), "--out",
         str(tmp_path / "o.csv")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [f"dsb: error: {bad}: empty file (0 bytes), expected an image"]
    assert not (tmp_path / "o.csv").exists()


# ---------------------------------------------------------------- interruptions


def test_ctrl_c_during_training_says_how_to_resume(tmp_path, stage, monkeypatch):
    keras = pytest.importorskip("keras")
    from dsb.training import fit as train_module

    config = _config(tmp_path, {
        "model": {"depth": 2, "base_filters": 4, "dropout": [0.0]},
        "train": {"crop_size": 32, "batch_size": 2, "epochs": 2, "steps_per_epoch": 2, "validation_fraction": 0.0},
    })
    run = tmp_path / "run"

    def ctrl_c(self, batch, logs=None):
        if (self.state.epoch, batch) == (1, 1):  # mid-way through the second epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.RunKeeper, "on_train_batch_begin", ctrl_c, raising=False)
    result = dsb("train", "--config", config, "--data", stage.parent, "--out", run, "--seed", 1)
    assert result.exit_code == 130, (result.stderr, result.exception)
    assert result.stderr.splitlines()[-1] == (
        f"dsb: training interrupted; the checkpoint after epoch 1 is saved in {run}. "
        f"Resume with: dsb train --resume --out {run}"
    )
    assert "Traceback" not in result.stderr and temporaries(run) == []

    monkeypatch.undo()
    result = dsb("train", "--data", stage.parent, "--resume", "--out", run)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2
    assert isinstance(keras.saving.load_model(run / "model.keras", compile=False), keras.Model)


# ---------------------------------------------------------------- any text at all


@pytest.fixture(scope="module")
def csv_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    stage = write_stage(root / "stage1_train")
    solution = root / "solution.csv"
    solution.write_text(solution_text())
    return root, stage, solution


_TOKENS = ["ImageId,EncodedPixels", "ImageId,EncodedPixels,Height,Width", "img_a", "img_b", "img_zz", ",", " ",
           "\r\n", "\n", "1", "0", "-3", "2 3", "1151 2", "99999999999999999999", "\"", "x", "\ufeff", "\t", ",32,36"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_TOKENS) | st.text(max_size=4), max_size=24), st.booleans())
def test_any_csv_text_gives_a_result_or_one_error_line(csv_world, tokens, as_truth):
    # Whatever the file holds, the CSV commands answer with a result or a one-line error, never a bug.
    root, stage, solution = csv_world
    path = root / "fuzz.csv"
    path.write_bytes("".join(tokens).encode("utf-8", "surrogatepass"))
    runs = [dsb("score", solution, "--truth", path)] if as_truth else [
        dsb("validate", path, "--images", stage), dsb("score", path, "--truth", solution)]
    for result in runs:
        assert result.exit_code in (0, 3), (tokens, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.exit_code == 3:
            assert result.stderr.splitlines()[-1].startswith("dsb: error: ")
            assert str(path) in result.stderr.splitlines()[-1]


def test_every_input_skipped_is_said_whichever_check_met_it(tmp_path):
    import tifffile

    oned, empty = tmp_path / "oned.tif", tmp_path / "zero.tif"
    tifffile.imwrite(oned, np.zeros(64, np.uint8))  # refused by its header
    empty.write_bytes(b"")  # refused when read
    result = dsb("segment", oned, empty, "--out", tmp_path / "out", "--skip-bad")
    assert result.exit_code == 3, (result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"skipped: {oned}: ") for line in lines), lines
    assert any(line.startswith(f"skipped: {empty}: ") for line in lines), lines
    assert lines[-1].startswith("dsb: error: ") and "no image to segment" in lines[-1]
    assert not (tmp_path / "out" / "summary.csv").exists()
