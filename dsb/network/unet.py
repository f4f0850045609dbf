"""The U-Net, its loss and its metrics, built from a :class:`~dsb.core.config.ModelConfig`.

The network maps a grey image ``(H, W, 1)`` in [0, 1] (nuclei bright) to one
sigmoid probability per pixel and output channel: channel 0 is the nucleus
body, channel 1 its border (the inner ring of each nucleus, including the
lines where two nuclei touch), which post-processing uses to split touching
nuclei. Everything here is backend-neutral Keras 3 (``keras.ops`` only), so the
same code trains on TensorFlow and JAX.

The loss and metrics are registered Keras serializables (package ``dsb``), so a
compiled ``.keras`` checkpoint reloads with its optimizer once this module is
imported.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from dsb.core.config import Config, ModelConfig
from dsb.core.errors import BadDataError

__all__ = [
    "build_unet",
    "BceDiceLoss",
    "BodyOverlap",
    "make_loss",
    "make_metrics",
    "make_optimizer",
    "compile_model",
    "size_multiple",
]

_EPS = 1e-7


def size_multiple(model_config: ModelConfig) -> int:
    """Input height and width must be multiples of this (see :meth:`ModelConfig.size_multiple`)."""
    return model_config.size_multiple()


def _check_keras_name(lookup, name: str, where: str) -> None:
    """A config names a Keras activation or initializer: say which key when it names none."""
    try:
        lookup(name)
    except (ValueError, TypeError):
        raise BadDataError(f"is {name!r}, which Keras does not know", where=where) from None


def _conv_block(x, filters: int, dropout: float, config: ModelConfig, name: str):
    for i in range(config.convs_per_block):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            kernel_initializer=config.initializer,
            use_bias=not config.batch_norm,  # batch norm brings its own offset
            name=f"{name}_conv{i}",
        )(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation(config.activation, name=f"{name}_act{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def build_unet(model_config: ModelConfig) -> keras.Model:
    """Build the U-Net described by ``model_config``.

    Parameters
    ----------
    model_config : ModelConfig
        Levels (``level_filters()``), convolutions per block, dropout per level,
        activation, initializer, batch norm, upsampling, output channels.

    Returns
    -------
    keras.Model
        Input ``(None, None, None, 1)`` float32: any height and width that are
        multiples of :func:`size_multiple`. Output ``(None, None, None, C)``
        sigmoid probabilities, ``C = len(model_config.outputs)``, always float32
        (also under a mixed-precision policy, so the loss stays accurate).

    Examples
    --------
    >>> from dsb.core.config import ModelConfig
    >>> model = build_unet(ModelConfig(depth=2, base_filters=4, dropout=(0.0,), outputs=("body", "border")))
    >>> model.output_shape
    (None, None, None, 2)
    """
    model_config.check("model")
    _check_keras_name(keras.activations.get, model_config.activation, "model.activation")
    _check_keras_name(keras.initializers.get, model_config.initializer, "model.initializer")
    filters = model_config.level_filters()
    dropout = model_config.level_dropout()
    n = len(filters)

    inputs = keras.Input((None, None, 1), name="image", dtype="float32")
    x = inputs
    skips = []
    for level in range(n):
        x = _conv_block(x, filters[level], dropout[level], model_config, f"down{level}")
        if level < n - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    for level in reversed(range(n - 1)):
        if model_config.upsampling == "transpose":
            x = layers.Conv2DTranspose(
                filters[level],
                2,
                strides=2,
                padding="same",
                kernel_initializer=model_config.initializer,
                name=f"up{level}_transpose",
            )(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters[level], dropout[level], model_config, f"up{level}")
    outputs = layers.Conv2D(
        len(model_config.outputs), 1, activation="sigmoid", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="unet")


@keras.saving.register_keras_serializable(package="dsb")
class BceDiceLoss(keras.losses.Loss):
    """Binary cross-entropy plus soft Dice, per output channel.

    For each sample, ``sum_c w_c * (bce_weight * BCE_c + dice_weight * (1 - Dice_c))``
    where BCE is the pixel mean and Dice the soft Dice over the sample's pixels
    (smoothed by ``smooth`` so that an empty crop predicted empty costs nothing).

    Parameters
    ----------
    bce_weight, dice_weight : float
        Weights of the two terms.
    channel_weights : sequence of float
        One weight per output channel (body, border, ...).
    smooth : float
        Added to the Dice numerator and denominator.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        channel_weights=(1.0, 1.0),
        smooth: float = 1.0,
        name: str = "bce_dice",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.channel_weights = tuple(float(w) for w in channel_weights)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        bce = ops.mean(bce, axis=(1, 2))  # (B, C)
        intersection = ops.sum(y_true * p, axis=(1, 2))
        total = ops.sum(y_true, axis=(1, 2)) + ops.sum(p, axis=(1, 2))
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        per_channel = self.bce_weight * bce + self.dice_weight * (1.0 - dice)
        weights = ops.convert_to_tensor(self.channel_weights, dtype="float32")
        return ops.sum(per_channel * weights, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            bce_weight=self.bce_weight,
            dice_weight=self.dice_weight,
            channel_weights=list(self.channel_weights),
            smooth=self.smooth,
        )
        return config


@keras.saving.register_keras_serializable(package="dsb")
class BodyOverlap(keras.metrics.Metric):
    """Pixel IoU or Dice of one channel, thresholded, accumulated over all batches.

    Accumulating intersection and totals (rather than averaging per batch)
    gives the overlap of the whole epoch, so crops without nuclei do not skew it.

    Parameters
    ----------
    kind : {"iou", "dice"}
    threshold : float
        Probability above which a pixel counts as predicted foreground.
    channel : int
        Output channel (0: body).
    """

    def __init__(self, kind: str = "iou", threshold: float = 0.5, channel: int = 0, name=None, **kwargs):
        if kind not in ("iou", "dice"):
            raise ValueError(f"`kind` is {kind!r}, expected 'iou' or 'dice'")
        super().__init__(name=name or f"body_{kind}", **kwargs)
        self.kind = kind
        self.threshold = float(threshold)
        self.channel = int(channel)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.true_total = self.add_variable(shape=(), initializer="zeros", name="true_total")
        self.pred_total = self.add_variable(shape=(), initializer="zeros", name="pred_total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(y_true[..., self.channel] > 0.5, "float32")
        p = ops.cast(y_pred[..., self.channel] > self.threshold, "float32")
        self.intersection.assign_add(ops.sum(t * p))
        self.true_total.assign_add(ops.sum(t))
        self.pred_total.assign_add(ops.sum(p))

    def result(self):
        inter = self.intersection
        if self.kind == "iou":
            denom = self.true_total + self.pred_total - inter
            num = inter
        else:
            denom = self.true_total + self.pred_total
            num = 2.0 * inter
        # Nothing true and nothing predicted is a perfect match.
        return ops.where(denom > 0, num / ops.maximum(denom, 1.0), 1.0)

    def reset_state(self):
        for v in (self.intersection, self.true_total, self.pred_total):
            v.assign(0.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(kind=self.kind, threshold=self.threshold, channel=self.channel)
        return config


# The contact zone is thin and decides every split of touching nuclei: it weighs double,
# as the contact channel of the winning DSB solutions did.
DEFAULT_CHANNEL_WEIGHTS = {"body": 1.0, "border": 1.0, "contact": 2.0, "core": 1.0}


def _channel_weights(config: Config) -> tuple[float, ...]:
    n = len(config.model.outputs)
    weights = tuple(config.train.channel_weights)
    if not weights:
        return tuple(DEFAULT_CHANNEL_WEIGHTS[name] for name in config.model.outputs)
    if len(weights) == 1:
        return weights * n
    if len(weights) != n:
        raise BadDataError(
            f"has {len(weights)} weights for {n} output channels {list(config.model.outputs)} (give 1 or {n})",
            where="train.channel_weights",
        )
    return weights


def make_loss(config: Config) -> BceDiceLoss:
    """The training loss with the weights of ``config.train``."""
    return BceDiceLoss(
        bce_weight=config.train.bce_weight,
        dice_weight=config.train.dice_weight,
        channel_weights=_channel_weights(config),
    )


def make_metrics() -> list:
    """Pixel IoU and Dice of the body channel (logged as ``body_iou``, ``body_dice``)."""
    return [BodyOverlap("iou"), BodyOverlap("dice")]


def make_optimizer(config: Config, *, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """Adam with the configured learning rate.

    With ``lr_schedule="cosine"`` and ``total_steps`` given, the rate follows a
    cosine from ``learning_rate`` down to ``min_learning_rate`` over
    ``total_steps`` optimizer steps. The schedule is a function of the
    optimizer's step counter, which is saved with the optimizer, so a resumed
    run continues on the same curve. Otherwise (``"plateau"``) the rate is a
    plain value that a callback lowers.
    """
    tc = config.train
    lr = tc.learning_rate
    if tc.lr_schedule == "cosine" and total_steps:
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=tc.learning_rate,
            decay_steps=int(total_steps),
            alpha=min(1.0, tc.min_learning_rate / tc.learning_rate),
        )
    return keras.optimizers.Adam(learning_rate=lr)


def compile_model(model: keras.Model, config: Config, *, total_steps: int | None = None) -> keras.Model:
    """Compile ``model`` with the loss, metrics and optimizer of ``config``; return it.

    Under a ``mixed_float16`` policy Keras wraps the optimizer in loss scaling.
    """
    model.compile(
        optimizer=make_optimizer(config, total_steps=total_steps),
        loss=make_loss(config),
        metrics=make_metrics(),
    )
    return model
