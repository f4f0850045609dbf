"""The functions behind the package's public names (see :mod:`dsb`).

Arrays in, arrays out: a notebook loads a model once with :func:`load_model`,
labels images with :func:`segment`, measures their nuclei with :func:`measure` and checks them
with :func:`score`. The
command line's folder pipeline (:mod:`dsb.workflows.pipeline`, behind ``dsb segment``,
``dsb predict`` and ``dsb evaluate``) runs the same
:func:`dsb.inference.predict.predict_nuclei` call per image.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsb.core.validate import check_image, check_labels, check_same_shape

__all__ = ["LoadedModel", "load_model", "segment", "measure", "score"]


@dataclass(frozen=True, repr=False)
class LoadedModel:
    """A trained network with the config it runs with, as :func:`load_model` returns it.

    Attributes
    ----------
    path : pathlib.Path
        The run or model folder it was read from.
    network : dsb.network.engines.Network
        The network behind its inference engine: a callable from a
        ``(B, h, w, 1)`` batch to ``(B, h, w, C)`` probabilities.
    config : dsb.core.config.Config
        Preprocessing, tiling and tuned post-processing of the run.
    """

    path: Path
    network: object
    config: object

    @property
    def engine(self) -> str:
        """The inference engine: ``"keras"``, ``"onnx"`` or ``"openvino"``."""
        return self.network.engine

    @property
    def keras_model(self):
        """The network as a Keras model (loaded from ``model.keras`` on first use when another engine runs it)."""
        model = getattr(self.network, "model", None)
        if model is None:
            from dsb.network.model_folder import load_run

            model, _ = load_run(self.path)
            object.__setattr__(self.network, "model", model)
        return model

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.path)!r}, engine={self.engine!r})"


@functools.lru_cache(maxsize=4)
def _default_model(engine: str, precision: str) -> LoadedModel:
    """The shipped model, read from disk once per session, engine and precision."""
    from dsb.network.model_folder import default_model_dir

    return _load(default_model_dir(), engine, precision)


def _load(path, engine: str, precision: str) -> LoadedModel:
    from dsb.network.engines import load_network

    network, config = load_network(path, engine, precision)
    return LoadedModel(Path(path), network, config)


def load_model(path=None, *, engine: str = "auto", precision: str = "auto") -> LoadedModel:
    """Load a trained model once, to segment many images with it.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A run folder (``dsb train --out``) or an exported model folder, holding
        ``model.keras`` and ``config.json``. By default the model shipped with
        the package (``dsb/models/default``), which is read from disk only once
        per session.
    engine : str
        ``"keras"``, ``"onnx"`` (ONNX Runtime), ``"openvino"``, or ``"auto"``
        (the default): the fastest one installed that the folder has a file
        for (:func:`dsb.network.engines.choose_engine`).
    precision : str
        ``"auto"`` (the default): on OpenVINO, bfloat16 where the CPU has
        bfloat16 units, else int8 on an x86 CPU (AVX2 or later) where
        the folder has a ``model.int8.onnx``, float32 otherwise
        (:func:`dsb.network.engines.resolve_precision`);
        ``"float32"``; ``"bfloat16"``; or ``"int8"``: the folder's
        ``model.int8.onnx`` on an ONNX engine (OpenVINO computes the network
        in it two to three times as fast as in float32), probabilities within about 0.002 on
        average (:mod:`dsb.network.quantize`). ``.network.precision`` says which runs.

    Returns
    -------
    LoadedModel
        Pass it as ``model`` to :func:`segment`; ``.network``, ``.engine`` and
        ``.config`` hold the network, the engine that runs it and its
        :class:`dsb.core.config.Config`.

    Raises
    ------
    BadDataError
        The folder, its ``config.json`` or its ``model.keras`` is missing or
        wrong, or its ``model.onnx`` is damaged or from another model (the
        message names the file).
    EnvironmentProblem
        ``path`` is None and this installation ships no model, or the engine
        asked for is not installed.

    Examples
    --------
    >>> import dsb
    >>> model = dsb.load_model()
    >>> model.path.name, model.config.model.outputs
    ('default', ('body', 'border', 'contact'))
    >>> dsb.load_model() is model  # the shipped model is loaded once
    True
    """
    from dsb.network.engines import ENGINE_CHOICES
    from dsb.network.model_folder import PRECISION_CHOICES

    if engine not in ENGINE_CHOICES:
        raise ValueError(f"`engine` is {engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"`precision` is {precision!r}; expected one of {', '.join(PRECISION_CHOICES)}")
    if path is None:
        return _default_model(engine, precision)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    return _load(path, engine, precision)


def _check_image(image, channel: int | None = None) -> np.ndarray:
    """``image`` as an array the network can take, channels last: its ``channel`` picked out, or its
    channels checked (:func:`dsb.inference.preprocess.mixed_channels` warns of a luminance that may
    hide the nuclei)."""
    from dsb.core.errors import BadDataError
    from dsb.io.channels import pick_channel

    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise TypeError(f"`image` (shape {image.shape}) must be (H, W), (H, W, C) or (C, H, W)")
    try:
        image = pick_channel(image, channel)
    except BadDataError as exc:
        kind = ValueError if channel is not None and "no channel" in exc.message else TypeError
        said, named = re.subn(r"^(?:image|array) of shape (\(.*?\))", r"`image` (shape \1)", exc.message)
        raise kind(said if named else f"`image` {said}") from None
    image = check_image("image", image, pixels=True)
    if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"`image` (dtype {image.dtype}) must hold bools, integers or floats")
    if channel is None and image.ndim == 3:
        from dsb.inference.preprocess import mixed_channels

        why = mixed_channels(image)
        if why:
            warnings.warn(f"`image` is {why}; give channel=N for the DNA stain's channel alone", stacklevel=3)
    return image


def segment(image, model=None, *, diameter: float | None = None, tta: bool | None = None,
            scale_factor: float | None = None, return_confidence: bool = False, channel: int | None = None):
    """Label the nuclei of one image.

    Parameters
    ----------
    image : (H, W), (H, W, C) or (C, H, W) array_like
        Grey, grey+alpha, RGB or RGBA (C = 1 to 4; channels last when the last
        axis has up to 4 entries, else first); 8-bit, 16-bit or float,
        fluorescence or brightfield, as read from disk. With ``channel``, any
        number of channels, first or last. Without it, a fluorescence image
        whose colour channels show different stains is segmented from their
        luminance, with a warning (:func:`dsb.inference.preprocess.mixed_channels`).
    model : str, os.PathLike or LoadedModel, optional
        A run or model folder, or what :func:`load_model` returned (load once,
        then pass it to segment many images). By default the shipped model.
    diameter : float, optional
        The median nucleus diameter in pixels; the image is rescaled so that
        its nuclei have the size the model was trained on. None estimates it.
    tta : bool, optional
        Average the predictions over flips and 90-degree rotations: eight
        times the network's work, slightly better edges. None (the default)
        follows the model's ``predict.tta`` (off for the shipped model).
    scale_factor : float, optional
        Predict this many times larger than the estimated (or given) scale,
        in [0.5, 2]: above 1 the network sees nuclei a little larger than it
        was trained on, which separates more touching nuclei in some data,
        at up to the factor's square in the network's time. None (the
        default) follows the model's ``predict.scale_factor``, which ``dsb
        tune --scale-factors`` chooses (1 for the shipped model).
    return_confidence : bool
        Also return how sure the network is of each nucleus.
    channel : int, optional
        Segment only this channel, counted from 0 (in RGB: 0 red, 1 green, 2
        blue): the DNA stain (DAPI, Hoechst) of a multi-channel fluorescence
        image. The channel axis is the shorter of the first and last axes
        (:func:`dsb.io.channels.axis_roles`). A model fine-tuned on one channel
        (``dsb train --channel``) does not pick it for you: a multi-channel image
        without ``channel`` gets a warning that names the model's.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 for background, 1..N for the nuclei.
    confidence : (N,) ndarray of float32
        Only with ``return_confidence``: each nucleus's mean body probability
        in [0, 1], entry ``k - 1`` for label ``k``. The model drops nuclei
        under its ``postprocess.min_confidence``; among those kept, the
        lower the confidence, the likelier a nucleus is a false one.

    Raises
    ------
    TypeError
        ``image`` is not 2-D grey or 3-D with 1 to 4 channels (any number
        with ``channel``), or ``model`` is not a folder or a :class:`LoadedModel`.
    ValueError
        ``image`` has no pixels, or no channel ``channel``.
    BadDataError
        ``model`` is a folder that holds no usable model, or ``scale_factor``
        is outside [0.5, 2].

    Examples
    --------
    Three bright blurred discs on a dark background, as in fluorescence:

    >>> import numpy as np
    >>> from scipy import ndimage
    >>> import dsb
    >>> rr, cc = np.indices((96, 128))
    >>> discs = sum(((rr - r) ** 2 + (cc - c) ** 2 <= 12**2) for r, c in [(30, 30), (30, 90), (70, 60)])
    >>> image = (ndimage.gaussian_filter(discs * 180.0, 1.5) + 15).astype(np.uint8)
    >>> labels = dsb.segment(image)
    >>> labels.shape, labels.dtype.name, int(labels.max())
    ((96, 128), 'int32', 3)
    >>> labels, confidence = dsb.segment(image, return_confidence=True)
    >>> confidence.shape, bool((confidence > 0.5).all())
    ((3,), True)
    """
    from dsb.inference.predict import predict_labels, predict_nuclei

    image = _check_image(image, channel)
    if scale_factor is not None:  # before a model is read
        from dsb.core.config import check_scale_factor

        check_scale_factor(scale_factor)
    if model is None:
        model = _default_model("auto", "auto")
    elif isinstance(model, (str, os.PathLike)):
        model = _load(model, "auto", "auto")
    elif not isinstance(model, LoadedModel):
        raise TypeError(
            f"`model` must be a folder path or what dsb.load_model returned, got {type(model).__name__}"
        )
    config = model.config.with_scale_factor(scale_factor)
    learnt = config.preprocess.channel
    if channel is None and learnt is not None and image.ndim == 3 and image.shape[2] > 1:
        from dsb.io.channel_names import channel_words

        give = (f"channel={learnt}" if isinstance(learnt, int) else
                f"channel=N, that channel's number in this array (arrays carry no names)")
        warnings.warn(f"the model learnt from {channel_words(learnt)} of its training images; give {give} to "
                      "segment the same channel of this one (now: all its channels as one grey image)", stacklevel=2)
    if return_confidence:
        nuclei = predict_nuclei(model.network, config, image, tta=tta, diameter=diameter)
        return nuclei.labels, nuclei.confidence
    return predict_labels(model.network, config, image, tta=tta, diameter=diameter)


def measure(labels, image, *, channel: int | None = None, pixel_size: float | None = None,
            cell_expansion: float | None = None):
    """Measure each nucleus of a label image in its image: the table ``dsb segment`` writes.

    Parameters
    ----------
    labels : (H, W) array_like of int
        0 background, one value per nucleus (any values: each row keeps its nucleus's), as
        :func:`segment` returns or any tool writes.
    image : (H, W), (H, W, C) or (C, H, W) array_like
        The image, as :func:`segment` takes it; the intensities are its values as stored (the
        luminance of colour).
    channel : int, optional
        The DNA stain's channel: the intensities are that channel's, and each nucleus gets its mean in
        every channel of the image too (``mean_intensity_c0``, ...).
    pixel_size : float, optional
        Micrometres a pixel: adds the sizes in micrometres (``area_um2``, ...).
    cell_expansion : float, optional
        Grow each nucleus by up to this many pixels into its cell (:func:`dsb.workflows.cells.grow_cells`):
        adds its cell's and cytoplasm's area and mean intensity (``cell_area``, ``cytoplasm_mean_intensity``,
        and with ``channel`` each channel's, ``cytoplasm_mean_intensity_c1``...).

    Returns
    -------
    pandas.DataFrame
        One row per nucleus, by label: centre, bounding box, whether the image's edge cuts it,
        area, perimeter, shape (eccentricity, axes, angle, circularity, solidity), mean and
        integrated intensity (:func:`dsb.workflows.segment_files.measure_nuclei`, whose columns
        ``docs/segment.md`` describes), without ``confidence``; its cell's after them.

    Raises
    ------
    TypeError
        ``image`` as :func:`segment` refuses it; ``labels`` not integers.
    ValueError
        ``labels`` and ``image`` of different sizes, ``image`` without ``channel``, a ``pixel_size``
        that is no positive number, or a ``cell_expansion`` that is no positive number of pixels up to 1000.

    Examples
    --------
    >>> import numpy as np
    >>> import dsb
    >>> labels = np.zeros((6, 8), np.int32); labels[1:4, 1:4] = 5
    >>> image = np.where(labels > 0, 200, 10).astype(np.uint8)
    >>> row = dsb.measure(labels, image, pixel_size=0.5).iloc[0]
    >>> int(row.label), int(row.area), float(row.mean_intensity), float(row.area_um2)
    (5, 9, 200.0, 2.25)
    """
    from dsb.inference.preprocess import raw_intensity
    from dsb.io.channels import axis_roles, select
    from dsb.workflows.calibration import check_micrometres
    from dsb.workflows.cells import grow_cells
    from dsb.workflows.segment_files import check_cell_options, measure_nuclei

    picked = _check_image(image, channel)
    shape = np.shape(labels)
    if shape != picked.shape[:2]:
        raise ValueError(f"`labels` (shape {shape}) must have the image's height and width {picked.shape[:2]}")
    every = None
    if channel is not None:  # every channel, channels last
        stored = np.asarray(image)
        every = select(stored, axis_roles(stored.shape, channel=channel)[0], None)
        every = every[..., None] if every.ndim == 2 else every
    size = None if pixel_size is None else check_micrometres(pixel_size)
    cell_expansion, _ = check_cell_options(cell_expansion, None)
    cells = None if cell_expansion is None else grow_cells(labels, cell_expansion)
    return measure_nuclei(labels, raw_intensity(picked), None, pixel_size=size, channels=every, cells=cells)


def score(pred_labels, true_labels) -> float:
    """The competition metric on one image.

    For each IoU threshold t in 0.50, 0.55, ..., 0.95 a predicted nucleus is a
    true positive when its IoU with a true nucleus is above t; the image scores
    the mean over t of TP / (TP + FP + FN). Nothing to find and nothing found
    scores 1.

    Parameters
    ----------
    pred_labels, true_labels : (H, W) array_like of int or bool
        Instance labels, 0 for background; values need not be consecutive.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    TypeError
        An array is not 2-D or does not hold integers.
    ValueError
        The shapes differ, or a label is negative.

    Examples
    --------
    >>> import dsb
    >>> true = [[1, 1, 0, 2, 2]]
    >>> dsb.score(true, true)
    1.0
    >>> dsb.score([[1, 1, 0, 0, 0]], true)  # one of two found: 1 / (1 + 0 + 1)
    0.5
    """
    from dsb.kaggle.metric import image_score

    pred = check_labels("pred_labels", pred_labels)
    true = check_labels("true_labels", true_labels)
    check_same_shape("pred_labels", pred, "true_labels", true)
    return image_score(true, pred).score
