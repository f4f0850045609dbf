"""Joining a z-stack's 2-D nuclei into 3-D ones.

A network that sees one plane at a time finds each nucleus of a volume once in every plane it
crosses, numbered anew in each. :func:`stitch_planes` gives each 3-D nucleus one label through the
planes: a nucleus of a plane takes the label of a nucleus of the plane above it where the two
overlap by at least ``min_overlap`` of the smaller one, each label going to one nucleus of a plane
at most; a nucleus that overlaps none so begins a new label. Pairs are taken in falling order of
their intersection over union (:func:`greedy_matches`), so that where two nuclei overlap one
above, the one more alike it takes its label. The share of the smaller one, not the intersection
over union, says whether two are one nucleus: near a nucleus's top and bottom its outline shrinks
fast from plane to plane, and a cap a quarter of the plane before's area is still that nucleus.

A nucleus the network missed in one plane splits its 3-D nucleus in two there; two nuclei stacked
along z with no plane between them join into one. Both follow from taking planes two at a time.

>>> import numpy as np
>>> planes = np.array([[[1, 1, 0, 2]], [[0, 3, 3, 0]], [[0, 1, 1, 0]]])
>>> stitch_planes(planes)[:, 0].tolist()
[[1, 1, 0, 2], [0, 1, 1, 0], [0, 1, 1, 0]]
"""

from __future__ import annotations

import numpy as np

from dsb.core.labels import compact_labels, overlapping_pairs
from dsb.core.validate import check_labels

__all__ = ["MIN_OVERLAP", "greedy_matches", "stitch_planes"]

# The share of the smaller of two nuclei of neighbouring planes that the other must cover, by
# default, for them to be one nucleus.
MIN_OVERLAP = 0.5


def greedy_matches(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a[k], b[k])`` chosen in falling order of ``score``, each value of ``a`` and of ``b``
    in one chosen pair at most.

    Computed as repeated rounds of the pairs that are each of their two ends' best among the pairs
    still open (with ties taken in the order given), which chooses what taking the pairs one by one
    would, in a few vectorised rounds instead of a loop over pairs.

    Parameters
    ----------
    a, b : (P,) ndarray of int
    score : (P,) ndarray of float

    Returns
    -------
    a, b : ndarray of int
        The chosen pairs' ends, in falling order of their score.

    Examples
    --------
    >>> a, b = greedy_matches(np.array([1, 1, 2]), np.array([5, 6, 5]), np.array([0.9, 0.5, 0.7]))
    >>> a.tolist(), b.tolist()
    ([1], [5])
    """
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    a, b = np.asarray(a)[order], np.asarray(b)[order]
    chosen = np.zeros(a.size, bool)
    open_ = np.ones(a.size, bool)
    while open_.any():
        at = np.flatnonzero(open_)
        # Each end's best open pair is its first in falling order.
        best_a = at[np.unique(a[at], return_index=True)[1]]
        best_b = at[np.unique(b[at], return_index=True)[1]]
        mutual = np.intersect1d(best_a, best_b, assume_unique=True)
        chosen[mutual] = True
        open_ &= ~np.isin(a, a[mutual]) & ~np.isin(b, b[mutual])
    return a[chosen], b[chosen]


def stitch_planes(planes, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """One label per 3-D nucleus through the planes of a z-stack of 2-D labels.

    Parameters
    ----------
    planes : (Z, H, W) array_like of int
        Each plane's nuclei, 0 for background; each plane's own numbering (they need not be
        consecutive).
    min_overlap : float
        The least share, in (0, 1], of the smaller of two nuclei of neighbouring planes that the
        other covers, for the two to be one nucleus.

    Returns
    -------
    (Z, H, W) ndarray of int32
        The 3-D nuclei, numbered 1..M in the order they begin (by plane, then by their label in
        that plane).

    Raises
    ------
    TypeError
        ``planes`` not a 3-D array of non-negative integers (:func:`dsb.core.validate.check_labels`).
    ValueError
        ``min_overlap`` outside (0, 1], or a negative label.
    """
    planes = check_labels("planes", planes, ndim=3)
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    out = np.zeros(planes.shape, np.int32)
    given = 0
    for z, plane in enumerate(planes):
        plane, _ = compact_labels(plane)  # a file's own numbering may reach billions
        own = plane.ravel()
        top = int(own.max(initial=0))
        lookup = np.zeros(top + 1, np.int32)
        if z:
            ai, bi, inter, area_above, area_own, above_labels, own_labels = overlapping_pairs(out[z - 1].ravel(), own)
            iou = inter / (area_above[ai] + area_own[bi] - inter)
            keep = inter >= min_overlap * np.minimum(area_above[ai], area_own[bi])
            above, mine = greedy_matches(ai[keep], bi[keep], iou[keep])
            lookup[own_labels[mine]] = above_labels[above]
        new = np.bincount(own, minlength=top + 1).astype(bool) & (lookup == 0)
        new[0] = False
        count = int(np.count_nonzero(new))
        lookup[new] = np.arange(given + 1, given + count + 1)
        given += count
        np.take(lookup, plane, out=out[z])
    return out
