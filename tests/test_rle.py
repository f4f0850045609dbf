"""Run-length encoding: hand-made cases, every malformation, round trips, the real labels."""

from __future__ import annotations

import csv
import io
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsb.core.errors import BadDataError
from dsb.kaggle.rle import (
    RLEError,
    labels_to_rles,
    rle_decode,
    rle_encode,
    rle_runs,
    rle_runs_many,
    rles_to_labels,
)


def reference_decode(text: str, shape):
    """A slow decoder written straight from Kaggle's definition; None when invalid."""
    if not re.fullmatch(r"[0-9 \t\n\r\f\v]*", text):
        return None
    values = [int(v) for v in text.split()]
    if len(values) % 2:
        return None
    n = shape[0] * shape[1]
    flat = [False] * n
    last = 0  # last pixel (1-based) covered so far
    for start, length in zip(values[0::2], values[1::2]):
        if start < 1 or length < 1 or start <= last or start + length - 1 > n:
            return None
        for pixel in range(start, start + length):
            flat[pixel - 1] = True
        last = start + length - 1
    return np.array(flat, bool).reshape(shape[::-1]).T


def reference_encode(mask: np.ndarray) -> str:
    pairs, run_start = [], None
    flat = list(mask.T.ravel()) + [False]
    for i, value in enumerate(flat):
        if value and run_start is None:
            run_start = i
        elif not value and run_start is not None:
            pairs += [run_start + 1, i - run_start]
            run_start = None
    return " ".join(map(str, pairs))


# ---------------------------------------------------------------- hand-made


def test_pixels_are_numbered_down_columns_from_one():
    mask = np.zeros((3, 4), bool)
    mask[1, 0] = True  # pixel 2
    mask[0, 1] = mask[1, 1] = True  # pixels 4, 5
    mask[2, 3] = True  # pixel 12, the last
    assert rle_encode(mask) == "2 1 4 2 12 1"
    np.testing.assert_array_equal(rle_decode("2 1 4 2 12 1", (3, 4)), mask)


def test_runs_continue_from_one_column_into_the_next():
    mask = np.zeros((3, 2), bool)
    mask[2, 0] = mask[0, 1] = True  # pixels 3 and 4: one run across the column break
    assert rle_encode(mask) == "3 2"


def test_full_and_empty_masks():
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    assert rle_encode(np.zeros((2, 3), bool)) == ""
    for text in ("", "   ", "\n"):
        decoded = rle_decode(text, (2, 3))
        assert decoded.dtype == bool and decoded.shape == (2, 3) and not decoded.any()


def test_decode_accepts_any_ascii_whitespace_and_adjacent_runs():
    expected = np.array([[1, 1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(rle_decode(" 1 2\t3  2 \r\n", (1, 5)), expected)


def test_runs_are_zero_based_flat_indices():
    starts, lengths = rle_runs("2 3 9 1", (3, 3))
    assert starts.tolist() == [1, 8] and lengths.tolist() == [3, 1]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1 2 3", "odd number of values (3)"),
        ("1 x", "'x' is not a non-negative integer"),
        ("1 2.5", "'2.5' is not a non-negative integer"),
        ("-1 2", "'-1' is not a non-negative integer"),
        ("1 -2", "'-2' is not a non-negative integer"),
        ("+1 2", "'+1' is not a non-negative integer"),
        ("1_0 2", "'1_0' is not a non-negative integer"),
        ("\u0661 2", "is not a non-negative integer"),  # Arabic-Indic one: int() would take it
        ("1,2", "'1,2' is not a non-negative integer"),
        ("1 99999999999999999999999", "too large"),
        ("0 2", "pair 1 starts at pixel 0; pixels are numbered from 1"),
        ("1 0", "pair 1 (start 1) has length 0"),
        ("5 1 2 1", "starts not ascending: pair 2 starts at 2, after pair 1 at 5"),
        ("2 1 2 1", "starts not ascending"),
        ("1 4 3 1", "runs overlap: pair 1 covers pixels 1-4, pair 2 starts at 3"),
        ("11 3", "pair 1 covers pixels 11-13, but a 3x4 image has 12 pixels"),
        ("13 1", "run beyond the image"),
    ],
)
def test_malformed_encodings_say_why(text, reason):
    with pytest.raises(RLEError, match=re.escape(reason)) as info:
        rle_decode(text, (3, 4))
    assert isinstance(info.value, BadDataError)
    assert "\n" not in str(info.value)


def test_last_pixel_is_inside():
    assert rle_decode("10 3", (3, 4))[2, 3]


def test_leading_zeros_are_numbers():
    assert rle_decode("0000000000000000000000001 1", (2, 2))[0, 0]


def test_bad_arguments_are_programming_errors():
    with pytest.raises(TypeError):
        rle_decode(None, (2, 2))
    with pytest.raises(ValueError):
        rle_decode("1 1", (0, 2))
    with pytest.raises(TypeError):
        rle_encode(np.zeros(4))
    with pytest.raises(TypeError):
        labels_to_rles(np.zeros((2, 2), float))
    with pytest.raises(ValueError):
        labels_to_rles(np.array([[0, -1]]))


def test_labels_to_rles_orders_by_label_and_skips_gaps():
    labels = np.array([[0, 7, 7], [3, 0, 7]])
    assert labels_to_rles(labels) == ["2 1", "3 1 5 2"]
    assert labels_to_rles(np.zeros((2, 2), np.int32)) == []


def test_rles_to_labels_numbers_in_order_and_keeps_empty_slots():
    labels = rles_to_labels(["3 1", "", "1 1"], (2, 2))
    assert labels.dtype == np.int32
    assert labels.tolist() == [[3, 1], [0, 0]]
    assert rles_to_labels([], (2, 3)).shape == (2, 3)


def test_rles_to_labels_rejects_overlap_and_names_the_masks():
    with pytest.raises(RLEError, match="masks 0 and 2 overlap at pixel 5") as info:
        rles_to_labels(["1 10", "20 1", "5 1"], (5, 5))
    assert info.value.masks == (0, 2)


def test_rles_to_labels_can_leave_shared_pixels_to_the_earlier_mask():
    labels = rles_to_labels(["2 3", "1 2", "", "1 1", "3 3"], (2, 3), allow_overlap=True)
    # mask 3 ("1 1") lies wholly inside mask 1 ("1 2"), so label 4 is absent
    assert labels.tolist() == [[2, 1, 5], [1, 1, 0]]
    # without a clash the result is the same either way
    assert rles_to_labels(["1 2", "4 1"], (2, 3), allow_overlap=True).tolist() == [[1, 0, 0], [1, 2, 0]]


def test_rles_to_labels_names_the_bad_mask():
    with pytest.raises(RLEError, match="mask 1: odd number") as info:
        rles_to_labels(["1 1", "3"], (2, 2))
    assert info.value.masks == (1,)


# ---------------------------------------------------------------- properties

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24)) | st.tuples(st.just(1), st.integers(1, 60)) | st.tuples(
    st.integers(1, 60), st.just(1)
)


@settings(deadline=None)  # CPU-light, but the machine is shared: no timing flakes
@given(st.data())
def test_mask_round_trip(data):
    shape = data.draw(shapes)
    mask = data.draw(hnp.arrays(bool, shape))
    text = rle_encode(mask)
    assert text == reference_encode(mask)
    np.testing.assert_array_equal(rle_decode(text, shape), mask)


@settings(deadline=None)
@given(st.data())
def test_label_image_round_trip(data):
    shape = data.draw(shapes)
    values = data.draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=8, unique=True))
    choice = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, len(values))))
    labels = np.array([0] + values)[choice].astype(np.int32)
    present = np.unique(labels[labels > 0])
    rles = labels_to_rles(labels)
    assert len(rles) == present.size
    for value, text in zip(present, rles):
        # Against the reference written from Kaggle's definition, not the library's own encoder,
        # so that a misreading the encoder and decoder shared would still fail.
        assert text == reference_encode(labels == value)
        np.testing.assert_array_equal(reference_decode(text, shape), labels == value)
    back = rles_to_labels(rles, shape)
    assert back.dtype == np.int32
    expected = np.searchsorted(present, labels) + 1
    np.testing.assert_array_equal(back, np.where(labels > 0, expected, 0))


def test_label_image_encodings_by_hand():
    # Kaggle's convention, worked by hand: pixels numbered from 1 down each column, then the
    # next column; "start length" pairs. For this 3 x 4 image the numbers are
    #    1  4  7 10
    #    2  5  8 11
    #    3  6  9 12
    labels = np.array([[0, 5, 5, 0],
                       [2, 5, 0, 9],
                       [2, 0, 0, 9]], np.int32)
    assert labels_to_rles(labels) == ["2 2", "4 2 7 1", "11 2"]
    np.testing.assert_array_equal(rles_to_labels(["2 2", "4 2 7 1", "11 2"], (3, 4)),
                                  [[0, 2, 2, 0], [1, 2, 0, 3], [1, 0, 0, 3]])
    # Row-major numbering would have given label 5 the pairs "2 2 6 1": a transposed reading fails here.
    assert rle_decode("4 2 7 1", (3, 4)).tolist() == [[False, True, True, False], [False, True, False, False],
                                                     [False, False, False, False]]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.tuples(st.integers(1, 6), st.integers(1, 6)))
def test_arbitrary_text_decodes_correctly_or_raises_rle_error(text, shape):
    check_against_reference(text, shape)


# Text near the valid set reaches the later checks (order, overlap, bounds).
near_valid = st.lists(
    st.integers(0, 40).map(str) | st.sampled_from(["", " ", "-1", "x", "1.0", "\t", "\n"]), max_size=12
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(near_valid, st.tuples(st.integers(1, 6), st.integers(1, 6)))
def test_near_valid_text_decodes_correctly_or_raises_rle_error(text, shape):
    check_against_reference(text, shape)


@settings(max_examples=300, deadline=None)
@given(st.lists(near_valid | st.text(max_size=8), max_size=5), st.tuples(st.integers(1, 6), st.integers(1, 6)))
def test_many_at_once_agrees_with_one_by_one(texts, shape):
    """The batch parser's fast path must accept exactly what rle_runs accepts."""
    expected, first_bad = [], None
    for i, text in enumerate(texts):
        try:
            expected.append(rle_runs(text, shape))
        except RLEError:
            first_bad = i
            break
    if first_bad is not None:
        with pytest.raises(RLEError) as info:
            rle_runs_many(texts, shape)
        assert info.value.masks == (first_bad,)
        assert str(info.value).startswith(f"mask {first_bad}: ")
        return
    starts, lengths, index = rle_runs_many(texts, shape)
    assert starts.tolist() == [v for s, _ in expected for v in s.tolist()]
    assert lengths.tolist() == [v for _, n in expected for v in n.tolist()]
    assert index.tolist() == [i for i, (s, _) in enumerate(expected) for _ in range(s.size)]


def check_against_reference(text, shape):
    expected = reference_decode(text, shape)
    try:
        mask = rle_decode(text, shape)
    except RLEError:
        assert expected is None
    else:
        assert expected is not None
        np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------- real data


def _read_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


# Images whose masks share a pixel or two, in the PNGs and the CSV alike.
OVERLAPPING = [
    "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9",
    "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e",
    "175dbb364bfefc9537931144861c9b6e08934df3992782c669c6fe4234319dfc",
    "547ef286ee5f4e5dce533e982e6992ada67b7d727fdd3cfa6576f24c631a7ae6",
    "72e8c49dea44787114fd191f9e97e260f961c6e7ae4715bc95cc91db8d91a4e3",
    "f26f4c2c70c38fe12e00d5a814d5116691f2ca548908126923fd76ddd665ed24",
]


def test_train_labels_csv_decodes_to_the_mask_pngs(shared_data, train_dir):
    """Every 11th id (60 images) plus the six with overlapping masks: all 29k masks take too long."""
    with zipfile.ZipFile(shared_data / "stage1_train_labels.csv.zip") as zf:
        text = zf.read("stage1_train_labels.csv").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    by_image: dict[str, list[str]] = {}
    for image_id, rle in rows[1:]:
        by_image.setdefault(image_id, []).append(rle)
    ids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    assert set(by_image) == set(ids)
    sample = ids[::11] + OVERLAPPING
    assert len(sample) >= 66
    for image_id in sample:
        masks = [_read_png(p.read_bytes()) > 0 for p in sorted((train_dir / image_id / "masks").glob("*.png"))]
        shape = masks[0].shape
        rles = by_image[image_id]
        # The same masks both ways, compared one by one (so overlaps do not matter).
        encoded = {rle_encode(m): m for m in masks}
        assert len(encoded) == len(masks) == len(rles), image_id
        assert set(rles) == set(encoded), image_id
        for rle in rles:
            assert np.array_equal(rle_decode(rle, shape), encoded[rle]), image_id
        # and all at once, as the label image of the CSV's masks in row order
        labels = rles_to_labels(rles, shape, allow_overlap=True)
        expected = np.zeros(shape, np.int32)
        for k, rle in enumerate(rles, start=1):
            expected[encoded[rle] & (expected == 0)] = k  # shared pixels stay with the earlier mask
        assert np.array_equal(labels, expected), image_id
        assert labels_to_rles(labels) == rles or image_id in OVERLAPPING, image_id
        if image_id in OVERLAPPING:
            with pytest.raises(RLEError, match="overlap"):
                rles_to_labels(rles, shape)
