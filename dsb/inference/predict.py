"""One raw image to its nuclei: preprocess, choose the scale, predict, watershed, back to the image.

:func:`predict_nuclei` is the whole path; :func:`network_stage` and
:func:`watershed_stage` are its two halves, which a folder pipeline overlaps
(the watershed of one image while the network works on the next);
:func:`predict_labels` returns the label image alone, and
:func:`predict_scaled` the probabilities at the chosen scale (for tuning).
Images that the resampling makes very large are done in overlapping chunks. An image
shrunk for its large nuclei gets a second, finer pass for the small ones the shrink hid
(:mod:`dsb.inference.small_nuclei`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsb.core.config import Config
from dsb.core.labels import areas_and_centres, close_gaps, relabel
from dsb.inference.labels import labels_at_scale, labels_to_image
from dsb.inference.preprocess import preprocess_image
from dsb.inference.probabilities import predict_at_scale
from dsb.inference.scale import choose_scale_and_pass
from dsb.inference.small_nuclei import add_small_nuclei, small_pass_scale

__all__ = [
    "Scaled",
    "Nuclei",
    "predict_scaled",
    "predict_nuclei",
    "network_stage",
    "watershed_stage",
    "predict_labels",
    "use_tta",
    "small_pass",
    "with_small_nuclei",
]


# Above this side at the working scale, an image is predicted in overlapping chunks so that
# memory stays bounded when small nuclei make a large image larger still (2048 x 2048 pixels
# of 6-pixel nuclei are 6800 x 6800 at a diameter of 20).
_CHUNK = 2048


# Context around each chunk, in working pixels: several nuclei and more than the network's reach.
_CHUNK_MARGIN = 128


@dataclass(frozen=True)
class Scaled:
    """Probabilities of one image at the scale the network saw it (:func:`predict_scaled`)."""

    probabilities: np.ndarray
    scale: float
    shape: tuple[int, int]
    diameter: float
    estimated: bool


@dataclass(frozen=True)
class Nuclei:
    """The nuclei of one image (:func:`predict_nuclei`): labels and the scale they were found at.

    ``sure`` is False when the diameter was estimated and the estimate's cross-check could not
    confirm it (:class:`dsb.inference.scale.Scale`): the image deserves a look, or a ``diameter``.
    ``confidence`` holds each nucleus's mean body probability where the network saw it
    (:func:`dsb.inference.labels.labels_at_scale`), entry ``k - 1`` for label ``k``; None
    where it was not measured.
    """

    labels: np.ndarray
    diameter: float
    scale: float
    estimated: bool
    sure: bool = True
    agreement: float = math.nan
    confidence: np.ndarray | None = None


def use_tta(config: Config, tta: bool | None) -> bool:
    """Whether to average over flips and quarter turns: ``tta`` when the caller says, else the run's
    ``predict.tta`` (which ``dsb tune --tta`` sets)."""
    return bool(config.predict.tta) if tta is None else bool(tta)


def _network_input(raw_image, config: Config) -> np.ndarray:

    return preprocess_image(raw_image, config.preprocess)


def predict_scaled(
    model, config: Config, raw_image: np.ndarray, *, tta: bool | None = None, diameter: float | None = None
) -> Scaled:
    """Probabilities of one raw image at the scale :func:`choose_scale` picks, the whole image at once.

    For the post-processing search (:mod:`dsb.workflows.tune`), which keeps the
    probabilities; :func:`predict_nuclei` bounds memory on large images.
    """
    tta = use_tta(config, tta)
    gray = _network_input(raw_image, config)
    chosen, prob, _ = choose_scale_and_pass(model, config, gray, diameter)
    if prob is None or tta:
        prob = predict_at_scale(model, gray, chosen.scale, config, tta=tta)
    return Scaled(prob, chosen.scale, gray.shape[:2], chosen.diameter, chosen.estimated)


def _segment_in_chunks(model, config: Config, gray: np.ndarray, scale: float, *,
                       tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a large image, chunk by chunk at the working scale, and each nucleus's confidence.

    Each chunk is a core of ``_CHUNK`` working pixels a side with
    ``_CHUNK_MARGIN`` of context; it keeps the nuclei whose centre lies in
    its core, which the margin holds whole. Memory follows the chunk, not the
    image. A nucleus's confidence is measured in the chunk that keeps it.
    """
    height, width = gray.shape[:2]
    core = max(1, int(_CHUNK / scale))
    margin = int(math.ceil(_CHUNK_MARGIN / scale))
    out = np.zeros((height, width), np.int32)
    confidence = [np.zeros(0, np.float32)]
    count = 0
    for r0 in range(0, height, core):
        for c0 in range(0, width, core):
            r1, c1 = min(r0 + core, height), min(c0 + core, width)
            er0, ec0 = max(0, r0 - margin), max(0, c0 - margin)
            er1, ec1 = min(height, r1 + margin), min(width, c1 + margin)
            part = gray[er0:er1, ec0:ec1]
            prob = predict_at_scale(model, part, scale, config, tta=tta)
            labels, sure = labels_at_scale(prob, scale, part.shape[:2], config.postprocess,
                                           return_confidence=True)
            del prob
            labels, sure = with_small_nuclei(labels, sure, small_pass(model, config, part, scale, tta=tta),
                                             config)
            n = int(labels.max())
            if not n:
                continue
            _, centre_r, centre_c = areas_and_centres(labels, n)
            centre_r, centre_c = centre_r + er0, centre_c + ec0
            keep = (centre_r >= r0) & (centre_r < r1) & (centre_c >= c0) & (centre_c < c1)
            labels = relabel(labels, keep)
            confidence.append(sure[keep[1:]])
            window = out[er0:er1, ec0:ec1]
            free = (labels > 0) & (window == 0)
            window[free] = labels[free] + count
            count += int(keep[1:].sum())
    # A nucleus whose every pixel an earlier chunk's took has gone: its confidence goes with it.
    out, present = close_gaps(out, count)
    return out, np.concatenate(confidence)[present[1:]]


def small_pass(model, config: Config, gray: np.ndarray, scale: float, *, tta: bool) -> tuple | None:
    """The finer pass of an image predicted shrunk at ``scale``: its probabilities and their scale
    (:func:`dsb.inference.small_nuclei.small_pass_scale`), or None when it gets none."""
    fine = small_pass_scale(scale, config.predict.small_pass)
    if fine is None:
        return None
    return predict_at_scale(model, gray, fine, config, tta=tta), fine


def with_small_nuclei(labels: np.ndarray, confidence: np.ndarray, fine: tuple | None,
                      config: Config) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` (on the image's grid) with the small nuclei of the finer pass ``fine``
    (:func:`small_pass`) added (:func:`dsb.inference.small_nuclei.add_small_nuclei`)."""
    if fine is None:
        return labels, confidence
    prob, scale = fine
    fine_labels, fine_confidence = labels_at_scale(prob, scale, labels.shape[:2], config.postprocess,
                                                   return_confidence=True)
    return add_small_nuclei(labels, confidence, fine_labels, fine_confidence)


def predict_nuclei(
    model, config: Config, raw_image: np.ndarray, *, tta: bool | None = None, diameter: float | None = None
) -> Nuclei:
    """Nuclei of one raw image: preprocess, resample to the network's scale, predict, watershed, back.

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
    raw_image : (H, W) or (H, W, C) ndarray
    tta : bool, optional
        Average over flips and quarter turns; None follows the run's ``predict.tta``
        (:func:`use_tta`).
    diameter : float, optional
        The image's median nucleus diameter in pixels; None estimates it
        (:func:`choose_scale`).

    Returns
    -------
    Nuclei
        ``labels`` (H, W) int32 on the image's grid (0 background, 1..N), the
        ``diameter`` used or estimated, the ``scale``, whether it was ``estimated``,
        and each nucleus's ``confidence`` (its mean body probability).
    """
    return watershed_stage(network_stage(model, config, raw_image, tta=tta, diameter=diameter), config)


def network_stage(model, config: Config, raw_image: np.ndarray, *, tta: bool | None = None,
                  diameter: float | None = None):
    """The network's half of :func:`predict_nuclei`: probabilities at the chosen scale.

    Returns what :func:`watershed_stage` takes: the two halves let a caller
    run the watershed of one image while the network works on the next
    (:func:`dsb.workflows.pipeline.predict_each`). An image large enough to be done in
    chunks comes back as its finished :class:`Nuclei`.
    """
    tta = use_tta(config, tta)
    gray = _network_input(raw_image, config)
    chosen, prob, labels = choose_scale_and_pass(model, config, gray, diameter)
    if max(gray.shape[:2]) * chosen.scale > _CHUNK + 2 * _CHUNK_MARGIN:
        labels, confidence = _segment_in_chunks(model, config, gray, chosen.scale, tta=tta)
        return Nuclei(labels, chosen.diameter, chosen.scale, chosen.estimated, chosen.sure, chosen.agreement,
                      confidence)
    if prob is None or tta:
        prob, labels = predict_at_scale(model, gray, chosen.scale, config, tta=tta), None
    return prob, labels, chosen, small_pass(model, config, gray, chosen.scale, tta=tta), gray.shape[:2]


def watershed_stage(stage, config: Config) -> Nuclei:
    """The other half of :func:`predict_nuclei`: nuclei from :func:`network_stage`'s probabilities
    (and the estimate's watershed of them at the working scale, when it made one)."""
    if isinstance(stage, Nuclei):
        return stage
    prob, labels, chosen, fine, shape = stage
    if labels is None:
        labels, confidence = labels_at_scale(prob, chosen.scale, shape, config.postprocess,
                                             return_confidence=True)
    else:
        labels, confidence = labels_to_image(labels, prob, chosen.scale, shape, config.postprocess,
                                             return_confidence=True)
    labels, confidence = with_small_nuclei(labels, confidence, fine, config)
    return Nuclei(labels, chosen.diameter, chosen.scale, chosen.estimated, chosen.sure, chosen.agreement,
                  confidence)


def predict_labels(
    model, config: Config, raw_image: np.ndarray, *, tta: bool | None = None, diameter: float | None = None
) -> np.ndarray:
    """Nuclei of one raw image as a label image (:func:`predict_nuclei`).

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
        The run's config (preprocess, predict, postprocess and model sections).
    raw_image : (H, W) or (H, W, C) ndarray
        As read from disk: grey, RGB or RGBA, 8 or 16 bit.
    tta : bool, optional
        Test-time augmentation (see :func:`predict_probabilities`); None follows the run's
        ``predict.tta`` (:func:`use_tta`).
    diameter : float, optional
        The median nucleus diameter in pixels; None estimates it.

    Returns
    -------
    (H, W) ndarray of int32
        0 background, nuclei 1..N.
    """
    return predict_nuclei(model, config, raw_image, tta=tta, diameter=diameter).labels
