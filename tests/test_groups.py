"""Imaging-experiment groups (dsb.training.groups) and the group holdout of the validation split."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_discs

from dsb.inference.scale import median_diameter, nucleus_diameters
from dsb.training.groups import FEATURES, assign_groups, held_out_groups, image_features

REPO = Path(__file__).resolve().parent.parent


def _features(n, rng, *, shape=(256, 256), diameter=14.0):
    """n feature rows around one experiment: a size, a nucleus diameter, a little noise."""
    f = rng.normal(0, 0.02, (n, len(FEATURES)))
    f[:, 0], f[:, 1] = np.log(shape[0]), np.log(shape[1])
    f[:, FEATURES.index("log_diameter")] = np.log(diameter) + rng.normal(0, 0.05, n)
    return f


def _synthetic(rng):
    """Three fluorescence experiments, two stained, one brightfield: ids, types, features."""
    blocks = [
        ("fluorescence", 20, (256, 256), 12.0),
        ("fluorescence", 12, (360, 360), 45.0),
        ("fluorescence", 10, (520, 696), 28.0),
        ("stained", 10, (256, 320), 18.0),
        ("stained", 8, (256, 320), 35.0),
        ("brightfield", 5, (1024, 1024), 16.0),
    ]
    ids, types, feats = [], [], []
    for b, (kind, n, shape, diameter) in enumerate(blocks):
        ids += [f"{b}_{k:02d}" for k in range(n)]
        types += [kind] * n
        feats.append(_features(n, rng, shape=shape, diameter=diameter))
    return ids, types, np.concatenate(feats)


def test_diameters_are_equivalent_circle_diameters():
    labels = make_discs((64, 64), ((16, 16), (44, 44)), 8)
    areas = np.bincount(labels.ravel())[1:]
    assert nucleus_diameters(labels) == pytest.approx(np.sqrt(4 * areas / np.pi))
    assert median_diameter(labels) == pytest.approx(np.sqrt(4 * areas.mean() / np.pi))  # two equal discs
    assert np.isnan(median_diameter(np.zeros((5, 5), int)))


def test_image_features_see_size_colour_and_nuclei():
    labels = make_discs((48, 64), ((12, 12), (34, 50)), 7)
    grey = np.where(labels > 0, 200, 10).astype(np.uint8)
    f = dict(zip(FEATURES, image_features(grey, labels)))
    assert np.exp(f["log_height"]) == pytest.approx(48) and np.exp(f["log_width"]) == pytest.approx(64)
    assert f["red"] == f["green"] == f["blue"] and f["colourfulness"] == 0
    assert np.exp(f["log_diameter"]) == pytest.approx(median_diameter(labels))
    assert f["eccentricity"] < 0.3  # discs
    assert f["coverage"] == pytest.approx(np.count_nonzero(labels) / labels.size)
    with pytest.raises(ValueError, match="labels"):
        image_features(grey, labels[:10])


def test_elongated_nuclei_are_eccentric():
    labels = np.zeros((40, 40), int)
    labels[10:14, 5:35] = 1
    assert dict(zip(FEATURES, image_features(labels.astype(np.uint8), labels)))["eccentricity"] > 0.95


def test_groups_are_deterministic_pure_and_find_the_experiments():
    ids, types, feats = _synthetic(np.random.default_rng(0))
    groups = assign_groups(ids, types, feats, n_groups=6)
    assert len(set(groups)) == 6
    for g in set(groups):  # never mixes types, and here finds each experiment whole
        members = [i for i, gg in zip(ids, groups) if gg == g]
        assert len({t for t, gg in zip(types, groups) if gg == g}) == 1
        assert len({i.split("_")[0] for i in members}) == 1
    assert "fluorescence-360x360" in groups and "stained-256x320-large" in groups
    # the same result in any order of the inputs
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = assign_groups([ids[j] for j in order], [types[j] for j in order], feats[order], n_groups=6)
    assert dict(zip([ids[j] for j in order], shuffled)) == dict(zip(ids, groups))
    assert assign_groups(ids, types, feats, n_groups=6) == groups


def test_every_type_with_enough_images_gets_two_groups():
    ids, types, feats = _synthetic(np.random.default_rng(2))
    groups = assign_groups(ids, types, feats, n_groups=3)  # fewer asked than types need: still 2 each
    per_type = {t: {g for g, tt in zip(groups, types) if tt == t} for t in set(types)}
    assert {t: len(g) for t, g in per_type.items()} == {"fluorescence": 2, "stained": 2, "brightfield": 1}
    assert min(Counter(groups).values()) >= 4  # min_size


def test_group_holdout_holds_out_whole_groups_and_keeps_training_groups():
    ids, types, feats = _synthetic(np.random.default_rng(3))
    groups = assign_groups(ids, types, feats, n_groups=6)
    from dsb.training.loader import split_ids

    seen = set()
    for seed in range(10):
        train, val = split_ids(ids, types, fraction=0.2, seed=seed, groups=groups)
        assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
        g_of = dict(zip(ids, groups))
        val_groups = {g_of[i] for i in val}
        # whole groups only, but for brightfield's single group, which is split at random
        assert val_groups & {g_of[i] for i in train} == {"brightfield"}
        for kind in ("fluorescence", "stained"):  # both kept some training group
            assert any(t == kind for i, t in zip(ids, types) if i in set(train))
            assert any(t == kind for i, t in zip(ids, types) if i in set(val))
        seen.add(frozenset(val_groups))
        # brightfield has one group: a random share of it, round(0.2 * 5) = 1 image
        assert sum(1 for i, t in zip(ids, types) if t == "brightfield" and i in set(val)) == 1
        assert held_out_groups(groups, types, fraction=0.2, seed=seed) == sorted(
            g for g in val_groups if not g.startswith("brightfield"))
    assert len(seen) > 1  # the seed matters
    assert split_ids(ids, types, fraction=0.0, seed=1, groups=groups) == (ids, [])


def test_group_holdout_is_close_to_the_fraction():
    sizes = {"f-a": 50, "f-b": 20, "f-c": 15, "f-d": 15}
    groups = [g for g, n in sizes.items() for _ in range(n)]
    types = ["fluorescence"] * len(groups)
    for seed in range(20):
        held = held_out_groups(groups, types, fraction=0.15, seed=seed)
        assert held in (["f-c"], ["f-d"], ["f-b"])  # 15 or 20 images of 100; never f-a (50)


def test_group_holdout_refuses_a_group_of_two_types():
    with pytest.raises(ValueError, match="two types"):
        held_out_groups(["g", "g"], ["stained", "brightfield"], fraction=0.2, seed=0)


def test_random_split_unchanged_without_groups():
    from dsb.training.loader import split_ids

    ids = [f"i{k:02d}" for k in range(30)]
    types = ["fluorescence"] * 20 + ["stained"] * 10
    train, val = split_ids(ids, types, fraction=0.2, seed=7)
    # pinned: the old behaviour, seeded per type
    expected = set()
    for t, kind in enumerate(sorted(set(types))):
        group = sorted(i for i, k in zip(ids, types) if k == kind)
        rng = np.random.default_rng([7, t])
        expected.update(group[j] for j in rng.permutation(len(group))[: round(0.2 * len(group))])
    assert set(val) == expected and len(val) == 6


def _real_data(request, tmp_path) -> Path:
    """A data folder with stage1_train: the fetched one, or the shared zip's (its cache kept in ``tmp_path``)."""
    data = Path(os.environ.get("DSB_DATA", REPO / "data"))
    if (data / "stage1_train").is_dir():
        return data
    unzipped = request.getfixturevalue("train_dir")  # skips when the competition files are absent
    stage = unzipped / "stage1_train" if (unzipped / "stage1_train").is_dir() else unzipped
    (tmp_path / "stage1_train").symlink_to(stage, target_is_directory=True)
    return tmp_path


def test_real_stage1_train_groups(request, tmp_path):
    from dsb.training.cache import load_groups, load_prepared
    from dsb.training.loader import split_ids

    data = _real_data(request, tmp_path)
    groups, diameters = load_groups(data)
    prepared = load_prepared(data)
    assert prepared.groups == [groups[i] for i in prepared.ids]
    counts = Counter(groups.values())
    assert 7 <= len(counts) <= 9 and min(counts.values()) >= 4
    for g in counts:
        kinds = {t for t, gg in zip(prepared.types, prepared.groups) if gg == g}
        assert len(kinds) == 1 and g.startswith(kinds.pop())
    big = {g: np.median([d for d, gg in zip(prepared.diameters, prepared.groups) if gg == g]) for g in counts}
    assert max(big.values()) > 40  # the 360x360 experiment of large nuclei stands alone
    train, val = split_ids(prepared.ids, prepared.types, fraction=0.15, seed=42, groups=prepared.groups)
    assert 0.1 < len(val) / len(prepared.ids) < 0.3
    for kind in ("fluorescence", "stained", "brightfield"):
        assert {g for g, t, i in zip(prepared.groups, prepared.types, prepared.ids) if t == kind and i in set(val)}
        assert {g for g, t, i in zip(prepared.groups, prepared.types, prepared.ids) if t == kind and i in set(train)}
