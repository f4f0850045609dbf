"""Merged neighbours split again by re-seeding, judged by shape (dsb.inference.split)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_discs, targets
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from dsb.core.config import Config, PostprocessConfig
from dsb.core.errors import BadDataError
from dsb.inference import split
from dsb.inference.split import dent_depth, split_merged
from dsb.inference.watershed import labels_from_probabilities

# Lone discs that set the image's median nucleus (radius 8, about 200 pixels).
LONE = ((12, 12), (12, 40), (12, 68), (12, 96), (70, 12), (70, 96))


def faint_line(prob: np.ndarray, first: np.ndarray, second: np.ndarray, value: float = 0.3) -> np.ndarray:
    """``prob`` with a border of ``value`` where the masks ``first`` and ``second`` meet: the
    network's faint contact line that the default marker rule (border < 0.4) does not see."""
    near_second = ndimage.binary_dilation(second, iterations=2)
    near_first = ndimage.binary_dilation(first, iterations=2)
    line = (first & near_second) | (second & near_first)
    prob = prob.copy()
    prob[..., 1] = np.where(line, np.maximum(prob[..., 1], value), prob[..., 1])
    return prob


def merged_pair(centres=((44, 46), (44, 60)), radius=8):
    """Truth of lone discs and two touching ones, and probabilities whose contact line is faint."""
    truth = make_discs((90, 110), LONE + tuple(centres), radius)
    a, b = truth == len(LONE) + 1, truth == len(LONE) + 2
    union = np.where(b, len(LONE) + 1, truth)  # the network sees the pair as one body ...
    return truth, faint_line(targets(union), a, b)  # ... with a faint line across


def best_iou(truth: np.ndarray, labels: np.ndarray, t: int) -> float:
    mask = truth == t
    return max(((mask & (labels == p)).sum() / (mask | (labels == p)).sum()) for p in range(1, labels.max() + 1))


def test_a_merged_pair_with_a_faint_contact_line_is_split():
    truth, prob = merged_pair()
    merged = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    assert merged.max() == len(LONE) + 1  # the default markers merge the pair
    labels = labels_from_probabilities(prob, PostprocessConfig())
    assert labels.max() == len(LONE) + 2
    assert min(best_iou(truth, labels, t) for t in range(1, truth.max() + 1)) > 0.85


def test_a_merged_triple_is_split_into_three():
    truth = make_discs((90, 110), LONE + ((40, 46), (40, 61), (53, 53)), 8)
    a, b, c = (truth == len(LONE) + i for i in (1, 2, 3))
    union = np.where(b | c, len(LONE) + 1, truth)
    prob = faint_line(faint_line(faint_line(targets(union), a, b), b, c), a, c)
    labels = labels_from_probabilities(prob, PostprocessConfig())
    assert labels.max() == len(LONE) + 3
    assert min(best_iou(truth, labels, t) for t in range(len(LONE) + 1, truth.max() + 1)) > 0.8


def test_a_convex_elongated_nucleus_with_a_line_across_stays_whole():
    # A rod 4:1 with the same faint line across its middle: convex, so one nucleus.
    rr, cc = np.indices((90, 110))
    rod = ((rr - 45) / 6.0) ** 2 + ((cc - 55) / 24.0) ** 2 <= 1
    truth = make_discs((90, 110), LONE, 8)
    truth[rod] = len(LONE) + 1
    assert dent_depth(rod) < split.DENT_FLOOR  # the staircase of its outline, no dent
    prob = faint_line(targets(truth), rod & (cc < 55), rod & (cc >= 55))
    labels = labels_from_probabilities(prob, PostprocessConfig())
    assert labels.max() == len(LONE) + 1
    assert best_iou(truth, labels, len(LONE) + 1) > 0.95


def test_a_cut_that_leaves_a_piece_under_the_floor_is_refused(monkeypatch):
    # The pair's halves are each about the median nucleus: a floor above that refuses the cut.
    _, prob = merged_pair()
    monkeypatch.setattr(split, "MIN_PIECE", 1.2)
    assert labels_from_probabilities(prob, PostprocessConfig()).max() == len(LONE) + 1
    monkeypatch.setattr(split, "MIN_PIECE", 0.8)
    assert labels_from_probabilities(prob, PostprocessConfig()).max() == len(LONE) + 2


def test_a_region_without_a_dent_deep_enough_is_not_cut(monkeypatch):
    _, prob = merged_pair()
    merged = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    depth = dent_depth(merged == np.bincount(merged.ravel())[1:].argmax() + 1)  # the largest is the pair
    assert depth >= split.DENT_FLOOR
    monkeypatch.setattr(split, "DENT_FLOOR", depth + 0.5)
    assert labels_from_probabilities(prob, PostprocessConfig()).max() == len(LONE) + 1


def test_a_cut_is_refused_when_a_piece_would_fall_under_min_size():
    # Pieces under min_size would be dropped afterwards, and the nucleus's pixels with them.
    _, prob = merged_pair()
    merged = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    assert split_merged(merged, prob, PostprocessConfig()).max() == merged.max() + 1
    np.testing.assert_array_equal(split_merged(merged, prob, PostprocessConfig(min_size=300)), merged)


def test_the_flood_of_a_cut_follows_the_config():
    truth, prob = merged_pair()
    for flood in ("probability", "distance"):
        labels = labels_from_probabilities(prob, PostprocessConfig(flood=flood))
        assert labels.max() == len(LONE) + 2
        assert min(best_iou(truth, labels, t) for t in range(1, truth.max() + 1)) > 0.85


def test_only_nuclei_larger_than_the_ratio_are_looked_at():
    _, prob = merged_pair()
    merged = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    areas = np.bincount(merged.ravel())[1:]
    ratio = areas.max() / np.median(areas)
    config = PostprocessConfig()
    assert split_merged(merged, prob, dataclasses.replace(config, split_ratio=ratio + 0.1)).max() == merged.max()
    assert split_merged(merged, prob, dataclasses.replace(config, split_ratio=ratio - 0.1)).max() == merged.max() + 1


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ratio=st.sampled_from([0.5, 1.2, 1.5]),
    border=st.sampled_from([0.3, 0.5]),
)
def test_a_split_only_cuts_nuclei_into_pieces(seed, ratio, border):
    # Whatever the probabilities: the foreground is unchanged, every output nucleus lies in
    # one input nucleus, nuclei under the ratio keep their pixels and number.
    rng = np.random.default_rng(seed)
    truth = make_discs((64, 64), rng.integers(6, 58, size=(8, 2)), int(rng.integers(4, 10)))
    prob = np.clip(targets(truth) + rng.normal(0, 0.2, truth.shape + (2,)), 0, 1).astype(np.float32)
    config = PostprocessConfig(border_threshold=border, split_ratio=ratio, min_marker_size=1)
    labels = labels_from_probabilities(prob, dataclasses.replace(config, split_ratio=0, fill_holes=False, min_size=0))
    out = split_merged(labels, prob, config)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out > 0, labels > 0)
    n = int(labels.max())
    for piece in range(1, int(out.max()) + 1):
        assert np.unique(labels[out == piece]).size == 1
    if n >= 2:
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        small = np.flatnonzero(areas <= ratio * np.median(areas)) + 1
        for label in small:
            np.testing.assert_array_equal(out == label, labels == label)


def test_off_or_too_few_nuclei_returns_the_labels():
    truth, prob = merged_pair()
    labels = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    assert split_merged(labels, prob, PostprocessConfig(split_ratio=0)) is not None
    np.testing.assert_array_equal(split_merged(labels, prob, PostprocessConfig(split_ratio=0)), labels)
    one = (labels == labels.max()).astype(np.int32)
    np.testing.assert_array_equal(split_merged(one, prob, PostprocessConfig()), one)


def test_dent_depth():
    assert dent_depth(np.zeros((5, 5), bool)) == 0.0
    assert dent_depth(np.ones((5, 7), bool)) == 0.0
    ring = np.ones((11, 11), bool)
    ring[2:9, 2:9] = False
    assert dent_depth(ring) == 4.0  # the hole's centre is 4 pixels from the ring
    notch = np.ones((10, 20), bool)
    notch[:6, 9:11] = False  # a slot 6 deep from the top edge
    assert dent_depth(notch) == 1.0  # its deepest pixel is beside the walls
    pair = make_discs((40, 60), ((20, 20), (20, 36)), 9) > 0
    assert dent_depth(pair) > split.DENT_FLOOR  # the waist between two touching discs


def test_split_ratio_is_checked_and_read_from_config_json():
    assert Config.from_dict({"postprocess": {"split_ratio": 0}}).postprocess.split_ratio == 0
    with pytest.raises(BadDataError, match="postprocess.split_ratio"):
        Config.from_dict({"postprocess": {"split_ratio": -1}}).check(path="run/config.json")


def test_nuclei_cut_off_at_the_edge_do_not_set_the_median(monkeypatch):
    # A block or chunk cuts nuclei at its margins. Were those slivers counted, the median would
    # shrink to theirs, and a nucleus with a small bud (1.3x the median of whole nuclei, so not
    # looked at) would be cut in two.
    truth = make_discs((90, 110), LONE + ((44, 50),), 9)
    bud = (make_discs((90, 110), ((44, 61),), 5) > 0) & (truth == 0)
    main = truth == len(LONE) + 1
    slivers = make_discs((90, 110), ((30, -6), (60, -6), (-6, 30), (-6, 60), (95, 40), (95, 70), (30, 115), (60, 115)), 8)
    union = np.where(bud, len(LONE) + 1, truth)
    union = np.where((slivers > 0) & (union == 0), slivers + 100, union)
    prob = faint_line(targets(union), main, bud)
    labels = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    assert np.median(np.bincount(labels.ravel())[1:]) < 100  # the slivers outnumber whole nuclei
    assert split_merged(labels, prob, PostprocessConfig()).max() == labels.max()
    monkeypatch.setattr(split, "_median_area", lambda labels, areas: float(np.median(areas)))
    assert split_merged(labels, prob, PostprocessConfig()).max() == labels.max() + 1


def test_the_split_re_seeds_with_the_markers_core_rule():
    """The re-seeding asks of its seeds what the markers ask: with a core threshold, no seed where
    the core channel is low. A fourth channel that says "no core here" keeps the merged pair whole;
    ignored (threshold 0), the pair splits as with three channels."""
    truth, prob = merged_pair()
    merged = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    four = np.concatenate([prob, np.zeros_like(prob[..., :1]), np.zeros_like(prob[..., :1])], axis=-1)
    n = int(merged.max())
    assert split_merged(merged, four, PostprocessConfig(core_threshold=0.0)).max() == n + 1
    assert split_merged(merged, four, PostprocessConfig(core_threshold=0.5)).max() == n
