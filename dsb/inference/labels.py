"""Nuclei back on the image's own grid: labels found at the working scale, resampled and refitted."""

from __future__ import annotations

import math

import numpy as np

from dsb.core.config import PostprocessConfig
from dsb.core.labels import close_gaps
from dsb.inference.resample import resample_to
from dsb.inference.watershed import (
    grow_into_mask,
    labels_from_probabilities,
    nucleus_confidence,
)

__all__ = [
    "labels_to_shape",
    "labels_at_scale",
    "labels_to_image",
]


def labels_to_shape(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels resampled to ``shape`` by the nearest pixel (pixel centres aligned), renumbered 1..N.

    Each output pixel takes the label under its centre, so a nucleus keeps its
    shape at the new resolution and no label value is invented.

    Parameters
    ----------
    labels : (h, w) ndarray of int
    shape : (int, int)

    Returns
    -------
    (H, W) ndarray of int32

    Examples
    --------
    >>> lab = np.array([[0, 1], [2, 2]])
    >>> labels_to_shape(lab, (4, 4))
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 2, 2],
           [2, 2, 2, 2]], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels.astype(np.int32, copy=False)
    # A nucleus smaller than a pixel of the new grid may vanish: close the gap in the numbering.
    return close_gaps(_sampled(labels, shape), int(labels.max(initial=0)))[0]


def _sampled(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The label under each pixel centre of ``shape``, numbers kept."""
    rows = _nearest(labels.shape[0], shape[0])
    cols = _nearest(labels.shape[1], shape[1])
    # Rows, then columns, by np.take: a third of the time of one np.ix_ lookup.
    return np.take(np.take(labels, rows, axis=0), cols, axis=1).astype(np.int32, copy=False)


def _nearest(source: int, target: int) -> np.ndarray:
    """For each of ``target`` pixel centres, the index of the source pixel under it."""
    centres = (np.arange(target) + 0.5) * (source / target)
    return np.minimum(centres.astype(np.int64), source - 1)


def labels_at_scale(prob: np.ndarray, scale: float, shape: tuple[int, int], config: PostprocessConfig, *,
                    return_confidence: bool = False):
    """Nuclei from probabilities at the working scale, on the image's own grid.

    The watershed runs where the network saw the image (its thresholds and
    sizes are in the network's pixels); the labels then go back to ``shape``
    by the nearest pixel. Where the image was shrunk (large nuclei), each
    nucleus is then fitted to the body probability brought back to full
    resolution, so outlines are not blocky.

    Parameters
    ----------
    prob : (h, w, C) ndarray of float
        The network's probabilities at the working scale.
    scale : float
        Working size over the image's size.
    shape : (int, int)
        The image's own shape.
    config : PostprocessConfig
    return_confidence : bool
        Also return each nucleus's confidence: its mean body probability at the working scale,
        where the network saw it (:func:`dsb.inference.watershed.nucleus_confidence`; the
        measure ``min_confidence`` drops nuclei by, so no kept nucleus is below it).

    Returns
    -------
    labels : (H, W) ndarray of int32
    confidence : (N,) ndarray of float32
        Only with ``return_confidence``: entry ``k - 1`` for label ``k``.
    """
    return labels_to_image(labels_from_probabilities(prob, config), prob, scale, shape, config,
                           return_confidence=return_confidence)


def labels_to_image(
    labels: np.ndarray, prob: np.ndarray, scale: float, shape: tuple[int, int], config: PostprocessConfig, *,
    return_confidence: bool = False,
):
    """Labels found at the working scale brought back to the image's grid, and with ``return_confidence``
    each nucleus's confidence (see :func:`labels_at_scale`)."""
    measured = nucleus_confidence(labels, prob[:, :, 0]) if return_confidence else None
    if labels.shape != tuple(shape):
        n = int(labels.max(initial=0))
        labels = _sampled(labels, shape)
        if scale < 1.0:
            mask = resample_to(prob[:, :, 0], shape) > config.mask_threshold
            labels = grow_into_mask(labels, mask, math.ceil(1.0 / scale))
        # A nucleus smaller than a pixel of the image, or outside its mask there, is gone.
        labels, present = close_gaps(labels, n)
        if return_confidence:
            measured = measured[present[1:]]
    return (labels, measured) if return_confidence else labels
