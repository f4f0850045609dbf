"""Targets, the stratified split, augmented crops and the validation crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("keras")

from conftest import make_discs  # noqa: E402

from dsb.core.config import TrainConfig
from dsb.core.errors import BadDataError
from dsb.training.loader import (
    CropLoader,
    TargetSpec,
    ValidationLoader,
    augment_crop,
    core_target,
    make_targets,
    split_ids,
)

TOUCHING = ((20, 20), (20, 33), (44, 40))  # discs 1 and 2 touch (radius 8), 3 stands alone


def _images(n=6, seed=0):
    """Synthetic pairs of varied sizes; the image is bright exactly on the nuclei."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        shape = [(64, 80), (40, 48), (100, 70)][i % 3]
        centres = rng.integers(8, np.array(shape) - 8, size=(5, 2))
        lab = make_discs(shape, centres, radius=6)
        labels.append(lab)
        images.append(np.where(lab > 0, 200, 30).astype(np.uint8))
    return images, labels


def test_targets_body_is_the_foreground_and_border_splits_touching_nuclei():
    labels = make_discs((64, 64), TOUCHING, radius=8)
    targets = make_targets(labels, border_width=2)
    assert targets.shape == (64, 64, 2) and targets.dtype == np.float32
    body, border = targets[..., 0] > 0, targets[..., 1] > 0
    np.testing.assert_array_equal(body, labels > 0)
    assert not (border & ~body).any()
    _, n_body = ndimage.label(body)
    _, n_cores = ndimage.label(body & ~border)
    assert (n_body, n_cores) == (2, 3)  # touching pair is one blob; the cores are three


@pytest.mark.parametrize("width", [1, 2, 3])
def test_border_is_the_inner_ring_of_the_given_width(width):
    labels = make_discs((64, 64), TOUCHING, radius=8)
    border = make_targets(labels, border_width=width)[..., 1] > 0
    # Distance of each nucleus pixel to the nearest pixel of any other label.
    expected = np.zeros_like(border)
    for value in range(1, 4):
        inside = labels == value
        expected |= inside & (ndimage.distance_transform_edt(inside) <= width)
    np.testing.assert_array_equal(border, expected)


def test_border_ignores_the_image_edge_and_can_be_off():
    labels = np.zeros((10, 10), np.int32)
    labels[:5, :5] = 1  # touches the top and left edges
    border = make_targets(labels, border_width=1)[..., 1]
    assert border[0, :4].sum() == 0 and border[:4, 0].sum() == 0
    assert border[4, :5].all() and border[:5, 4].all()
    assert make_targets(labels, border_width=0)[..., 1].sum() == 0


def test_targets_reject_wrong_input():
    with pytest.raises(TypeError, match=r"`labels` \(shape \(4, 4, 1\)\) must be 2-D"):
        make_targets(np.zeros((4, 4, 1), np.int32), border_width=1)
    with pytest.raises(TypeError, match="integers"):
        make_targets(np.zeros((4, 4), np.float32), border_width=1)


def test_split_is_stratified_reproducible_and_order_free():
    ids = [f"id{i:03d}" for i in range(50)]
    types = ["fluorescence"] * 30 + ["brightfield"] * 10 + ["stained"] * 10
    train, val = split_ids(ids, types, fraction=0.2, seed=7)
    assert sorted(train + val) == ids and not set(train) & set(val)
    by_type = {t: sum(types[ids.index(i)] == t for i in val) for t in set(types)}
    assert by_type == {"fluorescence": 6, "brightfield": 2, "stained": 2}
    assert split_ids(ids, types, fraction=0.2, seed=7) == (train, val)
    _, rev_val = split_ids(ids[::-1], types[::-1], fraction=0.2, seed=7)
    assert set(rev_val) == set(val)
    assert set(split_ids(ids, types, fraction=0.2, seed=8)[1]) != set(val)
    assert split_ids(ids, types, fraction=0.0, seed=7) == (ids, [])
    with pytest.raises(ValueError, match="fraction"):
        split_ids(ids, types, fraction=1.0, seed=7)


def test_crops_keep_image_and_targets_aligned_under_every_augmentation():
    images, labels = _images()
    config = TrainConfig(scale_jitter=0.3, intensity_jitter=0.0, contrast_jitter=0.0)
    for i in range(30):
        rng = np.random.default_rng(i)
        k = i % len(images)
        x, y = augment_crop(images[k], labels[k], rng, crop_size=32, targets=TargetSpec(border_width=1), flips=True,
                            rotations=True, scale_jitter=config.scale_jitter)
        assert x.shape == (32, 32, 1) and y.shape == (32, 32, 2)
        bright = x[..., 0] > 0.45
        # Linear vs nearest resampling may disagree on a rim of pixels only.
        assert np.mean(bright != (y[..., 0] > 0)) < 0.06


def test_zoom_octaves_draw_nucleus_sizes_log_uniformly_over_the_octaves():
    # A grid of discs of radius 10: the median area of the whole discs in a crop follows the zoom squared.
    centres = [(r, c) for r in range(32, 1024, 64) for c in range(32, 1024, 64)]
    labels = make_discs((1024, 1024), centres, radius=10)
    image = np.where(labels > 0, 250, 10).astype(np.uint8)
    log2 = []
    for i in range(120):
        _, y = augment_crop(image, labels, np.random.default_rng(i), crop_size=256, targets=TargetSpec(border_width=1),
                            flips=False, rotations=False, zoom_octaves=1.0)
        parts, n = ndimage.label(y[..., 0] > 0)
        edge = np.unique(np.r_[parts[0], parts[-1], parts[:, 0], parts[:, -1]])
        areas = np.bincount(parts.ravel())[1:][~np.isin(np.arange(1, n + 1), edge)]
        log2.append(0.5 * np.log2(np.median(areas) / (np.pi * 10.5**2)))
    log2 = np.array(log2)
    assert -1.1 < log2.min() < -0.8 and 0.8 < log2.max() < 1.1  # 0.5x to 2x ...
    assert abs(np.median(log2)) < 0.2  # ... centred on the canonical size
    assert 0.35 < np.mean(np.abs(log2) > 0.5) < 0.65  # ... and log-uniform: half beyond 2 ** +-0.5


def test_zoom_octaves_are_checked():
    with pytest.raises(BadDataError, match="zoom_octaves"):
        TrainConfig(zoom_octaves=-1).check("train")
    with pytest.raises(BadDataError, match="scale_jitter"):
        TrainConfig(scale_jitter=1.0).check("train")


def test_small_images_are_padded_by_reflection():
    labels = make_discs((20, 24), ((6, 6),), radius=4)
    image = np.where(labels > 0, 250, 10).astype(np.uint8)
    x, y = augment_crop(image, labels, np.random.default_rng(0), crop_size=48, targets=TargetSpec(border_width=1),
                        flips=False, rotations=False)
    assert x.shape == (48, 48, 1)
    # Mirrored copies of the disc appear, and the image is never padded with a constant.
    _, n = ndimage.label(y[..., 0] > 0)
    assert n >= 2
    np.testing.assert_array_equal(x[..., 0] > 0.5, y[..., 0] > 0)


def test_intensity_and_contrast_jitter_change_only_the_image():
    images, labels = _images(1)
    args = dict(crop_size=32, targets=TargetSpec(border_width=1), flips=False, rotations=False)
    x0, y0 = augment_crop(images[0], labels[0], np.random.default_rng(3), **args)
    x1, y1 = augment_crop(images[0], labels[0], np.random.default_rng(3), intensity_jitter=0.2,
                          contrast_jitter=0.5, **args)
    np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(x0, x1)
    assert x1.min() >= 0.0 and x1.max() <= 1.0


def test_loader_batches_are_a_pure_function_of_seed_epoch_and_batch():
    images, labels = _images()
    kwargs = dict(batch_size=4, steps_per_epoch=3, seed=5, crop_size=32, targets=TargetSpec(border_width=1),
                  augment=TrainConfig())
    loader = CropLoader(images, labels, **kwargs)
    assert loader.num_batches is None
    x, y = loader[4]
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 2)
    assert x.dtype == np.float32 and y.dtype == np.float32
    again = CropLoader(images, labels, **kwargs)[4]
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    # A loader resumed at epoch 1 (step 3) starts with the uninterrupted one's step 3.
    resumed = CropLoader(images, labels, start_step=3, **kwargs)
    np.testing.assert_array_equal(resumed[1][0], x)
    assert not np.array_equal(loader[1][0], x)
    other_seed = CropLoader(images, labels, **{**kwargs, "seed": 6})[4]
    assert not np.array_equal(other_seed[0], x)
    # Two process shards put together give the global batch.
    halves = [CropLoader(images, labels, shard=(i, 2), **kwargs)[4] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), x)


def test_each_epoch_visits_every_image_once_in_a_new_order():
    images, labels = _images(8)
    loader = CropLoader(images, labels, batch_size=4, steps_per_epoch=2, seed=1, crop_size=32)
    orders = [loader.epoch_order(e) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(8))
    assert not np.array_equal(orders[0], orders[1])


def test_threaded_loading_keeps_the_order():
    import keras

    images, labels = _images()
    kwargs = dict(batch_size=2, steps_per_epoch=4, seed=3, crop_size=32, targets=TargetSpec(border_width=1),
                  augment=TrainConfig())
    serial = CropLoader(images, labels, **kwargs)
    threaded = CropLoader(images, labels, workers=3, **kwargs)
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Lambda(lambda t: t)])
    got = model.predict(threaded, steps=6, verbose=0)
    expected = np.concatenate([serial[i][0] for i in range(6)])
    np.testing.assert_array_equal(got, expected)


def test_validation_crops_cover_every_image_in_full_batches():
    images, labels = _images(3)  # 64x80, 40x48, 100x70
    loader = ValidationLoader(images, labels, batch_size=4, crop_size=32, targets=TargetSpec(border_width=1))
    assert loader.n_crops == 2 * 3 + 2 * 2 + 4 * 3
    assert len(loader) == 6 and len(loader.crops) == 24
    seen = [np.zeros(im.shape, bool) for im in images]
    for i, (r, c) in loader.crops:
        seen[i][max(r, 0) : r + 32, max(c, 0) : c + 32] = True
    assert all(s.all() for s in seen)
    x, y = loader[0]
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 2)
    np.testing.assert_array_equal(loader[0][0], x)
    np.testing.assert_array_equal(x[..., 0] > 0.5, y[..., 0] > 0)


def _colour_of(image):
    """A stained-looking RGB whose nuclei (bright in ``image``) are purple on a lavender background."""
    t = image.astype(np.float32)[..., None] / 255
    rgb = (1 - t) * np.array([0.85, 0.78, 0.9], np.float32) + t * np.array([0.35, 0.2, 0.55], np.float32)
    return (rgb * 255).round().astype(np.uint8)


def test_colour_path_is_used_for_colour_images_only_and_is_deterministic():
    images, labels = _images(4)
    colour = [_colour_of(images[0]), None, _colour_of(images[2]), None]
    on = TrainConfig(intensity_jitter=0.0, contrast_jitter=0.0, blur_probability=0.0, noise_std=0.0,
                     gamma_jitter=0.0)
    off = TrainConfig(intensity_jitter=0.0, contrast_jitter=0.0, blur_probability=0.0, noise_std=0.0,
                      gamma_jitter=0.0, stain_jitter=0.0, stain_shift=0.0, hue_jitter=0.0, colour_jitter=0.0)
    kwargs = dict(batch_size=4, steps_per_epoch=1, seed=2, crop_size=32, targets=TargetSpec(border_width=1))
    with_colour = CropLoader(images, labels, augment=on, colour=colour, **kwargs)
    grey_only = CropLoader(images, labels, augment=on, **kwargs)
    switched_off = CropLoader(images, labels, augment=off, colour=colour, **kwargs)
    order = with_colour.epoch_order(0)
    x, y = with_colour[0]
    x_grey, y_grey = grey_only[0]
    np.testing.assert_array_equal(x, CropLoader(images, labels, augment=on, colour=colour, **kwargs)[0][0])
    for k in range(4):
        if colour[order[k]] is None:
            np.testing.assert_array_equal(x[k], x_grey[k])
            np.testing.assert_array_equal(y[k], y_grey[k])
        else:
            assert not np.array_equal(x[k], x_grey[k])
            # Still nuclei bright: the colour crop went through the stained grey conversion.
            body = y[k, ..., 0] > 0
            assert x[k, ..., 0][body].mean() > x[k, ..., 0][~body].mean() + 0.3
    # Colour jitter off: the cached grey is used even when colour images are given.
    x_off = switched_off[0][0]
    off_grey = CropLoader(images, labels, augment=off, **kwargs)[0][0]
    np.testing.assert_array_equal(x_off, off_grey)


def test_colour_path_picks_the_same_window_as_the_labels_at_any_scale():
    images, labels = _images(3)
    k = 2
    rgb = _colour_of(images[k])
    for seed in range(10):
        x, y = augment_crop(images[k], labels[k], np.random.default_rng(seed), crop_size=32,
                            targets=TargetSpec(border_width=1), scale_jitter=0.3, colour=rgb, stain_jitter=0.2,
                            stain_shift=0.005)
        assert x.shape == (32, 32, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        if y[..., 0].any() and not y[..., 0].all():
            assert np.mean((x[..., 0] > 0.5) != (y[..., 0] > 0)) < 0.1


def test_grey_level_augmentation_changes_only_the_image_and_is_seeded():
    images, labels = _images(1)
    args = dict(crop_size=32, targets=TargetSpec(border_width=1), flips=False, rotations=False)
    grey = dict(blur_probability=1.0, blur_sigma=1.5, noise_std=0.05, gamma_jitter=0.3)
    x0, y0 = augment_crop(images[0], labels[0], np.random.default_rng(3), **args)
    x1, y1 = augment_crop(images[0], labels[0], np.random.default_rng(3), **args, **grey)
    x2, _ = augment_crop(images[0], labels[0], np.random.default_rng(3), **args, **grey)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x0, x1) and x1.min() >= 0 and x1.max() <= 1


def test_colour_list_must_match_the_images():
    images, labels = _images(2)
    kwargs = dict(batch_size=2, steps_per_epoch=1, seed=0, crop_size=32)
    with pytest.raises(ValueError, match="`colour`"):
        CropLoader(images, labels, colour=[None], **kwargs)
    with pytest.raises(ValueError, match=r"`colour\[1\]`"):
        CropLoader(images, labels, colour=[None, np.zeros((5, 5, 3), np.uint8)], **kwargs)


def test_validation_images_are_resampled_to_the_canonical_nucleus_size():
    from dsb.inference.scale import median_diameter

    labels = make_discs((120, 160), ((30, 30), (60, 100), (90, 40)), 16)  # diameter about 32
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    loader = ValidationLoader([image], [labels], batch_size=2, crop_size=32, zooms=[0.5])
    resized, resized_labels = loader.pairs[0]
    assert resized.shape == resized_labels.shape == (60, 80)
    assert resized.dtype == np.float32 and resized_labels.dtype == labels.dtype
    assert resized_labels.max() == 3
    assert median_diameter(resized_labels) == pytest.approx(median_diameter(labels) / 2, rel=0.1)


@pytest.mark.parametrize("follows", [False, True])
def test_a_runs_loaders_make_the_contact_band_its_config_asks_for(follows, monkeypatch):
    """``preprocess.contact_follows_size`` reaches the training and the validation crops."""
    from conftest import tiny_prepared

    from dsb.core.config import Config, PreprocessConfig
    from dsb.training.plan import make_loaders, make_plan, split_data

    prepared = tiny_prepared()
    config = Config(preprocess=PreprocessConfig(diameter=20.0, contact_follows_size=follows),
                    train=TrainConfig(crop_size=32, batch_size=2, validation_fraction=0.3, split="random"))
    split = split_data(prepared, config, 0, finetune=False)
    plan = make_plan(prepared, config, split, seed=0, epochs=1, steps_per_epoch=1, replicas=1, resumed=None,
                     path="config.json")
    train, val = make_loaders(plan, prepared, start_step=0, shard=(0, 1), workers=1)
    scale = 0.1 if follows else 0.0
    assert plan.targets.contact_scale == scale
    # Training crops: every crop's targets are made at the config's scale.
    import dsb.training.loader as loader

    asked = []

    def recording(labels, **kwargs):
        asked.append(kwargs.get("contact_scale"))
        return make_targets(labels, **kwargs)

    monkeypatch.setattr(loader, "make_targets", recording)
    _, y = train[0]
    assert y.shape[-1] == 3 and asked == [scale] * 2
    monkeypatch.undo()
    # Validation crops are plain windows: their targets are the ones make_targets gives.
    touching = 0
    for index in range(len(val)):
        _, y = val[index]
        for k in range(2):
            i, (r, c) = val.crops[index * 2 + k]
            labels = val.pairs[i][1]
            if r < 0 or c < 0 or r + 32 > labels.shape[0] or c + 32 > labels.shape[1]:
                continue  # padded by reflection
            window = labels[r : r + 32, c : c + 32]
            expected = make_targets(window, border_width=2, contact_width=2, contact_scale=scale)
            np.testing.assert_array_equal(y[k], expected)
            touching += bool(expected[..., 2].any())
    assert touching, "some crop holds two nuclei close enough for contact"


def test_core_is_one_seed_per_nucleus_even_where_nuclei_overlap():
    # Two discs 0.8 diameters apart: one blob, and without a border the body alone has one core.
    labels = make_discs((64, 80), ((32, 30), (32, 46)), radius=10)
    assert ndimage.label(labels > 0)[1] == 1
    core = core_target(labels)
    seeds, n = ndimage.label(core)
    assert n == 2
    # Each seed lies inside one nucleus, and each nucleus holds one seed.
    assert sorted(np.unique(labels[seeds == 1]).tolist() + np.unique(labels[seeds == 2]).tolist()) == [1, 2]
    # A disc's core is its inner half: a disc of about half its radius, at its centre.
    lone = core_target(make_discs((40, 40), ((20, 20),), radius=12))
    assert np.sqrt(lone.sum() / np.pi) == pytest.approx(6, abs=1)
    assert ndimage.center_of_mass(lone) == pytest.approx((20, 20), abs=0.5)


def test_core_keeps_cut_nuclei_against_the_edge_and_thin_ones_whole():
    labels = np.zeros((20, 30), np.int32)
    labels[:8, 4:14] = 1  # cut by the top edge: its core reaches the edge
    labels[12:14, 2:28] = 2  # two pixels thick: no inner pixel, all core
    core = core_target(labels)
    assert core[0, 6:12].all()
    assert core[labels == 2].all()
    assert not core[labels == 0].any()
    with pytest.raises(ValueError, match="fraction"):
        core_target(labels, 0)


def test_the_core_channel_comes_fourth_and_needs_the_contact_channel():
    labels = make_discs((64, 64), TOUCHING, radius=8)
    y = make_targets(labels, border_width=2, contact_width=2, core=True)
    assert y.shape == (64, 64, 4)
    np.testing.assert_array_equal(y[..., :3], make_targets(labels, border_width=2, contact_width=2))
    np.testing.assert_array_equal(y[..., 3], core_target(labels))
    with pytest.raises(ValueError, match="`core` needs `contact_width`"):
        make_targets(labels, border_width=2, core=True)


def test_a_run_with_a_core_output_trains_and_validates_on_core_targets():
    from conftest import tiny_prepared

    from dsb.core.config import Config, ModelConfig, PreprocessConfig
    from dsb.training.plan import make_loaders, make_plan, split_data

    prepared = tiny_prepared()
    config = Config(model=ModelConfig(outputs=("body", "border", "contact", "core")),
                    preprocess=PreprocessConfig(diameter=20.0),
                    train=TrainConfig(crop_size=32, batch_size=2, validation_fraction=0.3, split="random"))
    split = split_data(prepared, config, 0, finetune=False)
    plan = make_plan(prepared, config, split, seed=0, epochs=1, steps_per_epoch=1, replicas=1, resumed=None,
                     path="config.json")
    assert plan.targets == TargetSpec(border_width=2, contact_width=2, core=True)
    train, val = make_loaders(plan, prepared, start_step=0, shard=(0, 1), workers=1)
    for loader in (train, val):
        _, y = loader[0]
        assert y.shape[-1] == 4
        assert not (y[..., 3] > y[..., 0]).any()  # the core lies inside the body
    assert any(val[i][1][..., 3].any() for i in range(len(val)))


def test_a_target_spec_checks_its_options_when_made():
    for bad, name in ((dict(border_width=-1), "border_width"), (dict(contact_width=0), "contact_width"),
                      (dict(contact_scale=0.1), "contact_scale"), (dict(core=True), "core"),
                      (dict(contact_width=2, contact_scale=float("nan")), "contact_scale")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            TargetSpec(**bad)


@pytest.mark.parametrize("outputs, channels", [(("body", "border"), 2), (("body", "border", "contact"), 3),
                                               (("body", "border", "contact", "core"), 4)])
def test_the_targets_follow_the_networks_outputs(outputs, channels):
    """A config's outputs decide the channels; a size-following contact band is dropped with the contact output."""
    from dsb.core.config import Config, ModelConfig, PreprocessConfig

    config = Config(model=ModelConfig(outputs=outputs), preprocess=PreprocessConfig(contact_follows_size=True))
    spec = TargetSpec.for_config(config)
    y = spec(make_discs((64, 64), TOUCHING, radius=8))
    assert y.shape == (64, 64, channels)
    assert (spec.contact_scale > 0) == (channels > 2)
