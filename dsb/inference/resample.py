"""Resampling images by a scale or to a shape: separable linear interpolation in float32."""

from __future__ import annotations

import numpy as np

__all__ = [
    "resample",
    "resample_to",
]


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """An (H, W) float image resampled by ``scale`` (linear; low-passed first when shrinking).

    Parameters
    ----------
    image : (H, W) ndarray of float
    scale : float
        The new size is ``round(H * scale), round(W * scale)``, at least 1.

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> resample(np.ones((10, 20), np.float32), 0.5).shape
    (5, 10)
    """
    if scale == 1.0:
        return np.asarray(image, np.float32)
    return resample_to(image, tuple(max(1, int(round(n * scale))) for n in image.shape[:2]))


def resample_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) float image resampled to ``shape``: linear, low-passed first along a shrinking axis.

    What ``skimage.transform.resize(image, shape, order=1, anti_aliasing=True,
    preserve_range=True)`` computes (pixel centres aligned, edges mirrored, a
    Gaussian of sigma ``(factor - 1) / 2`` before shrinking), to float32
    rounding, but as two separable passes of gathers: several times faster,
    which counts on the prediction path, where every image is resampled.

    Returns
    -------
    (shape[0], shape[1]) ndarray of float32
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"`image` (shape {image.shape}) must be 2-D (H, W)")
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 1:
        raise ValueError(f"`shape` {shape} must be at least 1 pixel a side")
    if shape == image.shape:
        return image
    factors = np.divide(image.shape, shape)
    if (factors > 1).any():
        from scipy import ndimage

        image = ndimage.gaussian_filter(image, np.maximum(0, (factors - 1) / 2), mode="mirror")
    image = _interpolate(image, *_linear_taps(image.shape[0], shape[0]), axis=0)
    return _interpolate(image, *_linear_taps(image.shape[1], shape[1]), axis=1)


def _interpolate(image: np.ndarray, low: np.ndarray, high: np.ndarray, weight: np.ndarray, *, axis: int) -> np.ndarray:
    """``image[low] * (1 - weight) + image[high] * weight`` along ``axis``, the same to the bit, in
    the two gathers' own buffers: no full-size temporaries (a 2x enlargement in 0.6 of the time)."""
    weight = weight[:, None] if axis == 0 else weight
    out = np.take(image, low, axis=axis)
    out *= 1 - weight
    above = np.take(image, high, axis=axis)
    above *= weight
    out += above
    return out


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``target`` pixel centres, the two source pixels around it and the second's weight."""
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    if source == 1:
        position = np.zeros(target)
    else:  # mirrored about the first and last pixel centres
        position = np.abs(position)
        position = np.where(position > source - 1, 2 * (source - 1) - position, position)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, source - 1)
    return low, high, (position - low).astype(np.float32)
