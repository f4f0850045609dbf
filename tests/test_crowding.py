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
    from dsb.training.loader import TargetSpec, augment_crop

    centres = [(r, c) for r in range(24, 256, 56) for c in range(24, 256, 56)]
    labels = make_discs((256, 256), centres, radius=9)
    image = np.where(labels > 0, 220, 20).astype(np.uint8)
    plain = crowded = 0.0
    for seed in range(12):
        kwargs = dict(crop_size=128, targets=TargetSpec(border_width=2, contact_width=2), flips=False,
                      rotations=False)
        plain += augment_crop(image, labels, np.random.default_rng(seed), **kwargs)[1][..., 2].sum()
        x, y = augment_crop(image, labels, np.random.default_rng(seed), crowding=1.0, **kwargs)
        crowded += y[..., 2].sum()
        assert np.mean((x[..., 0] > 0.45) != (y[..., 0] > 0)) < 0.06  # image and targets still agree
    assert plain == 0  # the grid's discs are 38 pixels apart
    assert crowded > 0


def test_crowding_is_a_chance():
    with pytest.raises(BadDataError, match="crowding"):
        TrainConfig(crowding=1.5).check("train")


def _centre_distances(labels, n_before):
    """For each copy, its centre's distance to the nearest nucleus of the crop, over the two radii."""
    ids = np.arange(1, int(labels.max()) + 1)
    area = ndimage.sum_labels(np.ones_like(labels), labels, ids)
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, ids))
    radius = np.sqrt(area / np.pi)
    ratios = []
    for copy in range(n_before, len(ids)):
        d = np.hypot(*(centres[:n_before] - centres[copy]).T) / (radius[:n_before] + radius[copy])
        ratios.append(d.min())
    return np.array(ratios)


def test_gap_and_overlap_decide_how_close_a_copy_lands():
    gray, labels = _sparse()
    close, apart = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        _, near = paste_neighbours(gray, labels, rng, copies=1, gap=(0.7, 0.75), max_overlap=0.3)
        _, far = paste_neighbours(gray, labels, np.random.default_rng(seed), copies=1, gap=(1.3, 1.4))
        close.extend(_centre_distances(near, 3))
        apart.extend(_centre_distances(far, 3))
        # An overlapping copy is pasted over the nucleus it lands on, which keeps at least 70 % of
        # its pixels.
        assert (np.bincount(near.ravel(), minlength=4)[1:4] >= 0.7 * np.bincount(labels.ravel())[1:4]).all()
    assert len(close) >= 4 and len(apart) >= 4
    # (measured after the paste, which moves the covered nucleus's centre away a little)
    assert max(close) < 0.88 and min(apart) > 1.25
    # The default (slight overlap at most) cannot place a copy that deep in its neighbour.
    _, default = paste_neighbours(gray, labels, np.random.default_rng(0), copies=1, gap=(0.7, 0.75))
    assert int(default.max()) == 3


@pytest.mark.parametrize(
    "bad, where",
    [(dict(crowding_gap=(1.2, 0.9)), "crowding_gap"), (dict(crowding_gap=(0.9,)), "crowding_gap"),
     (dict(crowding_gap=(0.2, 1.0)), "crowding_gap"), (dict(crowding_overlap=0.7), "crowding_overlap"),
     (dict(crowding_overlap=-0.1), "crowding_overlap")],
)
def test_bad_crowding_placement_names_its_key(bad, where):
    with pytest.raises(BadDataError, match=f"train.{where}"):
        TrainConfig(**bad).check("train")


@pytest.mark.parametrize("bad", [dict(gap=(1.2, 0.9)), dict(gap=(0.0, 1.0)), dict(max_overlap=1.0),
                                 dict(max_overlap=-0.1)])
def test_paste_neighbours_refuses_a_bad_placement(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        paste_neighbours(*_sparse(), np.random.default_rng(0), **bad)


def test_the_loader_passes_the_placement_on():
    pytest.importorskip("keras")
    from dsb.training.loader import CropLoader, TargetSpec

    centres = [(r, c) for r in range(24, 256, 56) for c in range(24, 256, 56)]
    labels = make_discs((256, 256), centres, radius=9)
    image = np.where(labels > 0, 220, 20).astype(np.uint8)
    contact = {}
    for name, extra in (("apart", dict(crowding_gap=(1.6, 1.8))), ("touching", dict(crowding_gap=(0.95, 1.0)))):
        augment = TrainConfig(crowding=1.0, flips=False, rotations=False, scale_jitter=0.0, intensity_jitter=0.0,
                              contrast_jitter=0.0, blur_probability=0.0, noise_std=0.0, gamma_jitter=0.0, **extra)
        loader = CropLoader([image], [labels], crop_size=128, batch_size=4, steps_per_epoch=3,
                            targets=TargetSpec(border_width=2, contact_width=2), augment=augment, seed=1)
        contact[name] = sum(float(loader[i][1][..., 2].sum()) for i in range(3))
    # Copies pasted far apart can still land near one another; touching ones make contact everywhere.
    assert contact["touching"] > 3 * contact["apart"]
