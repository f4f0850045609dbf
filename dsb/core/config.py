"""One configuration for a run: model, preprocessing, training, prediction, post-processing.

The whole :class:`Config` is saved as ``config.json`` next to ``model.keras``,
together with the validation ids and the tuned post-processing parameters, so
that a run folder describes itself and ``dsb predict`` needs nothing else.
Reading is strict: an unknown key or a value of the wrong type is an error that
names the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dsb.core.atomic import write_text
from dsb.core.errors import BadDataError

__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "TrainConfig",
    "PredictConfig",
    "SCALE_FACTOR_RANGE",
    "check_scale_factor",
    "check_scale_factors",
    "PostprocessConfig",
    "Config",
    "load_config",
    "save_config",
    "config_json",
    "shipped_config",
    "SHIPPED_CONFIGS",
]

CONFIG_DIR = Path(__file__).parents[1] / "configs"
SHIPPED_CONFIGS = ("cpu", "gpu")
# The network's output channels, in order (see dsb.training.loader.make_targets).
OUTPUTS = ("body", "border", "contact")
# The output channels a U-Net may have, in this order: the watershed reads them by position.
OUTPUT_CHOICES = (("body", "border"), OUTPUTS, OUTPUTS + ("core",))


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the U-Net.

    ``filters`` gives the filters of each level from the top; when empty, level
    ``i`` has ``base_filters * 2**i`` for ``depth`` levels. ``dropout`` is one
    rate per level (a single value applies to all).
    """

    depth: int = 4
    base_filters: int = 16
    filters: tuple[int, ...] = ()
    convs_per_block: int = 2
    dropout: tuple[float, ...] = (0.0, 0.0, 0.1, 0.2)
    activation: str = "relu"
    initializer: str = "he_normal"
    batch_norm: bool = True
    upsampling: str = "transpose"  # "transpose" or "bilinear"
    # body, its inner border ring, (optional) the contact zone between two nuclei, and (optional,
    # after contact) each nucleus's core, the inner part of it, a seed per nucleus.
    outputs: tuple[str, ...] = ("body", "border", "contact")

    def level_filters(self) -> tuple[int, ...]:
        if self.filters:
            return tuple(self.filters)
        return tuple(self.base_filters * 2**i for i in range(self.depth))

    def size_multiple(self) -> int:
        """Input height and width must be multiples of this: one halving per level below the top."""
        return 2 ** (len(self.level_filters()) - 1)

    def level_dropout(self) -> tuple[float, ...]:
        n = len(self.level_filters())
        if len(self.dropout) == 1:
            return tuple(self.dropout) * n
        return tuple(self.dropout)

    def check(self, where: str) -> None:
        n = len(self.level_filters())
        if n < 1:
            raise BadDataError("the U-Net needs at least one level", where=f"{where}.depth")
        if min(self.level_filters()) < 1:
            raise BadDataError(f"are {list(self.level_filters())}, expected positive filters", where=f"{where}.filters")
        if self.convs_per_block < 1:
            raise BadDataError(f"is {self.convs_per_block}, expected at least 1", where=f"{where}.convs_per_block")
        if len(self.dropout) not in (1, n):
            raise BadDataError(
                f"has {len(self.dropout)} rates for {n} levels (give 1 or {n})", where=f"{where}.dropout"
            )
        if not all(0.0 <= rate < 1.0 for rate in self.dropout):
            raise BadDataError(f"are {list(self.dropout)}, expected rates in [0, 1)", where=f"{where}.dropout")
        if self.upsampling not in ("transpose", "bilinear"):
            raise BadDataError(
                f"is {self.upsampling!r}, expected 'transpose' or 'bilinear'", where=f"{where}.upsampling"
            )
        if tuple(self.outputs) not in OUTPUT_CHOICES:
            choices = " or ".join(str(list(c)) for c in OUTPUT_CHOICES)
            raise BadDataError(f"is {list(self.outputs)}, expected {choices}", where=f"{where}.outputs")


@dataclass(frozen=True)
class PreprocessConfig:
    """Turning an image into the network's input, and labels into its targets."""

    polarity: str = "auto"  # "auto", "keep" or "invert"
    stained_channel: str = "both"  # grey of stained images: "both", "hematoxylin" or "luminance"
    percentile_low: float = 0.5  # contrast stretch: this percentile maps to 0 ...
    percentile_high: float = 99.8  # ... and this one to 1
    border_width: int = 2  # width in pixels of the border target inside each nucleus
    contact_width: int = 2  # pixels within this distance of two different nuclei form the contact target
    contact_follows_size: bool = False  # the contact band follows nucleus size (training.loader.make_targets)
    # The nucleus diameter (pixels) the network works at: training resamples each image so that
    # its median nucleus has it, prediction estimates each image's and resamples. 0: no resampling.
    diameter: float = 20.0
    # The channel of one's own multi-channel training images the network learns from (their DNA
    # stain, `dsb train --channel`), counted from 0, or its name in each file's metadata (OME-TIFF),
    # picked as `dsb segment --channel` picks it (channel 0 of a grey image is the image); the
    # competition's images whole. None: every image as a whole (grey, or colour's luminance).
    channel: int | str | None = None

    @property
    def contact_scale(self) -> float:
        """Contact width per pixel of nucleus diameter when the band follows size, else 0."""
        return self.contact_width / self.diameter if self.contact_follows_size else 0.0

    def check(self, where: str) -> None:
        if self.polarity not in ("auto", "keep", "invert"):
            raise BadDataError(
                f"is {self.polarity!r}, expected 'auto', 'keep' or 'invert'", where=f"{where}.polarity"
            )
        if self.stained_channel not in ("both", "hematoxylin", "luminance"):
            raise BadDataError(
                f"is {self.stained_channel!r}, expected 'both', 'hematoxylin' or 'luminance'",
                where=f"{where}.stained_channel",
            )
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise BadDataError(
                f"are {self.percentile_low} and {self.percentile_high}, expected 0 <= low < high <= 100",
                where=f"{where}.percentile_low/percentile_high",
            )
        if self.border_width < 0:
            raise BadDataError(f"is {self.border_width}, expected at least 0", where=f"{where}.border_width")
        if self.contact_width < 1:
            raise BadDataError(f"is {self.contact_width}, expected at least 1", where=f"{where}.contact_width")
        if self.contact_follows_size and self.diameter == 0:
            raise BadDataError(
                "is true, but a contact band that follows nucleus size needs a canonical diameter (not 0)",
                where=f"{where}.contact_follows_size",
            )
        if self.diameter != 0 and not 4.0 <= self.diameter <= 200.0:
            raise BadDataError(
                f"is {self.diameter}, expected 0 (no resampling) or a diameter in [4, 200] pixels",
                where=f"{where}.diameter",
            )
        if isinstance(self.channel, str) and not self.channel.strip():
            raise BadDataError("is an empty name, expected a channel's name or number, or null",
                               where=f"{where}.channel")
        if isinstance(self.channel, int) and self.channel < 0:
            raise BadDataError(f"is {self.channel}, expected a channel counted from 0, or null",
                               where=f"{where}.channel")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, augmentation and the validation split."""

    crop_size: int = 256
    batch_size: int = 8
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" or "plateau"
    min_learning_rate: float = 1e-5
    plateau_factor: float = 0.5  # "plateau": the rate is multiplied by this ...
    plateau_patience: int = 5  # ... after this many epochs without a better monitored loss
    early_stopping_patience: int = 15
    # "group": hold out whole imaging-experiment groups (dsb.training.groups), at least one of each type that
    # has two, so validation scores unseen experiments; whole groups overshoot the fraction (0.15
    # holds out 17-23% of stage1_train). "random": round(fraction * n) random images of each type.
    split: str = "group"
    validation_fraction: float = 0.15
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    # One weight per output channel; empty: DEFAULT_CHANNEL_WEIGHTS by channel name.
    channel_weights: tuple[float, ...] = ()
    flips: bool = True
    rotations: bool = True
    scale_jitter: float = 0.25  # crops are rescaled by a further factor in [1 - s, 1 + s] ...
    # ... and by 2**u, u uniform in [-z, z] (log-uniform: 1 spans 0.5x to 2x), so that the network also
    # knows nuclei at sizes the scale estimate may miss by up to that factor (dsb.training.loader.augment_crop).
    zoom_octaves: float = 0.0
    # Chance that a crop gets copies of its own nuclei pasted against its nuclei (copy-paste
    # crowding, dsb.training.crowding): touching neighbours, which the training images hold few of.
    crowding: float = 0.0
    # Where a copy goes: its centre at a distance uniform in crowding_gap times the sum of its own and its
    # neighbour's radius (1: touching discs), covering at most crowding_overlap of any nucleus it lands on.
    crowding_gap: tuple[float, ...] = (0.9, 1.15)
    crowding_overlap: float = 0.1
    intensity_jitter: float = 0.1
    contrast_jitter: float = 0.2
    # Colour augmentation of stained images, on their RGB before the grey conversion (dsb.training.augment);
    # all four 0: stained crops come from the cached grey like the others.
    stain_jitter: float = 0.3  # haematoxylin, eosin and DAB amounts each scaled by [1 - s, 1 + s] ...
    stain_shift: float = 0.012  # ... and shifted by [-s, s] (rgb2hed density units; tints the background)
    hue_jitter: float = 0.03  # hue shifted by [-h, h] turns
    colour_jitter: float = 0.1  # saturation and brightness scaled by [1 - c, 1 + c]
    # Grey-level augmentation of every crop, after the grey conversion:
    blur_probability: float = 0.2  # chance of a gaussian blur ...
    blur_sigma: float = 1.5  # ... of a standard deviation uniform in [0.3, blur_sigma] pixels
    noise_std: float = 0.03  # read and shot noise, each of a standard deviation uniform in [0, noise_std]
    gamma_jitter: float = 0.3  # a power g with log(g) uniform in [-gamma_jitter, gamma_jitter]
    seed: int = 42

    def check(self, where: str) -> None:
        for name in ("crop_size", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise BadDataError(f"is {getattr(self, name)}, expected at least 1", where=f"{where}.{name}")
        if self.steps_per_epoch < 0:
            raise BadDataError(
                f"is {self.steps_per_epoch}, expected at least 0 (0: one pass over the images)",
                where=f"{where}.steps_per_epoch",
            )
        if not self.learning_rate > 0:
            raise BadDataError(f"is {self.learning_rate}, expected > 0", where=f"{where}.learning_rate")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise BadDataError(
                f"is {self.min_learning_rate}, expected in [0, learning_rate]", where=f"{where}.min_learning_rate"
            )
        if self.crop_size % 16:
            raise BadDataError(f"is {self.crop_size}, expected a multiple of 16", where=f"{where}.crop_size")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BadDataError(
                f"is {self.validation_fraction}, expected in [0, 1)", where=f"{where}.validation_fraction"
            )
        if self.split not in ("group", "random"):
            raise BadDataError(f"is {self.split!r}, expected 'group' or 'random'", where=f"{where}.split")
        if self.lr_schedule not in ("cosine", "plateau"):
            raise BadDataError(
                f"is {self.lr_schedule!r}, expected 'cosine' or 'plateau'", where=f"{where}.lr_schedule"
            )
        if not 0.0 < self.plateau_factor <= 1.0:
            raise BadDataError(f"is {self.plateau_factor}, expected in (0, 1]", where=f"{where}.plateau_factor")
        for name, top in (("stain_jitter", 1.0), ("colour_jitter", 1.0), ("hue_jitter", 0.5),
                          ("blur_probability", 1.0), ("stain_shift", 0.1), ("noise_std", 0.5),
                          ("gamma_jitter", 1.0), ("blur_sigma", 10.0), ("scale_jitter", 0.9),
                          ("zoom_octaves", 3.0), ("crowding", 1.0), ("crowding_overlap", 0.5)):
            if not 0.0 <= getattr(self, name) <= top:
                raise BadDataError(f"is {getattr(self, name)}, expected in [0, {top}]", where=f"{where}.{name}")
        gap = tuple(self.crowding_gap)
        if len(gap) != 2 or not 0.5 <= gap[0] <= gap[1] <= 2.0:
            raise BadDataError(
                f"is {list(gap)}, expected two factors [low, high] with 0.5 <= low <= high <= 2",
                where=f"{where}.crowding_gap",
            )
        if self.blur_probability > 0 and self.blur_sigma < 0.3:
            raise BadDataError(
                f"is {self.blur_sigma}, expected at least 0.3 when train.blur_probability > 0", where=f"{where}.blur_sigma"
            )

    @property
    def colour_augmentation(self) -> bool:
        """Whether stained crops take the colour path (jitter on RGB, then the grey conversion)."""
        return self.stain_jitter > 0 or self.stain_shift > 0 or self.hue_jitter > 0 or self.colour_jitter > 0


# The factors on the chosen scale that prediction accepts (:attr:`PredictConfig.scale_factor`).
SCALE_FACTOR_RANGE = (0.5, 2.0)


def check_scale_factor(value: float, *, where: str = "scale_factor") -> float:
    """``value`` when it is a factor in :data:`SCALE_FACTOR_RANGE`; BadDataError naming ``where`` otherwise."""
    low, high = SCALE_FACTOR_RANGE
    # Any real number, numpy's included (np.bool_ is not one), but not a bool.
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high):
        raise BadDataError(f"is {value!r}, expected a number in [{low:g}, {high:g}]", where=where)
    return float(value)


def check_scale_factors(values) -> tuple[float, ...]:
    """The factors of ``dsb tune --scale-factors``: each checked (:func:`check_scale_factor`), once,
    smallest first; BadDataError naming ``scale_factors`` otherwise."""
    factors = tuple(values)
    if not factors:
        raise BadDataError("is empty, expected at least one factor", where="scale_factors")
    return tuple(sorted({check_scale_factor(f, where="scale_factors") for f in factors}))


@dataclass(frozen=True)
class PredictConfig:
    """Tiled inference."""

    # Tiles: large, since a tile's cost is its pixels and an image that fits one tile has no
    # overlap to pay for; overlap at least twice the context the network needs, which
    # dsb.inference.tiling.context_needed measures (`dsb tune` stores it): 44 pixels for the default
    # model to agree with the whole image's prediction within 0.001.
    tile_size: int = 1024
    overlap: int = 112
    context: int = 48
    batch_size: int = 1
    # Resampling factors allowed when an image's nucleus diameter is estimated or given: nuclei
    # from 5 to 160 pixels across reach the network at its diameter of 20.
    min_scale: float = 0.125
    max_scale: float = 4.0
    # Passes of the diameter estimate: each predicts at the scale the previous one suggests,
    # and the image is predicted at the one the last suggests. A window too small for its
    # nuclei (under 6 diameters across) earns one more pass (dsb.inference.scale.choose_scale).
    # On the 132 group-held-out images of the default model: 0.5601 with one pass (and the
    # extra one), against 0.5612 with three passes that each ran at the scale the previous
    # suggested; over the 65 stage-1 test images the estimate (windows, passes and their
    # watersheds) took 21 % of prediction time instead of 26 %, and the network saw 15.8
    # instead of 19.6 megapixels of tiles.
    diameter_passes: int = 1
    # Side of the window each pass of the estimate sees, in pixels at its scale (see
    # dsb.inference.scale.choose_scale): a few dozen nuclei, at a fraction of the prediction's cost.
    # On the 132 group-held-out images, with three passes: whole images 0.5627, 256 px
    # 0.5625, 192 px 0.5612, 128 px 0.5578. 128 px also missed nuclei over about 40 px
    # across (a grid of 76-px discs was estimated at 18 px). With the one pass of today:
    # 192 px 0.5601, 176 px 0.5567, 160 px 0.5532 (stained tissue 0.288, 0.291, 0.283;
    # fluorescence 0.693, 0.687, 0.685), so the window stays at 192 although a smaller one
    # would cut the estimate's share of prediction time.
    estimate_size: int = 192
    # Scale of the estimate's first pass. Starting at 0.5 lost the small nuclei of brightfield
    # images (held-out brightfield 0.21 -> 0.09).
    estimate_scale: float = 1.0
    # Cross-check the estimate at half the scale, and further down where the reading grows
    # (dsb.inference.scale.choose_scale): without it, nuclei several times the network's diameter
    # read as their own texture and are lost. False gives the estimate of earlier releases.
    cross_check: bool = True
    # The image is predicted at this many times the scale chosen above (within min_scale ..
    # max_scale): a network may find nuclei best somewhat larger than the diameter it was trained
    # at, which the scale estimate (an area-weighted reading) and the training's median do not
    # say. `dsb tune --scale-factors` chooses it on the validation images; 1 predicts at the chosen
    # scale, where the estimate's last pass may already be the prediction. Pixels, and so the
    # network's time, grow with its square.
    scale_factor: float = 1.0
    # Average the final prediction over the eight flips and quarter turns (the scale estimate's
    # passes stay single). `dsb tune --tta` sets it, since the post-processing it picks is then
    # tuned on averaged probabilities; `--tta` / `--no-tta` override it per call. Eight network
    # passes an image: for a submission, not for throughput.
    tta: bool = False
    # An image predicted at 0.4 of its size or less (nuclei of 50 pixels and more) gets a second pass
    # this many times finer, up to its own pixels, for the small nuclei the shrink hid
    # (dsb.inference.small_nuclei); 0: none. Other images get none, so it costs nothing on them.
    small_pass: float = 2.5

    def check(self, where: str) -> None:
        if not 0 < self.min_scale <= 1.0 <= self.max_scale <= 8.0:
            raise BadDataError(
                f"are {self.min_scale} and {self.max_scale}, expected 0 < min_scale <= 1 <= max_scale <= 8",
                where=f"{where}.min_scale/max_scale",
            )
        check_scale_factor(self.scale_factor, where=f"{where}.scale_factor")
        if not (self.small_pass == 0 or 1 < self.small_pass <= 8):
            raise BadDataError(f"is {self.small_pass}, expected 0 (no second pass) or a factor above 1, at most 8",
                               where=f"{where}.small_pass")
        if self.diameter_passes < 1:
            raise BadDataError(f"is {self.diameter_passes}, expected at least 1", where=f"{where}.diameter_passes")
        if not 0 < self.estimate_scale <= 8.0:
            raise BadDataError(f"is {self.estimate_scale}, expected in (0, 8]", where=f"{where}.estimate_scale")
        if self.estimate_size < 32:
            raise BadDataError(f"is {self.estimate_size}, expected at least 32", where=f"{where}.estimate_size")
        if self.tile_size % 16 or self.tile_size < 16:
            raise BadDataError(f"is {self.tile_size}, expected a multiple of 16", where=f"{where}.tile_size")
        if self.batch_size < 1:
            raise BadDataError(f"is {self.batch_size}, expected at least 1", where=f"{where}.batch_size")
        if self.context < 0:
            # Above half the overlap it is clipped there (dsb.inference.tiling.axis_weights), so older runs still load.
            raise BadDataError(f"is {self.context}, expected at least 0", where=f"{where}.context")
        if not 0 <= self.overlap < self.tile_size // 2 + 1:
            raise BadDataError(
                f"is {self.overlap}, expected between 0 and half the tile size", where=f"{where}.overlap"
            )


@dataclass(frozen=True)
class PostprocessConfig:
    """Marker-controlled watershed from body and border probabilities (see :mod:`dsb.inference.watershed`)."""

    marker_threshold: float = 0.5  # body probability a marker needs
    border_threshold: float = 0.4  # border probability a marker must stay under
    contact_threshold: float = 0.5  # contact probability a marker must stay under (3-channel models)
    core_threshold: float = 0.0  # core probability a marker needs (models with a core channel); 0: core ignored
    mask_threshold: float = 0.5  # body probability that belongs to some nucleus
    min_marker_size: int = 4
    min_size: int = 12
    flood: str = "probability"  # "probability" or "distance"
    fill_holes: bool = True
    keep_unmarked: bool = True  # a body component with no marker (a tiny nucleus) becomes one nucleus
    split_ratio: float = 1.5  # re-seed dented nuclei over this many times the median area; 0: off (dsb.inference.split)
    min_confidence: float = 0.0  # mean body probability a nucleus needs; 0: every nucleus kept

    def check(self, where: str) -> None:
        for name in ("marker_threshold", "border_threshold", "contact_threshold", "core_threshold", "mask_threshold",
                     "min_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BadDataError(f"is {getattr(self, name)}, expected in [0, 1]", where=f"{where}.{name}")
        if not self.split_ratio >= 0:
            raise BadDataError(f"is {self.split_ratio}, expected 0 (off) or more", where=f"{where}.split_ratio")
        if self.flood not in ("probability", "distance"):
            raise BadDataError(
                f"is {self.flood!r}, expected 'probability' or 'distance'", where=f"{where}.flood"
            )


@dataclass(frozen=True)
class Config:
    """Everything a run needs, saved as ``config.json`` in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    validation_ids: tuple[str, ...] = ()

    def check(self, *, path=None) -> "Config":
        """Check values that types alone cannot; errors name ``path`` and the key."""
        try:
            for f in dataclasses.fields(self):
                part = getattr(self, f.name)
                if hasattr(part, "check"):
                    part.check(f.name)
            multiple = self.model.size_multiple()
            for where, size in (("train.crop_size", self.train.crop_size), ("predict.tile_size", self.predict.tile_size)):
                if size % multiple:
                    raise BadDataError(
                        f"is {size}, expected a multiple of {multiple} for a U-Net of "
                        f"{len(self.model.level_filters())} levels",
                        where=where,
                    )
        except BadDataError as exc:
            if exc.path is None and path is not None:
                exc.path = str(path)
            raise
        return self

    def replace(self, **changes) -> "Config":
        """A copy with whole sections or top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def with_scale_factor(self, factor: float | None) -> "Config":
        """A copy that predicts ``factor`` times larger than the chosen scale
        (``predict.scale_factor``, checked by :func:`check_scale_factor`); itself when ``factor``
        is None (the run's own factor, which ``dsb tune`` chose)."""
        if factor is None:
            return self
        factor = check_scale_factor(factor)
        return self.replace(predict=dataclasses.replace(self.predict, scale_factor=factor))

    def to_dict(self) -> dict:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict, *, path=None) -> "Config":
        """Build a config from a (possibly partial) dict; missing keys take defaults."""
        return _from_dict(cls, data, path=path, prefix="").check(path=path)


def _to_jsonable(value):
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, *, path, key):
    """Check ``value`` against the annotation ``tp``; return it in that type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BadDataError(f"is {type(value).__name__}, expected an object", path=path, where=f"key {key!r}")
        return _from_dict(tp, value, path=path, prefix=f"{key}.")
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BadDataError(
                f"is {type(value).__name__}, expected a list of {_type_name(item_tp)}", path=path, where=f"key {key!r}"
            )
        return tuple(_coerce(v, item_tp, path=path, key=f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inners = [a for a in args if a is not type(None)]
        for inner in inners:  # the first type that takes it (int before str: 1 stays a number)
            try:
                return _coerce(value, inner, path=path, key=key)
            except BadDataError as exc:
                refused = exc
        if len(inners) == 1:
            raise refused
        raise BadDataError(f"is {value!r} ({type(value).__name__}), expected "
                           f"{' or '.join(_type_name(a) for a in inners)}", path=path, where=f"key {key!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    raise BadDataError(
        f"is {value!r} ({type(value).__name__}), expected {_type_name(tp)}", path=path, where=f"key {key!r}"
    )


def _from_dict(cls, data: dict, *, path, prefix: str):
    if not isinstance(data, dict):
        raise BadDataError(f"expected a JSON object, got {type(data).__name__}", path=path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BadDataError(
            f"unknown key (known: {', '.join(sorted(names))})", path=path, where=f"key {prefix + unknown[0]!r}"
        )
    values = {k: _coerce(v, hints[k], path=path, key=prefix + k) for k, v in data.items()}
    return cls(**values)


def load_config(path) -> Config:
    """Read a config JSON file (a full ``config.json`` or a partial one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadDataError("config file not found", path=path) from None
    except OSError as exc:
        raise BadDataError(f"cannot read config ({exc.strerror})", path=path) from None
    except UnicodeDecodeError as exc:
        raise BadDataError(f"not UTF-8 text (byte {exc.start})", path=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadDataError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    return Config.from_dict(data, path=path)


def config_json(config: Config) -> str:
    """``config`` as the indented JSON text of a ``config.json``."""
    return json.dumps(config.to_dict(), indent=2) + "\n"


def save_config(config: Config, path) -> Path:
    """Write ``config`` as indented JSON, atomically."""
    return write_text(path, config_json(config))


def shipped_config(name: str) -> Config:
    """One of the configs shipped in ``dsb/configs`` ("cpu" or "gpu")."""
    if name not in SHIPPED_CONFIGS:
        raise BadDataError(f"unknown shipped config {name!r} (known: {', '.join(SHIPPED_CONFIGS)})")
    return load_config(CONFIG_DIR / f"{name}.json")
