"""The network over an image of any size: tiled calls, and test-time augmentation.

:func:`predict_probabilities` runs the network over an image of any size
(:func:`dsb.inference.tiling.predict_tiled`), optionally averaged over the
eight flips and 90-degree rotations. The model is called through
``predict_on_batch`` when it has one (a Keras model: compiled once per tile
shape, on whatever device the backend uses), or called directly otherwise (any
function from a ``(B, h, w, 1)`` batch to ``(B, h, w, C)`` probabilities), so
tests can stand in a plain function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dsb.core.config import Config, PredictConfig
from dsb.core.validate import check_gray
from dsb.inference.resample import resample
from dsb.inference.tiling import predict_tiled

__all__ = [
    "DIHEDRAL",
    "batch_predictor",
    "predict_probabilities",
]


# The eight symmetries of the square: (quarter turns, flip left-right first).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def batch_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a ``(B, h, w, 1)`` float32 batch to ``(B, h, w, C)`` float32 numpy.

    Keras models go through ``predict_on_batch`` (a compiled function; the
    same call on CPU and GPU); anything else is called as ``model(batch)``.
    """
    if hasattr(model, "predict_on_batch"):
        import keras

        return lambda batch: np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)), np.float32)
    if not callable(model):
        raise TypeError(f"`model` ({type(model).__name__}) must be a Keras model or a callable")
    return lambda batch: np.asarray(model(batch), np.float32)


def predict_probabilities(
    model, image_gray: np.ndarray, config: PredictConfig, *, tta: bool = False, multiple: int = 16
) -> np.ndarray:
    """Per-pixel probabilities for a preprocessed image of any size.

    Parameters
    ----------
    model : keras.Model or callable
        Maps ``(B, h, w, 1)`` float32 to ``(B, h, w, C)`` probabilities.
    image_gray : (H, W) or (H, W, 1) ndarray of float32
        The network input (:func:`dsb.inference.preprocess.preprocess_image`).
    config : PredictConfig
        Tile size, overlap and batch size.
    tta : bool
        Average over the eight flips and quarter turns, each prediction turned
        back to the image's orientation first.
    multiple : int
        Tile sides must be multiples of this (:func:`dsb.network.unet.size_multiple`).

    Returns
    -------
    (H, W, C) ndarray of float32
    """
    predict_batch = batch_predictor(model)
    image = check_gray("image_gray", np.asarray(image_gray, np.float32))

    def run(img: np.ndarray) -> np.ndarray:
        return predict_tiled(
            predict_batch, img, tile_size=config.tile_size, overlap=config.overlap,
            batch_size=config.batch_size, multiple=multiple, context=config.context,
        )

    if not tta:
        return run(image)
    total = None
    for turns, flip in DIHEDRAL:
        view = np.rot90(image[:, ::-1] if flip else image, turns)
        prob = np.rot90(run(view), -turns, axes=(0, 1))
        prob = prob[:, ::-1] if flip else prob
        total = prob.copy() if total is None else total + prob
    return total / np.float32(len(DIHEDRAL))


def predict_at_scale(model, gray: np.ndarray, scale: float, config: Config, *, tta: bool = False) -> np.ndarray:
    return predict_probabilities(
        model, resample(gray, scale), config.predict, tta=tta, multiple=config.model.size_multiple()
    )
