"""Copy-paste crowding: a crowded training crop made from a sparse one.

Crowded fields are where a segmentation loses nuclei, to merges with their
neighbours, and the training images hold few of them. :func:`paste_neighbours`
copies whole nuclei of a crop (their pixels and their mask, flipped and
rotated at random) and pastes each against another nucleus of the same crop,
at a distance drawn around the sum of their radii, so that the two touch or
nearly touch. The targets are then derived from the new labels
(:func:`dsb.training.loader.make_targets`), so the border and contact
channels learn the new contacts. Pasting nuclei of the same crop keeps their
size, texture and stain those of the image.

Pure functions on arrays; every random number comes from the
:class:`numpy.random.Generator` passed in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dsb.core.config import TrainConfig
from dsb.core.labels import areas_and_centres, touching_edge

__all__ = ["paste_neighbours"]

# The defaults are the config's (`train.crowding_overlap`, `train.crowding_gap`), kept there.
# A copy is pasted only where it covers at most this share of a nucleus already there (and of its
# own area): touching neighbours, not nuclei hidden under others.
MAX_OVERLAP = TrainConfig.crowding_overlap

# Distance between the centres of the copy and its neighbour, as a factor of the sum of their
# equivalent radii: from slightly overlapping outlines to a gap of a few pixels.
GAP = tuple(TrainConfig.crowding_gap)

# Places tried for each copy before it is given up.
TRIES = 6


def _whole(labels: np.ndarray, n: int, min_area: int) -> np.ndarray:
    """Labels 1..n that do not reach the crop's edge and have at least ``min_area`` pixels."""
    area = np.bincount(labels.ravel(), minlength=n + 1)
    ids = np.flatnonzero(~touching_edge(labels, n) & (area >= min_area))
    return ids[ids > 0]


def paste_neighbours(
    gray: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    copies: int | None = None,
    min_area: int = 9,
    gap: tuple[float, float] = GAP,
    max_overlap: float = MAX_OVERLAP,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste copies of a crop's own nuclei against its nuclei.

    Parameters
    ----------
    gray : (H, W) ndarray of float
        The crop as the network sees it.
    labels : (H, W) ndarray of int
        Its nuclei, 0 background.
    rng : numpy.random.Generator
    copies : int, optional
        How many copies to try; by default between 1 and the number of
        whole nuclei in the crop (at most 8), drawn from ``rng``.
    min_area : int
        Nuclei smaller than this (in pixels) are not copied.
    gap : (float, float)
        The distance between the centres of a copy and its neighbour is drawn
        uniform in this range, as a factor of the sum of their equivalent
        radii (1: discs that just touch; below 1 they overlap).
    max_overlap : float
        A place is taken only where the copy covers at most this share of
        any nucleus already there and of its own area; the copy is pasted
        over what it covers.

    Returns
    -------
    gray : (H, W) ndarray of float32
    labels : (H, W) ndarray of int32
        The crop with the copies: each copy a new label after the crop's
        own, its pixels taken from the nucleus it copies. A copy that finds
        no free place (inside the crop, covering at most ``max_overlap``
        of a nucleus) is left out; a crop without a whole nucleus comes back
        unchanged.

    Examples
    --------
    >>> labels = np.zeros((64, 64), np.int32); labels[28:36, 28:36] = 1
    >>> gray = (labels > 0).astype(np.float32)
    >>> _, out = paste_neighbours(gray, labels, np.random.default_rng(0), copies=3)
    >>> int(out.max()) > 1
    True
    """
    gray = np.array(gray, np.float32)
    labels = np.array(labels, np.int32)
    if gray.shape != labels.shape or gray.ndim != 2:
        raise ValueError(f"`gray` {gray.shape} and `labels` {labels.shape} must be one 2-D shape")
    low, high = (float(g) for g in gap)
    if not 0 < low <= high:
        raise ValueError(f"`gap` must be two factors 0 < low <= high, got {gap}")
    if not 0 <= max_overlap < 1:
        raise ValueError(f"`max_overlap` must be in [0, 1), got {max_overlap}")
    n = int(labels.max(initial=0))
    sources = _whole(labels, n, min_area)
    if not sources.size:
        return gray, labels
    original_gray, original_labels = gray.copy(), labels.copy()
    if copies is None:
        copies = int(rng.integers(1, min(sources.size, 8) + 1))
    boxes = ndimage.find_objects(labels)
    next_id = n + 1
    for _ in range(copies):
        source = int(rng.choice(sources))
        box = boxes[source - 1]
        # Copied from the crop as it was: a copy is never a copy of a copy.
        mask, pixels = original_labels[box] == source, original_gray[box]
        if rng.random() < 0.5:
            mask, pixels = mask[::-1], pixels[::-1]
        turns = int(rng.integers(4))
        next_id = _place(gray, labels, rng, np.rot90(mask, turns), np.rot90(pixels, turns), next_id,
                         (low, high), max_overlap)
    return gray, labels


def _place(gray, labels, rng, mask, pixels, next_id: int, gap, max_overlap: float) -> int:
    """Paste one copy (``mask``, ``pixels``) against a random nucleus; return the next free label."""
    n = next_id - 1
    area, centre_r, centre_c = areas_and_centres(labels, n)
    present = np.flatnonzero(area[1:] > 0) + 1
    if not present.size:
        return next_id
    own_r, own_c = (np.array(mask.shape) - 1) / 2.0
    own_radius = np.sqrt(mask.sum() / np.pi)
    height, width = labels.shape
    for _ in range(TRIES):
        neighbour = int(rng.choice(present))
        distance = (own_radius + np.sqrt(area[neighbour] / np.pi)) * rng.uniform(*gap)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        top = int(round(centre_r[neighbour] + distance * np.sin(angle) - own_r))
        left = int(round(centre_c[neighbour] + distance * np.cos(angle) - own_c))
        if top < 0 or left < 0 or top + mask.shape[0] > height or left + mask.shape[1] > width:
            continue
        window = np.s_[top : top + mask.shape[0], left : left + mask.shape[1]]
        under = labels[window][mask]
        covered = np.bincount(under, minlength=n + 1)[1:]
        if covered.sum() > max_overlap * mask.sum() or (covered > max_overlap * area[1:]).any():
            continue
        labels[window][mask] = next_id
        gray[window][mask] = pixels[mask]
        return next_id + 1
    return next_id
