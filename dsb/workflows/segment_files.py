"""Segment any microscope image with a trained model and measure each nucleus.

``dsb segment`` is for people with their own images and no wish to train: it
takes PNG, TIFF or JPEG files of any size, 8 or 16 bits, grey or colour, and
writes per image

- ``<name>_labels.tif``: the nuclei as a 16-bit label image (0 background,
  1..N nuclei) that Fiji, napari and scikit-image open;
- ``<name>_cells.tif`` (with a cell expansion): each nucleus's cell, labelled as its nucleus
  (:mod:`dsb.workflows.cells`);
- ``<name>_nuclei.csv``: one row per nucleus (see :func:`measure_nuclei`);
- ``<name>_overlay.png`` (optional): the image with the nuclei outlined;
- ``<name>_rois.zip`` (optional): each nucleus's outline as a Fiji ROI (:mod:`dsb.io.rois`);
- ``<name>_nuclei.geojson`` (optional): each nucleus as a QuPath detection with its measurements
  (:mod:`dsb.io.geojson`);

plus ``summary.csv`` with one row per input file. A TIFF stack (time series, z-stack) gets the same
files, frame by frame (:func:`segment_stack`). With no model given it uses
the model shipped inside the package (:func:`dsb.network.model_folder.default_model_dir`).
Finding, reading, predicting and writing are the folder pipeline's
(:mod:`dsb.workflows.pipeline`), as for ``dsb predict``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path, writable_dir
from dsb.core.config import check_scale_factor
from dsb.core.errors import BadDataError
from dsb.core.labels import compact_labels, label_means, measure_regions
from dsb.core.validate import check_labels, check_same_shape
from dsb.inference.preprocess import mixed_channels, raw_intensity
from dsb.inference.scale import check_diameter
from dsb.io.channel_names import channel_names, named_channels
from dsb.io.channels import FRAME_COLUMNS
from dsb.io.folders import OVERLAY_SUFFIX, Skips, find_images, read_images
from dsb.io.geojson import write_geojson
from dsb.io.images import read_channels, read_stack
from dsb.io.rois import write_rois
from dsb.io.writers import write_labels, write_png, write_rgb_stack, write_table
from dsb.network.engines import load_network
from dsb.network.model_folder import resolve_model_dir
from dsb.workflows.calibration import Calibration, calibrate_files, check_micrometres
from dsb.workflows.cells import CELL_MICROMETRE_COLUMNS, cell_measurements, check_expansion, grow_cells
from dsb.workflows.drawing import outline_overlay
from dsb.workflows.pipeline import nuclei_predictor, predict_each
from dsb.workflows.volumes import (NO_PLANES, Stitch, relabel_sections, stack_volumes, stitch_axis, stitch_sections,
                                   with_volumes)

__all__ = ["MEASUREMENT_COLUMNS", "MICROMETRE_COLUMNS", "SUMMARY_COLUMNS", "measure_nuclei", "in_micrometres",
           "touches_edge", "channel_columns",
           "segment_paths", "segment_stack", "measure_frame", "write_outputs", "write_measurements",
           "write_stack_measurements",
           "summary_row", "channel_warning",
           "check_scale_options", "check_cell_options",
           "join_warnings", "nothing_to_segment"]

MEASUREMENT_COLUMNS = (
    "label",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "touches_edge",
    "area",
    "perimeter",
    "eccentricity",
    "major_axis_length",
    "minor_axis_length",
    "orientation_deg",
    "circularity",
    "solidity",
    "mean_intensity",
    "integrated_intensity",
    "confidence",
)
# Each nucleus's mean in channel k of an image one channel of which was segmented (:func:`measure_nuclei`).
CHANNEL_MEAN = "mean_intensity_{}"
# Added where the pixel size is known (:func:`in_micrometres`).
MICROMETRE_COLUMNS = ("area_um2", "perimeter_um", "equivalent_diameter_um", "major_axis_um", "minor_axis_um")
# What summary.csv's warning tells a user whose image's luminance may hide its nuclei.
CHANNEL_ADVICE = "give --channel N to segment the DNA stain's channel alone"
SUMMARY_COLUMNS = ("file", "status", "nuclei", "diameter", "diameter_estimated", "diameter_sure", "pixel_size",
                   "diameter_um", "labels", "cells", "measurements", "overlay", "rois", "geojson", "measurements_3d",
                   "warning", "error")

def measure_nuclei(labels: np.ndarray, intensity: np.ndarray, confidence: np.ndarray | None = None, *,
                   pixel_size: float | None = None, channels: np.ndarray | None = None,
                   channel_names=(), cells: np.ndarray | None = None) -> pd.DataFrame:
    """Measure each nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 for background, 1..N for nuclei.
    intensity : (H, W) ndarray of float
        The grey image the mean intensity is taken from: in ``dsb segment``, the image's own
        units (:func:`dsb.inference.preprocess.raw_intensity`: a 16-bit camera's counts, the
        luminance of 8-bit colour), the same in every block of a large image.
    confidence : (N,) ndarray of float, optional
        How sure the network is of each nucleus, entry ``k - 1`` for label ``k``
        (:attr:`dsb.inference.predict.Nuclei.confidence`).
    pixel_size : float, optional
        The side of a pixel in micrometres: adds :data:`MICROMETRE_COLUMNS` (:func:`in_micrometres`).
    channels : (H, W, C) ndarray, optional
        Every channel of the image (:func:`dsb.io.images.read_channels`), when one of them was segmented:
        adds each nucleus's mean in each channel, ``mean_intensity_c0`` .. ``mean_intensity_c{C-1}``
        (:func:`channel_columns`).
    channel_names : sequence of str
        The file's names of its channels (:func:`dsb.io.channel_names.channel_names`): where it names
        every one, and each differently, the columns are ``mean_intensity_NAME`` instead.
    cells : (H, W) ndarray of int, optional
        Each nucleus's cell, labelled as the nuclei (:func:`dsb.workflows.cells.grow_cells`): adds
        :data:`dsb.workflows.cells.CELL_COLUMNS` after the nucleus's own, and with ``channels`` each
        channel's mean in the cell and the cytoplasm (:func:`dsb.workflows.cells.cell_measurements`).

    Returns
    -------
    DataFrame
        One row per nucleus, by label, with the columns of
        :data:`MEASUREMENT_COLUMNS`: ``label``; ``centroid_row``, ``centroid_col``
        (pixels); ``bbox_min_row``, ``bbox_min_col`` (inclusive) and
        ``bbox_max_row``, ``bbox_max_col`` (exclusive, as in Python slicing);
        ``touches_edge`` (True for a nucleus the image's edge cuts, which a measurement of sizes or
        intensities usually leaves out: :func:`touches_edge`); ``area`` (pixels); ``perimeter`` (pixels);
        the shape: ``eccentricity`` (0 for a circle), ``major_axis_length`` and ``minor_axis_length``
        (pixels) and ``orientation_deg`` of the ellipse of the same second moments, ``circularity``
        and ``solidity`` (1 for a convex nucleus; two merged ones score lower), as
        :func:`dsb.core.labels.measure_regions` defines them; ``mean_intensity`` and
        ``integrated_intensity`` (the mean and the sum over the nucleus's finite pixels: NaN pixels
        of a float image left out, NaN when it has none; the sum of a DNA stain, less the
        background's mean times the area, is the nucleus's DNA content); ``confidence`` (in
        [0, 1]) only when given; with ``channels``, ``mean_intensity_c0``... in the channels' own
        units, NaN pixels left out; with a ``pixel_size``, ``area_um2``, ``perimeter_um``,
        ``equivalent_diameter_um`` (the diameter of a disc of the nucleus's area),
        ``major_axis_um`` and ``minor_axis_um``.

    Raises
    ------
    ValueError
        ``confidence`` shorter than the largest label, or not 1-D.

    Examples
    --------
    >>> labels = np.zeros((5, 5), np.int32)
    >>> labels[1:3, 1:4] = 1
    >>> row = measure_nuclei(labels, np.ones((5, 5))).iloc[0]
    >>> int(row.area), float(row.centroid_row), float(row.centroid_col)
    (6, 1.5, 2.0)
    """
    labels = check_labels("labels", labels, bool_ok=False)
    intensity = np.asarray(intensity)
    check_same_shape("intensity", intensity, "labels", labels)
    top = int(labels.max(initial=0))
    if confidence is not None:
        confidence = np.asarray(confidence, np.float32)
        if confidence.ndim != 1 or confidence.size < top:
            raise ValueError(f"`confidence` (shape {confidence.shape}) must hold one value per label 1..{top}")
    # A file's own numbering may reach billions: measured as 1..K, each row given its value back.
    labels, values = compact_labels(labels)
    frame = pd.DataFrame(measure_regions(labels, intensity))
    index = frame["label"].to_numpy(np.intp)  # into what is sized by the (compacted) labels
    if values is not None:
        frame["label"] = values[index - 1]
    frame["touches_edge"] = touches_edge(frame, labels.shape)
    columns = list(MEASUREMENT_COLUMNS)
    if confidence is None:
        columns.remove("confidence")
    else:
        frame["confidence"] = confidence[frame["label"].to_numpy(np.int64) - 1]
    frame = frame.loc[:, columns].astype(
        {"label": np.int64, "bbox_min_row": np.int64, "bbox_min_col": np.int64,
         "bbox_max_row": np.int64, "bbox_max_col": np.int64, "area": np.int64}
    )
    if channels is not None:
        channels = np.asarray(channels)
        if channels.ndim != 3 or channels.shape[:2] != labels.shape:
            raise ValueError(f"`channels` (shape {channels.shape}) must be (H, W, C) with the labels' {labels.shape}")
        means = label_means(labels, channels)[index]
        names = channel_columns(channel_names, channels.shape[2])
        frame = frame.assign(**{name: means[:, k] for k, name in enumerate(names)})
    if cells is not None:
        cells = np.asarray(cells)
        check_same_shape("cells", cells, "labels", labels)
        if values is not None:  # numbered as the compacted nuclei
            cells = np.where(cells > 0, np.searchsorted(values, cells) + 1, 0)
        frame = frame.assign(**cell_measurements(labels, cells, intensity, index, channels=channels,
                                                 channel_columns=[] if channels is None else names))
    return frame if pixel_size is None else in_micrometres(frame, pixel_size)


def channel_columns(names, count: int) -> list[str]:
    """The columns of each nucleus's mean in each of ``count`` channels: ``mean_intensity_NAME`` where
    ``names`` names every channel, each differently (so that the tables of files keeping a stain in
    different channels line up), else ``mean_intensity_c0``, ``_c1``...

    >>> channel_columns(["DAPI", "GFP"], 2), channel_columns(["DAPI", ""], 2)
    (['mean_intensity_DAPI', 'mean_intensity_GFP'], ['mean_intensity_c0', 'mean_intensity_c1'])
    """
    names = [str(n).strip() for n in names]
    if len(names) == count and all(names) and len({n.casefold() for n in names}) == count:
        return [CHANNEL_MEAN.format(n) for n in names]
    return [CHANNEL_MEAN.format(f"c{k}") for k in range(count)]


def touches_edge(table: pd.DataFrame, shape: tuple[int, int]) -> pd.Series:
    """Whether each nucleus of ``table`` (bounding boxes as :func:`measure_nuclei` gives them, in the
    coordinates of an image of ``shape``) reaches the image's edge: a box on the edge holds a pixel there.

    >>> box = pd.DataFrame({"bbox_min_row": [0, 3], "bbox_min_col": [4, 3], "bbox_max_row": [5, 9], "bbox_max_col": [9, 9]})
    >>> touches_edge(box, (10, 10)).tolist()
    [True, False]
    """
    height, width = shape
    return ((table["bbox_min_row"] == 0) | (table["bbox_min_col"] == 0) | (table["bbox_max_row"] == height)
            | (table["bbox_max_col"] == width)).astype(bool)


def in_micrometres(table: pd.DataFrame, pixel_size: float) -> pd.DataFrame:
    """``table`` (:func:`measure_nuclei`'s, whose lengths and areas are in pixels) with
    :data:`MICROMETRE_COLUMNS` added for pixels of ``pixel_size`` micrometres a side.

    >>> table = pd.DataFrame({"area": [100], "perimeter": [36.0], "major_axis_length": [12.0],
    ...                       "minor_axis_length": [10.0]})
    >>> in_micrometres(table, 0.5).round(3).iloc[0].tolist()
    [100.0, 36.0, 12.0, 10.0, 25.0, 18.0, 5.642, 6.0, 5.0]
    """
    table = table.assign(area_um2=table["area"] * pixel_size ** 2, perimeter_um=table["perimeter"] * pixel_size,
                         equivalent_diameter_um=2.0 * np.sqrt(table["area"] / np.pi) * pixel_size,
                         major_axis_um=table["major_axis_length"] * pixel_size,
                         minor_axis_um=table["minor_axis_length"] * pixel_size)
    if "cell_area" in table:  # cells grown around the nuclei
        table = table.assign(**{um: table[px] * pixel_size ** 2
                                for um, px in zip(CELL_MICROMETRE_COLUMNS, ("cell_area", "cytoplasm_area"))})
    return table


def _outputs(out_dir: Path, name: str) -> dict[str, Path]:
    return {
        "labels": out_dir / f"{name}_labels.tif",
        "cells": out_dir / f"{name}_cells.tif",
        "measurements": out_dir / f"{name}_nuclei.csv",
        "overlay": out_dir / f"{name}{OVERLAY_SUFFIX}.png",
        "rois": out_dir / f"{name}_rois.zip",
        "geojson": out_dir / f"{name}_nuclei.geojson",
        "measurements_3d": out_dir / f"{name}_nuclei3d.csv",
    }


def segment_paths(
    paths,
    *,
    model_dir=None,
    out_dir,
    tta: bool | None = None,
    overlay: bool = False,
    rois: bool = False,
    geojson: bool = False,
    diameter: float | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    engine: str = "auto",
    precision: str = "auto",
    scale_factor: float | None = None,
    channel: int | None = None,
    diameter_um: float | None = None,
    pixel_size: float | None = None,
    cell_expansion: float | None = None,
    cell_expansion_um: float | None = None,
) -> pd.DataFrame:
    """Segment microscope images and measure their nuclei.

    Every image is read and checked before anything is written: a bad one
    (unreadable, not an image, an unsupported shape) stops the run with one
    line naming the file, unless ``skip_bad``, which records it in the summary
    and in ``attrs["skipped"]`` and goes on. All files are written atomically.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        PNG, TIFF or JPEG files, and folders of them (see :func:`dsb.io.folders.find_images`).
    model_dir : str or os.PathLike, optional
        A run folder (``model.keras`` and ``config.json``); by default the
        model shipped with the package.
    out_dir : str or os.PathLike
        Where ``<name>_labels.tif``, ``<name>_nuclei.csv``, ``<name>_overlay.png``,
        ``<name>_rois.zip``, ``<name>_nuclei.geojson``, ``<name>_cells.tif`` and ``summary.csv`` go;
        created if needed.
    tta : bool, optional
        Average predictions over flips and 90-degree rotations; None follows the model's
        ``predict.tta``.
    overlay : bool
        Also write ``<name>_overlay.png``.
    rois : bool
        Also write ``<name>_rois.zip``, each nucleus's outline as a Fiji ROI (:func:`dsb.io.rois.write_rois`).
    geojson : bool
        Also write ``<name>_nuclei.geojson``, each nucleus's outline and measurements as a QuPath
        detection (:func:`dsb.io.geojson.write_geojson`).
    diameter : float, optional
        The median nucleus diameter in pixels of every image; by default each
        image's is estimated (:func:`dsb.inference.predict.predict_scaled`). The
        summary's ``diameter`` column says which was used.
    skip_bad : bool
        Record bad images and go on with the others instead of stopping.
    progress : bool
        Draw a progress bar over the files on stderr.
    engine : str
        The inference engine: ``"keras"``, ``"onnx"``, ``"openvino"`` or
        ``"auto"`` (see :func:`dsb.network.engines.choose_engine`).
    precision : str
        ``"auto"`` (the default: the fastest format this CPU computes well for the run's files,
        :func:`dsb.network.engines.resolve_precision`), ``"float32"``, ``"bfloat16"``,
        or ``"int8"`` for the run's ``model.int8.onnx`` on an ONNX engine (:mod:`dsb.network.quantize`).
    scale_factor : float, optional
        Predict this many times larger than each image's estimated (or given)
        scale, in [0.5, 2]; None follows the model's ``predict.scale_factor``
        (which ``dsb tune --scale-factors`` chooses).
    channel : int or str, optional
        Segment only this channel of every image, counted from 0, or the channel of this name in each
        OME file (:func:`dsb.io.images.read_image`): the DNA stain of multi-channel fluorescence. The
        measurements' ``mean_intensity`` and the overlay are then of that channel, and each nucleus
        is measured in every channel too (:func:`measure_nuclei`). By default an image is segmented
        from its luminance.
    diameter_um : float, optional
        The median nucleus diameter in micrometres of every image, instead of ``diameter``: each
        image is segmented at the pixels its own pixel size makes of it
        (:mod:`dsb.workflows.calibration`), so that images of several objectives need no diameter
        each. An image with no pixel size in its metadata (PNG, JPEG, a TIFF without one) needs
        ``pixel_size``; without it the image is bad input.
    pixel_size : float, optional
        The side of a pixel in micrometres, for every image, instead of what its metadata say
        (:func:`dsb.io.pixel_size.read_pixel_size`); a file whose metadata differ gets a warning.
        With a pixel size (given or read), the measurements get micrometre columns
        (:func:`in_micrometres`) and the label TIFF carries it, as Fiji reads it.
    cell_expansion : float, optional
        Grow each nucleus into its cell by up to this many pixels (:mod:`dsb.workflows.cells`): each
        nucleus's row gets its cell's and cytoplasm's area and mean intensities (in every channel with
        ``channel``), ``<name>_cells.tif`` holds the cells labelled as their nuclei, the overlay outlines
        them and the GeoJSON holds QuPath cells.
    cell_expansion_um : float, optional
        The same in micrometres, instead of ``cell_expansion``: each image's own pixel size (or
        ``pixel_size``) makes pixels of it; an image with none is bad input.

    Returns
    -------
    DataFrame
        One row per input with :data:`SUMMARY_COLUMNS`: ``file``, ``status``
        ("ok" or "skipped"), ``nuclei``, ``diameter`` (pixels, given or
        estimated; empty when unknown), ``diameter_estimated`` and
        ``diameter_sure`` (False where the estimate's cross-check could not
        confirm it: see :class:`dsb.inference.scale.Scale`; empty when skipped),
        ``pixel_size`` and ``diameter_um`` (micrometres; empty where the pixel size is unknown),
        the paths written (empty when not written), ``warning`` (without ``channel``, why the image's
        luminance may hide its nuclei: :func:`dsb.inference.preprocess.mixed_channels`; metadata
        that ``pixel_size`` overruled, or pixels that are not square; else empty)
        and ``error`` (empty when ok). ``attrs["skipped"]`` holds a
        :class:`dsb.io.folders.Skip` per skipped input, for the caller to report.

    Raises
    ------
    BadDataError
        For a bad input without ``skip_bad``, for two inputs that would write
        the same output files, and when there is no image at all.
    EnvironmentProblem
        When there is no model or ``out_dir`` is not writable.
    ValueError
        ``diameter`` and ``diameter_um`` both given, or a ``pixel_size`` that is no positive number; the
        same of the cell expansions.
    """
    out_dir = Path(out_dir)
    # Resolved first, so that a missing default model or a bad factor is said before any image is read.
    model_dir = resolve_model_dir(model_dir)
    if scale_factor is not None:
        check_scale_factor(scale_factor)
    diameter, diameter_um, pixel_size = check_scale_options(diameter, diameter_um, pixel_size)
    cell_expansion, cell_expansion_um = check_cell_options(cell_expansion, cell_expansion_um)
    paths = [Path(p) for p in paths]
    skips = Skips(skip_bad)
    images, problems = find_images(paths)
    for problem in problems:
        skips(problem)
    scales = calibrate_files(images.values(), skips, diameter=diameter, diameter_um=diameter_um,
                             pixel_size=pixel_size, cell_expansion=cell_expansion,
                             cell_expansion_um=cell_expansion_um)
    checked = read_images({n: p for n, p in images.items() if str(p) in scales}, skips,
                          progress=progress and len(images) > 1, label="checking images", channel=channel)
    if not checked:
        raise nothing_to_segment([str(p) for p in paths], skips)

    predict = _predictor(model_dir, tta=tta, diameter=diameter, engine=engine, precision=precision,
                         scale_factor=scale_factor)
    writable_dir(out_dir)
    # Rows keyed by input, so that the summary keeps the order the files were given in.
    rows: dict[str, dict] = {}
    found = predict_each(predict, checked.images(skips), skips=skips, progress=progress, length=len(checked),
                         label="segmenting",
                         diameters=None if diameter_um is None else {p: c.diameter for p, c in scales.items()})
    with contextlib.closing(found):  # a failed write stops the images in flight
        for name, image, raw, nuclei in found:
            rows[str(image)] = write_outputs(out_dir, name, image, raw, nuclei, overlay=overlay, rois=rois,
                                             geojson=geojson, calibration=scales[str(image)], channel=channel)
    for skip in skips.records:
        rows[skip.path] = summary_row(skip.path, "skipped", error=skip.message)

    order = [problem.path for problem in problems] + [str(p) for p in images.values()]
    summary = pd.DataFrame([rows[p] for p in order if p in rows], columns=list(SUMMARY_COLUMNS))
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    summary.attrs["skipped"] = skips.records
    return summary


def write_outputs(out_dir: Path, name: str, image: Path, raw: np.ndarray, nuclei, *, overlay: bool,
                  rois: bool = False, geojson: bool = False, calibration: Calibration = Calibration(),
                  channel: int | None = None) -> dict:
    """Write one image's label TIFF, measurements, (with ``overlay``) overlay, (with ``rois``) Fiji ROIs and (with
    ``geojson``) QuPath detections, each atomically; return its
    ``summary.csv`` row (:func:`summary_row`). The one writer of ``dsb segment``'s outputs, in one process or on
    a Dask worker (:mod:`dsb.workflows.cluster`); ``calibration`` (:mod:`dsb.workflows.calibration`) gives the
    pixel size of the measurements, the label TIFF and the row. Where ``raw`` is the ``channel`` of a
    multi-channel file, the file is read again for each nucleus's mean in every channel."""

    labels = nuclei.labels
    targets = _outputs(out_dir, name)
    size = calibration.pixel_size
    every = None if channel is None else read_channels(image)
    cells = None if calibration.cell_expansion is None else grow_cells(labels, calibration.cell_expansion)
    table = measure_nuclei(labels, raw_intensity(raw), nuclei.confidence, pixel_size=size, channels=every,
                           channel_names=() if channel is None else channel_names(image), cells=cells)
    write_labels(targets["labels"], labels, pixel_size=size)
    targets = {"labels": targets["labels"], **write_measurements(out_dir, name, table, raw, labels, overlay=overlay,
                                                                 rois=rois, geojson=geojson, cells=cells,
                                                                 pixel_size=size)}
    return summary_row(image, "ok", nuclei=len(table), diameter=nuclei.diameter, estimated=nuclei.estimated,
                       sure=nuclei.sure, pixel_size=size,
                       warning=join_warnings(channel_warning(raw, image), calibration.note),
                       **{k: str(v) for k, v in targets.items()})


def write_measurements(out_dir: Path, name: str, table: pd.DataFrame, raw: np.ndarray, labels: np.ndarray, *,
                       overlay: bool = False, rois: bool = False, geojson: bool = False,
                       cells: np.ndarray | None = None, pixel_size: float | None = None) -> dict[str, Path]:
    """Write one image's ``<name>_nuclei.csv`` (``table``, :func:`measure_nuclei`'s), with ``cells`` (the nuclei's
    cells, :func:`dsb.workflows.cells.grow_cells`) ``<name>_cells.tif`` (a label TIFF of ``pixel_size``), and with
    ``overlay``, ``rois`` and ``geojson`` its ``<name>_overlay.png`` (its outlines on ``raw``, the cells' too),
    ``<name>_rois.zip`` (:func:`dsb.io.rois.write_rois`) and ``<name>_nuclei.geojson``
    (:func:`dsb.io.geojson.write_geojson`, with ``table``'s numbers; QuPath cells where there are ``cells``), each
    atomically: ``{"measurements": path, "cells": ..., "overlay": ..., "rois": ..., "geojson": ...}`` for the files
    written. Shared by ``dsb segment`` and ``dsb measure``."""
    targets = _outputs(out_dir, name)
    write_table(targets["measurements"], table)
    written = {"measurements": targets["measurements"]}
    if cells is not None:
        written["cells"] = write_labels(targets["cells"], cells, pixel_size=pixel_size)
    if overlay:
        written["overlay"] = write_png(targets["overlay"], outline_overlay(raw, labels, cells=cells))
    if rois:
        written["rois"] = write_rois(targets["rois"], labels)
    if geojson:
        written["geojson"] = write_geojson(targets["geojson"], labels, measurements=table, cells=cells)
    return written


def segment_stack(path, name: str, out_dir, predict, *, channel: int | None = None, overlay: bool = False,
                  rois: bool = False, geojson: bool = False, progress: bool = False,
                  calibration: Calibration = Calibration(), stitch: Stitch | None = None) -> dict:
    """``dsb segment`` of a TIFF stack (a time series, the planes of a volume), frame by frame.

    Each frame is segmented as an image of its own (its own diameter estimate unless ``predict`` was
    given one) and numbers its nuclei from 1, as the napari plugin numbers a stack's. Writes, each
    atomically:

    - ``<name>_labels.tif``: the labels, frames first (16-bit: an ImageJ hyperstack whose frame axes
      are time points ``T`` then slices ``Z``, as the input's; 32-bit, a plain TIFF, should a frame
      hold over 65535 nuclei);
    - ``<name>_nuclei.csv``: :data:`MEASUREMENT_COLUMNS` after one column per frame axis, ``t``,
      ``z`` or ``frame`` (unnamed), holding each nucleus's frame index from 0;
    - with ``overlay``, ``<name>_overlay.tif``: an RGB hyperstack of the frames with their outlines;
    - with ``rois``, ``<name>_rois.zip``: each frame's nuclei as Fiji ROIs at the frame's position in the
      label TIFF (:func:`dsb.io.rois.write_rois`);
    - with ``geojson``, ``<name>_nuclei.geojson``: each frame's nuclei as QuPath detections on the frame's
      plane, with their measurements (:func:`dsb.io.geojson.write_geojson`), and stitched, their 3-D
      nucleus's (:func:`dsb.workflows.volumes.with_volumes`);
    - with a cell expansion (``calibration``'s), ``<name>_cells.tif``: each frame's cells, labelled as its
      nuclei (stitched: their 3-D labels), and their columns in ``<name>_nuclei.csv``;
    - with ``stitch``, for a z-stack, ``<name>_nuclei3d.csv``: one row per 3-D nucleus
      (:func:`dsb.workflows.volumes.measure_volumes`). Each 3-D nucleus then has one label through
      the planes (numbered from 1 at each time point) in the label TIFF, the measurements' ``label``
      and the ROIs' and detections' names (:func:`dsb.workflows.volumes.stitch_stack`). A time series without planes is
      left frame by frame, with a warning.

    The stack is read whole: it takes its own size in memory, plus 2 bytes a pixel for the labels
    (3 more with ``overlay``); with a ``channel`` of several, every channel again, for each nucleus's
    mean in each (:func:`measure_nuclei`).

    Parameters
    ----------
    path : path
        The TIFF (:func:`dsb.io.images.read_stack`).
    name : str
        The outputs' name.
    out_dir : path
    predict : callable
        Raw frame to :class:`dsb.inference.predict.Nuclei` (:func:`dsb.workflows.pipeline.nuclei_predictor`,
        whose network's streams then take several frames at once).
    channel : int, optional
        As for :func:`segment_paths`.
    overlay, rois, geojson, progress : bool
    calibration : Calibration, optional
        The stack's pixel size (:func:`dsb.workflows.calibration.calibrate`), as for :func:`write_outputs`;
        its diameter is ``predict``'s to use.
    stitch : Stitch, optional
        Join the planes' nuclei into 3-D ones (:class:`dsb.workflows.volumes.Stitch`).

    Returns
    -------
    dict
        Its ``summary.csv`` row: the nuclei of all frames (stitched, the 3-D nuclei), the median of
        the frames' diameters, estimated when any was, sure when all were; ``warning`` from its first
        frame.
    """
    path, out_dir = Path(path), Path(out_dir)
    frames, roles = read_stack(path, channel)
    if not roles:
        raise BadDataError("is one image, not a stack of them", path=path)
    # With a channel picked, each nucleus is measured in every channel too: the stack read again.
    every = None if channel is None else read_channels(path, frames=True)
    names = () if channel is None else channel_names(path)
    lead = frames.shape[: len(roles)]
    labels = np.zeros((*lead, *frames.shape[len(roles): len(roles) + 2]), np.uint16)
    grow = calibration.cell_expansion
    cells = None if grow is None else np.zeros_like(labels)
    tables, diameters, sure, estimated = {}, [], True, False
    drawn = [] if overlay else None
    items = ((index, path, frames[index]) for index in np.ndindex(*lead))
    found = predict_each(predict, items, progress=progress, length=int(np.prod(lead)),
                         label=f"segmenting {path.name}")
    with contextlib.closing(found):
        for index, _, raw, nuclei in found:
            if nuclei.labels.max(initial=0) > np.iinfo(labels.dtype).max:
                labels = labels.astype(np.uint32)  # over 65535 nuclei in one frame
                cells = None if cells is None else cells.astype(np.uint32)
            labels[index] = nuclei.labels
            grown = None if cells is None else grow_cells(nuclei.labels, grow)
            if grown is not None:
                cells[index] = grown
            tables[index] = measure_frame(nuclei.labels, raw, nuclei.confidence, index, roles,
                                          pixel_size=calibration.pixel_size,
                                          channels=None if every is None else every[index], channel_names=names,
                                          cells=grown)
            diameters.append(float(nuclei.diameter))
            sure, estimated = sure and bool(nuclei.sure), estimated or bool(nuclei.estimated)
            if drawn is not None:
                drawn.append(outline_overlay(raw, nuclei.labels, cells=grown))
    targets = _outputs(out_dir, name)
    axis = None if stitch is None else stitch_axis(roles)
    volumes, z_step, notes = None, None, []
    if axis is not None:
        own, labels = labels, _stitched(labels, tables, axis, stitch.min_overlap)
        if cells is not None:  # each frame's cells take their nuclei's 3-D labels
            cells = relabel_sections(cells, own, labels)
    elif stitch is not None:
        notes.append(NO_PLANES)
    sections = pd.concat([tables[i] for i in sorted(tables)], ignore_index=True)
    if axis is not None:
        volumes, z_step, said = stack_volumes(sections, roles, axis, lead[axis], pixel_size=calibration.pixel_size,
                                              z_step=stitch.z_step, path=path)
        notes += said
        if labels.dtype == np.uint32:
            notes.append("over 65535 nuclei: the label TIFF is a plain 32-bit TIFF, without its planes' axis or "
                         "spacing")
    write_labels(targets["labels"], labels, roles, pixel_size=calibration.pixel_size, z_step=z_step)
    written = write_stack_measurements(out_dir, name, sections, labels, roles, volumes=volumes, drawn=drawn,
                                       rois=rois, geojson=geojson, pixel_size=calibration.pixel_size, cells=cells,
                                       z_step=z_step)
    finite = [d for d in diameters if math.isfinite(d)]
    warning = channel_warning(frames[(0,) * len(roles)], path)
    return summary_row(path, "ok", nuclei=len(sections if volumes is None else volumes),
                       diameter=float(np.median(finite)) if finite else math.nan, estimated=estimated, sure=sure,
                       pixel_size=calibration.pixel_size, warning=join_warnings(warning, calibration.note, *notes),
                       labels=str(targets["labels"]), **{k: str(v) for k, v in written.items()})


def measure_frame(labels: np.ndarray, raw: np.ndarray, confidence: np.ndarray | None, index: tuple[int, ...],
                  roles: str, *, pixel_size: float | None = None, channels: np.ndarray | None = None,
                  channel_names: tuple = (), cells: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`measure_nuclei` of the frame ``index`` of a stack whose frame axes are ``roles``, its index in the
    frame columns (``t``, ``z``, ``frame``: :data:`dsb.io.channels.FRAME_COLUMNS`) before the measurements.
    Shared by ``dsb segment`` (:func:`segment_stack`) and ``dsb measure`` of stacks."""
    table = measure_nuclei(labels, raw_intensity(raw), confidence, pixel_size=pixel_size, channels=channels,
                           channel_names=channel_names, cells=cells)
    for at, (role, value) in enumerate(zip(roles, index)):
        table.insert(at, FRAME_COLUMNS[role], value)
    return table


def write_stack_measurements(out_dir: Path, name: str, sections: pd.DataFrame, labels: np.ndarray, roles: str, *,
                             volumes: pd.DataFrame | None = None, drawn: list | None = None, rois: bool = False,
                             geojson: bool = False, pixel_size: float | None = None, cells: np.ndarray | None = None,
                             z_step: float | None = None) -> dict[str, Path]:
    """Write a stack's ``<name>_nuclei.csv`` (``sections``: each frame's nuclei after its frame columns), and with
    ``volumes`` ``<name>_nuclei3d.csv``, with ``drawn`` (each frame's outlines drawn on it) ``<name>_overlay.tif``,
    with ``rois`` and ``geojson`` its Fiji ROIs and QuPath detections of ``labels`` (frames first, their axes
    ``roles``; QuPath cells with ``cells``), with ``cells`` ``<name>_cells.tif`` (a label TIFF as ``labels``'
    of ``pixel_size`` and ``z_step``), each atomically: the files written, by :func:`summary_row`'s names.
    Shared by ``dsb segment`` (:func:`segment_stack`) and ``dsb measure`` of stacks."""
    targets = _outputs(Path(out_dir), name)
    written = {"measurements": targets["measurements"]}
    write_table(targets["measurements"], sections)
    if volumes is not None:
        write_table(targets["measurements_3d"], volumes)
        written["measurements_3d"] = targets["measurements_3d"]
    if cells is not None:
        written["cells"] = write_labels(targets["cells"], cells, roles, pixel_size=pixel_size, z_step=z_step)
    if drawn is not None:
        written["overlay"] = write_rgb_stack(targets["overlay"].with_suffix(".tif"), drawn, labels.shape[:len(roles)],
                                             roles, pixel_size=pixel_size)
    if rois:
        written["rois"] = write_rois(targets["rois"], labels, roles)
    if geojson:  # each section's detection carries its 3-D nucleus's measurements too
        measured = sections if volumes is None else with_volumes(sections, volumes)
        written["geojson"] = write_geojson(targets["geojson"], labels, roles, measurements=measured, cells=cells)
    return written


def _stitched(labels: np.ndarray, tables: dict, axis: int, min_overlap: float) -> np.ndarray:
    """A stack's labels joined through its planes, and its tables given the 3-D labels
    (:func:`dsb.workflows.volumes.stitch_sections`), 16-bit where they fit."""
    stitched = stitch_sections(labels, tables, axis, min_overlap)
    return stitched.astype(np.uint16 if stitched.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def channel_warning(raw: np.ndarray, path=None) -> str:
    """The ``warning`` of ``summary.csv`` for an image segmented from its luminance whose channels show
    different stains (:func:`dsb.inference.preprocess.mixed_channels`), with what to do (and, where the
    file at ``path`` names its channels, their names, which ``--channel`` takes); else ``""`` (also for
    one channel picked with ``--channel``: a 2-D image has no channels to question)."""
    why = mixed_channels(raw)
    if not why:
        return ""
    listed = named_channels(channel_names(path)) if path is not None else ""
    if listed:
        return f"{why}; its channels are named ({listed}): give --channel NAME to segment the DNA stain's alone"
    return f"{why}; {CHANNEL_ADVICE}"


def summary_row(path, status: str, *, nuclei: int = 0, diameter: float = math.nan, estimated: bool | str = "",
                sure: bool | str = "", pixel_size: float | None = None, labels: str = "", cells: str = "",
                measurements: str = "", overlay: str = "", rois: str = "", geojson: str = "", measurements_3d: str = "",
                warning: str = "", error: str = "") -> dict:
    """One row of ``summary.csv`` (:data:`SUMMARY_COLUMNS`): empty cells for what does not apply
    (``pixel_size`` and ``diameter_um`` where the pixel size is unknown)."""
    known = math.isfinite(diameter)
    return {"file": str(path), "status": status, "nuclei": nuclei,
            "diameter": round(diameter, 2) if known else "", "diameter_estimated": estimated,
            "diameter_sure": sure, "pixel_size": "" if pixel_size is None else float(f"{pixel_size:.6g}"),
            "diameter_um": round(diameter * pixel_size, 2) if known and pixel_size is not None else "",
            "labels": labels, "cells": cells, "measurements": measurements, "overlay": overlay, "rois": rois,
            "geojson": geojson, "measurements_3d": measurements_3d, "warning": warning, "error": error}


def nothing_to_segment(inputs: list[str], skips: Skips, *, verb: str = "segment") -> BadDataError:
    """The error of a run left with no image to segment (or ``verb``), naming the inputs and, where every
    one was skipped, why the first was (with ``--skip-bad`` the user would otherwise hear no reason)."""
    why = f" (all skipped; {skips.records[0].path}: {skips.records[0].message})" if skips.records else ""
    error = BadDataError(f"no image to {verb}{why}", path=", ".join(inputs) or None)
    error.skipped = list(skips.records)  # each said by the command line before the error
    return error


def join_warnings(*warnings: str) -> str:
    """The non-empty warnings of one input, as one ``summary.csv`` cell."""
    return "; ".join(w for w in warnings if w)


def check_scale_options(diameter, diameter_um, pixel_size) -> tuple[float | None, float | None, float | None]:
    """The nucleus diameter (pixels or micrometres) and pixel size given to ``dsb segment``, checked:
    ValueError for both diameters, or either (or the pixel size) no positive number in range."""
    if diameter is not None and diameter_um is not None:
        raise ValueError("give the nucleus diameter in pixels (diameter) or in micrometres (diameter_um), not both")
    if diameter is not None:
        diameter = check_diameter(diameter)
    if diameter_um is not None:
        diameter_um = check_micrometres(diameter_um, "nucleus diameter")
    return diameter, diameter_um, None if pixel_size is None else check_micrometres(pixel_size)


def check_cell_options(pixels, micrometres) -> tuple[float | None, float | None]:
    """The cell expansion given to ``dsb segment`` or ``dsb measure`` (pixels or micrometres, not both),
    checked: ValueError for both, or either no positive number in range (pixels up to
    :data:`dsb.workflows.cells.MAX_EXPANSION`).

    >>> check_cell_options(None, "5")
    (None, 5.0)
    """
    if pixels is not None and micrometres is not None:
        raise ValueError("give the cell expansion in pixels (cell_expansion) or in micrometres (cell_expansion_um), "
                         "not both")
    if pixels is not None and not check_expansion(pixels) > 0:
        raise ValueError(f"the cell expansion must be a positive number of pixels, got {pixels!r}")
    return (None if pixels is None else float(pixels),
            None if micrometres is None else check_micrometres(micrometres, "cell expansion"))


def _predictor(model_dir, *, tta: bool, diameter: float | None = None, engine: str = "auto",
               precision: str = "auto", scale_factor: float | None = None):
    """Load the model once; return a function from a raw image to its :class:`dsb.inference.predict.Nuclei`."""

    model, config = load_network(resolve_model_dir(model_dir), engine, precision, scale_factor=scale_factor)
    return nuclei_predictor(model, config, tta=tta, diameter=diameter)
