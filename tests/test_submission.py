"""Submission and solution CSVs: strict reading, atomic writing, validation, labels."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb.core.errors import BadDataError, DsbError
from dsb.io.images import image_shapes
from dsb.kaggle.rle import labels_to_rles
from dsb.kaggle.submission import (
    Problem,
    read_solution,
    read_submission,
    solution_shapes,
    submission_to_labels,
    validate_submission,
    write_submission,
)

SHAPES = {"a": (4, 5), "b": (3, 3), "c": (2, 2)}


def write(tmp_path, text: str | bytes, name="sub.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def frame(rows):
    return pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])


# ---------------------------------------------------------------- read_submission


def test_read_plain_file(tmp_path):
    df = read_submission(write(tmp_path, "ImageId,EncodedPixels\na,1 2 5 1\na,10 2\nb,\n"))
    assert list(df.columns) == ["ImageId", "EncodedPixels"]
    assert df["ImageId"].tolist() == ["a", "a", "b"]
    assert df["EncodedPixels"].tolist() == ["1 2 5 1", "10 2", ""]
    assert not df.isna().any().any()


def test_read_tolerates_bom_crlf_trailing_spaces_quotes_and_final_blank_lines(tmp_path):
    text = '\ufeffImageId,EncodedPixels\r\na,1 2 \r\n"b","3 1"\r\nc, \t\r\n\r\n\n'
    df = read_submission(write(tmp_path, text))
    assert df["ImageId"].tolist() == ["a", "b", "c"]
    assert df["EncodedPixels"].tolist() == ["1 2", "3 1", ""]


def test_read_header_only_is_an_empty_frame(tmp_path):
    df = read_submission(write(tmp_path, "ImageId,EncodedPixels\n"))
    assert len(df) == 0 and list(df.columns) == ["ImageId", "EncodedPixels"]


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("", None, "empty file; expected the header ImageId,EncodedPixels"),
        ("a,1 1\nb,2 2\n", "line 1", "header is 'a,1 1', expected ImageId,EncodedPixels"),
        ("imageid,encodedpixels\n", "line 1", "header is"),
        ("ImageId,EncodedPixels,Height,Width\n", "line 1", "header is"),
        ("ImageId, EncodedPixels\n", "line 1", "header is"),
        ("ImageId,EncodedPixels\na,1 1\nb,1 1,3\n", "row 2 (line 3)", "3 fields, expected 2"),
        ("ImageId,EncodedPixels\na,1 1\nb\n", "row 2 (line 3)", "1 fields, expected 2"),
        ("ImageId,EncodedPixels\na,1 1\n\nb,1 1\n", "row 2 (line 3)", "empty line"),
        ("ImageId,EncodedPixels\n,1 1\n", "row 1 (line 2)", "empty ImageId"),
        ("ImageId,EncodedPixels\n a,1 1\n", "row 1 (line 2)", "spaces or control characters"),
        ('ImageId,EncodedPixels\n"a"x,1 1\n', "row 1 (line 2)", "not valid CSV"),
    ],
)
def test_read_errors_name_file_row_and_problem(tmp_path, text, where, what):
    path = write(tmp_path, text)
    with pytest.raises(BadDataError) as info:
        read_submission(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    if where:
        assert f": {where}: " in message
    assert what in message
    assert "\n" not in message


def test_read_rejects_non_utf8_and_missing_files(tmp_path):
    with pytest.raises(BadDataError, match=r"not UTF-8 text \(byte 0xff at offset 22\)"):
        read_submission(write(tmp_path, b"ImageId,EncodedPixels\n\xff,1 1\n"))
    with pytest.raises(BadDataError, match="no such file"):
        read_submission(tmp_path / "absent.csv")
    with pytest.raises(BadDataError, match="is a folder"):
        read_submission(tmp_path)


# Text built from the characters that matter to a CSV reader, so that fuzzing
# reaches past the header as often as it fails on it.
csv_alphabet = st.sampled_from(list('ab1 2,"\r\n\t\ufeff\x00\u2028\xa0') + ["ImageId,EncodedPixels\n"])
csv_like = st.lists(csv_alphabet, max_size=40).map("".join)


def _check_read_or_bad_data(reader, path, data: bytes):
    path.write_bytes(data)
    try:
        df = reader(path)
    except BadDataError as exc:
        assert "\n" not in str(exc)
        return
    assert list(df.columns[:2]) == ["ImageId", "EncodedPixels"]
    assert not df.isna().any().any()
    for image_id in df["ImageId"].tolist():
        assert image_id and image_id.isprintable() and image_id == image_id.strip()


# No deadline: these write a file per example, and disks on shared machines stall.
@settings(max_examples=300, deadline=None)
@given(text=st.text() | csv_like | csv_like.map("ImageId,EncodedPixels\n".__add__))
def test_fuzz_read_submission_on_text(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz_submission.csv"
    _check_read_or_bad_data(read_submission, path, text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(data=st.binary())
def test_fuzz_read_submission_on_bytes(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz_submission_bytes.csv"
    _check_read_or_bad_data(read_submission, path, b"ImageId,EncodedPixels\n" + data)


@settings(max_examples=200, deadline=None)
@given(text=csv_like)
def test_fuzz_read_solution(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz_solution.csv"
    _check_read_or_bad_data(read_solution, path, ("ImageId,EncodedPixels,Height,Width\n" + text).encode())


ids = st.from_regex(r"[0-9a-f]{1,8}", fullmatch=True)
encodings = st.from_regex(r"([0-9]{1,3}( [0-9]{1,3})*)?", fullmatch=True)


@settings(deadline=None)
@given(st.lists(st.tuples(ids, encodings)))
def test_write_then_read_gives_the_frame_back(tmp_path_factory, rows):
    path = tmp_path_factory.getbasetemp() / "round_trip.csv"
    df = frame(rows)
    write_submission(df, path)
    # The file as Kaggle's format spells it, written out independently of the writer and reader.
    assert path.read_text(encoding="utf-8") == "ImageId,EncodedPixels\n" + "".join(f"{i},{e}\n" for i, e in rows)
    back = read_submission(path)
    assert back["ImageId"].tolist() == df["ImageId"].tolist()
    assert back["EncodedPixels"].tolist() == df["EncodedPixels"].tolist()


# ---------------------------------------------------------------- read_solution


def test_read_solution_with_and_without_usage(tmp_path):
    text = "ImageId,EncodedPixels,Height,Width,Usage\na,1 2,4,5,Public\na,7 1,4,5,Public\nb,,3,3,Private\n"
    df = read_solution(write(tmp_path, text))
    assert list(df.columns) == ["ImageId", "EncodedPixels", "Height", "Width", "Usage"]
    assert df["Height"].dtype == np.int64 and df["Height"].tolist() == [4, 4, 3]
    assert solution_shapes(df) == {"a": (4, 5), "b": (3, 3)}
    df = read_solution(write(tmp_path, "ImageId,EncodedPixels,Height,Width\nb,1 1,3,3\n"))
    assert list(df.columns) == ["ImageId", "EncodedPixels", "Height", "Width"]


def test_read_solution_without_sizes_says_so(tmp_path):
    path = write(tmp_path, "ImageId,EncodedPixels\na,1 1\n")
    with pytest.raises(BadDataError, match="no Height and Width") as info:
        read_solution(path)
    assert str(info.value).startswith(f"{path}: line 1: ")


@pytest.mark.parametrize(
    "rows, where, what",
    [
        ("a,1 1,4,x", "row 1 (line 2)", "Width 'x' is not a positive integer"),
        ("a,1 1,0,5", "row 1 (line 2)", "Height '0' is not a positive integer"),
        ("a,1 1,4,5\nb,1 1,3,3\na,2 1,5,4", "row 3 (line 4)", "ImageId 'a' is 5x4 here but 4x5 in row 1"),
    ],
)
def test_read_solution_errors(tmp_path, rows, where, what):
    path = write(tmp_path, "ImageId,EncodedPixels,Height,Width\n" + rows + "\n")
    with pytest.raises(BadDataError) as info:
        read_solution(path)
    assert str(info.value) == f"{path}: {where}: {what}"


# ---------------------------------------------------------------- write_submission


def test_write_is_exact_and_deterministic(tmp_path):
    df = frame([("b", "1 1"), ("a", None), ("a", math.nan), ("c", "3 2")])
    path = write_submission(df, tmp_path / "out" / "sub.csv")
    first = path.read_bytes()
    assert first == b"ImageId,EncodedPixels\nb,1 1\na,\na,\nc,3 2\n"
    write_submission(df, path)
    assert path.read_bytes() == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["sub.csv"]


def test_write_keeps_the_old_file_when_it_fails(tmp_path):
    path = write(tmp_path, "old")
    with pytest.raises(BadDataError, match="row 2: EncodedPixels '1,1' holds a comma"):
        write_submission(frame([("a", "1 1"), ("b", "1,1")]), path)
    with pytest.raises(BadDataError, match="no column EncodedPixels"):
        write_submission(pd.DataFrame({"ImageId": ["a"]}), path)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


# ---------------------------------------------------------------- validate_submission


def test_valid_submission_has_no_problems():
    df = frame([("a", "1 2"), ("a", "3 2 9 1"), ("b", ""), ("c", "4 1")])
    assert validate_submission(df, SHAPES) == []


def test_every_problem_is_reported_with_its_row(tmp_path):
    df = frame(
        [
            ("a", "1 5"),  # 1
            ("zz", "1 1"),  # 2 unknown
            ("a", "4 2"),  # 3 overlaps row 1
            ("b", "1 2 3"),  # 4 odd
            ("b", "5 1 2 1"),  # 5 unsorted
            ("b", "9 2"),  # 6 beyond 3x3
            ("b", "1 x"),  # 7 not an integer
            ("a", "20 1"),  # 8 fine, last pixel
            ("", "1 1"),  # 9 empty id
        ]
    )
    problems = validate_submission(df, SHAPES, path=tmp_path / "sub.csv")
    assert [(p.row, p.image_id) for p in problems] == [
        (2, "zz"),
        (3, "a"),
        (4, "b"),
        (5, "b"),
        (6, "b"),
        (7, "b"),
        (9, None),
        (None, "c"),
    ]
    text = [str(p) for p in problems]
    assert text[0] == "row 2 (line 3): ImageId 'zz': unknown ImageId (not one of the 3 images)"
    assert text[1] == "row 3 (line 4): ImageId 'a': mask overlaps the mask in row 1"
    assert "odd number of values" in text[2]
    assert "starts not ascending" in text[3]
    assert "run beyond the image" in text[4]
    assert "'x' is not a non-negative integer" in text[5]
    assert text[6] == "row 9 (line 10): empty ImageId"
    assert text[7].startswith("ImageId 'c': no row for this image")
    assert all("\n" not in t for t in text)
    assert all(p.path == str(tmp_path / "sub.csv") for p in problems)


def test_without_a_path_rows_are_not_file_lines():
    (problem,) = validate_submission(frame([("a", "1 5"), ("a", "2 1"), ("b", ""), ("c", "")]), SHAPES)
    assert str(problem) == "row 2: ImageId 'a': mask overlaps the mask in row 1"


def test_each_overlapping_pair_is_one_problem():
    # Row 1 spans the column; rows 2 and 3 each sit inside it, row 4 is clear.
    df = frame([("a", "1 4"), ("a", "2 1"), ("a", "4 1"), ("a", "5 1"), ("b", ""), ("c", "")])
    problems = validate_submission(df, SHAPES)
    assert [(p.row, p.message) for p in problems] == [
        (2, "mask overlaps the mask in row 1"),
        (3, "mask overlaps the mask in row 1"),
    ]


def test_wrong_columns_is_one_problem():
    df = pd.DataFrame({"ImageId": ["zz"], "Pixels": ["x"]})
    (problem,) = validate_submission(df, SHAPES)
    assert problem.row is None and "expected 'ImageId,EncodedPixels'" in str(problem)


def test_problem_is_one_line():
    assert str(Problem(3, "a", "bad")) == "row 3: ImageId 'a': bad"
    assert str(Problem(None, None, "bad", "x.csv")) == "bad"


# ---------------------------------------------------------------- submission_to_labels


def test_submission_to_labels_paints_rows_in_order():
    df = frame([("a", "6 2"), ("b", ""), ("a", "1 1"), ("a", ""), ("a", "20 1")])
    labels = submission_to_labels(df, SHAPES)
    assert list(labels) == ["a", "b"]  # c has no row
    assert labels["a"].dtype == np.int32 and labels["a"].shape == (4, 5)
    # By hand, 1-based and down the columns of the 4 x 5 image: "6 2" is pixels 6 and 7 (rows 1
    # and 2 of column 1), "1 1" the top-left pixel, "20 1" the bottom-right one.
    assert labels["a"].tolist() == [[2, 0, 0, 0, 0],
                                    [0, 1, 0, 0, 0],
                                    [0, 1, 0, 0, 0],
                                    [0, 0, 0, 0, 3]]
    assert labels_to_rles(labels["a"]) == ["6 2", "1 1", "20 1"]
    assert not labels["b"].any() and labels["b"].shape == (3, 3)


def test_submission_to_labels_errors_name_the_row(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(BadDataError) as info:
        submission_to_labels(frame([("a", "1 5"), ("b", ""), ("a", "3 1")]), SHAPES, path=path)
    assert str(info.value) == f"{path}: row 3 (line 4): ImageId 'a': mask overlaps the mask in row 1"
    with pytest.raises(BadDataError, match=r"^row 2: ImageId 'b': EncodedPixels: run beyond the image"):
        submission_to_labels(frame([("a", "1 1"), ("b", "9 2")]), SHAPES)
    with pytest.raises(BadDataError, match=r"^row 1: unknown ImageId 'zz'"):
        submission_to_labels(frame([("zz", "1 1")]), SHAPES)
    assert list(submission_to_labels(frame([("zz", "1 1"), ("c", "1 1")]), SHAPES, skip_unknown=True)) == ["c"]


def test_errors_are_dsb_errors_with_bad_data_exit_code(tmp_path):
    with pytest.raises(DsbError) as info:
        read_submission(write(tmp_path, "x\n"))
    assert info.value.exit_code == 3


# ---------------------------------------------------------------- real data


def test_training_labels_validate_except_six_known_overlaps(shared_data, train_dir, tmp_path):
    """The training labels as a submission: well formed, every image present, and
    exactly the six images whose masks share pixels flagged (one pair each)."""
    with zipfile.ZipFile(shared_data / "stage1_train_labels.csv.zip") as zf:
        path = write(tmp_path, zf.read("stage1_train_labels.csv"), "labels.csv")
    df = read_submission(path)
    assert len(df) == 28_986
    problems = validate_submission(df, image_shapes(train_dir), path=path)
    assert sorted(p.image_id[:6] for p in problems) == ["0a7d30", "1609b1", "175dbb", "547ef2", "72e8c4", "f26f4c"]
    assert all(p.message.startswith("mask overlaps the mask in row") for p in problems)
    labels = submission_to_labels(df.iloc[:2000], image_shapes(train_dir), allow_overlap=True)
    assert all(lab.max() == np.unique(lab[lab > 0]).size for lab in labels.values())
