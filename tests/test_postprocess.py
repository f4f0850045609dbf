"""Marker-controlled watershed on synthetic probability maps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_discs, targets
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from dsb.core.config import PostprocessConfig
from dsb.inference.watershed import (
    drop_unconfident,
    fill_label_holes,
    find_markers,
    labels_from_probabilities,
    remove_small,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def match(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """Best IoU of each true object with some predicted one."""
    return [max(iou(truth == t, pred == p) for p in range(1, pred.max() + 1)) for t in range(1, truth.max() + 1)]


def test_two_touching_discs_are_split():
    truth = make_discs((64, 64), centres=((32, 22), (32, 40)), radius=10)  # overlap: the second wins
    assert ndimage.label(truth > 0)[1] == 1  # one blob without the border channel
    labels = labels_from_probabilities(targets(truth), PostprocessConfig())
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert min(match(truth, labels)) > 0.9


@pytest.mark.parametrize("flood", ["probability", "distance"])
def test_touching_discs_split_with_either_flood(flood):
    truth = make_discs((80, 80), centres=((40, 25), (40, 43), (22, 34)), radius=10)
    labels = labels_from_probabilities(targets(truth), PostprocessConfig(flood=flood))
    assert labels.max() == 3
    assert min(match(truth, labels)) > 0.85


def test_border_ring_is_given_back():
    truth = make_discs((48, 48), centres=((24, 24),), radius=12)
    labels = labels_from_probabilities(targets(truth, border_width=3), PostprocessConfig())
    # The marker is the core (radius ~9); the flood restores the full disc.
    np.testing.assert_array_equal(labels > 0, truth > 0)


def test_single_disc_stays_one_under_noise():
    rng = np.random.default_rng(0)
    truth = make_discs((64, 64), centres=((30, 30),), radius=14)
    prob = targets(truth)
    prob[..., 0] = np.clip(prob[..., 0] * 0.8 + 0.1 + rng.normal(0, 0.05, truth.shape), 0, 1)
    prob[..., 1] = np.clip(prob[..., 1] * 0.8 + rng.normal(0, 0.05, truth.shape), 0, 1)
    labels = labels_from_probabilities(prob.astype(np.float32), PostprocessConfig())
    assert labels.max() == 1
    assert iou(labels == 1, truth == 1) > 0.9


def test_small_specks_are_dropped():
    truth = make_discs((64, 64), centres=((30, 30),), radius=10)
    prob = targets(truth)
    prob[5:7, 5:7, 0] = 1.0  # a 4-pixel speck
    prob[55:58, 50:53, 0] = 1.0  # a 9-pixel speck
    labels = labels_from_probabilities(prob, PostprocessConfig(min_size=12))
    assert labels.max() == 1
    assert not labels[5:7, 5:7].any() and not labels[55:58, 50:53].any()
    kept = labels_from_probabilities(prob, PostprocessConfig(min_size=1, min_marker_size=1))
    assert kept.max() == 3


def test_holes_are_filled():
    truth = make_discs((64, 64), centres=((32, 32),), radius=14)
    prob = targets(truth)
    yy, xx = np.indices(truth.shape)
    prob[(yy - 32) ** 2 + (xx - 32) ** 2 <= 9, 0] = 0.0  # a hole in the body
    filled = labels_from_probabilities(prob, PostprocessConfig(fill_holes=True))
    assert filled.max() == 1 and filled[32, 32] == 1
    np.testing.assert_array_equal(filled > 0, truth > 0)
    holed = labels_from_probabilities(prob, PostprocessConfig(fill_holes=False))
    assert holed[32, 32] == 0


def test_fill_label_holes_leaves_gaps_between_objects():
    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole of object 1
    labels[6:11, 2:10] = 2
    labels[2:6, 6:10] = 3
    labels[6, 5] = 0  # with (5, 5): a gap enclosed by objects 1, 2 and 3 together
    labels[5, 5] = 0
    filled = fill_label_holes(labels)
    assert filled[3, 3] == 1
    assert filled[6, 5] == 0 and filled[5, 5] == 0
    changed = filled != labels
    assert changed.sum() == 1


def test_empty_input_gives_no_labels():
    prob = np.zeros((32, 40, 2), np.float32)
    labels = labels_from_probabilities(prob, PostprocessConfig())
    assert labels.shape == (32, 40) and labels.dtype == np.int32 and not labels.any()
    one_pixel = labels_from_probabilities(np.zeros((1, 1, 2), np.float32), PostprocessConfig())
    assert one_pixel.shape == (1, 1) and not one_pixel.any()


def test_unmarked_nucleus_is_kept():
    # A small nucleus whose border channel covers it entirely has no marker.
    truth = make_discs((40, 40), centres=((10, 10), (28, 28)), radius=3)
    prob = targets(truth, border_width=4)
    assert find_markers(prob, PostprocessConfig(keep_unmarked=False))[1].max() == 0
    kept = labels_from_probabilities(prob, PostprocessConfig(min_size=5))
    assert kept.max() == 2
    dropped = labels_from_probabilities(prob, PostprocessConfig(min_size=5, keep_unmarked=False))
    assert dropped.max() == 0


def test_remove_small_renumbers_in_order():
    labels = np.array([[0, 1, 1, 2], [3, 3, 3, 0]], np.int32)
    np.testing.assert_array_equal(remove_small(labels, 3), [[0, 0, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(remove_small(labels, 2), [[0, 1, 1, 0], [2, 2, 2, 0]])


@settings(max_examples=60, deadline=None)
@given(labels=arrays(np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 6)),
       min_size=st.integers(0, 8))
def test_remove_small_keeps_the_large_objects_numbered_in_order(labels, min_size):
    """Labels with gaps and an empty image included: objects of min_size pixels or more, renumbered
    1..N in the order of their old labels."""
    values, sizes = np.unique(labels[labels > 0], return_counts=True)
    kept = values[sizes >= max(min_size, 1)]
    expected = np.zeros_like(labels)
    for new, old in enumerate(kept, start=1):
        expected[labels == old] = new
    got = remove_small(labels, min_size)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C >= 2"):
        labels_from_probabilities(np.zeros((8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="3-D"):
        labels_from_probabilities(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="floating"):
        labels_from_probabilities(np.zeros((8, 8, 2), np.uint8))


configs = st.builds(
    PostprocessConfig,
    marker_threshold=st.sampled_from([0.3, 0.5, 0.7]),
    border_threshold=st.sampled_from([0.3, 0.5]),
    mask_threshold=st.sampled_from([0.3, 0.5]),
    min_marker_size=st.integers(0, 5),
    min_size=st.integers(0, 10),
    flood=st.sampled_from(["probability", "distance"]),
    fill_holes=st.booleans(),
    keep_unmarked=st.booleans(),
    split_ratio=st.sampled_from([0.0, 1.2, 1.5]),
    min_confidence=st.sampled_from([0.0, 0.6, 0.8]),
)


@settings(max_examples=60, deadline=None)
@given(
    prob=arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(2)),
                elements=st.floats(0, 1, width=32)),
    config=configs,
)
def test_labels_are_valid_instances(prob, config):
    labels = labels_from_probabilities(prob, config)
    assert labels.dtype == np.int32 and labels.shape == prob.shape[:2]
    n = labels.max()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    assert (sizes[1:] > 0).all()  # numbered 1..N with no gaps
    assert (sizes[1:] >= config.min_size).all()
    if not config.fill_holes:
        assert not labels[prob[..., 0] <= config.mask_threshold].any()
    for i in range(1, n + 1):
        assert ndimage.label(labels == i)[1] == 1  # each nucleus is one piece
    if n:
        confidence = ndimage.mean(prob[..., 0], labels, np.arange(1, n + 1))
        assert (confidence >= config.min_confidence - 1e-9).all()


def test_keep_unmarked_reads_from_config_json():
    from dsb.core.config import Config

    assert Config.from_dict({"postprocess": {"keep_unmarked": False}}).postprocess.keep_unmarked is False


@settings(max_examples=60, deadline=None)
@given(
    prob=arrays(np.float32, st.tuples(st.integers(1, 32), st.integers(1, 32), st.just(2)),
                elements=st.floats(0, 1, width=32)),
    config=configs,
)
def test_flooding_only_split_components_equals_flooding_everything(prob, config):
    # Regression pin for the shortcut in _flood: same labels as one watershed over the image.
    # Where two fronts reach a pixel at the same height, the two watersheds may break the tie
    # differently (both are watersheds), so the body gets distinct heights; the distance
    # surface has ties by nature and is checked up to them.
    from skimage.segmentation import watershed

    from dsb.inference.watershed import _flood

    prob = prob.copy()
    ramp = np.arange(prob.shape[0] * prob.shape[1], dtype=np.float64).reshape(prob.shape[:2])
    # Eight levels 0.1125 apart, each pixel a distinct step of under 0.1 above its level.
    prob[..., 0] = (np.round(prob[..., 0] * 8) * 0.1125 + ramp * 0.1 / ramp.size).astype(np.float32)
    assert np.unique(prob[..., 0]).size == prob[..., 0].size
    mask, markers = find_markers(prob, config)
    if config.flood == "distance":
        surface = -ndimage.distance_transform_edt(mask)
    else:
        surface = -prob[..., 0]
    expected = watershed(surface, markers, mask=mask)
    got = _flood(prob, mask, markers, config.flood)
    if config.flood == "probability":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_array_equal(got > 0, expected > 0)
        np.testing.assert_array_equal(got[markers > 0], markers[markers > 0])
        assert set(np.unique(got)) == set(np.unique(expected))


def test_fill_label_holes_matches_per_object_filling():
    rng = np.random.default_rng(3)
    labels = ndimage.label(ndimage.binary_opening(rng.random((80, 80)) > 0.35))[0].astype(np.int32)
    expected = labels.copy()
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        filled = ndimage.binary_fill_holes(labels[box] == i, structure=ndimage.generate_binary_structure(2, 1))
        # Holes that touch only this object: no other label inside the filled region.
        holes, n = ndimage.label(filled & (labels[box] == 0))
        for h in range(1, n + 1):
            region = holes == h
            ring = ndimage.binary_dilation(region) & ~region
            if (labels[box][ring] == i).all():
                expected[box][region] = i
    result = fill_label_holes(labels)
    assert (result != labels).any()  # the case has holes
    np.testing.assert_array_equal(result, expected)


def _nearest_label_within(seeded: np.ndarray, mask: np.ndarray, distance: int):
    """By brute force: each uncovered mask pixel's nearest labelled pixels within ``distance`` (the
    first in reading order, and whether they all have one label), for the growth reference."""
    ys, xs = np.nonzero(seeded)
    first = np.zeros_like(seeded)
    unique = np.ones(seeded.shape, bool)
    if not ys.size:
        return first, unique
    for y, x in zip(*np.nonzero(mask & (seeded == 0))):
        squared = (ys - y) ** 2 + (xs - x) ** 2
        nearest = squared == squared.min()
        if squared.min() <= distance * distance:
            first[y, x] = seeded[ys[nearest][0], xs[nearest][0]]  # np.nonzero is in reading order
            unique[y, x] = np.unique(seeded[ys[nearest], xs[nearest]]).size == 1
    return first, unique


@settings(max_examples=80, deadline=None)
@given(
    labels=arrays(np.int32, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 4)),
    mask=st.data(),
    distance=st.integers(0, 6),
)
def test_grow_into_mask_takes_the_nearest_label_first_in_reading_order(labels, mask, distance):
    """The nearest labelled pixel within the distance, the first in reading order on a tie; and so
    skimage's expand_labels wherever the nearest pixels carry one label."""
    from skimage.segmentation import expand_labels

    from dsb.inference.watershed import grow_into_mask

    labels = np.where(labels > 2, labels - 2, 0).astype(np.int32)  # about half the pixels unlabelled
    mask = mask.draw(arrays(bool, labels.shape))
    seeded = np.where(mask, labels, 0)
    first, unique = _nearest_label_within(seeded, mask, distance)
    got = grow_into_mask(labels, mask, distance)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.where(seeded > 0, seeded, first))
    skimage = expand_labels(seeded, distance=distance) * mask
    np.testing.assert_array_equal(got[unique], skimage[unique])


@settings(max_examples=20, deadline=None)
@given(
    labels=arrays(np.int32, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 30)),
    mask=st.data(),
    distance=st.integers(9, 14),
)
def test_grow_into_mask_far_is_skimage_expand_labels_inside_the_mask(labels, mask, distance):
    """Beyond RING_DISTANCE the distance transform decides, ties included, as in skimage."""
    from skimage.segmentation import expand_labels

    from dsb.inference.watershed import RING_DISTANCE, grow_into_mask

    assert distance > RING_DISTANCE
    labels = np.where(labels > 27, labels - 27, 0).astype(np.int32)  # a few labelled pixels, far apart
    mask = mask.draw(arrays(bool, labels.shape))
    expected = expand_labels(np.where(mask, labels, 0), distance=distance) * mask
    np.testing.assert_array_equal(grow_into_mask(labels, mask, distance), expected)


def test_grow_into_mask_breaks_a_tie_towards_the_upper_label():
    from dsb.inference.watershed import grow_into_mask

    labels = np.zeros((3, 1), np.int32)
    labels[0, 0], labels[2, 0] = 5, 3
    np.testing.assert_array_equal(grow_into_mask(labels, np.ones((3, 1), bool), 1)[:, 0], [5, 5, 3])


def test_grow_into_mask_reaches_as_far_as_it_is_told_and_no_farther():
    from dsb.inference.watershed import grow_into_mask

    labels = np.zeros((1, 9), np.int32)
    labels[0, 0] = 7
    mask = np.ones((1, 9), bool)
    mask[0, 8] = False
    np.testing.assert_array_equal(grow_into_mask(labels, mask, 3)[0], [7, 7, 7, 7, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(grow_into_mask(labels, mask, 20)[0], [7] * 8 + [0])


@settings(max_examples=80, deadline=None)
@given(
    levels=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 3)),
    seeds=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 4)),
    holes=st.booleans(),
    distinct=st.booleans(),
)
def test_watershed_without_idle_seeds_equals_skimage(levels, seeds, holes, distinct):
    # Seeds with no unflooded neighbour are left out of the queue: on distinct heights the same
    # labels as skimage's watershed. On four heights (ties everywhere) the fronts may meet a pixel
    # or two apart, as two watersheds may: the same pixels flooded, seeds kept, every piece of a
    # label grown from its seeds. Seeds come in blocks (interiors to leave out) and specks.
    from skimage.segmentation import watershed

    from dsb.inference.watershed import _watershed

    h, w = min(levels.shape[0], seeds.shape[0]), min(levels.shape[1], seeds.shape[1])
    surface = levels[:h, :w].astype(np.float32)
    mask = surface < 3 if holes else np.ones((h, w), bool)
    if distinct:
        surface += np.arange(h * w, dtype=np.float32).reshape(h, w) * np.float32(0.5 / (h * w))
    markers = np.kron(seeds, np.ones((3, 3), np.uint8))[:h, :w].astype(np.int32)
    markers[::5, ::7] = seeds[:h, :w][::5, ::7]
    markers[~mask] = 0
    got, expected = _watershed(surface, markers, mask), watershed(surface, markers, mask=mask)
    if distinct:
        np.testing.assert_array_equal(got, expected)
        return
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_array_equal(got[markers > 0], markers[markers > 0])
    for i in np.unique(got[got > 0]):  # every piece of a label grew from a seed of it
        pieces, n = ndimage.label(got == i)
        assert set(np.unique(pieces[markers == i])) == set(range(1, n + 1))


def _overlapping_pair_with_cores():
    """Two discs 0.8 diameters apart whose border and contact channels show no line between them,
    and a core channel with one seed each: what the core is for."""
    from dsb.training.loader import core_target

    truth = make_discs((64, 80), centres=((32, 30), (32, 46)), radius=10)
    prob = targets(np.where(truth > 0, 1, 0)).astype(np.float32)  # the pair as one body, border outside only
    contact = np.zeros(truth.shape + (1,), np.float32)
    core = core_target(truth)[..., None].astype(np.float32)
    return truth, np.concatenate([prob, contact, core], axis=-1)


def test_the_core_channel_splits_what_body_and_border_merge():
    truth, prob = _overlapping_pair_with_cores()
    ignored = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0))
    assert ignored.max() == 1  # core_threshold 0: the marker rule of a three-channel network
    labels = labels_from_probabilities(prob, PostprocessConfig(split_ratio=0, core_threshold=0.5))
    assert labels.max() == 2
    assert min(match(truth, labels)) > 0.8
    # The fourth channel is read only when it is there.
    assert labels_from_probabilities(prob[..., :3], PostprocessConfig(split_ratio=0, core_threshold=0.5)).max() == 1


# ---------------------------------------------------------------- step 7: unsure nuclei dropped


def test_an_unsure_nucleus_is_dropped_and_the_rest_renumbered():
    truth = make_discs((48, 96), centres=((24, 14), (24, 48), (24, 82)), radius=9)
    prob = targets(truth)
    prob[..., 0] *= np.choose(truth, [0.0, 0.95, 0.7, 0.9]).astype(np.float32)  # the middle one is unsure
    kept = labels_from_probabilities(prob, PostprocessConfig(min_confidence=0.8))
    assert kept.max() == 2
    # The sure ones whole, numbered 1..N in their order; nothing where the unsure one was.
    assert np.array_equal(kept == 1, truth == 1) and np.array_equal(kept == 2, truth == 3)
    everything = labels_from_probabilities(prob, PostprocessConfig())  # min_confidence 0: all three
    assert everything.max() == 3
    unfinished = labels_from_probabilities(prob, PostprocessConfig(min_confidence=0.8), finish=False)
    np.testing.assert_array_equal(unfinished, everything)  # step 7 left to a later finish_nuclei


def test_confidence_is_the_mean_over_the_whole_nucleus_not_its_peak():
    # A nucleus sure at its centre but faint over most of itself is unsure; one evenly sure is kept.
    labels = make_discs((40, 80), centres=((20, 20), (20, 60)), radius=10)
    body = np.where(labels > 0, 0.75, 0.0).astype(np.float32)
    body[18:23, 18:23] = 1.0  # a sure centre in the first
    body[labels == 2] = 0.85
    prob = np.stack([body, np.zeros_like(body)], axis=-1)
    kept = drop_unconfident(labels, prob, 0.8)
    assert np.array_equal(np.unique(kept), [0, 1]) and np.array_equal(kept > 0, labels == 2)
    assert drop_unconfident(labels, prob, 0.0) is labels
    np.testing.assert_array_equal(drop_unconfident(labels, prob, 0.7), labels)  # both kept, numbers unchanged


def test_drop_unconfident_needs_labels_on_the_grid_of_the_probabilities():
    prob = np.zeros((10, 10, 2), np.float32)
    with pytest.raises(ValueError, match="share a grid"):
        drop_unconfident(np.zeros((10, 12), np.int32), prob, 0.5)


def test_min_confidence_is_checked_where_the_config_is_read():
    from dsb.core.config import Config
    from dsb.core.errors import BadDataError

    assert Config.from_dict({"postprocess": {"min_confidence": 0.8}}).postprocess.min_confidence == 0.8
    assert Config.from_dict({}).postprocess.min_confidence == 0.0  # an older run folder keeps every nucleus
    for bad in (1.5, -0.1, float("nan"), "0.8"):
        with pytest.raises(BadDataError, match=r"postprocess\.min_confidence"):
            Config.from_dict({"postprocess": {"min_confidence": bad}})


def test_drop_unconfident_refuses_a_bar_outside_0_to_1_and_closes_gaps_in_the_numbering():
    labels = np.array([[1, 1, 0, 5, 5, 0, 9]])
    prob = np.stack([np.where(labels > 0, 0.9, 0.0), np.zeros(labels.shape)], axis=-1).astype(np.float32)
    for bad in (float("nan"), -0.5, 1.5):
        with pytest.raises(ValueError, match="min_confidence"):
            drop_unconfident(labels, prob, bad)
    # Nothing dropped, but the result is numbered 1..N as the step promises.
    assert drop_unconfident(labels, prob, 0.8).tolist() == [[1, 1, 0, 2, 2, 0, 3]]
