"""From body and border probabilities to nucleus instances: a marker-controlled watershed.

The network predicts, per pixel, ``body`` (inside some nucleus) and ``border``
(in the inner ring of width ``border_width`` of a nucleus, contact lines
included; see :func:`dsb.training.loader.make_targets`). Body minus border leaves one
core per nucleus, separated even where nuclei touch; those cores are the
markers. The watershed then floods the body mask from the markers, which
gives each nucleus back the ring that the border target took away and splits
touching nuclei along the contact line.

Steps of :func:`labels_from_probabilities`:

1. mask = body > ``mask_threshold``;
2. markers = connected components of (body > ``marker_threshold``) & (border <
   ``border_threshold``) (& contact < ``contact_threshold`` when the network
   has the third, contact channel) (& core > ``core_threshold`` when it has the fourth,
   core channel and the threshold is above 0) inside the mask, dropping those under
   ``min_marker_size`` pixels; a component of the mask that holds no marker
   (a small nucleus the border covers entirely) becomes its own marker when
   ``keep_unmarked``;
3. flood -body (``flood="probability"``) or minus the distance to the mask's
   edge (``flood="distance"``) from the markers, inside the mask (only mask
   components with two or more markers need it);
4. fill the holes of each nucleus (``fill_holes``);
5. drop nuclei under ``min_size`` pixels and number the rest 1..N;
6. split again the nuclei that look like merged neighbours (``split_ratio``;
   :func:`split_nuclei`, :func:`dsb.inference.split.split_merged`);
7. drop the nuclei the network is unsure of: those whose mean body probability is
   under ``min_confidence`` (:func:`drop_unconfident`). Most such nuclei are false ones
   (a fold of tissue, a lobe of a brightfield nucleus read as its own, a speck), and the
   competition's metric counts a false nucleus as dearly as a missed one.

Steps 6 and 7 together are :func:`finish_nuclei`.

Every pixel belongs to at most one nucleus. No deep-learning import here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from dsb.core.config import PostprocessConfig
from dsb.core.labels import relabel, touching_edge
from dsb.inference.split import marker_pixels, split_merged

__all__ = [
    "RING_DISTANCE",
    "remove_small",
    "find_markers",
    "fill_label_holes",
    "grow_into_mask",
    "labels_from_probabilities",
    "split_nuclei",
    "drop_unconfident",
    "nucleus_confidence",
    "finish_nuclei",
    "unfinished",
]


_CROSS = ndimage.generate_binary_structure(2, 1)


# :func:`grow_into_mask` visits the offsets up to this distance (about 200 of them) one by one.
RING_DISTANCE = 8


def _check_prob(prob) -> np.ndarray:
    if not isinstance(prob, np.ndarray):
        prob = np.asarray(prob)
    if prob.ndim != 3:
        raise TypeError(f"`prob` (shape {prob.shape}) must be 3-D (H, W, C)")
    if prob.shape[2] < 2:
        raise ValueError(f"`prob` (shape {prob.shape}) must have C >= 2 channels (body, border)")
    if not np.issubdtype(prob.dtype, np.floating):
        raise TypeError(f"`prob` (dtype {prob.dtype}) must be floating point in [0, 1]")
    return prob


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects of fewer than ``min_size`` pixels and renumber the rest 1..N.

    Returns
    -------
    (H, W) ndarray of int32
    """
    # Counted over the object pixels only: np.bincount holds the GIL, which the other streams'
    # threads wait for, and leaving out the background takes it from 4.0 to 0.4 ms of a 1040x1388
    # image (the selection, 1.3 ms, runs without the GIL).
    keep = np.bincount(labels[labels > 0], minlength=1) >= max(min_size, 1)
    if keep[1:].all():  # nothing to drop and no gap in the numbering
        return labels.astype(np.int32, copy=False)
    return relabel(labels, keep)


def _markers(prob: np.ndarray, config: PostprocessConfig, components: np.ndarray, n: int) -> np.ndarray:
    cores = marker_pixels(prob, config) & (prob[:, :, 1] < config.border_threshold) & (components > 0)
    markers, _ = ndimage.label(cores, structure=_CROSS)
    if config.min_marker_size > 1:  # every component has a pixel and the numbering has no gap
        markers = remove_small(markers, config.min_marker_size)
    if config.keep_unmarked:
        marked = np.zeros(n + 1, bool)
        marked[components[markers > 0]] = True
        unmarked = ~marked
        unmarked[0] = False
        if unmarked.any():
            # Number the new markers after the existing ones, in component order.
            lut = np.zeros(n + 1, np.int32)
            lut[unmarked] = np.arange(1, int(unmarked.sum()) + 1, dtype=np.int32) + int(markers.max())
            markers = np.where(markers > 0, markers, np.take(lut, components))
    return markers


def find_markers(prob: np.ndarray, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The body mask and the watershed markers (steps 1 and 2 of the module docstring).

    Parameters
    ----------
    prob : (H, W, C) ndarray of float
        Channel 0 body, channel 1 border, channel 2 (optional) contact probability.
    config : PostprocessConfig

    Returns
    -------
    mask : (H, W) ndarray of bool
    markers : (H, W) ndarray of int32
        0 outside markers, 1..K markers.
    """
    prob = _check_prob(prob)
    mask = prob[:, :, 0] > config.mask_threshold
    components, n = ndimage.label(mask, structure=_CROSS)
    return mask, _markers(prob, config, components, n)


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill each object's holes with its own label.

    A hole is a background region (4-connected) that does not reach the image
    edge and that touches only one object; a gap enclosed by several touching
    objects is not a hole of any of them and stays background. Vectorised: the
    holes of the whole foreground are found at once and each takes the label
    of its neighbours when they all agree.

    Parameters
    ----------
    labels : (H, W) ndarray of int

    Returns
    -------
    (H, W) ndarray of int32
    """
    labels = np.asarray(labels, np.int32)
    # Background components that do not reach the image edge (what
    # binary_fill_holes finds, in a tenth of its time).
    background, n = ndimage.label(labels == 0, structure=_CROSS)
    outside = touching_edge(background, n)
    if outside[1:].all():
        return labels
    inside = ~outside
    inside[0] = False
    hole_ids = np.where(np.take(inside, background), background, 0)
    holes = hole_ids > 0
    # Every 4-neighbour of a hole pixel is in the same hole or in the foreground:
    # pair each hole pixel with its neighbours' labels, in the four directions.
    padded = np.pad(labels, 1)
    ys, xs = np.nonzero(holes)
    ids, neighbours = [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[ys + 1 + dy, xs + 1 + dx]
        seen = neighbour > 0
        ids.append(hole_ids[ys[seen], xs[seen]])
        neighbours.append(neighbour[seen])
    ids, neighbours = np.concatenate(ids), np.concatenate(neighbours)
    # Lowest and highest neighbouring label of each hole, by sorting once.
    order = np.lexsort((neighbours, ids))
    ids, neighbours = ids[order], neighbours[order]
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    last = np.r_[first[1:], ids.size] - 1
    fill = np.zeros(n + 1, np.int32)
    single = neighbours[first] == neighbours[last]
    fill[ids[first[single]]] = neighbours[first[single]]
    out = labels.copy()
    out[ys, xs] = fill[hole_ids[ys, xs]]
    return out


def grow_into_mask(labels: np.ndarray, mask: np.ndarray, distance: int) -> np.ndarray:
    """Labels kept inside ``mask`` and grown into the rest of it, up to ``distance`` pixels.

    Each pixel of the mask that no label covers takes the label of the
    nearest labelled pixel (Euclidean) when that is at most ``distance``
    away; nothing outside the mask is labelled. This is
    ``skimage.segmentation.expand_labels(np.where(mask, labels, 0), distance) * mask``
    but for ties: where labelled pixels of different labels are equally
    near, the first in reading order (the upper row, then the left column)
    wins, up to :data:`RING_DISTANCE`; beyond, the distance transform's
    choice, as skimage's.

    Up to :data:`RING_DISTANCE`, only the uncovered mask pixels are visited,
    ring by ring of the offsets within ``distance`` (80 at distance 5, which
    is 1 / the smallest prediction scale), each until its first ring with a
    label: the 23 shrunk stage-1 test images took a quarter of the time of
    the whole-image distance transform, without its two full-size index maps.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    mask : (H, W) ndarray of bool
    distance : int
        Farthest growth in pixels, at least 0.

    Returns
    -------
    (H, W) ndarray of int32
    """
    seeded = np.where(mask, labels, 0).astype(np.int32, copy=False)
    gaps = mask & (seeded == 0)
    distance = int(distance)
    if distance < 1 or not gaps.any() or not seeded.any():
        return seeded
    if distance > RING_DISTANCE:  # too many rings: the transform of the whole image is faster
        rows, cols = ndimage.distance_transform_edt(seeded == 0, return_distances=False, return_indices=True)
        ys, xs = np.nonzero(gaps)
        near_y, near_x = rows[ys, xs], cols[ys, xs]
        # Squared integer distances: exact, where a square root could round at the boundary.
        close = (near_y - ys) ** 2 + (near_x - xs) ** 2 <= distance * distance
        out = seeded.copy()
        out[ys[close], xs[close]] = seeded[near_y[close], near_x[close]]
        return out
    padded = np.pad(seeded, distance).ravel()  # zeros beyond the edge: no label comes from there
    width = seeded.shape[1] + 2 * distance
    ys, xs = np.nonzero(gaps)
    at = (ys + distance) * width + (xs + distance)
    out = seeded.copy()
    for ring in _rings(distance, width):
        found = np.zeros(at.size, np.int32)
        for step in ring:  # in reading order: the first label found in the ring wins a tie
            np.copyto(found, padded[at + step], where=found == 0)
        hit = found > 0
        out[ys[hit], xs[hit]] = found[hit]
        ys, xs, at = ys[~hit], xs[~hit], at[~hit]
        if not at.size:
            break
    return out


def _rings(distance: int, width: int) -> list[np.ndarray]:
    """The offsets ``(dy, dx)`` with ``0 < dy² + dx² <= distance²``, grouped by that squared distance
    (nearest first), each group in reading order, as steps ``dy * width + dx`` in a raveled image
    ``width`` wide."""
    dy, dx = np.mgrid[-distance : distance + 1, -distance : distance + 1]
    squared = dy**2 + dx**2
    inside = (squared > 0) & (squared <= distance * distance)
    dy, dx, squared = dy[inside], dx[inside], squared[inside]
    order = np.lexsort((dx, dy, squared))
    steps = dy[order] * width + dx[order]
    return np.split(steps, np.flatnonzero(np.diff(squared[order])) + 1)


def labels_from_probabilities(
    prob: np.ndarray, config: PostprocessConfig | None = None, *, finish: bool = True
) -> np.ndarray:
    """Nucleus instances from body and border probabilities.

    Parameters
    ----------
    prob : (H, W, C) ndarray of float
        Channel 0 body, channel 1 border probability, in [0, 1]; channel 2,
        when present, the contact zone between nuclei.
    config : PostprocessConfig, optional
        Thresholds and sizes (the defaults when omitted).
    finish : bool
        Steps 6 and 7, the split of merged-looking nuclei and the drop of unsure ones (when
        ``config.split_ratio`` and ``config.min_confidence`` ask for them); False leaves them to
        a later :func:`finish_nuclei`, as the scale estimate does (it measures the watershed's
        nuclei as they were before either step existed).

    Returns
    -------
    (H, W) ndarray of int32
        0 background, nuclei 1..N; every pixel belongs to at most one nucleus.

    Examples
    --------
    >>> yy, xx = np.indices((40, 40))
    >>> body = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 64).astype(np.float32)
    >>> prob = np.stack([body, np.zeros_like(body)], axis=-1)
    >>> int(labels_from_probabilities(prob).max())
    1
    """
    config = PostprocessConfig() if config is None else config
    prob = _check_prob(prob)
    mask = prob[:, :, 0] > config.mask_threshold
    components, n = ndimage.label(mask, structure=_CROSS)
    markers = _markers(prob, config, components, n)
    if not markers.any():
        return np.zeros(mask.shape, np.int32)
    labels = _flood(prob, mask, markers, config.flood, components, n)
    if config.fill_holes:
        labels = fill_label_holes(labels)
    labels = remove_small(labels, max(config.min_size, 1))
    return finish_nuclei(labels, prob, config) if finish else labels


def finish_nuclei(labels: np.ndarray, prob: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Steps 6 and 7 of :func:`labels_from_probabilities` on its labels: :func:`split_nuclei`,
    then :func:`drop_unconfident`."""
    return drop_unconfident(split_nuclei(labels, prob, config), prob, config.min_confidence)


def unfinished(config: PostprocessConfig) -> PostprocessConfig:
    """``config`` with steps 6 and 7 off: the settings the labels before :func:`finish_nuclei`
    depend on, so that two configs equal here flood alike and one watershed serves both."""
    return dataclasses.replace(config, split_ratio=0.0, min_confidence=0.0)


def split_nuclei(labels: np.ndarray, prob: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Step 6 of :func:`labels_from_probabilities` on its labels: nuclei that look like merged
    neighbours split again (:func:`dsb.inference.split.split_merged`), pieces under ``min_size``
    dropped, numbered 1..N. The labels as they are when ``config.split_ratio`` is 0."""
    if config.split_ratio <= 0:
        return labels
    return remove_small(split_merged(labels, _check_prob(prob), config), max(config.min_size, 1))


def drop_unconfident(labels: np.ndarray, prob: np.ndarray, min_confidence: float) -> np.ndarray:
    """Step 7 of :func:`labels_from_probabilities`: drop each nucleus whose mean body probability
    is under ``min_confidence`` and number the rest 1..N in their order.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, nuclei 1..N, on the grid of ``prob``.
    prob : (H, W, C) ndarray of float
        Channel 0 is the body probability.
    min_confidence : float
        In [0, 1]; 0 keeps every nucleus (the labels come back as they are, dtype and numbering
        included).

    Returns
    -------
    (H, W) ndarray of int32

    Raises
    ------
    ValueError
        ``min_confidence`` outside [0, 1] (NaN included), or ``labels`` not on the grid of ``prob``.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2, 2]])
    >>> body = np.array([[0.9, 0.95, 0.0, 0.6, 0.7]], np.float32)
    >>> prob = np.stack([body, np.zeros_like(body)], axis=-1)
    >>> drop_unconfident(labels, prob, 0.8).tolist()
    [[1, 1, 0, 0, 0]]
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"`min_confidence` is {min_confidence}; it must be in [0, 1]")
    if min_confidence == 0:
        return labels
    body = _check_prob(prob)[:, :, 0]
    if body.shape != labels.shape:
        raise ValueError(f"`labels` (shape {labels.shape}) and `prob` (shape {prob.shape}) must share a grid")
    total, count = _body_sums(labels, body)
    keep = (total >= min_confidence * count) & (count > 0)
    if keep[1:].all():  # nothing to drop and no gap in the numbering
        return labels.astype(np.int32, copy=False)
    return relabel(labels, keep)


def _body_sums(labels: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``body`` and pixel count over each label 0..N (N the largest label), by bincounts over
    the nucleus pixels only."""
    inside = labels > 0
    ids = labels[inside]
    n = int(labels.max(initial=0))
    return np.bincount(ids, weights=body[inside], minlength=n + 1), np.bincount(ids, minlength=n + 1)


def nucleus_confidence(labels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """How sure the network is of each nucleus: its mean body probability.

    The measure :func:`drop_unconfident` drops nuclei by; on a kept nucleus it ranks how much to
    trust it (a true nucleus is mostly near 1, a speck or a fold of tissue lower).

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, nuclei 1..N.
    body : (H, W) ndarray of float
        The body probability on the same grid (channel 0 of the network's output, resampled to the
        labels' grid where they differ).

    Returns
    -------
    (N,) ndarray of float32
        Entry ``k - 1`` for label ``k``, in [0, 1]; NaN for a label 1..N that has no pixel.

    Raises
    ------
    ValueError
        ``labels`` and ``body`` of different shapes.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 3]])
    >>> nucleus_confidence(labels, np.array([[0.9, 0.7, 0.1, 0.6]]))
    array([0.8, nan, 0.6], dtype=float32)
    """
    labels = np.asarray(labels)
    body = np.asarray(body)
    if body.shape != labels.shape:
        raise ValueError(f"`labels` (shape {labels.shape}) and `body` (shape {body.shape}) must share a grid")
    total, count = _body_sums(labels, body)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(total[1:] / count[1:], 0, 1).astype(np.float32)


def _flood(
    prob: np.ndarray, mask: np.ndarray, markers: np.ndarray, flood: str, components=None, n: int = 0
) -> np.ndarray:
    """Watershed of the mask from the markers, run only where a mask component holds several markers.

    A component with one marker floods entirely to that marker and one with
    none stays background, whatever the surface: only components that must be
    split go through :func:`skimage.segmentation.watershed` (the same result as
    flooding the whole image, in a fraction of the time when most nuclei stand
    alone; where two fronts reach a pixel at the same height, the two may break
    the tie differently, and both are watersheds).
    """
    if components is None:
        components, n = ndimage.label(mask, structure=_CROSS)
    n_markers = int(markers.max())
    at = markers > 0
    # Markers lie inside the mask and are 4-connected: each is in one component.
    component_of = np.zeros(n_markers + 1, np.int64)
    component_of[markers[at]] = components[at]
    per_component = np.bincount(component_of[1:], minlength=n + 1)
    per_component[0] = 0
    alone = per_component[component_of[1:]] == 1  # per marker 1..K
    owner = np.zeros(n + 1, np.int32)
    owner[component_of[1:][alone]] = np.flatnonzero(alone) + 1
    labels = np.take(owner, components)
    split = np.take(per_component >= 2, components)
    if split.any():
        rows, cols = np.flatnonzero(split.any(axis=1)), np.flatnonzero(split.any(axis=0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        if flood == "distance":
            surface = -ndimage.distance_transform_edt(mask)[box].astype(np.float32)
        else:
            surface = -prob[box][:, :, 0].astype(np.float32)
        inside = split[box]
        flooded = _watershed(surface, np.where(inside, markers[box], 0), inside)
        labels[box] = np.where(inside, flooded, labels[box])
    return labels


def _watershed(surface: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(surface, seeds, mask=mask)`` with less work.

    A seed whose four neighbours are all seeds or outside the mask labels
    nothing when the watershed's queue hands it back: left out of the flood,
    it keeps its own label, and the queue is 44 % shorter on the stage-1
    images. The same labels where heights are distinct (tested; on all 131
    floods of the stage-1 test images); where two fronts reach a pixel at the
    same height, the queue's order may break the tie the other way, as
    :func:`_flood`'s own shortcut may.
    """
    seeded = seeds > 0
    settled = np.pad(seeded | ~mask, 1, constant_values=True)
    idle = settled[:-2, 1:-1] & settled[2:, 1:-1]
    idle &= settled[1:-1, :-2]
    idle &= settled[1:-1, 2:]
    idle &= seeded & mask
    flooded = watershed(surface, np.where(idle, 0, seeds), mask=mask & ~idle)
    return np.where(idle, seeds, flooded)
