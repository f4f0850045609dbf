"""The functions behind the package's public names (see :mod:`dsb`).

Arrays in, arrays out: a notebook loads a model once with :func:`load_model`,
labels images with :func:`segment` and checks them with :func:`score`. The
command line's folder pipeline (:mod:`dsb.pipeline`, behind ``dsb segment``,
``dsb predict`` and ``dsb evaluate``) runs the same
:func:`dsb.predict.predict_nuclei` call per image.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import check_2d, check_image, check_labels, check_same_shape

__all__ = ["LoadedModel", "load_model", "segment", "score", "score_submission"]


@dataclass(frozen=True, repr=False)
class LoadedModel:
    """A trained network with the config it runs with, as :func:`load_model` returns it.

    Attributes
    ----------
    path : pathlib.Path
        The run or model folder it was read from.
    network : dsb.engines.Network
        The network behind its inference engine: a callable from a
        ``(B, h, w, 1)`` batch to ``(B, h, w, C)`` probabilities.
    config : dsb.config.Config
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
            from .run import load_run

            model, _ = load_run(self.path)
            object.__setattr__(self.network, "model", model)
        return model

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.path)!r}, engine={self.engine!r})"


@functools.lru_cache(maxsize=4)
def _default_model(engine: str, precision: str) -> LoadedModel:
    """The shipped model, read from disk once per session, engine and precision."""
    from .run import default_model_dir

    return _load(default_model_dir(), engine, precision)


def _load(path, engine: str, precision: str) -> LoadedModel:
    from .run import load_network

    network, config = load_network(path, engine, precision)
    return LoadedModel(Path(path), network, config)


def load_model(path=None, *, engine: str = "auto", precision: str = "float32") -> LoadedModel:
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
        for (:func:`dsb.engines.choose_engine`).
    precision : str
        ``"float32"`` (the default), or ``"int8"``: the folder's
        ``model.int8.onnx`` on an ONNX engine, about twice as fast on CPUs
        with integer dot-product units, probabilities within about 0.002 on
        average (:mod:`dsb.quantize`).

    Returns
    -------
    LoadedModel
        Pass it as ``model`` to :func:`segment`; ``.network``, ``.engine`` and
        ``.config`` hold the network, the engine that runs it and its
        :class:`dsb.config.Config`.

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
    from .engines import ENGINE_CHOICES, PRECISIONS

    if engine not in ENGINE_CHOICES:
        raise ValueError(f"`engine` is {engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` is {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if path is None:
        return _default_model(engine, precision)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    return _load(path, engine, precision)


def _check_image(image) -> np.ndarray:
    image = check_image("image", image, pixels=True)
    if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"`image` (dtype {image.dtype}) must hold bools, integers or floats")
    return image


def segment(image, model=None, *, diameter: float | None = None, tta: bool = False) -> np.ndarray:
    """Label the nuclei of one image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Grey, grey+alpha, RGB or RGBA (C = 1 to 4); 8-bit, 16-bit or float,
        fluorescence or brightfield, as read from disk.
    model : str, os.PathLike or LoadedModel, optional
        A run or model folder, or what :func:`load_model` returned (load once,
        then pass it to segment many images). By default the shipped model.
    diameter : float, optional
        The median nucleus diameter in pixels; the image is rescaled so that
        its nuclei have the size the model was trained on. None estimates it.
    tta : bool, default False
        Average the predictions over flips and 90-degree rotations: slower,
        slightly better edges.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 for background, 1..N for the nuclei.

    Raises
    ------
    TypeError
        ``image`` is not 2-D grey or 3-D with 1 to 4 channels, or ``model`` is
        not a folder or a :class:`LoadedModel`.
    ValueError
        ``image`` has no pixels.
    BadDataError
        ``model`` is a folder that holds no usable model.

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
    """
    from .predict import predict_labels

    image = _check_image(image)
    if model is None:
        model = _default_model("auto", "float32")
    elif isinstance(model, (str, os.PathLike)):
        model = _load(model, "auto", "float32")
    elif not isinstance(model, LoadedModel):
        raise TypeError(
            f"`model` must be a folder path or what dsb.load_model returned, got {type(model).__name__}"
        )
    return predict_labels(model.network, model.config, image, tta=tta, diameter=diameter)


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
    from .metric import image_score

    pred = check_labels("pred_labels", pred_labels)
    true = check_labels("true_labels", true_labels)
    check_same_shape("pred_labels", pred, "true_labels", true)
    return image_score(true, pred).score


def score_submission(submission, truth):
    """Score a whole submission against the truth, as Kaggle would.

    Parameters
    ----------
    submission : str, os.PathLike or pandas.DataFrame
        A submission CSV, or a frame with columns ``ImageId`` and
        ``EncodedPixels`` (see :func:`dsb.read_submission`).
    truth : str, os.PathLike or mapping of str to (H, W) ndarray of int
        A Kaggle solution CSV (``ImageId,EncodedPixels,Height,Width[,Usage]``),
        a folder in stage1_train layout (``{id}/images/{id}.png`` and
        ``{id}/masks/*.png``), or ``{ImageId: labels}``.

    Returns
    -------
    score : float
        Mean of the per-image scores (:func:`score`) over the images of the
        truth; an image with no row in the submission scores 0.
    table : pandas.DataFrame
        One row per image of the truth: ``ImageId``, ``score``, the counts at
        IoU 0.5 and 0.75 (``tp_50`` ... ``fn_75``), ``n_true`` and ``n_pred``.

    Raises
    ------
    BadDataError
        A malformed file, a row for an image the truth does not hold, a
        malformed encoding or two overlapping masks (naming the row).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import dsb
    >>> truth = {"a": np.array([[1, 1, 0], [0, 0, 2]])}
    >>> rows = pd.DataFrame({"ImageId": ["a", "a"], "EncodedPixels": ["1 1 3 1", "6 1"]})
    >>> mean, table = dsb.score_submission(rows, truth)
    >>> mean, table["n_pred"].tolist()
    (1.0, [2])
    """
    import pandas as pd

    from .metric import score_labels
    from .submission import SUBMISSION_COLUMNS, load_truth, read_submission, submission_to_labels

    if isinstance(submission, pd.DataFrame):
        missing = [c for c in SUBMISSION_COLUMNS if c not in submission.columns]
        if missing:
            raise ValueError(
                f"`submission` has no column {', '.join(missing)} (columns: {list(submission.columns)})"
            )
        frame, path = submission, None
    elif isinstance(submission, (str, os.PathLike)):
        frame, path = read_submission(submission), submission
    else:
        raise TypeError(f"`submission` must be a CSV path or a DataFrame, got {type(submission).__name__}")
    if isinstance(truth, Mapping):
        truth = {str(i): np.asarray(labels) for i, labels in truth.items()}
        shapes = {i: labels.shape for i, labels in truth.items()}
        for i, labels in truth.items():
            check_2d(f"truth[{i!r}]", labels)
    elif isinstance(truth, (str, os.PathLike)):
        truth, shapes = load_truth(truth)
    else:
        raise TypeError(f"`truth` must be a path or a mapping of ImageId to labels, got {type(truth).__name__}")
    pred = submission_to_labels(frame, shapes, path=path)
    return score_labels(truth, pred)
