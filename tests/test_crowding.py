"""Copy-paste crowding (dsb.training.crowding): copies of a crop's nuclei pasted against its nuclei."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import make_discs
from dsb.core.config import TrainConfig
from dsb.core.errors import BadDataError
from dsb.training.crowding import paste_neighbours


def _sparse():
    labels = make_discs((128, 128), ((30, 30), (90, 40), (60, 95)), radius=8)
    rng = np.random.default_rng(3)
    gray = np.where(labels > 0, 0.6 + 0.3 * rng.random(labels.shape), 0.05).astype(np.float32)
    return gray, labels


def test_copies_are_whole_nuclei_of_the_crop_pasted_against_others():
    gray, labels = _sparse()
    out_gray, out_labels = paste_neighbours(gray, labels, np.random.default_rng(0), copies=4)
    n_before, n_after = int(labels.max()), int(out_labels.max())
    assert n_after > n_before
    areas = np.bincount(out_labels.ravel())
    source_area = np.bincount(labels.ravel())[1]
    for copy in range(n_before + 1, n_after + 1):
        mask = out_labels == copy
        # The whole disc, less what a later copy may cover of it.
        assert 0.9 * source_area <= areas[copy] <= source_area
        assert ndimage.label(mask)[1] == 1
        # Its pixels are a nucleus's pixels (flipped or turned), not background.
        assert np.sort(out_gray[mask]).min() >= 0.6
        # It touches or nearly touches another nucleus: within 3 pixels of a different label.
        near = ndimage.binary_dilation(mask, iterations=3) & ~mask & (out_labels > 0) & (out_labels != copy)
        assert near.any()
    # The crop's own nuclei lose at most a tenth of their pixels.
    for own in range(1, n_before + 1):
        assert (out_labels == own).sum() >= 0.9 * (labels == own).sum()


def test_pasting_is_a_function_of_the_generator_and_leaves_its_input_alone():
    gray, labels = _sparse()
    copy_gray, copy_labels = gray.copy(), labels.copy()
    a = paste_neighbours(gray, labels, np.random.default_rng(5))
    b = paste_neighbours(gray, labels, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(gray, copy_gray) and np.array_equal(labels, copy_labels)


def test_a_crop_without_a_whole_nucleus_comes_back_unchanged():
    gray = np.zeros((32, 32), np.float32)
    labels = np.zeros((32, 32), np.int32)
    labels[:6, :6] = 1  # cut by the crop's edge: not copied
    out_gray, out_labels = paste_neighbours(gray, labels, np.random.default_rng(0), copies=3)
    assert np.array_equal(out_labels, labels) and np.array_equal(out_gray, gray)


def test_crowded_crops_have_more_contact_for_the_network_to_learn():
    pytest.importorskip("keras")
    from dsb.training.loader import augment_crop

    centres = [(r, c) for r in range(24, 256, 56) for c in range(24, 256, 56)]
    labels = make_discs((256, 256), centres, radius=9)
    image = np.where(labels > 0, 220, 20).astype(np.uint8)
    plain = crowded = 0.0
    for seed in range(12):
        kwargs = dict(crop_size=128, border_width=2, contact_width=2, flips=False, rotations=False)
        plain += augment_crop(image, labels, np.random.default_rng(seed), **kwargs)[1][..., 2].sum()
        x, y = augment_crop(image, labels, np.random.default_rng(seed), crowding=1.0, **kwargs)
        crowded += y[..., 2].sum()
        assert np.mean((x[..., 0] > 0.45) != (y[..., 0] > 0)) < 0.06  # image and targets still agree
    assert plain == 0  # the grid's discs are 38 pixels apart
    assert crowded > 0


def test_crowding_is_a_chance():
    with pytest.raises(BadDataError, match="crowding"):
        TrainConfig(crowding=1.5).check("train")
