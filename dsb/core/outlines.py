"""Each object's outline as a polygon along the edges of its pixels.

A label image says which pixels each nucleus holds; Fiji's ROI Manager, QuPath and drawing
programs want its outline as a polygon. :func:`label_outlines` traces it along the pixels' own
edges, as Fiji's wand does, so that the polygon holds exactly the object's pixels (each pixel
whose centre lies inside it) and measures the same area; :func:`label_polygons` gives each object's
pieces and holes too, for formats that hold them (GeoJSON).

Coordinates are ``(row, col)`` with pixel ``(r, c)`` spanning ``r - 0.5 .. r + 0.5`` and
``c - 0.5 .. c + 0.5``: the corners lie on half-integers (add 0.5 for Fiji's, whose pixel
``(x, y)`` spans ``x .. x + 1``).

>>> import numpy as np
>>> found, outlines = label_outlines(np.array([[0, 0, 0], [0, 3, 3], [0, 0, 0]]))
>>> found.tolist(), outlines[0].tolist()
([3], [[0.5, 0.5], [0.5, 2.5], [1.5, 2.5], [1.5, 0.5]])
"""

from __future__ import annotations

import numpy as np

from dsb.core.labels import compact_labels

__all__ = ["label_outlines", "label_polygons"]


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
    Vectorised over every object at once: each side of a pixel that borders another label is
    an edge, directed clockwise around its pixel; the edges of one object join end to start
    into loops (where two of its pixels meet at a corner only, turning so as to keep them one
    object), each loop is ranked by pointer jumping, and each object keeps its loop of the
    largest area, its outside (its holes' loops run the other way, with negative areas).
    """
    loops = _edge_loops(labels)
    if loops is None:
        return np.zeros(0, np.int64), []
    own, twice, roots = loops["own"], loops["twice"], loops["roots"]
    # Each label keeps its loop of the largest area (clockwise positive as shown): its outside.
    best = roots[np.lexsort((-twice[roots], own[roots]))]
    best = best[np.r_[True, own[best][1:] != own[best][:-1]]]
    return loops["found"](own[best]), _corners(loops, best)


def label_polygons(labels: np.ndarray) -> tuple[np.ndarray, list[list[list[np.ndarray]]]]:
    """Each object of ``labels`` as polygons along its pixels' edges: every piece of it, with its holes.

    Where :func:`label_outlines` gives one ring an object (a Fiji ROI has one), this gives what a
    polygon format with holes and several parts holds (GeoJSON's ``MultiPolygon``): the pixels inside
    an object's polygons, and outside their holes, are exactly its pixels.

    Parameters
    ----------
    labels : (H, W) ndarray of non-negative int
        0 background, objects 1..N (gaps allowed).

    Returns
    -------
    found : (K,) ndarray of int64
        The labels present, in order.
    polygons : list of K lists
        Per object, its pieces (8-connected, largest first), each a list of rings: its outside, then
        its holes; each ring a (P, 2) array of ``(row, col)`` corners as :func:`label_outlines` gives
        them (the outside clockwise as shown, a hole the other way).

    Examples
    --------
    >>> ring = np.ones((4, 4), int); ring[1:3, 1:3] = 0; ring[1, 1] = 2
    >>> found, polygons = label_polygons(ring)
    >>> found.tolist(), [[len(r) for r in piece] for piece in polygons[0]], len(polygons[1])
    ([1, 2], [[4, 4]], 1)
    """
    from skimage.measure import label as connected

    loops = _edge_loops(labels)
    if loops is None:
        return np.zeros(0, np.int64), []
    own, twice, roots = loops["own"], loops["twice"], loops["roots"]
    outside = twice[roots] > 0
    if outside.all() and np.unique(own[roots]).size == roots.size:  # one loop an object, as most are
        piece = own[roots]
    else:  # each loop's piece: the 8-connected piece of the pixel its first edge bounds
        pieces = connected(loops["labels"], connectivity=2, background=0)
        piece = pieces[loops["rows"][roots], loops["cols"][roots]]
    # By label, then piece (the largest outside first), then the outside before its holes.
    piece_area = np.zeros(int(piece.max()) + 1)
    piece_area[piece[outside]] = twice[roots][outside]
    order = np.lexsort((~outside, piece, -piece_area[piece], own[roots]))
    roots, piece, outside = roots[order], piece[order], outside[order]
    rings = _corners(loops, roots)
    found, polygons = [], []
    for at, root in enumerate(roots):
        if at == 0 or own[root] != own[roots[at - 1]]:
            found.append(own[root])
            polygons.append([])
        if outside[at]:
            polygons[-1].append([rings[at]])
        else:
            polygons[-1][-1].append(rings[at])
    return loops["found"](np.array(found, np.int64)), polygons


def _edge_loops(labels: np.ndarray) -> dict | None:
    """Every object's edges joined into loops: the work of :func:`label_outlines` and :func:`label_polygons`,
    None for no object.

    Each side of a pixel that borders another label is an edge, directed clockwise around its pixel; the
    edges of one object join end to start into loops (where two of its pixels meet at a corner only,
    turning so as to keep them one object), each ranked by pointer jumping. Returned, per edge: ``own``
    (its object, compacted), ``r0``, ``c0`` (its start corner), ``way`` (0 east, 1 south, 2 west, 3
    north), ``rows``, ``cols`` (its pixel), ``after`` (the next edge), ``loop`` (its loop, by its
    smallest edge), ``position`` (its place in it); per loop root, ``twice`` its area (the shoelace
    formula, clockwise positive as shown; a hole's negative); ``roots``; ``labels`` (compacted) and
    ``found``, which turns compacted labels back into the image's.
    """
    labels, values = compact_labels(labels)  # keys below are label x corner: keep the labels small
    height, width = labels.shape
    padded = np.pad(labels, 1)
    inner = padded[1:-1, 1:-1]
    # Each boundary edge: its label, start corner, end corner (corner (R, C) is pixel (R, C)'s top
    # left) and direction (0 east, 1 south, 2 west, 3 north), clockwise around its pixel.
    sides = (  # neighbour's offset, start corner, end corner: top, right, bottom, left
        ((-1, 0), (0, 0), (0, 1)), ((0, 1), (0, 1), (1, 1)), ((1, 0), (1, 1), (1, 0)), ((0, -1), (1, 0), (0, 0)))
    own, r0, c0, r1, c1, way, prow, pcol = [], [], [], [], [], [], [], []
    for direction, ((dr, dc), (sr, sc), (er, ec)) in enumerate(sides):
        rows, cols = np.nonzero((inner > 0) & (padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width] != inner))
        own.append(inner[rows, cols].astype(np.int64))
        r0.append(rows + sr), c0.append(cols + sc), r1.append(rows + er), c1.append(cols + ec)
        way.append(np.full(rows.size, direction, np.int8))
        prow.append(rows), pcol.append(cols)
    own, r0, c0, r1, c1, way, prow, pcol = (np.concatenate(x) for x in (own, r0, c0, r1, c1, way, prow, pcol))
    if not own.size:
        return None
    corners = (height + 1) * (width + 1)
    start = own * corners + r0 * (width + 1) + c0
    end = own * corners + r1 * (width + 1) + c1
    # The edge after each: the one of its label leaving its end corner; where two leave it (two pixels
    # meeting at a corner only), the left turn, which goes round the other pixel before coming back.
    order = np.lexsort((way, start))
    first = np.searchsorted(start[order], end)
    later = np.minimum(first + 1, order.size - 1)
    two = start[order[later]] == end
    left = (way - 1) % 4
    take_later = two & (way[order[first]] != left)
    after = order[np.where(take_later, later, first)]
    loop, position = _rank_loops(after)
    twice = np.bincount(loop, (c0 * r1 - c1 * r0).astype(np.float64), minlength=after.size)
    roots = np.flatnonzero(np.bincount(loop, minlength=after.size))

    def found(compact: np.ndarray) -> np.ndarray:
        return compact if values is None else values[compact - 1].astype(np.int64)

    return {"own": own, "r0": r0, "c0": c0, "way": way, "rows": prow, "cols": pcol, "after": after, "loop": loop,
            "position": position, "twice": twice, "roots": roots, "labels": labels, "found": found}


def _corners(loops: dict, chosen: np.ndarray) -> list[np.ndarray]:
    """The corners of the loops ``chosen`` (by root), in that order: the start of each edge that turns from the
    one before it, as half-integer ``(row, col)``."""
    loop, after, way = loops["loop"], loops["after"], loops["way"]
    kept = np.isin(loop, chosen)
    before = np.empty_like(after)
    before[after] = np.arange(after.size)
    turns = kept & (way != way[before])
    rank = np.zeros(after.size, np.int64)
    rank[chosen] = np.arange(chosen.size)
    index = np.flatnonzero(turns)
    index = index[np.lexsort((loops["position"][index], rank[loop[index]]))]
    counts = np.bincount(rank[loop[index]], minlength=chosen.size)
    points = np.column_stack([loops["r0"][index] - 0.5, loops["c0"][index] - 0.5])
    return np.split(points, np.cumsum(counts)[:-1])


def _rank_loops(after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a permutation ``after`` (each element's successor, so made of disjoint loops): each element's
    loop (named by its smallest element) and its place in that loop counted from there, by pointer
    jumping: passes over every loop at once, as many as the longest loop's length has binary digits.

    >>> loop, place = _rank_loops(np.array([2, 1, 3, 0]))  # 0 -> 2 -> 3 -> 0, and 1 alone
    >>> loop.tolist(), place.tolist()
    ([0, 1, 0, 0], [0, 0, 1, 2])
    """
    n = after.size
    # The smallest element within 1, 2, 4 ... steps ahead, until doubling the reach changes nothing:
    # then every loop is seen whole (a loop longer than the reach would gain its smallest element).
    loop, hop = np.arange(n), after.copy()
    while True:
        ahead = np.minimum(loop, loop[hop])
        if np.array_equal(ahead, loop):
            break
        loop, hop = ahead, hop[hop]
    # Steps from each element to its loop's last one (whose successor is the loop's smallest).
    last = after == loop
    nxt = np.where(last, np.arange(n), after)
    steps = (~last).astype(np.int64)
    while not last[nxt].all():
        steps = steps + steps[nxt]
        nxt = nxt[nxt]
    return loop, np.bincount(loop, minlength=n)[loop] - 1 - steps
