"""The competition metric: hand-made cases with exact IoUs, a brute-force reference, whole files."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_discs, true_and_predicted_discs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from dsb.cli import cli
from dsb.core.errors import BadDataError
from dsb.kaggle.metric import (
    THRESHOLDS,
    image_score,
    iou_matrix,
    label_overlap,
    match_nuclei,
    miss_causes,
    score_labels,
)
from dsb.kaggle.rle import labels_to_rles, rles_to_labels
from dsb.kaggle.submission import score_submission, write_submission


def column(n_true: int, n_pred: int, shared: int, size=(100, 3)):
    """One true and one predicted object in a tall image with exactly ``shared`` common pixels.

    Truth is rows [0, n_true) of column 0 continued into column 1 when needed; the
    prediction starts ``n_true - shared`` pixels later in the same order.
    """
    flat_true = np.zeros(size[0] * size[1], np.int32)
    flat_pred = np.zeros_like(flat_true)
    flat_true[:n_true] = 1
    offset = n_true - shared
    flat_pred[offset : offset + n_pred] = 1
    return flat_true.reshape(size, order="F"), flat_pred.reshape(size, order="F")


def reference_score(true: np.ndarray, pred: np.ndarray) -> float:
    """Straight from the definition: sets of pixels, every pair, every threshold."""
    objects_t = [set(np.flatnonzero(true == v)) for v in np.unique(true) if v]
    objects_p = [set(np.flatnonzero(pred == v)) for v in np.unique(pred) if v]
    if not objects_t and not objects_p:
        return 1.0
    precisions = []
    for t in THRESHOLDS:
        matched = sum(any(len(a & b) / len(a | b) > t for a in objects_t) for b in objects_p)
        precisions.append(matched / (len(objects_t) + len(objects_p) - matched))
    return float(np.mean(precisions))


# ---------------------------------------------------------------- hand-made


def test_thresholds_are_the_competition_ones():
    assert THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_perfect_prediction_scores_one_whatever_the_label_values():
    true = make_discs(centres=((15, 15), (40, 44), (15, 50)))
    pred = np.choose(true, [0, 900, 7, 123456789])  # renumbered, non-consecutive
    result = image_score(true, pred)
    assert result.score == 1.0
    assert result.tp == (3,) * 10 and result.fp == (0,) * 10 and result.fn == (0,) * 10
    assert (result.n_true, result.n_pred) == (3, 3)


@pytest.mark.parametrize("k", range(10, 21))
def test_iou_exactly_at_a_threshold_is_not_a_hit(k):
    # IoU = k / 20 exactly: hits are the thresholds strictly below it.
    true, pred = column(20, k, k)
    assert iou_matrix(true, pred)[0, 0] == k / 20
    expected_hits = int(np.sum(THRESHOLDS < k / 20))
    assert expected_hits == max(k - 10, 0) if k < 20 else 10
    assert image_score(true, pred).score == pytest.approx(expected_hits / 10)


@pytest.mark.parametrize(
    "shared, hits",
    [(74, 5), (75, 5), (76, 6), (50, 0), (51, 1), (95, 9), (96, 10)],
)
def test_iou_just_below_at_and_just_above_a_threshold(shared, hits):
    true, pred = column(100, shared, shared)  # prediction inside the truth: IoU = shared / 100
    result = image_score(true, pred)
    assert result.tp == (1,) * hits + (0,) * (10 - hits)
    assert result.score == pytest.approx(hits / 10)


def test_iou_with_both_sides_sticking_out():
    # |T| = 40, |P| = 40, shared 30: IoU = 30 / 50 = 0.6, a hit at 0.50 and 0.55 only.
    true, pred = column(40, 40, 30)
    assert iou_matrix(true, pred)[0, 0] == 0.6
    assert image_score(true, pred).score == pytest.approx(0.2)


def test_object_split_in_two():
    true = np.zeros((10, 10), np.int32)
    true[:, :2] = 1  # 20 pixels
    pred = np.zeros_like(true)
    pred[:, 0] = 1
    pred[:, 1] = 2  # halves: IoU 0.5 each, never above a threshold
    result = image_score(true, pred)
    assert result.score == 0.0
    assert (result.tp[0], result.fp[0], result.fn[0]) == (0, 2, 1)
    pred[:6, 1] = 1  # 16 and 4 pixels: IoU 0.8 and 0.2
    result = image_score(true, pred)
    # hit at 0.50..0.75: precision 1 / (1 + 1 + 0) there, 0 / (0 + 2 + 1) after
    assert result.score == pytest.approx(6 * 0.5 / 10)
    assert (result.tp[5], result.fp[5], result.fn[5]) == (1, 1, 0)
    assert (result.tp[6], result.fp[6], result.fn[6]) == (0, 2, 1)


def test_two_objects_merged():
    true = np.zeros((10, 10), np.int32)
    true[:, 0] = 1
    true[:, 1] = 2
    pred = (true > 0).astype(np.int32)  # one object: IoU 0.5 with each
    result = image_score(true, pred)
    assert result.score == 0.0 and (result.tp[0], result.fp[0], result.fn[0]) == (0, 1, 2)
    true[:3, 1] = 1  # true objects of 13 and 7 pixels: IoU 0.65 and 0.35
    result = image_score(true, pred)
    # hit at 0.50, 0.55, 0.60: precision 1 / (1 + 0 + 1)
    assert result.score == pytest.approx(3 * 0.5 / 10)


def test_empty_truth_empty_prediction_and_both_empty():
    empty = np.zeros((8, 8), np.int32)
    some = make_discs((8, 8), centres=((2, 2), (6, 6)), radius=1)
    result = image_score(empty, some)
    assert result.score == 0.0 and result.fp == (2,) * 10 and result.n_true == 0
    result = image_score(some, empty)
    assert result.score == 0.0 and result.fn == (2,) * 10 and result.n_pred == 0
    assert image_score(empty, empty).score == 1.0


def test_label_overlap_counts_pixels_of_each_pair():
    true = np.array([[1, 1, 0, 5], [1, 0, 0, 5]])
    pred = np.array([[2, 0, 0, 9], [2, 2, 9, 9]])
    table = label_overlap(true, pred)
    # rows: background, true 1, true 5; columns: background, pred 2, pred 9
    assert table.tolist() == [[1, 1, 1], [1, 2, 0], [0, 0, 2]]
    np.testing.assert_allclose(iou_matrix(true, pred), [[2 / 4, 0], [0, 2 / 3]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        image_score(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match=r"`true` \(dtype float64\) must hold integers"):
        image_score(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="non-negative"):
        image_score(np.array([[-1]]), np.array([[0]]))


def test_many_objects_use_sparse_counting_with_the_same_result():
    # 10,000 one-pixel true objects against 5,000 two-pixel predictions: the dense
    # table would have 5e7 cells; only pairs that occur are counted.
    true = np.arange(1, 10_001, dtype=np.int64).reshape(100, 100) * 1_000_003  # huge values too
    pred = (np.arange(10_000) // 2 + 1).reshape(100, 100)
    pred[0, :2] = [77_777, 0]  # one prediction equals one true pixel: IoU 1
    result = image_score(true, pred)
    assert (result.n_true, result.n_pred) == (10_000, 5_000)
    assert result.tp == (1,) * 10
    assert result.fp == (4_999,) * 10 and result.fn == (9_999,) * 10


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_matches_the_set_based_reference(data):
    shape = data.draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    true = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 4)))
    pred = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 4)))
    assert image_score(true, pred).score == pytest.approx(reference_score(true, pred))


# ---------------------------------------------------------------- data sets


def test_score_labels_means_over_the_truth_and_scores_missing_images_zero():
    discs = make_discs()
    empty = np.zeros((64, 64), np.int32)
    truth = {"perfect": discs, "missing": discs, "missing-empty": empty, "both-empty": empty}
    pred = {"perfect": discs, "both-empty": empty, "extra": discs}
    value, table = score_labels(truth, pred, image_types={"perfect": "fluorescence"})
    assert value == pytest.approx(2 / 4)
    assert list(table.columns) == [
        "ImageId", "score", "tp_50", "fp_50", "fn_50", "tp_75", "fp_75", "fn_75", "n_true", "n_pred", "type",
    ]
    assert table["ImageId"].tolist() == ["perfect", "missing", "missing-empty", "both-empty"]
    assert table["score"].tolist() == [1.0, 0.0, 0.0, 1.0]
    missing = table.iloc[1]
    assert (missing.tp_50, missing.fp_50, missing.fn_50, missing.n_true, missing.n_pred) == (0, 0, 2, 2, 0)
    assert table["type"].iloc[0] == "fluorescence" and pd.isna(table["type"].iloc[1])
    _, table = score_labels(truth, pred)
    assert "type" not in table.columns


def test_score_labels_rejects_mismatched_shapes_and_empty_truth():
    with pytest.raises(BadDataError, match=r"ImageId 'a': predicted labels are \(2, 2\), the truth is \(3, 3\)"):
        score_labels({"a": np.zeros((3, 3), int)}, {"a": np.zeros((2, 2), int)})
    with pytest.raises(BadDataError, match="no images"):
        score_labels({}, {})


def _discs_truth():
    return {
        "img1": make_discs((40, 50), centres=((10, 10), (25, 30)), radius=6),
        "img2": make_discs((30, 30), centres=((15, 15),), radius=5),
        "img3": np.zeros((20, 20), np.int32),
    }


def _submission_rows(labels: dict) -> pd.DataFrame:
    rows = []
    for image_id, lab in labels.items():
        rles = labels_to_rles(lab) or [""]
        rows += [(image_id, r) for r in rles]
    return pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])


def _write_solution(path, truth, usage=None):
    lines = ["ImageId,EncodedPixels,Height,Width" + (",Usage" if usage else "")]
    for image_id, lab in truth.items():
        for rle in labels_to_rles(lab) or [""]:
            extra = f",{usage[image_id]}" if usage else ""
            lines.append(f"{image_id},{rle},{lab.shape[0]},{lab.shape[1]}{extra}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_folder(folder, truth):
    for image_id, lab in truth.items():
        (folder / image_id / "images").mkdir(parents=True)
        (folder / image_id / "masks").mkdir()
        rgba = np.zeros(lab.shape + (4,), np.uint8)
        rgba[..., 3] = 255
        Image.fromarray(rgba).save(folder / image_id / "images" / f"{image_id}.png")
        for v in np.unique(lab[lab > 0]):
            Image.fromarray(((lab == v) * 255).astype(np.uint8)).save(folder / image_id / "masks" / f"m{v}.png")
    return folder


@pytest.mark.parametrize("truth_kind", ["solution", "folder"])
def test_score_submission_against_a_solution_csv_or_a_folder(tmp_path, truth_kind):
    truth = _discs_truth()
    truth_path = (
        _write_solution(tmp_path / "solution.csv", truth)
        if truth_kind == "solution"
        else _write_folder(tmp_path / "train", truth)
    )
    sub = write_submission(_submission_rows(truth), tmp_path / "perfect.csv")
    value, table = score_submission(sub, truth_path)
    assert value == 1.0 and table["score"].tolist() == [1.0, 1.0, 1.0]
    # Drop img2 entirely and one disc of img1: img1 scores 1/2, img2 0, img3 1.
    partial = {"img1": np.where(truth["img1"] == 2, 0, truth["img1"]), "img3": truth["img3"]}
    sub = write_submission(_submission_rows(partial), tmp_path / "partial.csv")
    value, table = score_submission(sub, truth_path)
    assert table.set_index("ImageId")["score"].to_dict() == {"img1": 0.5, "img2": 0.0, "img3": 1.0}
    assert value == pytest.approx(0.5)
    assert table.attrs["unanswered"] == ["img2"]
    # The command line says so on stderr, once, and still prints the score last.
    result = CliRunner().invoke(cli, ["score", str(sub), "--truth", str(truth_path)])
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "0.500000"
    assert result.stderr.splitlines() == [
        f"dsb: warning: {sub}: 1 of 3 images of the truth has no row and score 0 (e.g. img2)"]
    # An empty row answers for an image without nuclei: no warning.
    answered = pd.concat([_submission_rows(partial), pd.DataFrame({"ImageId": ["img2"], "EncodedPixels": [""]})])
    sub = write_submission(answered, tmp_path / "answered.csv")
    assert score_submission(sub, truth_path)[1].attrs["unanswered"] == []
    assert CliRunner().invoke(cli, ["score", str(sub), "--truth", str(truth_path)]).stderr == ""


def test_score_a_solution_csv_per_type_with_a_flat_folder_of_its_images(tmp_path):
    """dsb validate took a flat folder of images and dsb score --images said it held none."""
    truth = _discs_truth()
    solution = _write_solution(tmp_path / "solution.csv", truth)
    flat = tmp_path / "flat"
    flat.mkdir()
    for image_id, lab in truth.items():
        Image.fromarray(np.zeros(lab.shape, np.uint8)).save(flat / f"{image_id}.png")
    sub = write_submission(_submission_rows(truth), tmp_path / "perfect.csv")
    result = CliRunner().invoke(cli, ["score", str(sub), "--truth", str(solution), "--images", str(flat)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["fluorescence: 1.000000 (3 images)", "1.000000"]


def test_score_submission_unknown_images_and_bad_rows(tmp_path):
    truth = _discs_truth()
    solution = _write_solution(tmp_path / "solution.csv", truth)
    rows = _submission_rows(truth)
    extra = pd.concat([rows, pd.DataFrame({"ImageId": ["other"], "EncodedPixels": ["1 1"]})], ignore_index=True)
    sub = write_submission(extra, tmp_path / "extra.csv")
    with pytest.raises(BadDataError, match=r"extra\.csv: row 5 \(line 6\): unknown ImageId 'other'"):
        score_submission(sub, solution)
    assert score_submission(sub, solution, allow_extra=True)[0] == 1.0
    rows.loc[1, "EncodedPixels"] = "1 5000"
    sub = write_submission(rows, tmp_path / "bad.csv")
    with pytest.raises(BadDataError, match=r"bad\.csv: row 2 \(line 3\): ImageId 'img1': EncodedPixels: run beyond"):
        score_submission(sub, solution)
    with pytest.raises(BadDataError, match="no Height and Width"):
        score_submission(sub, sub)


def test_ignored_images_of_a_solution_are_not_scored(tmp_path):
    truth = _discs_truth()
    usage = {"img1": "Public", "img2": "Ignored", "img3": "Private"}
    solution = _write_solution(tmp_path / "solution.csv", truth, usage)
    rows = _submission_rows({"img1": truth["img1"], "img2": np.zeros((30, 30), np.int32), "img3": truth["img3"]})
    value, table = score_submission(write_submission(rows, tmp_path / "sub.csv"), solution)
    assert table["ImageId"].tolist() == ["img1", "img3"] and value == 1.0


def test_real_training_masks_score_one_against_their_csv_rows(shared_data, train_dir, tmp_path):
    # Two ordinary images and one whose masks share pixels (the earlier mask keeps them
    # in the folder and in the CSV alike, and both list masks in the same order).
    ids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())[:2]
    ids.append("0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9")
    folder = tmp_path / "truth"
    for image_id in ids:
        shutil.copytree(train_dir / image_id, folder / image_id)
    with zipfile.ZipFile(shared_data / "stage1_train_labels.csv.zip") as zf:
        labels_csv = pd.read_csv(io.BytesIO(zf.read("stage1_train_labels.csv")))
    rows = []
    for image_id in ids:
        with Image.open(folder / image_id / "images" / f"{image_id}.png") as image:
            shape = image.size[::-1]
        rles = labels_csv.loc[labels_csv["ImageId"] == image_id, "EncodedPixels"].tolist()
        # A submission may not overlap: paint (earlier mask wins, as for the truth) and re-encode.
        rows += [(image_id, r) for r in labels_to_rles(rles_to_labels(rles, shape, allow_overlap=True))]
    sub = write_submission(pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]), tmp_path / "sub.csv")
    overlapping = pd.DataFrame({"ImageId": ids[2], "EncodedPixels": rles})
    with pytest.raises(BadDataError, match="mask overlaps the mask in row"):
        score_submission(write_submission(overlapping, tmp_path / "overlapping.csv"), folder)
    value, table = score_submission(sub, folder)
    assert value == 1.0
    assert table["n_true"].tolist() == table["n_pred"].tolist()
    assert table["n_true"].min() > 0


def test_unsigned_labels_are_counted_like_signed_ones():
    # Regression: uint64 labels made the contingency index float64, which bincount refused.
    true = np.zeros((8, 8), np.int64)
    true[1:4, 1:4] = 1
    pred = true.astype(np.uint64)
    assert image_score(true, pred).score == 1.0
    assert image_score(true.astype(np.uint16), pred).score == 1.0


def test_match_nuclei_splits_matches_false_positives_and_misses():
    true, pred = true_and_predicted_discs()
    matched, false_positives, missed = match_nuclei(true, pred)
    assert matched.tolist() == [1, 2]
    assert false_positives.tolist() == [3]
    assert missed.tolist() == [3]
    # Label values need not be consecutive.
    matched, false_positives, missed = match_nuclei(true * 10, np.where(pred > 0, pred + 100, 0))
    assert (matched.tolist(), false_positives.tolist(), missed.tolist()) == ([101, 102], [103], [30])
    with pytest.raises(ValueError, match="at least 0.5"):
        match_nuclei(true, pred, threshold=0.3)


def _blocks():
    """Four true squares of 8x8 pixels in a row, 2 apart, and a small one of 2x2 further on."""
    true = np.zeros((10, 64), np.int32)
    for k, c0 in enumerate((1, 11, 21, 31), start=1):
        true[1:9, c0:c0 + 8] = k
    true[4:6, 60:62] = 5
    return true


def test_miss_causes_names_each_way_of_missing_a_nucleus():
    true = _blocks()
    pred = np.zeros_like(true)
    pred[1:9, 1:19] = 7                  # nuclei 1 and 2 joined into one: both merged
    pred[1:9, 21:25] = 8                 # nucleus 3 halved into two pieces, neither over half: split
    pred[1:9, 25:29] = 9
    pred[0:10, 29:44] = 10               # nucleus 4 whole inside 150 pixels (IoU 0.43), alone: outline
    causes = miss_causes(true, pred)     # nucleus 5 (4 pixels) has no prediction: absent, and small
    assert causes["label"].tolist() == [1, 2, 3, 4, 5]
    assert causes["cause"].tolist() == ["merged", "merged", "split", "outline", "absent"]
    assert causes["area"].tolist() == [64, 64, 64, 64, 4]
    assert causes["small"].tolist() == [False, False, False, False, True]
    # A prediction lying inside a nucleus drawn wider than it: found, with a wrong outline.
    shrunk = pred.copy()
    shrunk[0:10, 29:44] = 0
    shrunk[1:9, 31:34] = 10
    assert miss_causes(true, shrunk)["cause"].tolist()[3] == "outline"
    # Only a neighbour's fringe on it (the neighbour's prediction mostly elsewhere): absent.
    fringe = shrunk.copy()
    fringe[1:9, 31:34] = 0
    fringe[0:10, 29:33] = 12             # 16 of its 40 pixels on nucleus 4
    assert miss_causes(true, fringe)["cause"].tolist()[2:4] == ["split", "absent"]
    # Matched nuclei are not listed; nor is anything when the prediction is the truth.
    pred[4:6, 60:62] = 11
    assert 5 not in miss_causes(true, pred)["label"].tolist()
    assert miss_causes(true, true).empty
    # Label values need not be consecutive, and come back as they were.
    assert miss_causes(true * 3, np.where(pred > 0, pred + 50, 0))["label"].tolist() == [3, 6, 9, 12]


def test_miss_causes_without_truth_or_prediction():
    true = _blocks()
    nothing = np.zeros_like(true)
    causes = miss_causes(true, nothing)
    assert causes["cause"].tolist() == ["absent"] * 5
    empty = miss_causes(nothing, true)
    assert empty.empty and list(empty.columns) == ["label", "cause", "area", "small"]
    with pytest.raises(ValueError, match="at least 0.5"):
        miss_causes(true, nothing, threshold=0.4)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int32, (12, 12), elements=st.integers(0, 4)),
       hnp.arrays(np.int32, (12, 12), elements=st.integers(0, 4)))
def test_miss_causes_lists_exactly_the_true_nuclei_match_nuclei_misses(true, pred):
    causes = miss_causes(true, pred)
    assert causes["label"].tolist() == match_nuclei(true, pred)[2].tolist()
    assert set(causes["cause"]) <= {"absent", "merged", "split", "outline"}
    # Every cause against its definition, from the pixel counts.
    true_area = np.bincount(true.ravel(), minlength=5)
    pred_area = np.bincount(pred.ravel(), minlength=5)
    for row in causes.itertuples(index=False):
        mine = true == row.label
        assert row.area == mine.sum()
        shared = np.bincount(pred[mine], minlength=5)
        shared[0] = 0
        host = shared.argmax()
        holds_more = 2 * shared[host] > row.area
        inside = int(np.count_nonzero(2 * shared[1:] > pred_area[1:]))
        others = [k for k in range(1, 5) if k != row.label and true_area[k]
                  and 2 * np.count_nonzero((true == k) & (pred == host)) > true_area[k]]
        expected = ("merged" if holds_more and others else "split" if not holds_more and inside >= 2
                    else "outline" if holds_more or inside >= 1 else "absent")
        assert row.cause == expected


def test_miss_causes_keeps_label_values_beyond_a_float():
    # Labels above 2**53 that a float would merge, in a table too large to count densely.
    true = np.array([[2**62 + 1, 2**62 + 3, 7, 0]], np.uint64)
    pred = np.array([[5, 5, 0, 0]], np.uint64)
    causes = miss_causes(true, pred).set_index("label")["cause"]
    assert causes.to_dict() == {7: "absent", 2**62 + 1: "merged", 2**62 + 3: "merged"}
