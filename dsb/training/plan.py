"""What a run will do, computed once from the config, the prepared data and the options."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dsb.core.config import Config
from dsb.core.errors import BadDataError
from dsb.inference.scale import median_diameter, network_zoom
from dsb.training.cache import data_checksum as checksum
from dsb.training.cache import load_colour_images
from dsb.training.finetune import finetune_split
from dsb.training.loader import CropLoader, TargetSpec, ValidationLoader, split_ids
from dsb.training.state import RunState


@dataclass(frozen=True)
class Split:
    """The run's images by index into ``prepared``: for training and for validation."""

    ids: tuple[str, ...]
    groups: tuple[str, ...] | None
    train_idx: tuple[int, ...]
    val_idx: tuple[int, ...]
    val_ids: tuple[str, ...]
    val_groups: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Plan:
    """A run's shape: its config (with the seed, epochs and validation ids it uses), split, and crops.

    Attributes
    ----------
    config : Config
        What config.json records; ``config.train.seed`` and ``.epochs`` are the run's.
    split : Split
    steps_per_epoch, global_batch : int
        Steps per epoch (resolved from the option) and crops per step over all replicas.
    zooms : tuple of float
        Per prepared image, the zoom to the canonical nucleus diameter.
    colour : list or None
        Raw RGB per training image for colour augmentation (None: grey only).
    targets : TargetSpec
        The targets of the model's outputs (:meth:`TargetSpec.for_config`).
    """

    config: Config
    split: Split
    steps_per_epoch: int
    global_batch: int
    zooms: tuple[float, ...]
    colour: list | None
    targets: TargetSpec

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def epochs(self) -> int:
        return self.config.train.epochs


def split_data(prepared, config: Config, seed: int, *, finetune: bool) -> Split:
    """The run's :class:`Split` (see :func:`_split`).

    Raises
    ------
    BadDataError
        Unknown validation ids, or no training image left.
    """
    ids = [str(i) for i in prepared.ids]
    groups = list(getattr(prepared, "groups", None) or []) or None  # stand-ins may hold no groups
    train_ids, val_ids = _split(config, ids, prepared.types, seed, groups, finetune=finetune)
    index = {id_: i for i, id_ in enumerate(ids)}
    train_idx = tuple(index[i] for i in train_ids)
    if not train_idx:
        raise BadDataError("no training images left after the validation split", where="train.validation_fraction")
    return Split(ids=tuple(ids), groups=None if groups is None else tuple(groups), train_idx=train_idx,
                 val_idx=tuple(index[i] for i in val_ids), val_ids=tuple(val_ids),
                 val_groups=tuple(_whole_groups(ids, groups, val_ids)))


def make_plan(prepared, config: Config, split: Split, *, seed: int, epochs: int | None,
              steps_per_epoch: int | None, replicas: int, resumed: RunState | None, path) -> Plan:
    """The :class:`Plan` of a new run, or of a resumed one (``resumed``: its state, which fixes the shape).

    Raises
    ------
    BadDataError
        When the run's global batch does not split over ``replicas``.
    """
    tc = config.train
    global_batch = resumed.global_batch if resumed else tc.batch_size * replicas
    if global_batch % replicas:
        raise BadDataError(f"the run's global batch of {global_batch} does not split over {replicas} replicas",
                           path=path)
    steps = (resumed.steps_per_epoch if resumed else None) or steps_per_epoch or tc.steps_per_epoch or math.ceil(
        len(split.train_idx) / global_batch
    )
    train_config = dataclasses.replace(
        tc, seed=seed, epochs=epochs or tc.epochs, steps_per_epoch=steps_per_epoch or tc.steps_per_epoch
    )
    config = config.replace(train=train_config, validation_ids=split.val_ids)
    return Plan(
        config=config,
        split=split,
        steps_per_epoch=steps,
        global_batch=global_batch,
        zooms=tuple(_zooms(prepared, config)),
        colour=_colour_images(prepared, tc, list(split.train_idx)),
        targets=TargetSpec.for_config(config),
    )


def make_loaders(plan: Plan, prepared, *, start_step: int, shard: tuple[int, int], workers: int):
    """``(training loader, validation loader or None)`` of the plan, training from ``start_step``."""
    tc, pre = plan.config.train, plan.config.preprocess
    images, labels, zooms = prepared.images, prepared.labels, plan.zooms
    train, val = plan.split.train_idx, plan.split.val_idx
    train_data = CropLoader(
        [images[i] for i in train], [labels[i] for i in train],
        batch_size=plan.global_batch, steps_per_epoch=plan.steps_per_epoch, seed=plan.seed,
        crop_size=tc.crop_size, targets=plan.targets, zooms=[zooms[i] for i in train], augment=tc,
        colour=plan.colour,
        preprocess=pre,
        start_step=start_step, shard=shard, workers=workers,
    )
    if not val:
        return train_data, None
    val_data = ValidationLoader(
        [images[i] for i in val], [labels[i] for i in val],
        batch_size=plan.global_batch, crop_size=tc.crop_size, targets=plan.targets, zooms=[zooms[i] for i in val],
        shard=shard, workers=workers,
    )
    return train_data, val_data


def _whole_groups(ids: list[str], groups: list[str] | None, val_ids: list[str]) -> list[str]:
    """The groups all of whose images are in ``val_ids``, sorted (empty without groups)."""
    if not groups or not val_ids:
        return []
    held = set(val_ids)
    out = set(groups)
    for i, g in zip(ids, groups):
        if i not in held:
            out.discard(g)
    return sorted(out)


def _split(config: Config, ids: list[str], types, seed: int, groups=None, *,
           finetune: bool = False) -> tuple[list[str], list[str]]:
    """The run's (train, validation) ids: ``config.validation_ids`` when given, else for a
    fine-tune a random share of the user's images (:func:`dsb.training.finetune.finetune_split`), else
    whole groups held out (``train.split == "group"`` and ``groups`` known), else a random share."""
    if config.validation_ids:
        known = set(ids)
        unknown = [i for i in config.validation_ids if i not in known]
        if unknown:
            raise BadDataError(
                f"{len(unknown)} validation id(s) are not in the training data, e.g. {unknown[0]!r}",
                where="validation_ids",
            )
        held = set(config.validation_ids)
        return [i for i in ids if i not in held], [i for i in ids if i in held]
    if finetune:
        return finetune_split(ids, groups, fraction=config.train.validation_fraction, seed=seed)
    if config.train.split != "group" or not groups or len(groups) != len(ids):
        groups = None
    return split_ids(ids, list(types), fraction=config.train.validation_fraction, seed=seed, groups=groups)


def _zooms(prepared, config: Config) -> list[float]:
    """Per image, the zoom that takes its median nucleus to ``preprocess.diameter`` (all 1 when that is 0)."""
    diameters = getattr(prepared, "diameters", None)
    if not diameters:  # data held in memory without the cache's measurements
        diameters = [median_diameter(lab) for lab in prepared.labels]
    return [network_zoom(d, config) for d in diameters]


def _colour_images(prepared, tc, indices: list[int]) -> list | None:
    """Raw RGB of the stained images at ``indices`` (None for the others), for colour augmentation.

    None when the config turns colour augmentation off, or ``prepared`` has no
    cache folder (stand-ins holding only arrays) or its raw images cannot be
    found (a warning): stained crops then come from the cached grey.
    """
    if not tc.colour_augmentation or getattr(prepared, "path", None) is None:
        return None

    try:
        colour = load_colour_images(prepared)
    except BadDataError as exc:
        import warnings

        warnings.warn(f"no colour augmentation, stained crops come from the cached grey: {exc}", stacklevel=2)
        return None
    return [colour.get(str(prepared.ids[i])) for i in indices]


def data_checksum(prepared) -> str:
    """The checksum of a :class:`dsb.training.cache.Prepared` (see :func:`dsb.training.cache.data_checksum`):
    its ``checksum`` when it carries one, else computed from its ids, images and labels."""

    return getattr(prepared, "checksum", None) or checksum(prepared.ids, prepared.images, prepared.labels)
