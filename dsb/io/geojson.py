"""Nuclei as GeoJSON polygons: QuPath's detections, and any reader of GeoJSON's shapes.

QuPath imports a GeoJSON ``FeatureCollection`` as objects (drag the file onto the image, or *File >
Import objects from file*); :func:`write_geojson` writes each nucleus as a ``Feature`` QuPath reads
as a detection:

- ``geometry``: a ``Polygon`` along the nucleus's pixels' edges (:func:`dsb.core.outlines.label_outlines`,
  the outline Fiji's wand traces), in pixels with ``x`` the column and ``y`` the row, pixel
  ``(x, y)`` spanning ``x .. x + 1`` as in QuPath and Fiji, its first corner repeated at the end as
  GeoJSON asks; in a stack, with QuPath's ``plane`` (``{"c": -1, "z": Z, "t": T}``: the pages of
  a plain multi-page TIFF on ``t``, where QuPath's Bio-Formats reader puts them);
- ``properties``: ``"objectType": "detection"``, ``name`` the nucleus's label (as in the label
  image and the measurements' ``label``), and ``measurements``, its row of the measurements
  (every number of it to six significant digits, ``touches_edge`` as 0 or 1, a missing value left
  out), which QuPath lists
  in its measurement tables.

QuPath 0.4 and later read this form (``measurements`` as a map). The file is plain JSON for any
other reader: :func:`pandas.json_normalize` of its ``features`` gives one row per nucleus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path
from dsb.core.outlines import label_outlines

__all__ = ["nucleus_features", "write_features", "write_geojson", "FRAME_COLUMNS", "QUPATH_PLANES"]

#: The measurement columns that say where a row's nucleus lies in a stack, by frame role: ``t`` time,
#: ``z`` planes, ``f`` an unnamed frame axis.
FRAME_COLUMNS = {"t": "t", "z": "z", "f": "frame"}
#: The axis of QuPath's plane each frame role is counted on: an unnamed axis (the pages of a plain
#: multi-page TIFF) on ``t``, as QuPath's Bio-Formats reader opens such a file.
QUPATH_PLANES = {"t": "t", "z": "z", "f": "t"}


def nucleus_features(labels: np.ndarray, measurements: pd.DataFrame | None = None, *,
                     plane: dict | None = None, origin: tuple[int, int] = (0, 0),
                     offset: int = 0) -> Iterator[dict]:
    """One GeoJSON ``Feature`` (a dict) per nucleus of ``labels``, in label order.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, nuclei 1..N (gaps allowed).
    measurements : DataFrame, optional
        Rows by ``label`` (e.g. :func:`dsb.workflows.segment_files.measure_nuclei`'s): each nucleus's
        numbers become its ``measurements``.
    plane : dict, optional
        QuPath's plane of the polygons (``{"c": -1, "z": 2, "t": 0}``); None: the image's only one.
    origin : (int, int)
        Row and column of ``labels``' first pixel in the image (a block of a larger one).
    offset : int
        Added to each label (a block's nuclei numbered from 1): the nucleus's name and its row of
        ``measurements``.

    Yields
    ------
    dict

    Examples
    --------
    >>> [feature] = nucleus_features(np.array([[0, 0, 0], [0, 3, 3]]), plane={"c": -1, "z": 1, "t": 0})
    >>> feature["geometry"]["coordinates"], feature["geometry"]["plane"]["z"], feature["properties"]["name"]
    ([[[1, 1], [3, 1], [3, 2], [1, 2], [1, 1]]], 1, '3')
    """
    found, outlines = label_outlines(np.asarray(labels))
    numbers = _numbers(measurements, found + offset)
    row, col = origin
    for label, outline in zip((found + offset).tolist(), outlines):
        # Our corners lie at half-integer (row, col); QuPath's pixel (x, y) spans x .. x + 1.
        geometry = _geometry(np.rint(outline[:, ::-1] + 0.5).astype(np.int64) + (col, row))
        if plane is not None:
            geometry["plane"] = dict(plane)
        properties = {"objectType": "detection", "name": str(label)}
        if label in numbers:
            properties["measurements"] = numbers[label]
        yield {"type": "Feature", "geometry": geometry, "properties": properties}


def _geometry(ring: np.ndarray) -> dict:
    """A GeoJSON ``Polygon`` of an outline's corners (``(x, y)``, not closed), or, where the outline passes a
    corner twice (two of its pixels meet only there), a ``MultiPolygon`` of the loops it makes there: a
    ring may not touch itself in GeoJSON's geometry model (JTS, which QuPath reads it with; shapely). A
    loop that turns the other way, round a hole, is left out: the nucleus is outlined on its outside.

    >>> _geometry(np.array([[0, 0], [1, 0], [1, 1], [0, 1]]))["type"]
    'Polygon'
    >>> pinched = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2], [2, 1], [1, 1], [1, 0]])
    >>> [len(polygon[0]) for polygon in _geometry(pinched)["coordinates"]]
    [5, 5]
    """
    if len(np.unique(ring, axis=0)) == len(ring):
        return {"type": "Polygon", "coordinates": [_closed(ring)]}
    loops, path, seen = [], [], {}
    for corner in map(tuple, ring.tolist()):
        if corner in seen:  # back at a corner passed before: the path since then is a loop of its own
            at = seen[corner]
            loops.append(path[at:])
            for gone in path[at + 1:]:
                del seen[gone]
            path = path[: at + 1]
        else:
            seen[corner] = len(path)
            path.append(corner)
    loops.append(path)
    turn = np.sign(_twice_area(ring))
    parts = [[_closed(np.array(loop))] for loop in loops
             if len(loop) >= 3 and np.sign(_twice_area(np.array(loop))) == turn]
    return {"type": "MultiPolygon", "coordinates": parts}


def _closed(ring: np.ndarray) -> list:
    """``ring``'s corners as a list, the first repeated at the end."""
    return np.vstack([ring, ring[:1]]).tolist()


def _twice_area(ring: np.ndarray) -> float:
    """Twice the signed area of a ring of corners (the shoelace formula)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _numbers(measurements: pd.DataFrame | None, labels: np.ndarray) -> dict[int, dict[str, float]]:
    """Each of ``labels``' finite numbers in ``measurements`` (by its ``label`` column), by name; the frame
    columns and ``label`` left out."""
    if measurements is None or not len(measurements) or not labels.size:
        return {}
    rows = measurements[measurements["label"].isin(labels)]
    skip = {"label", *FRAME_COLUMNS.values()}
    columns = [c for c in rows.columns if c not in skip and (pd.api.types.is_numeric_dtype(rows[c])
                                                              or pd.api.types.is_bool_dtype(rows[c]))]
    values = rows[columns].astype(np.float64).to_numpy()
    out = {}
    for label, row in zip(rows["label"].astype(np.int64).tolist(), values.tolist()):
        # Six significant digits, as the measurements' CSV has them.
        out[label] = {name: float(f"{value:.6g}") for name, value in zip(columns, row) if math.isfinite(value)}
    return out


def write_features(path, features: Iterable[dict]) -> Path:
    """Write ``features`` as one GeoJSON ``FeatureCollection`` to ``path``, one feature a line, as they come
    (a whole slide's need not be held at once), atomically: ``path`` appears only when whole."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        for at, feature in enumerate(features):
            out.write(("\n" if at == 0 else ",\n") + json.dumps(feature, allow_nan=False, separators=(",", ":")))
        out.write("\n]}\n")
    return path


def write_geojson(path, labels: np.ndarray, frames: str = "", measurements: pd.DataFrame | None = None) -> Path:
    """Write each nucleus of ``labels`` as a QuPath detection into the GeoJSON file ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (``NAME_nuclei.geojson``).
    labels : (H, W) ndarray of int, or (F..., H, W) for a stack
        0 background, nuclei 1..N (each frame of a stack numbered on its own, or a z-stack's 3-D
        nuclei through its planes).
    frames : str
        For a stack, the roles of its leading axes (``t`` time, ``z`` planes, ``f`` unnamed), as
        :func:`dsb.io.writers.write_labels` takes them, at most one on each of QuPath's ``t`` and ``z``
        (:data:`QUPATH_PLANES`): each polygon carries its frame's QuPath ``plane``.
    measurements : DataFrame, optional
        Rows by ``label`` (a stack's also by its frame columns, :data:`FRAME_COLUMNS`, as
        ``dsb segment`` writes them): each nucleus's numbers.

    Returns
    -------
    Path
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 + len(frames):
        raise ValueError(f"`labels` has {labels.ndim} axes, expected {2 + len(frames)} for frames {frames!r}")
    axes = [QUPATH_PLANES.get(role) for role in frames]
    if None in axes or len(set(axes)) != len(axes):
        raise ValueError(f"frames {frames!r}: give roles of {sorted(QUPATH_PLANES)}, at most one time and one "
                         "plane axis")
    if not frames:
        return write_features(path, nucleus_features(labels, measurements))
    columns = [FRAME_COLUMNS[role] for role in frames]
    if measurements is not None and not set(columns) <= set(measurements.columns):
        raise ValueError(f"the measurements of a stack need its frame columns {columns}, "
                         f"got {list(measurements.columns)}")
    by_frame = {} if measurements is None else {
        (key if isinstance(key, tuple) else (key,)): rows for key, rows in measurements.groupby(columns)}

    def every_frame():
        for index in np.ndindex(*labels.shape[:-2]):
            where = {"t": 0, "z": 0} | {axis: int(at) for axis, at in zip(axes, index)}
            rows = by_frame.get(tuple(int(i) for i in index))
            yield from nucleus_features(labels[index], rows, plane={"c": -1, **where})

    return write_features(path, every_frame())
