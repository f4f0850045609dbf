"""Each object's outline as a polygon along the edges of its pixels.

A label image says which pixels each nucleus holds; Fiji's ROI Manager, QuPath and drawing
programs want its outline as a polygon. :func:`label_outlines` traces it along the pixels' own
edges, as Fiji's wand does, so that the polygon holds exactly the object's pixels (each pixel
whose centre lies inside it) and measures the same area.

Coordinates are ``(row, col)`` with pixel ``(r, c)`` spanning ``r - 0.5 .. r + 0.5`` and
``c - 0.5 .. c + 0.5``: the corners lie on half-integers (add 0.5 for Fiji's, whose pixel
``(x, y)`` spans ``x .. x + 1``).

>>> import numpy as np
>>> found, outlines = label_outlines(np.array([[0, 0, 0], [0, 3, 3], [0, 0, 0]]))
>>> found.tolist(), outlines[0].tolist()
([3], [[1.5, 0.5], [0.5, 0.5], [0.5, 2.5], [1.5, 2.5]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_outlines"]


def label_outlines(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The outline of each object of ``labels``, along its pixels' edges.

    Parameters
    ----------
    labels : (H, W) ndarray of non-negative int
        0 background, objects 1..N (gaps allowed).

    Returns
    -------
    found : (K,) ndarray of int64
        The labels present, in order.
    outlines : list of K (P, 2) ndarrays of float64
        Each one's closed polygon (the first corner not repeated at the end), corners at
        half-integer ``(row, col)``, clockwise as the image is shown, with no corner on a
        straight edge. An object of pixels touching only at their corners is outlined as one
        (the outline passes that corner twice); an object with a hole is outlined on its outside
        only (the polygon holds the hole), and one in several separate pieces by its largest piece.

    Notes
    -----
    One pass of scikit-image's marching squares per object, on its bounding box: the contour
    at level 0.5 runs through the middles of the pixel edges between the object and the rest,
    one segment per square of four pixel centres, and the pixels' own outline turns at each
    square's centre, a pixel corner.
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    labels = np.asarray(labels)
    found, outlines = [], []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        crop = np.pad(labels[box] == label, 1)
        contours = find_contours(crop.astype(np.uint8), 0.5, fully_connected="high")
        if not contours:
            continue
        contour = max(contours, key=_area)[:-1]  # closed: the last point is the first
        # Each segment between consecutive points lies in one square of pixel centres, whose centre
        # (a pixel corner) is where the pixels' outline passes; corner = the square's top-left + 0.5.
        corners = np.minimum(np.floor(contour), np.floor(np.roll(contour, -1, axis=0))) + 0.5
        corners = _without_straight(corners)
        corners += np.array([box[0].start - 1, box[1].start - 1], np.float64)  # the crop's padding
        found.append(label)
        outlines.append(corners)
    return np.asarray(found, np.int64), outlines


def _area(contour: np.ndarray) -> float:
    """The area a closed polygon encloses (the shoelace formula), to pick an object's outside contour."""
    r, c = contour[:, 0], contour[:, 1]
    return abs(float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))) / 2


def _without_straight(corners: np.ndarray) -> np.ndarray:
    """``corners`` (a closed polygon) without the corners between two edges of the same direction."""
    ahead = np.roll(corners, -1, axis=0) - corners
    behind = corners - np.roll(corners, 1, axis=0)
    turning = (ahead[:, 0] * behind[:, 1] - ahead[:, 1] * behind[:, 0]) != 0
    turning |= (ahead * behind).sum(axis=1) < 0  # a spike back along the same line (a one-pixel line's end)
    return corners[turning]
