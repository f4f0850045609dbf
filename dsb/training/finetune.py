"""Fine-tuning a trained model on a few annotated images of one's own: the plan, not the fit.

``dsb train --init [MODEL_DIR]`` starts from the weights of a run folder (the
shipped model by default) instead of random ones. This module decides how:

* :func:`finetune_config`: the init model's own model, preprocessing,
  prediction and post-processing sections (the weights only fit that
  architecture, and were learnt on that input), a training section with a
  tenth of the learning rate, :data:`FINETUNE_EPOCHS` short epochs, and a
  random validation split of the user's images;
* :func:`check_architecture`: refuses a config whose U-Net is another than the
  init model's, naming the first key that differs;
* :func:`finetune_split`: a random share of the user's images
  (:mod:`dsb.io.annotations`) held out for validation, none below
  :data:`MIN_VALIDATION_IMAGES`.

:func:`dsb.training.train_prepared` (``init=``) loads the weights and trains.
Nothing here imports Keras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsb.core.config import Config, ModelConfig
from dsb.core.errors import BadDataError
from dsb.io.annotations import is_user_group

__all__ = [
    "FINETUNE_EPOCHS",
    "FINETUNE_STEPS",
    "LEARNING_RATE_FACTOR",
    "MIN_VALIDATION_IMAGES",
    "finetune_config",
    "check_architecture",
    "check_config_file",
    "finetune_split",
    "user_image_count",
]

#: Epochs of a fine-tune unless ``--epochs`` says otherwise.
FINETUNE_EPOCHS = 10
#: Steps per epoch when the config leaves it to the image count (a pass over five images is one step).
FINETUNE_STEPS = 20
#: The fine-tune learning rate is the config's times this, unless given.
LEARNING_RATE_FACTOR = 0.1
#: With fewer user images than this, nothing is held out: training uses them all.
MIN_VALIDATION_IMAGES = 3
# What decides the weights' shapes and meaning; dropout and the initializer do not.
_ARCHITECTURE = ("level_filters", "convs_per_block", "batch_norm", "upsampling", "outputs", "activation")


# A config file's model keys, and the architecture each decides.
_DECIDES = {"depth": "level_filters", "base_filters": "level_filters", "filters": "level_filters",
            **{key: key for key in _ARCHITECTURE if key != "level_filters"}}


def check_architecture(init: ModelConfig, model: ModelConfig, *, path=None, given=None) -> None:
    """Refuse a U-Net that the init model's weights do not fit.

    Parameters
    ----------
    init : ModelConfig
        The model section of the run to start from.
    model : ModelConfig
        The model section of the new run.
    path : str or os.PathLike, optional
        The file or folder to name in the message.
    given : iterable of str, optional
        The model keys a config file gives (``depth``, ``outputs``...): only what they decide is
        compared, the rest being the init model's anyway. Default: every key.

    Raises
    ------
    BadDataError
        Naming the first key that differs (``filters`` for depth, base filters
        or filters), with both values.
    """
    decided = None if given is None else {_DECIDES[key] for key in given if key in _DECIDES}
    for key in (k for k in _ARCHITECTURE if decided is None or k in decided):
        a, b = getattr(init, key), getattr(model, key)
        a, b = (a(), b()) if callable(a) else (a, b)
        if tuple(np.atleast_1d(a).tolist()) != tuple(np.atleast_1d(b).tolist()):
            name = "filters" if key == "level_filters" else key
            raise BadDataError(
                f"is {_show(b)} in the new run's config but {_show(a)} in the model to fine-tune from; "
                "the weights fit only the same U-Net (drop --config to take the init model's)",
                path=path, where=f"model.{name}",
            )


def check_config_file(init: ModelConfig, path) -> None:
    """Refuse a fine-tune's ``--config`` file whose model section gives another U-Net than ``init``'s,
    naming the file and the key (:func:`check_architecture` on the keys the file gives). A file
    without a model section, or one that gives only dropout or the initializer, passes: a fine-tune
    takes the init model's (:func:`finetune_config`)."""
    import json

    from dsb.core.config import load_config

    config = load_config(path)  # says what is wrong with the file, naming it
    model = json.loads(Path(path).read_text(encoding="utf-8")).get("model") or {}
    check_architecture(init, config.model, path=path, given=set(model))


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)


def finetune_config(
    init: Config,
    train_from: Config | None = None,
    *,
    learning_rate: float | None = None,
    epochs: int | None = None,
) -> Config:
    """The config of a fine-tune run that starts from a run whose config is ``init``.

    Parameters
    ----------
    init : Config
        The config of the run to start from (its ``config.json``).
    train_from : Config, optional
        Whose ``train`` section to start from (``--config``); default ``init``'s.
        Of its other sections only ``preprocess.channel`` is used, where it names one (the
        channel of one's own images, not the model's); the model, the rest of the preprocessing,
        prediction and post-processing are the init model's.
    learning_rate : float, optional
        The fine-tune learning rate; default :data:`LEARNING_RATE_FACTOR`
        times that of the training section.
    epochs : int, optional
        Default :data:`FINETUNE_EPOCHS`.

    Returns
    -------
    Config
        ``split="random"`` (see :func:`finetune_split`), no ``validation_ids``,
        ``steps_per_epoch`` :data:`FINETUNE_STEPS` where the training section
        leaves it at 0, and the minimum learning rate at most the new rate.
    """
    tc = (train_from or init).train
    rate = float(learning_rate) if learning_rate is not None else tc.learning_rate * LEARNING_RATE_FACTOR
    if not rate > 0:
        raise BadDataError(f"is {rate}, expected > 0", where="--learning-rate")
    train = dataclasses.replace(
        tc,
        learning_rate=rate,
        min_learning_rate=min(tc.min_learning_rate, rate),
        epochs=int(epochs) if epochs else FINETUNE_EPOCHS,
        steps_per_epoch=tc.steps_per_epoch or FINETUNE_STEPS,
        split="random",
    )
    config = init.replace(train=train, validation_ids=())
    if train_from is not None and train_from.preprocess.channel is not None:
        config = config.replace(preprocess=dataclasses.replace(config.preprocess, channel=train_from.preprocess.channel))
    return config.check()


def finetune_split(
    ids: Sequence[str], groups: Sequence[str] | None, *, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Train and validation ids of a fine-tune: a random share of the user's images held out.

    Parameters
    ----------
    ids : sequence of str
    groups : sequence of str, optional
        Group of each id; user images are those of ``user:`` groups
        (:func:`dsb.io.annotations.is_user_group`). Without any, all images count
        as the user's.
    fraction : float
        In [0, 1): ``max(1, round(fraction * n))`` of the ``n`` user images are
        held out (at most ``n - 1``), none when ``n`` is below
        :data:`MIN_VALIDATION_IMAGES` or ``fraction`` is 0.
    seed : int

    Returns
    -------
    (train_ids, validation_ids) : tuple of list of str
        Both in the order of ``ids``; every image that is not held out trains,
        the competition's images too when the folder holds them.

    Examples
    --------
    >>> finetune_split(["a", "b"], ["user:x", "user:x"], fraction=0.2, seed=0)
    (['a', 'b'], [])
    """
    ids = [str(i) for i in ids]
    if groups is not None and len(groups) != len(ids):
        raise ValueError(f"`ids` ({len(ids)}) and `groups` ({len(groups)}) must have the same length")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}")
    user = _user_ids(ids, groups)
    n = len(user)
    if n < MIN_VALIDATION_IMAGES or fraction == 0.0:
        return ids, []
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    rng = np.random.default_rng([seed, 7])
    held = {user[j] for j in rng.permutation(n)[:n_val]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def _user_ids(ids: list[str], groups) -> list[str]:
    return sorted(i for i, g in zip(ids, groups or ()) if is_user_group(g)) or sorted(ids)


def user_image_count(ids: Sequence[str], groups: Sequence[str] | None) -> int:
    """How many of ``ids`` are the user's: those of ``user:`` groups, or all when there are none."""
    return len(_user_ids([str(i) for i in ids], groups))
