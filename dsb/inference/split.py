"""Nuclei that the watershed merged, split again: re-seeded at stricter thresholds, kept by shape.

In a crowded field, two or three touching nuclei may share one watershed
marker when the network's border between them is faint: their union comes out
as one large, dented nucleus. :func:`split_merged` looks again at each nucleus
much larger than the image's median one (``split_ratio`` times its area) whose
outline has a dent (:func:`dent_depth` at least :data:`MIN_DENT` of the median
nucleus's diameter, and at least :data:`DENT_FLOOR` pixels), and re-seeds it alone with
the marker rule of :mod:`dsb.inference.watershed` at a ladder of stricter border
thresholds (:data:`BORDER_LADDER` times ``border_threshold``), flooding as ``flood`` says. It takes the
first re-seeding that cuts the region into pieces that each

- are at least :data:`MIN_PIECE` of the median nucleus's area (and ``min_size``), and
- have shallower dents than the region had: a cut along a real contact line
  removes the dent between two nuclei, a cut across a single nucleus does not.

A region no re-seeding cuts so stays whole. An elongated nucleus is convex
(no dent beyond its pixels' staircase) and passes untouched; a carpet of tiny
fragments is not split further (its pieces fall under the size floor).

Depth, not solidity, measures the dent: the convex hull of a small shape drawn in
pixels overshoots it by the staircase of its outline, so a disc 20 pixels across
has a solidity of 0.93 and a rod 12 by 48 pixels 0.92, as low as two round nuclei
side by side; the staircase is never deeper than about a pixel.

Works at the working scale, on what :func:`dsb.inference.watershed.labels_from_probabilities`
flooded; a loop over the few candidate regions, each in its own bounding box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from dsb.core.config import PostprocessConfig
from dsb.core.labels import touching_edge

__all__ = ["BORDER_LADDER", "DENT_FLOOR", "MIN_DENT", "MIN_PIECE", "split_merged", "dent_depth", "marker_pixels"]

# Stricter border thresholds tried in turn, as fractions of the config's ``border_threshold``.
BORDER_LADDER = (0.75, 0.5, 0.25, 0.125)

# A region is looked at again when its deepest dent is at least this fraction of the median
# nucleus's diameter (two round nuclei side by side, centres 0.9 diameters apart: about 0.3) ...
MIN_DENT = 0.15

# ... and at least this many pixels (deeper than the staircase of any outline drawn in pixels).
DENT_FLOOR = 2.0

# The smallest piece a cut may leave, as a fraction of the image's median nucleus area.
MIN_PIECE = 0.3

_CROSS = ndimage.generate_binary_structure(2, 1)


def marker_pixels(prob: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Where a marker may lie, the border aside: body over ``marker_threshold``, contact under
    ``contact_threshold`` (with a contact channel) and core over ``core_threshold`` (with a core
    channel and a threshold above 0). The watershed's markers
    (:mod:`dsb.inference.watershed`) add border under ``border_threshold``; the re-seeding
    here, border under stricter ones."""
    pixels = prob[:, :, 0] > config.marker_threshold
    if prob.shape[2] >= 3:  # the contact zone between neighbours keeps their markers apart
        pixels &= prob[:, :, 2] < config.contact_threshold
    if prob.shape[2] >= 4 and config.core_threshold > 0:  # as does each nucleus's own core
        pixels &= prob[:, :, 3] > config.core_threshold
    return pixels


def dent_depth(mask: np.ndarray) -> float:
    """How far the convex hull of ``mask`` reaches from it: the largest distance, in pixels, from a
    pixel of the hull outside the mask to the nearest pixel of the mask (0 for a convex shape or an
    empty mask; about 1 for the staircase of a convex one drawn in pixels)."""
    if not mask.any():
        return 0.0
    gaps = convex_hull_image(mask) & ~mask
    if not gaps.any():
        return 0.0
    return float(ndimage.distance_transform_edt(~mask)[gaps].max())


def split_merged(labels: np.ndarray, prob: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Split the nuclei that look like merged neighbours (see the module docstring).

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Nuclei at the working scale, 0 background, 1..N.
    prob : (H, W, C) ndarray of float
        The probabilities they were found from (body, border, optional contact).
    config : PostprocessConfig
        ``split_ratio`` (0 turns the step off), the marker thresholds and ``min_marker_size``.

    Returns
    -------
    (H, W) ndarray of int32
        The same labels, with each split nucleus's extra pieces numbered after N.
    """
    labels = np.asarray(labels, np.int32)
    n = int(labels.max(initial=0))
    if config.split_ratio <= 0 or n < 2:
        return labels
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    median = _median_area(labels, areas)
    candidates = np.flatnonzero(areas > config.split_ratio * median) + 1
    if not candidates.size:
        return labels
    min_dent = max(DENT_FLOOR, MIN_DENT * np.sqrt(4 * median / np.pi))
    out = labels.copy()
    boxes = ndimage.find_objects(labels)
    for label in candidates:
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[label - 1])
        region = labels[box] == label
        # A piece under min_size would be dropped afterwards, and a real nucleus's pixels with it.
        pieces = _reseed(region, prob[box], config, max(MIN_PIECE * median, config.min_size), min_dent)
        if pieces is None:
            continue
        view = out[box]
        for piece in range(2, int(pieces.max()) + 1):  # piece 1 keeps the label
            view[pieces == piece] = n + 1
            n += 1
    return out


def _median_area(labels: np.ndarray, areas: np.ndarray) -> float:
    """The median area of the nuclei that do not touch the array's edge (cut off there, in an image,
    a block or a chunk, they would read small), or of all of them when fewer than three are inside."""
    inside = (areas > 0) & ~touching_edge(labels, areas.size)[1:]
    return float(np.median(areas[inside] if inside.sum() >= 3 else areas[areas > 0]))


def _reseed(region: np.ndarray, prob: np.ndarray, config: PostprocessConfig, min_piece: float, min_dent: float):
    """Pieces 1..K (K >= 2) of ``region`` from the first stricter seeding whose pieces pass, else None."""
    whole = None  # the region's dent, measured once a seeding first cuts it (the hull costs most)
    body = prob[:, :, 0]
    inside = region & marker_pixels(prob, config)  # as the watershed's own markers
    for fraction in BORDER_LADDER:
        seeds, k = ndimage.label(inside & (prob[:, :, 1] < fraction * config.border_threshold), structure=_CROSS)
        if k < 2:
            continue
        sizes = np.bincount(seeds.ravel(), minlength=k + 1)
        sizes[0] = 0
        kept = sizes >= max(config.min_marker_size, 1)
        if kept.sum() < 2:
            continue
        if whole is None:
            whole = dent_depth(region)
            if whole < min_dent:
                return None
        lut = np.zeros(k + 1, np.int32)
        lut[kept] = np.arange(1, int(kept.sum()) + 1)
        if config.flood == "distance":
            surface = -ndimage.distance_transform_edt(region).astype(np.float32)
        else:
            surface = -body.astype(np.float32)
        pieces = watershed(surface, np.take(lut, seeds), mask=region)
        piece_areas = np.bincount(pieces.ravel())[1:]
        if piece_areas.min() < min_piece:
            continue
        if all(dent_depth(pieces == p) < whole for p in range(1, piece_areas.size + 1)):
            return pieces
    return None
