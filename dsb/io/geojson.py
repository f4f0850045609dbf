"""Nuclei as GeoJSON polygons: QuPath's detections, and any reader of GeoJSON's shapes.

QuPath imports a GeoJSON ``FeatureCollection`` as objects (drag the file onto the image, or *File >
Import objects from file*); :func:`write_geojson` writes each nucleus as a ``Feature`` QuPath reads
as a detection:

- ``geometry``: a ``Polygon`` along the nucleus's pixels' edges (:func:`dsb.core.outlines.label_polygons`:
  the outline Fiji's wand traces, with the nucleus's holes; a ``MultiPolygon`` of a nucleus in pieces), in pixels with ``x`` the column and ``y`` the row, pixel
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

The way back, :func:`read_geojson_labels`: nuclei drawn or corrected in QuPath and exported as
GeoJSON (*File > Export objects as GeoJSON*) become a label image, which ``dsb measure`` and
``dsb train`` (its fine-tuning included) take as they take a label TIFF; :func:`read_geojson_objects`
reads a stack's objects on their planes, with each object's type, QuPath class and measurements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path
from dsb.core.errors import BadDataError
from dsb.core.outlines import label_polygons
from dsb.io.channels import FRAME_COLUMNS

__all__ = ["nucleus_features", "write_features", "write_geojson", "read_geojson_labels", "read_geojson_objects",
           "on_frames", "QUPATH_PLANES", "MAX_PLANES", "MAX_BYTES"]

#: The axis of QuPath's plane each frame role is counted on: an unnamed axis (the pages of a plain
#: multi-page TIFF) on ``t``, as QuPath's Bio-Formats reader opens such a file.
QUPATH_PLANES = {"t": "t", "z": "z", "f": "t"}


def nucleus_features(labels: np.ndarray, measurements: pd.DataFrame | None = None, *,
                     plane: dict | None = None, origin: tuple[int, int] = (0, 0),
                     cells: np.ndarray | None = None) -> Iterator[dict]:
    """One GeoJSON ``Feature`` (a dict) per nucleus of ``labels``, in label order: a QuPath detection, or
    with ``cells`` a QuPath cell.

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
    cells : (H, W) ndarray of int, optional
        Each nucleus's cell, labelled as the nuclei (:func:`dsb.workflows.cells.grow_cells`): each feature is
        then a QuPath cell (``"objectType": "cell"``), its ``geometry`` the cell's outline and its
        ``nucleusGeometry`` the nucleus's.

    Yields
    ------
    dict

    Examples
    --------
    >>> [feature] = nucleus_features(np.array([[0, 0, 0], [0, 3, 3]]), plane={"c": -1, "z": 1, "t": 0})
    >>> feature["geometry"]["coordinates"], feature["geometry"]["plane"]["z"], feature["properties"]["name"]
    ([[[1, 1], [3, 1], [3, 2], [1, 2], [1, 1]]], 1, '3')
    """
    found, polygons = label_polygons(np.asarray(labels))
    numbers = _numbers(measurements, found)
    around = {}
    if cells is not None:
        held, outlines = label_polygons(np.asarray(cells))
        around = dict(zip(held.tolist(), outlines))

    def shape(pieces) -> dict:
        # Our corners lie at half-integer (row, col); QuPath's pixel (x, y) spans x .. x + 1.
        geometry = _geometry([[np.rint(ring[:, ::-1] + 0.5).astype(np.int64) + origin[::-1] for ring in piece]
                              for piece in pieces])
        return geometry if plane is None else geometry | {"plane": dict(plane)}

    for label, pieces in zip(found.tolist(), polygons):
        properties = {"objectType": "detection" if cells is None else "cell", "name": str(label)}
        if label in numbers:
            properties["measurements"] = numbers[label]
        if cells is None:
            yield {"type": "Feature", "geometry": shape(pieces), "properties": properties}
        else:  # a cell holds its nucleus whole
            yield {"type": "Feature", "geometry": shape(around.get(label, pieces)), "nucleusGeometry": shape(pieces),
                   "properties": properties}


def _geometry(pieces: list) -> dict:
    """A GeoJSON ``Polygon`` of a nucleus in one piece, or a ``MultiPolygon`` of its pieces: each piece's rings
    (its outside, then its holes) of corners (``(x, y)``, not closed), as :func:`dsb.core.outlines.label_polygons`
    gives them. A ring may not touch itself in GeoJSON's geometry model (JTS, which QuPath reads it with;
    shapely): where one passes a corner twice (pixels meeting only there), it is cut there into simple
    rings, each an outside (counterclockwise) or a hole (clockwise), and each hole goes to the smallest
    outside that holds it.

    >>> _geometry([[np.array([[0, 0], [1, 0], [1, 1], [0, 1]])]])["type"]
    'Polygon'
    >>> pinched = np.array([[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1]])  # counterclockwise
    >>> [len(polygon[0]) for polygon in _geometry([[pinched]])["coordinates"]]
    [5, 5]
    """
    if len(pieces) == 1 and len(pieces[0]) == 1 and _is_simple(pieces[0][0]):  # as most nuclei are
        return {"type": "Polygon", "coordinates": [_closed(pieces[0][0])]}
    polygons = []
    for piece in pieces:
        rings = [loop for ring in piece for loop in _simple_rings(ring)]
        areas = [_twice_area(ring) for ring in rings]
        lobes = sorted((at for at, area in enumerate(areas) if area > 0), key=lambda at: areas[at])  # smallest first
        held = {at: [] for at in lobes}
        for at, area in enumerate(areas):
            if area < 0:
                beside = _pixel_beside(rings[at])
                holding = (lobe for lobe in lobes if _inside(rings[lobe], beside[None, :])[0])
                held[next(holding, lobes[-1])].append(rings[at])
        polygons.extend([_closed(rings[at]), *map(_closed, held[at])] for at in reversed(lobes))
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def _simple_rings(ring: np.ndarray) -> list[np.ndarray]:
    """``ring`` cut where it passes a corner twice into the simple loops it makes there (either way round)."""
    if _is_simple(ring):
        return [ring]
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
    return [np.array(loop) for loop in loops if len(loop) >= 3]


def _is_simple(ring: np.ndarray) -> bool:
    """Whether a ring of corners passes no corner twice."""
    return len(set(map(tuple, ring.tolist()))) == len(ring)


def _pixel_beside(ring: np.ndarray) -> np.ndarray:
    """The centre of the nucleus's pixel beside the first side of a ring of corners (a hole's too): on the
    ring's left, where its polygon lies (its outside counterclockwise, its holes clockwise)."""
    step = np.sign(ring[1] - ring[0]).astype(np.float64)
    return ring[0] + 0.5 * step + 0.5 * np.array([-step[1], step[0]])


def _closed(ring: np.ndarray) -> list:
    """``ring``'s corners as a list, the first repeated at the end."""
    return np.vstack([ring, ring[:1]]).tolist()


def _twice_area(ring: np.ndarray) -> float:
    """Twice the signed area of a ring of corners (the shoelace formula)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


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


def write_geojson(path, labels: np.ndarray, frames: str = "", measurements: pd.DataFrame | None = None,
                  cells: np.ndarray | None = None) -> Path:
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
        Rows by ``label`` (a stack's also by its frame columns, ``t``, ``z``, ``frame``, as
        ``dsb segment`` writes them): each nucleus's numbers.
    cells : ndarray of int, optional
        The nuclei's cells, shaped and labelled as ``labels`` (:func:`dsb.workflows.cells.grow_cells`): each
        nucleus is then written as a QuPath cell with its nucleus (:func:`nucleus_features`).

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
    if cells is not None and np.shape(cells) != labels.shape:
        raise ValueError(f"`cells` (shape {np.shape(cells)}) must have the labels' shape {labels.shape}")
    if not frames:
        return write_features(path, nucleus_features(labels, measurements, cells=cells))
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
            yield from nucleus_features(labels[index], rows, plane={"c": -1, **where},
                                        cells=None if cells is None else cells[index])

    return write_features(path, every_frame())


def read_geojson_labels(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label image of the objects of a GeoJSON file: QuPath's detections, cells (a cell's nucleus, its
    ``nucleusGeometry``) and annotations (nuclei drawn by hand) but regions, one label each, as
    :func:`write_geojson` writes them.

    Each ``Polygon`` or ``MultiPolygon`` (its holes left out) takes the pixels whose centres lie inside
    it, in QuPath's pixel coordinates (``x`` the column, ``y`` the row, pixel ``(x, y)`` spanning
    ``x .. x + 1``); where two overlap, the first keeps the pixels. An annotation that holds a point
    inside another object of its plane, and is at least twice that object's area, is a region (the area
    detection ran in, a tissue's outline), not a nucleus, and is passed over; so are points, lines,
    tiles and TMA cores. An object named by a whole number (as ``dsb segment --geojson`` names them)
    keeps it as its label, so that a nucleus keeps its number through QuPath; the others (a nucleus
    drawn in QuPath has no name) are numbered after the largest, in the file's order.

    Parameters
    ----------
    path : str or os.PathLike
        A GeoJSON ``FeatureCollection``, a list of features (QuPath's other export), or one feature.
    shape : (int, int), optional
        The (H, W) of its image, which the objects must lie in; None: the extent of the objects.

    Returns
    -------
    (H, W) ndarray of int32

    Raises
    ------
    BadDataError
        Naming the file: not JSON, not GeoJSON features, coordinates that are not finite (x, y) points,
        objects on more than one plane of a stack (a label image is one 2-D plane; :func:`read_geojson_objects`
        reads a stack's), or objects beyond ``shape`` (the objects of another image, or of this one at
        another scale).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a_masks.geojson")
    >>> _ = write_geojson(path, np.array([[0, 0, 0], [0, 7, 7]]))
    >>> read_geojson_labels(path, (2, 3)).tolist()
    [[0, 0, 0], [0, 7, 7]]
    """
    path = Path(path)
    found = _nuclei(path, shape)
    planes = {f.plane for f in found}
    if len(planes) > 1:
        raise BadDataError(f"holds objects on {len(planes)} planes of a stack; a label image is one 2-D plane: "
                           "export one plane's objects", path=path)
    labels = np.zeros(_plane_shape(found, shape, path), np.int32)
    for value, nucleus in zip(_values([f.name for f in found]), found):
        _paint(labels, value, nucleus.rings)
    return labels


#: Frames :func:`read_geojson_objects` makes at most: a plane numbered beyond them is refused, not allocated.
MAX_PLANES = 10_000
#: The most memory :func:`read_geojson_objects` takes for its labels (32-bit, every frame up to the last).
MAX_BYTES = 8 * 2 ** 30


def read_geojson_objects(path, shape: tuple[int, int] | None = None, *,
                         frames: dict[str, int] | None = None) -> tuple[np.ndarray, str, pd.DataFrame]:
    """The objects of a GeoJSON file as labels on their planes, with what QuPath measured of them.

    The objects are those :func:`read_geojson_labels` reads, labelled as it labels them, each on its
    QuPath ``plane`` (``t``, ``z``): a file of one plane gives one label image, a stack's (``dsb segment
    --geojson`` of a time series or z-stack, QuPath's objects of a stack) a stack of them, one frame
    for each time point and plane up to the last one holding objects. A name may come back on several
    planes (a stitched nucleus's sections), never twice on one.

    Parameters
    ----------
    path : str or os.PathLike
        A GeoJSON ``FeatureCollection``, a list of features, or one feature.
    shape : (int, int), optional
        The (H, W) of the image's planes, which the objects must lie in; None: the extent of the objects.
    frames : dict, optional
        The image's time points and planes on QuPath's axes (``{"t": 5, "z": 12}``; an axis it has not,
        left out, holds plane 0 alone), which the objects' planes must lie in.

    Returns
    -------
    labels : ndarray of int32
        (H, W) for one plane, (T, H, W), (Z, H, W) or (T, Z, H, W) for objects on several.
    planes : str
        The roles of ``labels``' leading axes: ``""``, ``"t"``, ``"z"`` or ``"tz"``.
    table : DataFrame
        One row per object, in the file's order: its ``label``, its plane's ``t`` and ``z`` (those in
        ``planes``), ``object_type`` (detection, cell or annotation), ``classification`` (QuPath's class,
        where any object has one), then the numbers of its ``measurements`` (a column each, NaN where an
        object lacks it: ``dsb segment``'s measurements, QuPath's ``Nucleus: Area µm^2``...). An object
        too small to hold a pixel's centre has a row and no pixels.

    Raises
    ------
    BadDataError
        As :func:`read_geojson_labels` (but for several planes), and for a plane numbered below 0 or
        beyond :data:`MAX_PLANES` (or ``frames``), or labels over :data:`MAX_BYTES`.
    """
    path = Path(path)
    found = _nuclei(path, shape)
    ts, zs = (np.array([f.plane[axis] for f in found], np.int64) for axis in (1, 0))
    if found and (min(ts.min(), zs.min()) < 0 or max(ts.max(), zs.max()) >= MAX_PLANES):
        raise BadDataError(f"holds objects on planes from t, z = {ts.min()}, {zs.min()} to {ts.max()}, {zs.max()}; "
                           f"QuPath counts its planes from 0, and at most {MAX_PLANES} are read", path=path)
    for axis, at in (("t", ts), ("z", zs)) if frames is not None else ():
        if at.size and at.max() >= frames.get(axis, 1):
            raise BadDataError(f"holds objects on QuPath's {axis} plane {at.max()}, but its image has "
                               f"{frames.get(axis, 0)} {'time points' if axis == 't' else 'planes'}", path=path)
    planes = "".join(axis for axis, at in (("t", ts), ("z", zs)) if at.size and at.max() > 0)
    depth = tuple(int({"t": ts, "z": zs}[axis].max()) + 1 for axis in planes)  # the labels' frames
    if int(np.prod(depth)) > MAX_PLANES:
        raise BadDataError(f"holds objects on {' x '.join(map(str, depth))} planes; at most {MAX_PLANES} are read",
                           path=path)
    plane = _plane_shape(found, shape, path)
    need = int(np.prod(depth)) * plane[0] * plane[1] * 4
    if need > MAX_BYTES:
        raise BadDataError(f"holds objects on {' x '.join(map(str, depth)) or '1'} planes of {plane[1]} x {plane[0]} "
                           f"pixels: {need / 2 ** 30:.1f} GiB of labels, over the {MAX_BYTES / 2 ** 30:g} GiB read at "
                           "once; export fewer planes", path=path)
    labels = np.zeros(depth + plane, np.int32)
    values = _values([f.name for f in found], [f.plane for f in found])
    for value, nucleus in zip(values, found):
        at = tuple(nucleus.plane[1] if axis == "t" else nucleus.plane[0] for axis in planes)
        _paint(labels[at], value, nucleus.rings)
    rows = pd.DataFrame({"label": np.array(values, np.int64)} | {axis: {"t": ts, "z": zs}[axis] for axis in planes}
                        | {"object_type": [f.kind for f in found]})
    classes = [_class_name(f.properties) for f in found]
    if any(c is not None for c in classes):
        rows["classification"] = classes
    numbers = pd.DataFrame.from_records([_measurements(f.properties) for f in found], index=rows.index)
    numbers = numbers.drop(columns=[c for c in numbers.columns if c in rows.columns])
    return labels, planes, pd.concat([rows, numbers], axis=1) if len(numbers.columns) else rows


def on_frames(labels: np.ndarray, planes: str, shape: tuple[int, ...], roles: str) -> np.ndarray:
    """:func:`read_geojson_objects`' ``labels`` on its ``planes`` put on the frames of a stack of ``shape``
    (frame axes, then height and width) whose frame axes are ``roles`` (``t``, ``z``, ``f`` unnamed, as
    :func:`dsb.io.images.read_stack` gives them): each QuPath plane on the axis :data:`QUPATH_PLANES` puts
    it on (a plain TIFF's pages on ``t``), the frames past the last holding objects empty. Read with
    ``frames`` (the image's counts on QuPath's axes), the planes fit.

    >>> on_frames(np.ones((2, 1, 1), np.int32), "t", (3, 1, 1), "f").ravel().tolist()
    [1, 1, 0]
    """
    axes = [QUPATH_PLANES[role] for role in roles]
    order = [axis for axis in axes if axis in planes]
    labels = labels.transpose([planes.index(axis) for axis in order] + [-2, -1])
    out = np.zeros(shape, np.int32)
    out[tuple(slice(0, labels.shape[order.index(axis)]) if axis in order else 0 for axis in axes)] = labels
    return out


class _Found(NamedTuple):
    """An object of a GeoJSON file that may be a nucleus."""

    kind: str  # detection, cell or annotation
    name: str
    rings: list  # polygons, each a list of rings (the outer one first) as (n, 2) arrays of x, y
    plane: tuple[int, int]  # z, t
    properties: dict


def _nuclei(path: Path, shape: tuple[int, int] | None = None) -> list[_Found]:
    """The objects of a GeoJSON file that may be nuclei, its regions left out (whatever their size: the region
    test reads a ring along rows, never filling it); with ``shape``, a BadDataError for nuclei beyond it."""
    found = [_object(feature, path) for feature in _features(path)]
    found = [f for f in found if f is not None]
    found = [f for f, region in zip(found, _regions(found)) if not region]
    if shape is not None:
        _plane_shape(found, shape, path)
    return found


def _plane_shape(found: list[_Found], shape: tuple[int, int] | None, path: Path) -> tuple[int, int]:
    """``shape`` where every object lies within it, else a BadDataError; None: the objects' extent."""
    outers = [polygon[0] for f in found for polygon in f.rings if len(polygon[0])]
    low = np.min([ring.min(axis=0) for ring in outers], axis=0) if outers else np.zeros(2)
    high = np.max([ring.max(axis=0) for ring in outers], axis=0) if outers else np.zeros(2)
    if shape is None:
        return max(int(np.ceil(high[1])), 0), max(int(np.ceil(high[0])), 0)
    if outers and (low.min() < -0.5 or high[0] > shape[1] + 0.5 or high[1] > shape[0] + 0.5):
        raise BadDataError(f"holds objects from x, y = {low[0]:g}, {low[1]:g} to {high[0]:g}, {high[1]:g}, beyond "
                           f"its image's {shape[1]} x {shape[0]} pixels: the objects of another image, or of "
                           "this one at another scale?", path=path)
    return tuple(shape)


def _paint(labels: np.ndarray, value: int, polygons: list) -> None:
    """Give ``value`` to the unlabelled pixels of ``labels`` inside ``polygons``, their holes left out."""
    for outer, *holes in polygons:
        _fill(labels, value, outer, holes)


def _class_name(properties: dict) -> str | None:
    """QuPath's classification of an object (``{"name": "Tumor", ...}``, or a plain name), else None."""
    value = properties.get("classification")
    value = value.get("name") if isinstance(value, dict) else value
    return str(value) if isinstance(value, (str, int, float)) else None


def _measurements(properties: dict) -> dict[str, float]:
    """The numbers of an object's ``measurements``: a map (QuPath 0.4+, ``dsb segment``) or a list of
    ``{"name", "value"}`` (QuPath 0.2, 0.3); what is not a number left out."""
    values = properties.get("measurements")
    if isinstance(values, list):
        values = {m.get("name"): m.get("value") for m in values if isinstance(m, dict)}
    if not isinstance(values, dict):
        return {}
    return {str(name): float(value) for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


#: The objects :func:`read_geojson_labels` takes as nuclei, by QuPath's ``objectType`` (and its older names).
_NUCLEUS_TYPES = {"detection": "detection", "PathDetectionObject": "detection", "cell": "cell",
                  "PathCellObject": "cell", "annotation": "annotation", "PathAnnotationObject": "annotation"}


#: The object types QuPath 0.2 and 0.3 wrote as a feature's ``id``.
_LEGACY_TYPES = ("PathAnnotationObject", "PathDetectionObject", "PathCellObject", "PathTileObject", "TMACoreObject",
                 "PathRootObject")


def _object(feature: dict, path: Path) -> _Found | None:
    """A feature that may be a nucleus, else None."""
    properties = feature.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    named = properties.get("objectType", properties.get("type"))
    if named is None and str(feature.get("id")) in _LEGACY_TYPES:  # QuPath 0.2 and 0.3 say it in the id
        named = feature["id"]
    kind = _NUCLEUS_TYPES.get(str("annotation" if named is None else named))
    geometry = feature.get("nucleusGeometry") if kind == "cell" else None
    geometry = geometry if isinstance(geometry, dict) else feature.get("geometry")
    shape = geometry.get("type") if isinstance(geometry, dict) else None
    if kind is None or shape not in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return None
    try:
        polygons = _polygons(geometry)
        if not polygons:
            return None
        rings = [[_ring(ring) for ring in polygon] for polygon in polygons if len(polygon)]
        plane = geometry.get("plane") or {}
        plane = (int(plane.get("z", 0)), int(plane.get("t", 0))) if isinstance(plane, dict) else (0, 0)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise BadDataError(f"holds a {shape} that is not rings of finite (x, y) points on a plane ({exc})",
                           path=path) from None
    except RecursionError:
        raise BadDataError(f"holds a {shape} nested too deeply to read", path=path) from None
    return _Found(kind, str(properties.get("name", "")).strip(), rings, plane, properties)


def _regions(found: list[_Found]) -> list[bool]:
    """Which objects of ``found`` are regions, not nuclei: annotations that hold a point inside another object
    of their plane (the centre of a pixel it fills, :func:`_point_inside`) and are at least twice its area."""
    regions = [False] * len(found)
    annotations = [at for at, f in enumerate(found) if f.kind == "annotation" and f.rings]
    if not annotations or len(found) < 2:
        return regions
    points = np.array([_point_inside(f.rings[0][0]) if f.rings else (np.nan, np.nan) for f in found])
    areas = np.array([sum(abs(_twice_area(polygon[0])) for polygon in f.rings) / 2 for f in found])
    planes = np.array([f.plane for f in found])
    order = np.argsort(points[:, 0], kind="stable")  # by x (NaN last): each annotation looks at its own columns
    xs = points[order, 0]
    for at in annotations:
        outer = np.vstack([polygon[0] for polygon in found[at].rings])
        (left, top), (right, bottom) = outer.min(axis=0), outer.max(axis=0)
        near = order[np.searchsorted(xs, left, side="right"): np.searchsorted(xs, right, side="left")]
        near = np.sort(near[(points[near, 1] > top) & (points[near, 1] < bottom)
                            & (planes[near] == planes[at]).all(axis=1) & (2 * areas[near] <= areas[at])])
        near = near[near != at]
        for chunk in np.array_split(near, max(1, near.size // 4096)):  # sides x points at a time
            if chunk.size and any(_inside(polygon[0], points[chunk]).any() for polygon in found[at].rings):
                regions[at] = True
                break
    return regions


def _point_inside(ring: np.ndarray) -> tuple[float, float]:
    """A point inside a ring of (x, y) points drawn either way round: the centre of a pixel it fills, on the
    row of pixel centres nearest its middle that holds one (the middle of that row's first run inside it),
    else its corners' mean (a ring too small to hold a pixel's centre). Found along rows, so that a ring of
    any size costs its corners times its rows at most, never its area.

    >>> _point_inside(np.array([[0, 0], [0, 4], [6, 4], [6, 0]]))
    (2.5, 1.5)
    """
    if len(ring) < 3:
        return tuple(float(v) for v in ring.mean(axis=0)) if len(ring) else (np.nan, np.nan)
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    top, bottom = np.ceil(y0.min() - 0.5), np.floor(y0.max() - 0.5)
    middle = np.floor((y0.min() + y0.max()) / 2 - 0.5)
    near = middle + np.array([0, 1, -1, 2, -2, 3, -3, 4, -4])  # the middle row first, then its neighbours,
    rows = np.concatenate([near, np.arange(top, bottom + 1)])  # then every row (a thin or bent ring)
    for row in rows[(rows >= top) & (rows <= bottom)]:
        y = row + 0.5
        upright = (y0 > y) != (y1 > y)
        crossings = np.sort(x0[upright] + (y - y0[upright]) * (x1[upright] - x0[upright]) / (y1[upright] - y0[upright]))
        for left, right in zip(crossings[0::2], crossings[1::2]):  # the runs inside the ring on this row
            first, last = np.floor(left - 0.5) + 1, np.ceil(right - 0.5) - 1  # pixel centres strictly inside
            if first <= last:
                return float(np.floor((first + last) / 2) + 0.5), float(y)
    return tuple(float(v) for v in ring.mean(axis=0))


def _inside(ring: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which of ``points`` (x, y) a ring holds: a ray from each crosses its sides an odd number of times."""
    x0, y0 = ring[:, 0][:, None], ring[:, 1][:, None]
    x1, y1 = np.roll(ring[:, 0], -1)[:, None], np.roll(ring[:, 1], -1)[:, None]
    px, py = points[:, 0][None, :], points[:, 1][None, :]
    upright = (y0 > py) != (y1 > py)
    crossing = x0 + (py - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
    return np.count_nonzero(upright & (crossing > px), axis=0) % 2 == 1


def _polygons(geometry: dict) -> list:
    """The polygons (lists of rings) of a geometry: a ``Polygon``'s, a ``MultiPolygon``'s, or those of a
    ``GeometryCollection`` (QuPath's, after some of its shape operations); its points and lines left out."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    if kind == "GeometryCollection":
        return [polygon for part in geometry.get("geometries") or [] if isinstance(part, dict)
                for polygon in _polygons(part)]
    return []


def _values(names: list[str], planes: list | None = None) -> list[int]:
    """Each object's label: its name where that is a whole number from 1 that no object of its plane before
    it took, else the next after the largest.

    >>> _values(["7", "", "Nucleus", "7", "2"]), _values(["7", "7"], [(0, 0), (1, 0)])
    ([7, 8, 9, 10, 2], [7, 7])
    """
    top = np.iinfo(np.int32).max
    named = [int(n) if n.isascii() and n.isdigit() and 0 < int(n) <= top else None for n in names]
    values, taken = [], set()
    after = max((n for n in named if n is not None), default=0)
    for n, plane in zip(named, planes or [None] * len(named)):
        if n is None or (plane, n) in taken:
            after += 1
            n = after
        taken.add((plane, n))
        values.append(n)
    return values


def _fill(labels: np.ndarray, value: int, outer: np.ndarray, holes) -> None:
    """Give ``value`` to the unlabelled pixels of ``labels`` whose centres lie inside the ring ``outer`` and
    outside the ``holes``, working within the ring's bounding box."""
    from skimage.draw import polygon as inside

    if len(outer) < 3:
        return
    rows, cols = inside(outer[:, 1] - 0.5, outer[:, 0] - 0.5, labels.shape)
    if not rows.size:
        return
    top, left = rows.min(), cols.min()
    box = np.zeros((rows.max() - top + 1, cols.max() - left + 1), bool)
    box[rows - top, cols - left] = True
    for hole in holes:
        if len(hole) >= 3:
            box[inside(hole[:, 1] - 0.5 - top, hole[:, 0] - 0.5 - left, box.shape)] = False
    window = labels[top:top + box.shape[0], left:left + box.shape[1]]
    window[box & (window == 0)] = value


def _ring(points) -> np.ndarray:
    """A GeoJSON ring's points as an (n, 2) array of ``x, y`` (a third coordinate dropped)."""
    ring = np.asarray(points, np.float64)
    if ring.size == 0:
        return np.zeros((0, 2))
    if ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring[:, :2]).all():
        raise ValueError(f"a ring of shape {ring.shape}, not of finite (x, y) points")
    return ring[:, :2]


def _features(path: Path) -> list:
    """The features of a GeoJSON file, as a list of dicts."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows tools') passed over
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDataError(f"is not a GeoJSON file ({type(exc).__name__}: {exc})", path=path) from None
    except RecursionError:
        raise BadDataError("is not a GeoJSON file (lists or objects nested too deeply to read)", path=path) from None
    except OSError as exc:
        raise BadDataError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise BadDataError("is JSON but not GeoJSON features (a FeatureCollection, a list of features or a feature)",
                           path=path)
    return data
