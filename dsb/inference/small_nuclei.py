"""A second, finer look for the small nuclei of an image shrunk for its large ones.

One working scale serves an image: the one that brings its typical nucleus to the network's
diameter. Where that nucleus is large (a 40x objective: 50 pixels across), the image is shrunk,
and what is several times smaller than it (micronuclei, a small cell among large ones, a cut
sliver at the edge) shrinks to a few pixels, under what the watershed keeps. Annotators count
them all the same.

So an image predicted at 0.4 of its size or less gets a second pass, ``predict.small_pass`` times
finer and never finer than the image's own pixels (:func:`small_pass_scale`), and :func:`add_small_nuclei` adds
the nuclei of that pass that the first one could not have seen: in its background, small next
to its nuclei, and sure. Large nuclei seen at the finer scale are fragments of their texture, but
they lie on the first pass's nuclei and are not added. An image predicted at its own scale or
enlarged (small nuclei) gets no second pass.

``dsb tune`` scores its settings on the first pass alone (:func:`dsb.inference.predict.predict_scaled`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHRUNK", "SMALL_AREA", "SMALL_CONFIDENCE", "SMALL_OVERLAP", "small_pass_scale", "add_small_nuclei"]

#: A nucleus of the finer pass is added only when its area is under this share of the median
#: area of the first pass's nuclei: what the shrink put out of reach, not a second opinion on
#: nuclei the first pass found or judged background.
SMALL_AREA = 0.4
#: ... and when the network is this sure of it (its mean body probability where the finer pass
#: saw it), for the texture of the background seen closer reads as faint small nuclei. On the
#: 132 held-out images of the shipped model, without it the pass added 137 nuclei of which 76
#: matched a true one, and cost stained tissue; with it, 42 of which 26 matched, and no group lost.
SMALL_CONFIDENCE = 0.9
#: ... and when at most this share of it lies on the first pass's nuclei (outlines differ by a
#: pixel or two between scales, so a small nucleus beside a large one overlaps it a little).
SMALL_OVERLAP = 0.2
#: Images predicted at this scale or smaller get the second pass: nuclei of 50 pixels and more at
#: the network's diameter of 20. From 0.67 (nuclei of 30 pixels) it added to the held-out images
#: what it adds from 0.4 (0.5799 against 0.5796 at 1x), but the 65 stage-1 test images then took
#: 30 % less throughput instead of 15 %: their nuclei of 30 to 50 pixels hold few small ones.
SHRUNK = 0.4


def small_pass_scale(scale: float, factor: float) -> float | None:
    """The working scale of the finer pass for an image predicted at ``scale``, or None for none.

    ``factor`` times ``scale``, but not above 1 (the image's own pixels: enlarging further
    shows nothing the image does not hold, and more texture); None for an image predicted at
    more than :data:`SHRUNK` of its size, or when ``factor`` is 0.

    Examples
    --------
    >>> small_pass_scale(0.4, 2.5), small_pass_scale(0.2, 2.5), small_pass_scale(0.5, 2.5)
    (1.0, 0.5, None)
    >>> small_pass_scale(0.4, 0.0) is None
    True
    """
    if not factor or not 0 < scale <= SHRUNK:
        return None
    return min(1.0, float(scale) * float(factor))


def add_small_nuclei(
    labels: np.ndarray, confidence: np.ndarray, fine: np.ndarray, fine_confidence: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei of ``labels``, and the small sure nuclei of a finer pass in their background.

    A nucleus of ``fine`` is added when its area is under :data:`SMALL_AREA` times the median
    area of the nuclei of ``labels``, its confidence is at least :data:`SMALL_CONFIDENCE` and
    at most :data:`SMALL_OVERLAP` of it lies on nuclei of ``labels``; it takes only background
    pixels. Without nuclei in ``labels`` there is no size to be small against, and nothing is added.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        The first pass's nuclei, 1..N.
    confidence : (N,) ndarray of float
        Their confidences, entry ``k - 1`` for label ``k``.
    fine : (H, W) ndarray of int
        The finer pass's nuclei on the same grid, 1..M.
    fine_confidence : (M,) ndarray of float
        Theirs.

    Returns
    -------
    labels : (H, W) ndarray of int32
        The first pass's nuclei unchanged, the added ones numbered N + 1 on.
    confidence : ndarray of float32
        One per nucleus of the result.

    Examples
    --------
    >>> big = np.zeros((12, 12), np.int32); big[1:7, 1:7] = 1; big[1:7, 7:12] = 2
    >>> fine = np.zeros_like(big); fine[9:11, 2:4] = 1; fine[2:4, 2:4] = 2; fine[9:11, 8:10] = 3
    >>> out, sure = add_small_nuclei(big, np.array([0.9, 0.9]), fine, np.array([0.95, 0.99, 0.6]))
    >>> np.unique(out).tolist(), [round(float(c), 2) for c in sure]  # the sure one in the background
    ([0, 1, 2, 3], [0.9, 0.9, 0.95])
    """
    labels = np.asarray(labels)
    confidence = np.asarray(confidence, np.float32)
    n, m = int(labels.max(initial=0)), int(np.asarray(fine).max(initial=0))
    if not n or not m:
        return labels.astype(np.int32, copy=False), confidence
    fine = np.asarray(fine).ravel()
    first_area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    median = float(np.median(first_area[first_area > 0]))
    area = np.bincount(fine, minlength=m + 1)
    on_first = np.bincount(fine, weights=(labels.ravel() > 0), minlength=m + 1)
    sure = np.concatenate([[0.0], np.asarray(fine_confidence, np.float64)])
    keep = (area > 0) & (area < SMALL_AREA * median) & (on_first <= SMALL_OVERLAP * area) & (sure >= SMALL_CONFIDENCE)
    keep[0] = False
    added = int(keep.sum())
    if not added:
        return labels.astype(np.int32, copy=False), confidence
    number = np.zeros(m + 1, np.int32)
    number[keep] = np.arange(n + 1, n + added + 1, dtype=np.int32)
    new = np.take(number, fine).reshape(labels.shape)
    # An added nucleus keeps its pixels off the first pass's nuclei: at least 80 % of it.
    out = np.where((labels == 0) & (new > 0), new, labels).astype(np.int32, copy=False)
    return out, np.concatenate([confidence, sure[keep].astype(np.float32)])
