"""The competition metric: mean average precision over IoU thresholds.

For each image and each threshold t in 0.50, 0.55, ..., 0.95, a predicted
nucleus is a true positive when its IoU with a true nucleus is greater than t
(strictly); precision(t) = TP / (TP + FP + FN); the image scores the mean over
t, and a data set the mean over the images of the truth.

As in StarDist's ``matching``, all overlaps come from one contingency table of
(true label, predicted label) pixel counts, built with a single
:func:`numpy.bincount`. Since t >= 0.5, a nucleus can have an IoU above t with
at most one partner, so TP(t) is just the number of pairs above t: no
assignment problem to solve.

Conventions for the corner cases: an image with no true and no predicted
nucleus scores 1; an image of the truth with no row at all in a submission
scores 0 (and is counted).

Arrays only: reading a submission or the truth from disk is
:mod:`dsb.kaggle.submission`'s (:func:`dsb.kaggle.submission.load_truth`,
:func:`dsb.kaggle.submission.score_submission`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dsb.core.errors import BadDataError
from dsb.core.labels import overlapping_pairs, renumber
from dsb.core.validate import check_labels, check_same_shape

__all__ = [
    "THRESHOLDS",
    "ImageScore",
    "label_overlap",
    "iou_matrix",
    "image_score",
    "score_labels",
    "match_nuclei",
    "MISS_CAUSES",
    "SMALL_SHARE",
    "miss_causes",
]

# k / 100 is the double nearest to 0.55 etc., exactly like the literal, so an IoU
# computed as 11/20 equals the threshold and is (correctly) not a hit.
THRESHOLDS = np.arange(50, 100, 5) / 100
_T50, _T75 = 0, 5  # indices of 0.50 and 0.75 in THRESHOLDS

COLUMNS = ["ImageId", "score", "tp_50", "fp_50", "fn_50", "tp_75", "fp_75", "fn_75", "n_true", "n_pred"]


@dataclass(frozen=True)
class ImageScore:
    """The metric on one image.

    Attributes
    ----------
    score : float
        Mean of ``precision`` over :data:`THRESHOLDS`.
    precision : tuple of float
        TP / (TP + FP + FN) at each threshold.
    tp, fp, fn : tuple of int
        Counts at each threshold.
    n_true, n_pred : int
        Objects in the truth and in the prediction.
    """

    score: float
    precision: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_true: int
    n_pred: int


def _flat_pair(true, pred) -> tuple[np.ndarray, np.ndarray]:
    """Both label images checked and flattened in one common pixel order.

    The order is irrelevant to counting, so Fortran-ordered images (as painted
    from run-length encodings) are flattened as views, not copied.
    """
    true = check_labels("true", true)
    pred = check_labels("pred", pred)
    check_same_shape("pred", pred, "true", true)
    order = "F" if true.flags.f_contiguous and pred.flags.f_contiguous else "C"
    return true.ravel(order), pred.ravel(order)


def _prepare(true, pred):
    t, p = _flat_pair(true, pred)
    t, n_true = renumber(t.ravel(), dtype=np.intp)
    p, n_pred = renumber(p.ravel(), dtype=np.intp)
    return t, n_true, p, n_pred


def label_overlap(true, pred) -> np.ndarray:
    """Contingency table of two label images.

    Parameters
    ----------
    true, pred : (H, W) array_like of int
        0 is background; other values need not be consecutive.

    Returns
    -------
    (n_true + 1, n_pred + 1) ndarray of int64
        Entry ``[i, j]`` counts pixels of true object ``i`` and predicted object
        ``j``, objects numbered 1.. in increasing label order; row and column 0
        are the background.

    Examples
    --------
    >>> label_overlap([[1, 1, 0]], [[0, 2, 2]]).tolist()
    [[0, 1], [1, 1]]
    """
    t, n_true, p, n_pred = _prepare(true, pred)
    size = (n_true + 1) * (n_pred + 1)
    return np.bincount(t * (n_pred + 1) + p, minlength=size).reshape(n_true + 1, n_pred + 1)


def iou_matrix(true, pred) -> np.ndarray:
    """Intersection over union of every (true, predicted) pair of objects.

    Parameters
    ----------
    true, pred : (H, W) array_like of int

    Returns
    -------
    (n_true, n_pred) ndarray of float64
        Objects in increasing label order, as in :func:`label_overlap`.
    """
    table = label_overlap(true, pred)
    inter = table[1:, 1:]
    area_true = table.sum(axis=1)[1:, None]
    area_pred = table.sum(axis=0)[None, 1:]
    return inter / (area_true + area_pred - inter)


def _overlaps(true, pred):
    """Every pair of objects that share a pixel, with their shared pixels, and each object's area
    (:func:`dsb.core.labels.overlapping_pairs`, true objects first)."""
    return overlapping_pairs(*_flat_pair(true, pred))


def _pair_ious(true, pred) -> tuple[np.ndarray, int, int]:
    """IoU of every pair of objects that share a pixel (:func:`_overlaps`), and the object counts."""
    ti, pi, inter, area_true, area_pred, _, _ = _overlaps(true, pred)
    n_true = int(np.count_nonzero(area_true[1:]))
    n_pred = int(np.count_nonzero(area_pred[1:]))
    return inter / (area_true[ti] + area_pred[pi] - inter), n_true, n_pred


def _make_score(tp: np.ndarray, n_true: int, n_pred: int) -> ImageScore:
    fp = n_pred - tp
    fn = n_true - tp
    denominator = tp + fp + fn
    # Nothing to find and nothing found is a perfect answer.
    precision = np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)
    return ImageScore(
        score=float(precision.mean()),
        precision=tuple(precision.tolist()),
        tp=tuple(tp.tolist()),
        fp=tuple(fp.tolist()),
        fn=tuple(fn.tolist()),
        n_true=n_true,
        n_pred=n_pred,
    )


def image_score(true, pred) -> ImageScore:
    """Score one predicted label image against the true one.

    Parameters
    ----------
    true, pred : (H, W) array_like of int
        Instance labels, 0 background; values need not be consecutive.

    Returns
    -------
    ImageScore

    Examples
    --------
    >>> true = [[1, 1, 0, 2]]
    >>> image_score(true, true).score
    1.0
    >>> image_score(true, [[1, 1, 1, 0]]).tp[0]  # IoU 2/3 with object 1
    1
    """
    ious, n_true, n_pred = _pair_ious(true, pred)
    tp = np.count_nonzero(ious[:, None] > THRESHOLDS[None, :], axis=0)
    return _make_score(tp, n_true, n_pred)


def _missing(true) -> ImageScore:
    _, n_true = renumber(check_labels("true", true).ravel(), dtype=np.intp)
    result = _make_score(np.zeros(THRESHOLDS.size, np.int64), n_true, 0)
    # No rows at all is not an answer, even for an image without nuclei.
    return ImageScore(0.0, (0.0,) * THRESHOLDS.size, result.tp, result.fp, result.fn, n_true, 0)


def score_labels(
    truth: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    *,
    image_types: Mapping[str, str] | None = None,
) -> tuple[float, pd.DataFrame]:
    """Score predicted label images against the truth.

    Parameters
    ----------
    truth : mapping of str to (H, W) ndarray of int
        ``{ImageId: labels}``; every image here is scored.
    pred : mapping of str to (H, W) ndarray of int
        ``{ImageId: labels}``; an image of ``truth`` missing here scores 0,
        images not in ``truth`` are ignored.
    image_types : mapping of str to str, optional
        ``{ImageId: type}``; adds a ``type`` column (missing where unknown).

    Returns
    -------
    score : float
        Mean of the per-image scores.
    table : pandas.DataFrame
        One row per image of ``truth``, in its order, with columns ``ImageId``,
        ``score``, ``tp_50``, ``fp_50``, ``fn_50``, ``tp_75``, ``fp_75``,
        ``fn_75``, ``n_true``, ``n_pred`` and ``type`` when ``image_types`` is
        given. A missing image shows ``n_pred`` 0 and score 0.

    Raises
    ------
    BadDataError
        When ``truth`` is empty or a prediction's shape differs from its truth.
    """
    if not truth:
        raise BadDataError("the truth holds no images")
    records = []
    for image_id, true in truth.items():
        if image_id in pred:
            true_shape, pred_shape = np.shape(true), np.shape(pred[image_id])
            if true_shape != pred_shape:
                raise BadDataError(
                    f"predicted labels are {pred_shape}, the truth is {true_shape}", where=f"ImageId {image_id!r}"
                )
            result = image_score(true, pred[image_id])
        else:
            result = _missing(true)
        records.append(
            (
                image_id,
                result.score,
                result.tp[_T50],
                result.fp[_T50],
                result.fn[_T50],
                result.tp[_T75],
                result.fp[_T75],
                result.fn[_T75],
                result.n_true,
                result.n_pred,
            )
        )
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    if image_types is not None:
        table["type"] = [image_types.get(i) for i in table["ImageId"].tolist()]
    return float(table["score"].mean()), table


def match_nuclei(true_labels, pred_labels, *, threshold: float = 0.5):
    """Split nuclei into matched predictions, false positives and missed true nuclei.

    A predicted nucleus is a true positive when its IoU with a true nucleus is
    greater than ``threshold``; at 0.5 or above such a match is unique.

    Parameters
    ----------
    true_labels, pred_labels : (H, W) array_like of int
        Instance labels, 0 for background.
    threshold : float
        IoU a match needs, at least 0.5.

    Returns
    -------
    matched : ndarray of int
        Predicted labels that are true positives.
    false_positives : ndarray of int
        Predicted labels with no match.
    missed : ndarray of int
        True labels with no match.

    Examples
    --------
    >>> matched, false_positives, missed = match_nuclei([[1, 1, 0, 2]], [[3, 3, 3, 0]])
    >>> matched.tolist(), false_positives.tolist(), missed.tolist()
    ([3], [], [2])
    """
    if threshold < 0.5:
        raise ValueError(f"`threshold` ({threshold}) must be at least 0.5 (where matches are unique)")
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    iou = iou_matrix(true_labels, pred_labels)  # checks the shapes; objects in increasing label order
    true_ids = np.unique(true_labels[true_labels > 0])
    pred_ids = np.unique(pred_labels[pred_labels > 0])
    hit = iou > threshold
    pred_hit = hit.any(axis=0)
    true_hit = hit.any(axis=1)
    return pred_ids[pred_hit], pred_ids[~pred_hit], true_ids[~true_hit]


#: Why a true nucleus was missed (:func:`miss_causes`).
MISS_CAUSES = ("absent", "merged", "split", "outline")

#: A missed true nucleus is called small under this share of the median area of its image's true
#: nuclei: micronuclei, lobes and slivers that a prediction at the typical nucleus's scale barely sees.
SMALL_SHARE = 0.25


def miss_causes(true_labels, pred_labels, *, threshold: float = 0.5) -> pd.DataFrame:
    """Each true nucleus no prediction matches, and why.

    A true nucleus is missed when no predicted one has an IoU above ``threshold`` with it. Its
    cause is the first of these that holds:

    - ``merged``: one predicted nucleus holds over half of it and over half of another true
      nucleus: it was joined to a neighbour (crowding);
    - ``split``: no predicted nucleus holds over half of it, and two or more lie mostly inside it:
      it was cut into pieces;
    - ``outline``: one predicted nucleus holds over half of it alone, or lies mostly inside it:
      it was found, but the outlines differ too much (the prediction too large or too small,
      or the truth drawn wider or tighter than the prediction);
    - ``absent``: nothing of the above: no predicted nucleus of its own, only background or
      the fringes of its neighbours' (a faint or tiny nucleus the prediction did not see).

    Parameters
    ----------
    true_labels, pred_labels : (H, W) array_like of int
        Instance labels, 0 background; values need not be consecutive.
    threshold : float
        IoU a match needs, at least 0.5 (as :func:`match_nuclei`).

    Returns
    -------
    pandas.DataFrame
        One row per missed true nucleus, in increasing label order: ``label``, ``cause``,
        ``area`` (pixels) and ``small`` (under :data:`SMALL_SHARE` of the image's median true
        nucleus area).

    Examples
    --------
    >>> true = [[1, 1, 0, 2, 2, 0, 3, 3, 3, 3]]
    >>> pred = [[5, 5, 5, 5, 5, 0, 6, 6, 7, 7]]
    >>> causes = miss_causes(true, pred)
    >>> causes["label"].tolist(), causes["cause"].tolist()
    ([1, 2, 3], ['merged', 'merged', 'split'])
    """
    if not threshold >= 0.5:
        raise ValueError(f"`threshold` ({threshold}) must be at least 0.5 (where matches are unique)")
    # From the pairs that share pixels, not a (true x predicted) table: an image of thousands of
    # nuclei on both sides costs memory in its pairs.
    ti, pi, inter, area_true, area_pred, label_of, _ = _overlaps(true_labels, pred_labels)
    present = np.flatnonzero(area_true)
    present = present[present > 0]
    columns = ["label", "cause", "area", "small"]
    if not present.size:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(columns, ("int64", "object", "int64", "bool"))})
    n = area_true.size
    iou = inter / (area_true[ti] + area_pred[pi] - inter)
    matched = np.zeros(n, bool)
    matched[ti[iou > threshold]] = True
    # Each true nucleus's largest overlap: pairs sorted by nucleus, then overlap, the last of each nucleus.
    order = np.lexsort((inter, ti))
    last = order[np.flatnonzero(np.r_[ti[order][1:] != ti[order][:-1], True])] if ti.size else order
    best = np.zeros(n, np.intp)
    biggest = np.zeros(n, np.int64)
    best[ti[last]] = pi[last]
    biggest[ti[last]] = inter[last]
    # How many true nuclei each predicted one holds over half of; how many predicted ones lie mostly in each true one.
    holds = np.bincount(pi[2 * inter > area_true[ti]], minlength=area_pred.size)
    pieces = np.bincount(ti[2 * inter > area_pred[pi]], minlength=n)
    half = 2 * biggest > area_true
    joined = (biggest > 0) & (holds[best] >= 2)
    cause = np.select(
        [half & joined, ~half & (pieces >= 2), half | (pieces >= 1)],
        ["merged", "split", "outline"],
        default="absent",
    )
    small = area_true < SMALL_SHARE * np.median(area_true[present])
    missed = present[~matched[present]]
    return pd.DataFrame({
        "label": label_of[missed].astype(np.int64),
        "cause": cause[missed].astype(object),
        "area": area_true[missed].astype(np.int64),
        "small": small[missed],
    })
