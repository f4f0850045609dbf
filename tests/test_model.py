"""The U-Net builder, the BCE + Dice loss and the body overlap metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from dsb.core.config import Config, ModelConfig, TrainConfig
from dsb.core.errors import BadDataError
from dsb.network.unet import (
    BceDiceLoss,
    BodyOverlap,
    build_unet,
    compile_model,
    make_loss,
    size_multiple,
)

TINY = ModelConfig(depth=2, base_filters=4, dropout=(0.0,))


def _reference_loss(y, p, *, bce_weight=1.0, dice_weight=1.0, channel_weights=(1.0, 1.0), smooth=1.0):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=(1, 2))
    dice = (2 * (y * p).sum(axis=(1, 2)) + smooth) / (y.sum(axis=(1, 2)) + p.sum(axis=(1, 2)) + smooth)
    return ((bce_weight * bce + dice_weight * (1 - dice)) * np.asarray(channel_weights)).sum(axis=-1).mean()


@pytest.mark.parametrize("size", [(16, 24), (32, 32)])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_unet_maps_any_multiple_of_its_stride_to_probabilities(size, upsampling):
    config = ModelConfig(depth=3, base_filters=4, dropout=(0.0, 0.0, 0.2), upsampling=upsampling)
    assert size_multiple(config) == 4
    model = build_unet(config)
    x = np.random.default_rng(0).random((2, *size, 1), np.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, *size, 3)  # body, border, contact
    assert y.dtype == np.float32
    assert (y > 0).all() and (y < 1).all()


def test_unet_follows_the_config():
    base = build_unet(TINY)
    names = [layer.name for layer in base.layers]
    assert sum(n.endswith("_transpose") for n in names) == 1  # depth 2: one upsampling
    assert any("bn" in n for n in names)
    assert not any("drop" in n for n in names)

    wider = build_unet(ModelConfig(depth=2, filters=(8, 16), dropout=(0.0,)))
    assert wider.count_params() > base.count_params()
    deeper_blocks = build_unet(ModelConfig(depth=2, base_filters=4, convs_per_block=3, dropout=(0.0,)))
    assert deeper_blocks.count_params() > base.count_params()

    plain = build_unet(
        ModelConfig(depth=2, base_filters=4, dropout=(0.0, 0.3), batch_norm=False, upsampling="bilinear",
                    activation="elu", initializer="glorot_uniform", outputs=("body", "border"))
    )
    names = [layer.name for layer in plain.layers]
    assert not any("bn" in n for n in names)
    assert not any(n.endswith("_transpose") for n in names)
    assert [n for n in names if "drop" in n] == ["down1_drop"]  # only the level with a rate
    assert plain.get_layer("down0_act0").get_config()["activation"] == "elu"
    assert plain.output_shape == (None, None, None, 2)


def test_unet_rejects_a_bad_config():
    with pytest.raises(BadDataError, match="dropout"):
        build_unet(ModelConfig(depth=3, base_filters=4, dropout=(0.1, 0.2)))


def test_last_layer_is_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(TINY)
        assert model.get_layer("down0_conv0").compute_dtype == "float16"
        out = model(np.zeros((1, 16, 16, 1), np.float32))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    y = (rng.random((3, 8, 8, 2)) > 0.6).astype(np.float32)
    p = rng.random((3, 8, 8, 2)).astype(np.float32)
    for kwargs in ({}, {"bce_weight": 0.5, "dice_weight": 2.0, "channel_weights": (1.0, 0.25)}):
        got = float(keras.ops.convert_to_numpy(BceDiceLoss(**kwargs)(y, p)))
        assert got == pytest.approx(_reference_loss(y, p, **kwargs), rel=1e-4)


def test_loss_rewards_the_right_answer_and_weighs_channels():
    y = np.zeros((1, 8, 8, 2), np.float32)
    y[0, 2:6, 2:6, 0] = 1
    y[0, 2:6, 2, 1] = 1
    loss = BceDiceLoss()
    perfect = float(keras.ops.convert_to_numpy(loss(y, y)))
    wrong = float(keras.ops.convert_to_numpy(loss(y, 1 - y)))
    assert perfect < 1e-3 < wrong
    body_only = BceDiceLoss(channel_weights=(1.0, 0.0))
    bad_border = y.copy()
    bad_border[..., 1] = 1 - y[..., 1]
    assert float(keras.ops.convert_to_numpy(body_only(y, bad_border))) < 1e-3


def test_make_loss_checks_channel_weights():
    config = Config(train=TrainConfig(channel_weights=(1.0, 2.0)))
    with pytest.raises(BadDataError, match="channel_weights"):
        make_loss(config)
    assert make_loss(Config(train=TrainConfig(channel_weights=(0.5,)))).channel_weights == (0.5, 0.5, 0.5)
    # By default the contact channel, thin and decisive in crowded fields, weighs double.
    assert make_loss(Config()).channel_weights == (1.0, 1.0, 2.0)
    four = Config(model=ModelConfig(outputs=("body", "border", "contact", "core")))
    assert make_loss(four).channel_weights == (1.0, 1.0, 2.0, 1.0)
    model = build_unet(dataclasses.replace(four.model, depth=2, base_filters=4, dropout=(0.0,)))
    assert model.output_shape[-1] == 4


def test_body_overlap_accumulates_over_batches():
    iou, dice = BodyOverlap("iou"), BodyOverlap("dice")
    t1 = np.zeros((1, 4, 4, 2), np.float32)
    p1 = np.zeros((1, 4, 4, 2), np.float32)
    t1[0, :2, :, 0] = 1  # 8 true pixels
    p1[0, :3, :, 0] = 0.9  # 12 predicted, 8 shared
    t2 = np.zeros_like(t1)
    p2 = np.zeros_like(p1)
    p2[0, 0, :, 0] = 0.7  # 4 false positives, nothing true
    for metric in (iou, dice):
        metric.update_state(t1, p1)
        metric.update_state(t2, p2)
    assert float(iou.result()) == pytest.approx(8 / (8 + 16 - 8))
    assert float(dice.result()) == pytest.approx(2 * 8 / (8 + 16))
    iou.reset_state()
    assert float(iou.result()) == 1.0  # nothing true, nothing predicted


def test_compiled_model_round_trips_through_a_keras_file(tmp_path):
    config = Config(model=TINY, train=TrainConfig(channel_weights=(1.0, 0.5, 1.0), lr_schedule="cosine"))
    model = compile_model(build_unet(config.model), config, total_steps=10)
    x = np.random.default_rng(2).random((2, 16, 16, 1), np.float32)
    y = (x > 0.5).astype(np.float32).repeat(3, axis=-1)
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.channel_weights == (1.0, 0.5, 1.0)
    assert int(loaded.optimizer.iterations) == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6
    )
