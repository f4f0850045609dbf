"""Reading and writing label TIFFs from napari: the files ``dsb segment`` writes and ``dsb train`` reads.

The writer saves a Labels layer as :func:`dsb.io.writers.write_labels` does for
the command line: a deflate-compressed greyscale TIFF, 16-bit, or 32-bit when a
label is above 65535; a stack of frames as a multi-page TIFF of the same kind.
A second writer saves it as a Fiji ROI set, as ``dsb segment --rois`` does
(:func:`dsb.io.rois.write_rois`), a third as QuPath detections, as ``dsb segment --geojson`` does
(:func:`dsb.io.geojson.write_geojson`).
The readers open a label image beside its image (``NAME_masks.tif``,
``NAME_labels.tif``, ``NAME_cp_masks.png``) as a Labels layer, and a GeoJSON file of QuPath's
objects (or of ``dsb segment --geojson``'s nuclei) as one, with their measurements. Nothing here
imports napari or Qt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_path
from dsb.io.annotations import LABEL_EXTENSIONS, LABEL_SUFFIXES, label_stem, read_label_image
from dsb.io.geojson import QUPATH_PLANES, on_frames, read_geojson_objects, write_geojson
from dsb.io.images import IMAGE_SUFFIXES, image_name, stack_shape
from dsb.io.rois import write_rois
from dsb.io.writers import tiff_calibration, write_labels

__all__ = ["write_labels_layer", "write_rois_layer", "write_geojson_layer", "layer_pixel_size", "layer_z_step",
           "planes_axis", "PLANE_NAMES", "TIME_NAMES", "get_label_reader", "read_label_layer", "get_geojson_reader",
           "read_geojson_layer"]

_UINT16_MAX = np.iinfo(np.uint16).max


def write_labels_layer(path: str, data, attributes: dict) -> list[str]:
    """napari writer: one Labels layer to a 16- or 32-bit label TIFF.

    Parameters
    ----------
    path : str
        Ends in ``.tif`` or ``.tiff``.
    data : array_like of int
        (H, W) labels, or a stack of them (frames first).
    attributes : dict
        The layer's attributes: where its ``scale`` and ``units`` give its pixels a size in
        micrometres (or another length), the TIFF carries it, as ``dsb segment``'s labels do
        (:func:`layer_pixel_size`).

    Returns
    -------
    list of str
        The file written.

    Examples
    --------
    >>> import tempfile, tifffile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.tif")
    >>> _ = write_labels_layer(path, np.array([[0, 3], [70_000, 3]]), {})
    >>> tifffile.imread(path).dtype.name
    'uint32'
    """
    labels = np.asarray(data)
    size = layer_pixel_size(attributes)
    if labels.ndim == 2:
        return [str(write_labels(path, labels, pixel_size=size))]
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"`path` ({path}) must end in .tif or .tiff")
    wide = bool(labels.size) and labels.max() > _UINT16_MAX
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(np.uint32 if wide else np.uint16), photometric="minisblack",
                         compression="zlib", **tiff_calibration(size, imagej=False))
    return [str(path)]


def layer_pixel_size(attributes: dict) -> float | None:
    """The side of a layer's pixels in micrometres, from its ``scale`` and ``units`` (napari 0.5 and
    later: pint units per axis), or None where they give none (pixels, no units, or pixels that are not
    square).

    >>> import pint
    >>> um = pint.get_application_registry().micrometer
    >>> layer_pixel_size({"scale": (0.325, 0.325), "units": (um, um)}), layer_pixel_size({"scale": (1, 1)})
    (0.325, None)
    """
    scale, units = attributes.get("scale"), attributes.get("units")
    if scale is None or units is None or len(scale) < 2 or len(units) < 2:
        return None
    y, x = (_micrometres(s, u) for s, u in zip(scale[-2:], units[-2:]))
    if y is None or x is None or abs(y - x) > 1e-3 * max(y, x):
        return None
    return y


def layer_z_step(attributes: dict, axis: int) -> float | None:
    """The distance in micrometres between a layer's planes along its axis ``axis`` (counted from its
    first), from its ``scale`` and ``units`` as in :func:`layer_pixel_size`; None where they give none.

    >>> import pint
    >>> um = pint.get_application_registry().micrometer
    >>> layer_z_step({"scale": (2.0, 0.5, 0.5), "units": (um, um, um)}, 0), layer_z_step({"scale": (2, 1, 1)}, 0)
    (2.0, None)
    """
    scale, units = attributes.get("scale"), attributes.get("units")
    if scale is None or units is None or not 0 <= axis < min(len(scale), len(units)):
        return None
    return _micrometres(scale[axis], units[axis])


def _micrometres(scale, unit) -> float | None:
    """``scale`` in ``unit`` (a pint unit) as a positive number of micrometres, else None."""
    try:  # pixel units, or units of no length, say nothing of micrometres
        value = float((float(scale) * unit).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 - whatever the units are, they give no size
        return None
    return value if np.isfinite(value) and value > 0 else None


def write_rois_layer(path: str, data, attributes: dict) -> list[str]:
    """napari writer: one Labels layer to a Fiji ROI set, one traced ROI per nucleus named by its label.

    Parameters
    ----------
    path : str
        Ends in ``.zip``.
    data : array_like of int
        (H, W) labels, or a stack of them (frames first): each ROI at its slice, named ``s3-0042``,
        the slices counted over all leading axes as :func:`write_labels_layer` writes them (one
        multi-page TIFF).
    attributes : dict
        The layer's attributes (unused).

    Returns
    -------
    list of str
        The file written.

    Examples
    --------
    >>> import tempfile, zipfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a_rois.zip")
    >>> _ = write_rois_layer(path, np.array([[0, 3], [0, 3]]), {})
    >>> zipfile.ZipFile(path).namelist()
    ['0003.roi']
    """
    labels = np.asarray(data)
    if Path(path).suffix.lower() != ".zip":
        raise ValueError(f"`path` ({path}) must end in .zip")
    if labels.ndim > 2:  # the slices of the multi-page TIFF the label writer saves
        return [str(write_rois(path, labels.reshape(-1, *labels.shape[-2:]), "f"))]
    return [str(write_rois(path, labels))]


def write_geojson_layer(path: str, data, attributes: dict) -> list[str]:
    """napari writer: one Labels layer to a GeoJSON file of QuPath detections, one per nucleus named by its
    label, as ``dsb segment --geojson`` writes them without their measurements (a corrected layer's
    features no longer describe its nuclei: ``dsb measure --geojson`` measures them).

    Parameters
    ----------
    path : str
        Ends in ``.geojson`` or ``.json``.
    data : array_like of int
        (H, W) labels, or a stack of them (frames first): each detection on its frame's QuPath plane,
        as ``dsb segment --geojson`` puts a file's: of two frame axes, the one the layer's
        ``axis_labels`` call z (:func:`planes_axis`; unnamed, the second, as in ``T, Z, Y, X``) on
        ``z`` and the other on ``t``; one frame axis on ``z`` where it is named so, else on ``t`` (the
        pages of a plain TIFF); more frame axes, or two of time points, counted through on ``t``. The
        planes the segment widget joined into 3-D nuclei are ``z`` whatever their name.
    attributes : dict
        The layer's attributes: its ``axis_labels``, and its ``metadata``'s ``dsb_planes``.

    Returns
    -------
    list of str
        The file written.

    Examples
    --------
    >>> import tempfile, json, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.geojson")
    >>> _ = write_geojson_layer(path, np.array([[0, 3], [0, 3]]), {})
    >>> [f["properties"]["name"] for f in json.load(open(path))["features"]]
    ['3']
    """
    labels = np.asarray(data)
    if Path(path).suffix.lower() not in (".geojson", ".json"):
        raise ValueError(f"`path` ({path}) must end in .geojson or .json")
    lead = labels.ndim - 2
    if lead == 0:
        return [str(write_geojson(path, labels))]
    names = list(attributes.get("axis_labels") or [str(-k) for k in range(labels.ndim, 0, -1)])[:lead]
    axis, _ = planes_axis(names)
    if lead == 1 and str(names[0]).strip().lower() not in PLANE_NAMES:
        axis = None  # one axis not named for planes: pages, on t as dsb segment puts a plain TIFF's
    joined = (attributes.get("metadata") or {}).get("dsb_planes")
    if isinstance(joined, int) and 0 <= joined < lead:
        axis = joined  # the planes the segment widget's 3-D nuclei joined
    if lead > 2 or axis is None:
        return [str(write_geojson(path, labels.reshape(-1, *labels.shape[-2:]), "t"))]
    return [str(write_geojson(path, labels, "".join("z" if at == axis else "t" for at in range(lead))))]


#: What a layer's axis labels may call the axis of a z-stack's planes, and of time points.
PLANE_NAMES = ("z", "plane", "planes", "slice", "slices")
TIME_NAMES = ("t", "time", "frame", "frames")


def planes_axis(names) -> tuple[int | None, str]:
    """Which frame axis of a layer holds a z-stack's planes, from the names of its frame axes
    (napari's ``axis_labels`` before the image's rows and columns).

    The axis named ``z`` (or a plane's word, any case); else the last axis not named for time
    (napari's default labels are numbers: ``-3``); none where every axis names time points.

    Returns
    -------
    axis : int or None
    note : str
        Why none, or ``""``.

    Examples
    --------
    >>> planes_axis(["t", "z"]), planes_axis(["-4", "-3"]), planes_axis(["T"])
    ((1, ''), (1, ''), (None, 'its axes are time points, with no z planes to join'))
    >>> planes_axis([])
    (None, 'a single image has no planes to join')
    """
    names = [str(n).strip().lower() for n in names]
    if not names:
        return None, "a single image has no planes to join"
    for at, name in enumerate(names):
        if name in PLANE_NAMES:
            return at, ""
    unnamed = [at for at, name in enumerate(names) if name not in TIME_NAMES]
    if not unnamed:
        return None, "its axes are time points, with no z planes to join"
    return unnamed[-1], ""


def _is_label_file(path: Path) -> bool:
    # A label image; QuPath's GeoJSON has a reader of its own (get_geojson_reader).
    return path.suffix.lower() in LABEL_EXTENSIONS and path.suffix.lower() != ".geojson" \
        and path.stem.endswith(LABEL_SUFFIXES)


def get_label_reader(path):
    """napari reader contribution: :func:`read_label_layer` for a label image's path, else None.

    Examples
    --------
    >>> get_label_reader("cells_masks.tif") is read_label_layer, get_label_reader("cells.tif")
    (True, None)
    """
    if isinstance(path, list):
        return read_label_layer if path and all(_is_label_file(Path(p)) for p in path) else None
    return read_label_layer if _is_label_file(Path(path)) else None


def read_label_layer(path) -> list[tuple]:
    """Label images (:func:`dsb.io.annotations.read_label_image`) as napari Labels layer data."""
    paths = path if isinstance(path, list) else [path]
    return [(read_label_image(p), {"name": Path(p).stem}, "labels") for p in paths]


def get_geojson_reader(path):
    """napari reader contribution: :func:`read_geojson_layer` for GeoJSON files, else None.

    Examples
    --------
    >>> get_geojson_reader("cells_nuclei.geojson") is read_geojson_layer, get_geojson_reader("cells.json")
    (True, None)
    """
    paths = path if isinstance(path, list) else [path]
    return read_geojson_layer if paths and all(Path(p).suffix.lower() == ".geojson" for p in paths) else None


def read_geojson_layer(path) -> list[tuple]:
    """QuPath's objects (or ``dsb segment --geojson``'s nuclei) as a napari Labels layer, one label each.

    The objects :func:`dsb.io.geojson.read_geojson_objects` reads, labelled as ``dsb measure`` and
    ``dsb train`` label them: a file of one plane gives one label image, a stack's a stack on its
    ``t`` and ``z`` axes (the layer's ``axis_labels``). The layer is the size of the image beside the
    file where there is one (``NAME.tif`` beside ``NAME.geojson``, ``NAME_masks.geojson``,
    ``NAME_nuclei.geojson`` or ``NAME.tif.geojson``) or that the ``summary.csv`` beside it names (a
    ``dsb segment --out`` folder), a stack's as deep as its frames (read from the file's header), else of
    the objects' extent and up to their last plane, and in pixels (scale 1) either way: it lies on the
    image opened in pixels. Its ``features`` hold each object's type, QuPath class and
    measurements by label (a stack's are in ``metadata["dsb_objects"]``, one row per object and plane).
    """
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in map(Path, paths):
        beside = _image_beside(p)
        shape, roles = stack_shape(beside) if beside is not None else (None, "")
        frames = None if shape is None else {QUPATH_PLANES[role]: n for role, n in zip(roles, shape)}
        labels, planes, table = read_geojson_objects(p, None if shape is None else shape[-2:], frames=frames)
        attributes = {"name": p.stem, "metadata": {"dsb_objects": table}}
        if roles:  # a stack beside it: its frames, named as QuPath's planes
            labels = on_frames(labels, planes, shape, roles)
            attributes["axis_labels"] = (*(QUPATH_PLANES[role] for role in roles), "y", "x")
        elif planes:
            attributes["axis_labels"] = (*planes, "y", "x")
        if not planes:  # one plane: one row per label, which napari looks features up by (its "index" column)
            attributes["features"] = table.drop(columns="index", errors="ignore").rename(columns={"label": "index"})
        layers.append((labels, attributes, "labels"))
    return layers


def _image_beside(path: Path) -> Path | None:
    """The image a GeoJSON file holds the objects of, where it lies beside it, else None: the image whose
    name (:func:`dsb.io.images.image_name`: ``A1`` of ``A1.ome.tif``) the file's name gives, as ``NAME``,
    ``NAME_masks`` (any label suffix), ``NAME_nuclei`` or ``NAME.tif`` before ``.geojson``."""
    stem = path.stem
    if Path(stem).suffix.lower() in IMAGE_SUFFIXES and (path.parent / stem).is_file():  # QuPath's NAME.tif.geojson
        return path.parent / stem
    names = [stem, label_stem(path), stem[: -len("_nuclei")] if stem.endswith("_nuclei") else None]
    images = {}
    for candidate in sorted(path.parent.iterdir()):
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            images.setdefault(image_name(candidate).lower(), candidate)
    found = next((images[name.lower()] for name in names if name and name.lower() in images), None)
    return found if found is not None else _image_in_summary(path)


def _image_in_summary(path: Path) -> Path | None:
    """The image a ``dsb segment`` (or ``dsb measure``) run wrote the GeoJSON file of, by the ``summary.csv``
    beside it, where that image is still there: the run's ``--out`` is seldom the image's folder."""
    import pandas as pd

    summary = path.parent / "summary.csv"
    try:
        rows = pd.read_csv(summary, usecols=["file", "geojson"], dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    for image, written in zip(rows["file"], rows["geojson"]):
        if written and Path(written).name == path.name and Path(image).is_file() \
                and Path(image).suffix.lower() in IMAGE_SUFFIXES:
            return Path(image)
    return None
