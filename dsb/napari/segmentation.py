"""Segmenting a napari image layer's data frame by frame, and the model the plugin's widgets share.

Qt-free: the widgets run :func:`segment_frames` in a thread worker and show
what it yields; :class:`ModelState` is the model (and options) that the segment
and fine-tune widgets of one viewer share, so that a fine-tuned model becomes
the one the segment widget uses.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import dsb
from dsb.core.config import SCALE_FACTOR_RANGE, check_scale_factor
from dsb.core.errors import BadDataError, DsbError
from dsb.inference.preprocess import mixed_channels, raw_intensity
from dsb.napari.finetuning import export_onnx_in_child
from dsb.napari.io import planes_axis
from dsb.network.model_folder import PRECISION_CHOICES, default_model_dir, load_run_config
from dsb.workflows.cells import MAX_EXPANSION, grow_cells
from dsb.workflows.pipeline import nuclei_predictor, predict_each
from dsb.workflows.segment_files import measure_nuclei
from dsb.workflows.volumes import beside_sections, measure_volumes, relabel_sections, stitch_sections

#: The engines the viewer segments with: not Keras, whose TensorFlow must stay out of the viewer's
#: process (see :mod:`dsb.napari.child`). "auto" takes OpenVINO, else ONNX Runtime.
VIEWER_ENGINES = ("auto", "openvino", "onnx")

#: The number formats the viewer offers, those of ``--precision``: "auto" is, on OpenVINO, bfloat16
#: where the CPU has bfloat16 units, else int8 on an x86 CPU (AVX2 or later) where the folder has model.int8.onnx,
#: float32 elsewhere (:func:`dsb.network.engines.resolve_precision`).
VIEWER_PRECISIONS = PRECISION_CHOICES

__all__ = ["VIEWER_ENGINES", "VIEWER_PRECISIONS", "ModelState", "FrameDone", "Segmented", "Failure", "state_for",
           "segment_frames", "parse_diameter", "parse_cell_expansion", "diameter_words", "MICROMETRE_UNITS",
           "parse_scale_factor", "layer_frames", "frame_features", "FEATURE_COLUMNS", "CELL_FEATURE_COLUMNS",
           "planes_axis"]


@dataclass(frozen=True)
class FrameDone:
    """One frame of a stack segmented: ``done`` of ``total``."""

    done: int
    total: int


@dataclass(frozen=True)
class Segmented:
    """The nuclei of a whole layer.

    Attributes
    ----------
    labels : ndarray of int32
        The layer's shape without its colour axis; each frame numbered 1..N on its own, or with
        ``stitched``, each 3-D nucleus one label through the planes.
    diameters : list of float
        Per frame, the median nucleus diameter used (NaN: no nucleus found).
    estimated : bool
        Whether the diameters were estimated.
    model : Path
        The folder of the model that found them.
    seconds : float
    confidences : list of ndarray
        Per frame (in :func:`numpy.ndindex` order), each nucleus's confidence (its mean body
        probability), entry ``k - 1`` for label ``k``.
    network : str
        The engine and the number format that computed them (``"openvino, bfloat16"``); empty for a
        plain callable in place of an engine's network.
    warning : str
        Why a colour layer's luminance may hide its nuclei (:func:`dsb.inference.preprocess.mixed_channels`
        of its first frame); empty when there is nothing to say.
    measurements : list of pandas.DataFrame
        Per frame, each nucleus's :data:`FEATURE_COLUMNS` by label
        (:func:`dsb.workflows.segment_files.measure_nuclei`, in the layer's own values).
    stitched : bool
        Whether the planes of the stack were joined into 3-D nuclei
        (:func:`dsb.workflows.volumes.stitch_sections`); ``confidences`` and ``measurements`` are then by
        the 3-D labels, a frame's confidences NaN for the nuclei it does not hold.
    planes : int or None
        With ``stitched``, the frame axis of the planes.
    volumes : list of pandas.DataFrame
        With ``stitched``, per time point (in :func:`numpy.ndindex` order over the frame axes but the
        planes'; one for a z-stack alone), one row per 3-D nucleus by label
        (:func:`dsb.workflows.volumes.measure_volumes`): its planes, centroid, volume, largest section,
        intensity and confidence, and in micrometres where the layer's scale gives them.
    cells : ndarray of int32 or None
        With a cell expansion, each nucleus's cell, labelled as ``labels``
        (:func:`dsb.workflows.cells.grow_cells`); its area and cytoplasm's mean are then among the
        ``measurements``.
    """

    labels: np.ndarray
    diameters: list
    estimated: bool
    model: Path
    seconds: float
    confidences: list = field(default_factory=list)
    network: str = ""
    warning: str = ""
    measurements: list = field(default_factory=list)
    stitched: bool = False
    planes: int | None = None
    volumes: list = field(default_factory=list)
    cells: np.ndarray | None = None

    def features(self, frame: tuple[int, ...] = ()) -> pd.DataFrame | None:
        """A napari Labels layer's ``features`` for one frame (:func:`frame_features`): of the
        single image, or of the stack's frame at the leading-axes index ``frame``."""
        return frame_features(self.confidences, self.labels.shape[:-2], frame, self.measurements,
                              self.volumes or None, self.planes)

    @property
    def diameter(self) -> float:
        """The median over the frames of the diameter used, NaN when none is known."""
        known = [d for d in self.diameters if math.isfinite(d)]
        return float(np.median(known)) if known else math.nan


# What the viewer shows of each nucleus under the cursor, beside its confidence (dsb segment's columns),
# and of its cell where cells were grown.
FEATURE_COLUMNS = ("area", "eccentricity", "solidity", "mean_intensity")
CELL_FEATURE_COLUMNS = ("cell_area", "cytoplasm_area", "cytoplasm_mean_intensity")


def frame_features(confidences: list, lead: tuple[int, ...], frame: tuple[int, ...] = (),
                   measurements: list | None = None, volumes: list | None = None,
                   planes: int | None = None) -> pd.DataFrame | None:
    """The ``features`` a napari Labels layer shows for the nuclei of one frame.

    A layer has one features table, looked up by label, and the frames of a stack number their
    nuclei each from 1: so the table is the frame's own, and a viewer that shows a stack swaps it
    as the frame on screen changes. In a stitched z-stack the labels are the 3-D nuclei's: the
    table then has a row for each 3-D nucleus of the frame's time point, its section's features
    (NaN where the frame does not hold it) beside its 3-D ones.

    Parameters
    ----------
    confidences : list of ndarray or None
        Per frame, in :func:`numpy.ndindex` order over ``lead``, each nucleus's confidence
        (entry ``k - 1`` for label ``k``), as :attr:`Segmented.confidences`.
    lead : tuple of int
        The shape of the frame axes; ``()`` for a single image.
    frame : tuple of int
        The frame's index on those axes; ``()`` for a single image.
    measurements : list of pandas.DataFrame, optional
        Per frame, as :attr:`Segmented.measurements`: their :data:`FEATURE_COLUMNS` are shown too, and
        the cells' :data:`CELL_FEATURE_COLUMNS` where they have them.
    volumes : list of pandas.DataFrame, optional
        Per time point, as :attr:`Segmented.volumes`; with ``planes``, the frame axis of the planes.

    Returns
    -------
    pandas.DataFrame or None
        ``index`` (the label), the frame's :data:`FEATURE_COLUMNS` where measured, and
        ``confidence``, which the viewer shows for the nucleus under the cursor, then with
        ``volumes`` the 3-D nucleus's columns (those a section has too named ``_3d``,
        :func:`dsb.workflows.volumes.beside_sections`); None when ``frame`` is not a frame of
        ``lead`` or its confidences are not known.

    Examples
    --------
    >>> frame_features([np.array([0.9, 0.85]), np.array([0.95])], (2,), (1,))
       index  confidence
    0      1        0.95
    >>> frame_features([np.array([0.9])], (2,), (5,)) is None
    True
    """
    lead, frame = tuple(int(n) for n in lead), tuple(int(i) for i in frame)
    if len(frame) != len(lead) or any(not 0 <= i < n for i, n in zip(frame, lead)):
        return None
    at = int(np.ravel_multi_index(frame, lead)) if lead else 0
    if at >= len(confidences) or confidences[at] is None:
        return None
    confidence = np.asarray(confidences[at], np.float32)
    volume = _time_point(volumes, lead, frame, planes)
    count = max(confidence.size, int(volume["label"].max()) if volume is not None and len(volume) else 0)
    table = pd.DataFrame({"index": np.arange(1, count + 1)})
    if measurements is not None and at < len(measurements) and measurements[at] is not None:
        measured = measurements[at].set_index("label").reindex(table["index"])
        for column in FEATURE_COLUMNS + CELL_FEATURE_COLUMNS:
            if column in measured:
                table[column] = measured[column].to_numpy().round(3)
    table["confidence"] = np.pad(confidence, (0, count - confidence.size), constant_values=np.nan).round(3)
    if volume is not None:
        measured = beside_sections(volume).set_index("label").reindex(table["index"])
        for column in measured.columns:
            values = measured[column].to_numpy()
            table[column] = values.round(3) if values.dtype.kind == "f" else values
    return table


def _time_point(volumes: list | None, lead: tuple[int, ...], frame: tuple[int, ...],
                planes: int | None) -> pd.DataFrame | None:
    """The 3-D nuclei of the time point that holds ``frame`` (its index but on the planes' axis)."""
    if not volumes or planes is None or not 0 <= planes < len(lead):
        return None
    others = lead[:planes] + lead[planes + 1:]
    at = int(np.ravel_multi_index(frame[:planes] + frame[planes + 1:], others)) if others else 0
    return volumes[at] if at < len(volumes) else None


@dataclass(frozen=True)
class Failure:
    """A problem to show in the viewer as one line, instead of a traceback."""

    message: str


# What a diameter in micrometres ends with in the widget.
MICROMETRE_UNITS = ("um", "µm", "μm", "micrometres", "micrometers")


def parse_cell_expansion(text: str, pixel_size: float | None = None) -> float | None:
    """The cell expansion typed in a widget, in pixels: None when empty (no cells), else pixels, or
    micrometres followed by ``um``, as :func:`parse_diameter` reads a diameter, up to
    :data:`dsb.workflows.cells.MAX_EXPANSION` pixels.

    >>> parse_cell_expansion(""), parse_cell_expansion("8"), parse_cell_expansion("5 um", pixel_size=0.5)
    (None, 8.0, 10.0)
    """
    value = _parse_length(text, pixel_size, "a cell expansion", "leave it empty to grow no cells", "cells")
    if value is not None and value > MAX_EXPANSION:
        raise BadDataError(f"{text!r} is {value:g} pixels; cells grow by at most {MAX_EXPANSION:g}", where="cells")
    return value


def parse_diameter(text: str, pixel_size: float | None = None) -> float | None:
    """The diameter typed in a widget, in pixels: None when empty (estimate it), else a positive number of
    pixels, or of micrometres followed by ``um`` or ``µm``, made pixels by the layer's ``pixel_size``
    (micrometres a pixel, :func:`dsb.napari.io.layer_pixel_size`).

    Raises
    ------
    BadDataError
        Not a positive number, or micrometres for a layer of no pixel size.

    Examples
    --------
    >>> parse_diameter(" "), parse_diameter("17.5"), parse_diameter("9 µm", pixel_size=0.5)
    (None, 17.5, 18.0)
    """
    return _parse_length(text, pixel_size, "a diameter", "leave it empty to estimate it", "diameter")


def _parse_length(text: str, pixel_size: float | None, what: str, empty: str, where: str) -> float | None:
    """A positive length typed in a widget's field ``where``, in pixels or (``um``) micrometres made pixels by
    ``pixel_size``; None when empty; else a BadDataError naming ``what`` it should be and what ``empty`` does."""
    text = str(text).strip()
    if not text:
        return None
    number, micrometres = text, False
    for unit in MICROMETRE_UNITS:
        if text.lower().endswith(unit):
            number, micrometres = text[: -len(unit)].strip(), True
            break
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BadDataError(f"{text!r} is not {what} in pixels (or micrometres: '9 um'); {empty}", where=where)
    if not micrometres:
        return value
    if pixel_size is None:
        raise BadDataError(f"{text!r} is in micrometres, but the layer's scale gives its pixels no size in "
                           f"micrometres (napari's units are pixels); give {what} in pixels", where=where)
    return value / pixel_size



def diameter_words(diameter: float, estimated: bool, pixel_size: float | None = None) -> str:
    """The widget's line under the diameter after a run: pixels, and micrometres where the layer has a size.

    >>> diameter_words(24.0, True, 0.5), diameter_words(float("nan"), True)
    ('diameter: 24.0 px = 12.0 µm (estimated)', 'diameter: no nucleus found (estimated)')
    """
    if not math.isfinite(diameter):
        shown = "no nucleus found"
    else:
        shown = f"{diameter:.1f} px" + ("" if pixel_size is None else f" = {diameter * pixel_size:.1f} µm")
    return f"diameter: {shown} ({'estimated' if estimated else 'given'})"


def parse_scale_factor(text: str) -> float | None:
    """The scale factor typed in a widget: None when empty (the model's own ``predict.scale_factor``),
    else a factor in [0.5, 2] (:func:`dsb.core.config.check_scale_factor`).

    Raises
    ------
    BadDataError
        Not a number in [0.5, 2].

    Examples
    --------
    >>> parse_scale_factor(""), parse_scale_factor(" 1.25 ")
    (None, 1.25)
    """
    text = str(text).strip()
    if not text:
        return None
    low, high = SCALE_FACTOR_RANGE
    try:
        return check_scale_factor(float(text))
    except (ValueError, BadDataError):
        raise BadDataError(f"{text!r} is not a factor from {low:g} to {high:g}; leave it empty for the model's own",
                           where="scale factor") from None


def layer_frames(data, rgb: bool) -> tuple[tuple[int, ...], tuple[int, int]]:
    """The frame axes' shape and the (H, W) of an image layer's data (colour axis last when ``rgb``).

    Raises
    ------
    BadDataError
        Fewer than two spatial axes, or a colour axis of other than 3 or 4 channels.
    """
    shape = tuple(np.shape(data))
    if rgb:
        if not shape or shape[-1] not in (3, 4):
            raise BadDataError(f"an RGB layer of shape {shape} has no colour axis of 3 or 4 channels")
        shape = shape[:-1]
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise BadDataError(f"the image has shape {shape}; expected a 2-D image or a stack of them")
    return shape[:-2], shape[-2:]


def segment_frames(model, data, *, rgb: bool = False, diameter: float | None = None, tta: bool | None = None,
                   scale_factor: float | None = None, stitch: int | None = None, pixel_size: float | None = None,
                   z_step: float | None = None, cell_expansion: float | None = None) -> Iterator[FrameDone | Segmented]:
    """Segment every 2-D frame of an image layer's data, yielding after each.

    Parameters
    ----------
    model : dsb LoadedModel
        What :func:`dsb.load_model` returned.
    data : array_like
        (..., H, W) grey or (..., H, W, C) colour with ``rgb``; leading axes are frames (time, planes).
    rgb : bool
    diameter : float, optional
        Median nucleus diameter in pixels; None estimates it per frame.
    tta : bool, optional
        Average over flips and quarter turns; None follows the model's ``predict.tta``.
    scale_factor : float, optional
        Predict this many times larger than the estimated (or given) scale; None follows the
        model's ``predict.scale_factor``.
    stitch : int, optional
        The frame axis that holds a z-stack's planes (:func:`planes_axis`): its nuclei are joined
        through them into 3-D nuclei, as ``dsb segment --stitch`` does (each index of the other frame
        axes, a time point, numbered on its own). None, or a single image: frames are left apart.
    pixel_size, z_step : float, optional
        Micrometres a pixel and between the planes: the 3-D nuclei's sizes in micrometres too.
    cell_expansion : float, optional
        Grow each nucleus by up to this many pixels into its cell (:attr:`Segmented.cells`), and measure it.

    Yields
    ------
    FrameDone
        After each frame.
    Segmented
        Last: the labels of all frames.
    """
    start = time.monotonic()
    config = model.config.with_scale_factor(scale_factor)
    lead, (height, width) = layer_frames(data, rgb)
    labels = np.zeros((*lead, height, width), np.int32)
    cells = None if cell_expansion is None else np.zeros_like(labels)
    diameters, confidences, measurements, estimated, warning = [], [], [], False, ""
    total = int(np.prod(lead, dtype=np.int64)) if lead else 1
    # Frames as dsb segment takes a stack's (dsb.workflows.segment_files.segment_stack): in order, as
    # many at a time as the engine has streams.
    predict = nuclei_predictor(model.network, config, tta=tta, diameter=diameter)
    frames = ((index, None, np.asarray(data[index])) for index in np.ndindex(*lead))
    found = predict_each(predict, frames, length=total)
    with contextlib.closing(found):  # cancelled: the frames in flight are stopped
        for done, (index, _, frame, nuclei) in enumerate(found, start=1):
            if rgb and done == 1:
                warning = mixed_channels(frame) or ""
            labels[index] = nuclei.labels
            diameters.append(float(nuclei.diameter))
            confidences.append(nuclei.confidence)
            grown = None if cells is None else grow_cells(nuclei.labels, cell_expansion)
            if grown is not None:
                cells[index] = grown
            measurements.append(measure_nuclei(nuclei.labels, raw_intensity(frame), nuclei.confidence, cells=grown))
            estimated = nuclei.estimated
            yield FrameDone(done, total)
    stitched = stitch is not None and bool(lead)
    volumes = []
    if stitched:
        frames = list(np.ndindex(*lead))
        tables = dict(zip(frames, measurements))
        own, labels = labels, stitch_sections(labels, tables, stitch)
        if cells is not None:  # each frame's cells take their nuclei's 3-D labels
            cells = relabel_sections(cells, own, labels)
        measurements = [tables[index] for index in frames]  # by 3-D label
        # Each frame's confidences by 3-D label (entry k - 1 for label k), NaN for nuclei it does not hold.
        confidences = [_by_label(table, int(labels[index].max(initial=0))) for index, table in zip(frames, measurements)]
        volumes = _volumes(measurements, lead, stitch, pixel_size, z_step)
    shown = ["label", *FEATURE_COLUMNS, "confidence", *(CELL_FEATURE_COLUMNS if cell_expansion is not None else ())]
    measurements = [table[shown] for table in measurements]
    # A stand-in callable in place of an engine's network says nothing.
    engine = getattr(model.network, "engine", "")
    network = f"{engine}, {getattr(model.network, 'precision', 'float32')}" if engine else ""
    yield Segmented(labels, diameters, estimated, Path(model.path), time.monotonic() - start, confidences, network,
                    warning, measurements, stitched, stitch if stitched else None, volumes, cells)


def _volumes(tables: list, lead: tuple[int, ...], axis: int, pixel_size: float | None,
             z_step: float | None) -> list[pd.DataFrame]:
    """Per time point (:func:`numpy.ndindex` order over the frame axes but ``axis``), the 3-D nuclei of its
    planes' ``tables`` (by frame in that order over ``lead``, labelled by 3-D nucleus):
    :func:`dsb.workflows.volumes.measure_volumes`."""
    others = lead[:axis] + lead[axis + 1:]
    volumes = []
    for point in np.ndindex(*others):
        sections = []
        for z in range(lead[axis]):
            table = tables[int(np.ravel_multi_index(point[:axis] + (z,) + point[axis:], lead))].copy()
            table.insert(0, "z", z)
            sections.append(table)
        volumes.append(measure_volumes(pd.concat(sections, ignore_index=True), z="z", planes=lead[axis],
                                       pixel_size=pixel_size, z_step=z_step))
    return volumes


def _by_label(table: pd.DataFrame, count: int) -> np.ndarray:
    """A frame's confidences (its table's ``confidence`` by ``label``) as entry ``k - 1`` for label ``k`` up to
    ``count``, NaN where the frame holds no such nucleus."""
    confidence = np.full(count, np.nan, np.float32)
    confidence[table["label"].to_numpy(np.int64) - 1] = table["confidence"].to_numpy(np.float32)
    return confidence


class ModelState:
    """The model the plugin's widgets in one viewer segment with, and their shared options.

    Attributes
    ----------
    path : Path or None
        The model folder; None for the model shipped with dsb.
    engine : str
    precision : str
        One of :data:`VIEWER_PRECISIONS`.
    listeners : list of callable
        Called with the state when the model changes.
    """

    def __init__(self):
        self.path: Path | None = None
        self.engine = VIEWER_ENGINES[0]
        self.precision = VIEWER_PRECISIONS[0]
        self.diameter: float | None = None
        self.tta = False
        self.listeners: list[Callable[[ModelState], None]] = []
        self.segmenter: Callable | None = None
        self._loaded: dict = {}
        self._lock = threading.Lock()

    @property
    def model_dir(self) -> Path:
        """The model folder, the shipped one's when :attr:`path` is None."""
        return default_model_dir() if self.path is None else self.path

    def describe(self) -> str:
        """The model's name as the widgets show it."""
        return "the model shipped with dsb" if self.path is None else str(self.path)

    def tuned_tta(self) -> bool:
        """The model's own ``predict.tta`` (set by ``dsb tune --tta``); False when its config cannot be read."""
        try:
            return bool(load_run_config(self.model_dir).predict.tta)
        except DsbError:
            return False

    def set_model(self, path) -> None:
        """Use the model folder ``path`` (None or "": the shipped one) from now on, and tell the listeners."""
        path = None if path in (None, "") else Path(path).expanduser()
        if path == self.path:
            return
        self.path = path
        for listener in list(self.listeners):
            listener(self)

    def load(self):
        """The model as :func:`dsb.load_model` loads it, once per folder, engine and precision (thread-safe).

        Raises
        ------
        BadDataError
            The folder holds no model.
        EnvironmentProblem
            The engine is not installed.
        """
        key = (self.path, self.engine, self.precision)
        with self._lock:
            if key not in self._loaded:
                path = self.path
                if path is not None and not path.is_dir():
                    raise BadDataError("model folder not found", path=path)
                if path is not None and (path / "model.keras").is_file() and not (path / "model.onnx").is_file():
                    export_onnx_in_child(path)  # a run of `dsb train`: the viewer runs no Keras
                self._loaded[key] = dsb.load_model(path, engine=self.engine, precision=self.precision)
            return self._loaded[key]


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_for(viewer) -> ModelState:
    """The :class:`ModelState` of one viewer (made on first use, forgotten with the viewer)."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = ModelState()
    return state
