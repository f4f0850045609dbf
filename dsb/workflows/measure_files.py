"""``dsb measure``: the measurements of ``dsb segment`` for label images made elsewhere or corrected.

A biologist who corrected ``dsb segment``'s labels in napari or Fiji, or segmented with another
tool (Cellpose's ``NAME_cp_masks.png``, StarDist's ``masks/NAME.tif``), wants the same table of
each nucleus without segmenting again. :func:`measure_files` pairs each image with its label
image (:func:`dsb.io.annotations.label_file`) and writes, into ``out_dir``:

- ``<name>_nuclei.csv``: one row per nucleus, the columns of ``dsb segment``'s without
  ``confidence`` (:func:`dsb.workflows.segment_files.measure_nuclei`); each nucleus keeps its
  value in the label image as its ``label`` (a binary mask's objects, numbered 1..N, with a
  ``warning``: :func:`dsb.io.annotations.read_label_image`);
- with ``overlay``, ``<name>_overlay.png``; with ``rois``, ``<name>_rois.zip`` (Fiji ROIs); with
  ``geojson``, ``<name>_nuclei.geojson`` (QuPath detections, :mod:`dsb.io.geojson`); with a cell
  expansion, ``<name>_cells.tif`` and each cell's columns (:mod:`dsb.workflows.cells`);
- ``summary.csv``: one row per image (:data:`MEASURE_SUMMARY_COLUMNS`).

A TIFF stack is measured frame by frame with its label stack (:func:`dsb.io.annotations.read_label_stack`),
its files those of ``dsb segment`` for a stack (:func:`dsb.workflows.segment_files.write_stack_measurements`:
the frame columns first, an overlay TIFF), and with ``volumes`` a z-stack's ``<name>_nuclei3d.csv``.

Every image is paired with its labels before anything is read, so a missing label image stops
the run before anything is written (unless ``skip_bad``); an image or label image that turns out
unreadable, or of another size than its image, stops it where it is met, with the files of the
images before it complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path, removed_if_left_empty, writable_dir
from dsb.core.errors import BadDataError
from dsb.core.progress import track
from dsb.inference.preprocess import raw_intensity
from dsb.io.annotations import label_file, label_stem, read_label_image, read_label_stack
from dsb.io.channel_names import channel_names, file_channel
from dsb.io.folders import Skips, find_images
from dsb.io.images import read_channels, read_image, read_stack, stack_frames, tiff_page_note
from dsb.workflows.calibration import calibrate
from dsb.workflows.cells import grow_cells
from dsb.workflows.drawing import outline_overlay
from dsb.workflows.plates import with_well_tables
from dsb.workflows.segment_files import (
    check_cell_options,
    channel_warning,
    join_warnings,
    measure_frame,
    measure_nuclei,
    nothing_to_segment,
    write_measurements,
    write_stack_measurements,
)
from dsb.workflows.volumes import NO_PLANES_FOR, disjoint_sections, stack_volumes, stitch_axis

__all__ = ["MEASURE_SUMMARY_COLUMNS", "measure_files", "pair_labels"]

#: The columns of ``dsb measure``'s ``summary.csv``: the image, its label image, and what was written.
MEASURE_SUMMARY_COLUMNS = ("file", "labels", "status", "nuclei", "pixel_size", "cells", "measurements", "overlay",
                           "rois", "geojson", "measurements_3d", "warning", "error")


def pair_labels(paths, labels_dir=None, skips: Skips | None = None) -> dict[str, tuple[Path, Path]]:
    """The images among ``paths`` (files and folders, as ``dsb segment`` takes them), each with its label
    image: ``{name: (image, labels)}`` in the order given.

    A label file among ``paths`` (``NAME_masks.tif``, named or in a folder) is the label image of the
    image ``NAME``; any other image's is found by :func:`dsb.io.annotations.label_file`, beside it or
    in ``labels_dir``. An image without one label image goes to ``skips``, which raises it unless it
    skips bad inputs; so do paths that hold no image.
    """
    skips = Skips(False) if skips is None else skips
    # GeoJSON label files named among the inputs: no image, so not for find_images.
    paths = [Path(p) for p in paths]
    shapes = [p for p in paths if p.suffix.lower() == ".geojson" and p.is_file()]
    paths = [p for p in paths if p not in shapes]
    for path in shapes:
        if label_stem(path) is None:
            skips(BadDataError("is a GeoJSON file not named as a label file: name it NAME_masks.geojson for the "
                               "image NAME", path=path))
    try:
        images, problems = find_images(paths) if paths else ({}, [])
    except BadDataError as exc:  # two inputs of one name: often a masks/ folder named as images/
        raise BadDataError(f"{exc.message}; if one is the other's label image, give the label images' folder as "
                           "--labels", path=exc.path) from None
    for problem in problems:
        skips(problem)
    given = {label_stem(p): p for p in [*images.values(), *shapes] if label_stem(p) is not None}
    listing: dict = {}
    pairs = {}
    for name, image in images.items():
        if label_stem(image) is not None:
            continue  # a label image (NAME_masks.tif ...): its image's
        try:
            pairs[name] = (image, given[name] if name in given else label_file(image, labels_dir, listing=listing))
        except BadDataError as exc:
            skips(exc)
    for name, labels in given.items():
        if name not in images:
            skips(BadDataError(f"is a label image, of an image {name!r} not given; give the image (or its folder) "
                               "too", path=labels))
    return pairs


def measure_files(paths, *, out_dir, labels_dir=None, channel=None, pixel_size: float | None = None,
                  overlay: bool = False, rois: bool = False, geojson: bool = False, skip_bad: bool = False,
                  progress: bool = True, volumes: bool = False, z_step: float | None = None,
                  cell_expansion: float | None = None, cell_expansion_um: float | None = None) -> pd.DataFrame:
    """Measure each nucleus of existing label images in their images (the module's text).

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Image files and folders of them; label files among them are taken as labels.
    out_dir : str or os.PathLike
        Where the tables, overlays, ROIs and ``summary.csv`` go; created if needed.
    labels_dir : str or os.PathLike, optional
        The folder of the label images (``dsb segment``'s ``--out``, StarDist's ``masks/``); by
        default each beside its image.
    channel : int or str, optional
        The channel of the DNA stain, by number or (OME files) name, as for ``dsb segment``: the
        intensities are that channel's, and each nucleus is measured in every channel too. None:
        the image's luminance.
    pixel_size : float, optional
        Micrometres a pixel, for every image, instead of its metadata; where either gives one, the
        table gets the micrometre columns.
    overlay, rois, geojson : bool
        Also write ``<name>_overlay.png`` (a stack's: ``<name>_overlay.tif``), ``<name>_rois.zip``,
        ``<name>_nuclei.geojson``.
    volumes : bool
        A z-stack's labels are 3-D nuclei (one value through the planes, as ``dsb segment --stitch`` and
        the napari plugin's 3-D nuclei write them): also write ``<name>_nuclei3d.csv``, one row per 3-D
        nucleus (:func:`dsb.workflows.volumes.measure_volumes`).
    z_step : float, optional
        With ``volumes``, micrometres between planes, instead of the file's metadata.
    cell_expansion, cell_expansion_um : float, optional
        Grow each nucleus into its cell by this many pixels, or micrometres (by each image's pixel size):
        each row gets its cell's measurements, and ``<name>_cells.tif`` is written
        (:mod:`dsb.workflows.cells`).
    skip_bad : bool
        Record a bad image or label image in the summary and go on.
    progress : bool
        A progress bar on stderr.

    Returns
    -------
    pandas.DataFrame
        ``summary.csv``'s rows, with ``attrs["skipped"]`` as for ``dsb segment``.

    Raises
    ------
    BadDataError
        A bad input without ``skip_bad`` (one line naming it), or nothing left to measure.
    """
    out_dir = Path(out_dir)
    cell_expansion, cell_expansion_um = check_cell_options(cell_expansion, cell_expansion_um)
    skips = Skips(skip_bad)
    pairs = pair_labels(paths, labels_dir, skips)
    if not pairs:
        raise nothing_to_segment([str(p) for p in paths], skips, verb="measure")
    with removed_if_left_empty(out_dir):
        writable_dir(out_dir)
        # The inputs skipped before any was read (no label image, no image), then each image measured.
        rows = [{"file": skip.path, "status": "skipped", "nuclei": "", "error": skip.message} for skip in skips.records]
        for name, (image, labels_path) in track(pairs.items(), length=len(pairs), label="measuring",
                                                 enabled=progress and len(pairs) > 1):
            try:
                rows.append(_measure_one(image, labels_path, out_dir, name, channel=channel, pixel_size=pixel_size,
                                         overlay=overlay, rois=rois, geojson=geojson, volumes=volumes, z_step=z_step,
                                         cells=(cell_expansion, cell_expansion_um)))
            except BadDataError as exc:
                skips(exc, path=image)
                rows.append({"file": str(image), "labels": str(labels_path), "status": "skipped", "nuclei": "",
                             "error": f"{exc.path}: {exc.message}" if exc.path else exc.message})
        summary = pd.DataFrame(rows, columns=list(MEASURE_SUMMARY_COLUMNS))
        if not (summary["status"] == "ok").any():
            raise nothing_to_segment([str(p) for p in paths], skips, verb="measure")
        with atomic_path(out_dir / "summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
    summary.attrs["skipped"] = skips.records
    return with_well_tables(summary, paths, out_dir)


def _measure_one(image: Path, labels_path: Path, out_dir: Path, name: str, *, channel, pixel_size, overlay,
                 rois, geojson, volumes=False, z_step=None, cells=(None, None)) -> dict:
    """One image's measurements written; its summary row. ``cells``: the cell expansion in pixels and in
    micrometres."""
    picked = file_channel(image, channel)
    calibration = calibrate(image, pixel_size=pixel_size, cell_expansion=cells[0], cell_expansion_um=cells[1])
    if stack_frames(image, picked):
        return _measure_stack(image, labels_path, out_dir, name, picked=picked, calibration=calibration,
                              overlay=overlay, rois=rois, geojson=geojson, volumes=volumes, z_step=z_step)
    raw = read_image(image, picked)
    labels, fixes = read_label_image(labels_path, raw.shape[:2], image=image, renumbered=False, return_fixes=True)
    every = None if picked is None else read_channels(image)
    grown = None if calibration.cell_expansion is None else grow_cells(labels, calibration.cell_expansion)
    table = measure_nuclei(labels, raw_intensity(raw), None, pixel_size=calibration.pixel_size, channels=every,
                           channel_names=() if picked is None else channel_names(image), cells=grown)
    written = write_measurements(out_dir, name, table, raw, labels, overlay=overlay, rois=rois, geojson=geojson,
                                 cells=grown, pixel_size=calibration.pixel_size)
    warning = join_warnings(channel_warning(raw, image) if picked is None else "", calibration.note,
                            tiff_page_note(image, picked),
                            "one 2-D image: --volumes measures the 3-D nuclei of a z-stack" if volumes else "",
                            str(fixes) if fixes else "", _no_nuclei(labels_path) if table.empty else "")
    return _row(image, labels_path, len(table), calibration.pixel_size, written, warning)


def _no_nuclei(labels_path: Path) -> str:
    """The warning of a label file that holds no nucleus: the wrong file, or a GeoJSON of no polygons."""
    what = "objects dsb reads as nuclei (polygons of detections, cells or annotations)" \
        if labels_path.suffix.lower() == ".geojson" else "label above 0"
    return f"its labels ({labels_path.name}) hold no {what}: nothing was measured"


def _row(image: Path, labels_path: Path, nuclei: int, size: float | None, written: dict, warning: str) -> dict:
    """An image's ``summary.csv`` row (:data:`MEASURE_SUMMARY_COLUMNS`) once measured."""
    return {"file": str(image), "labels": str(labels_path), "status": "ok", "nuclei": nuclei,
            "pixel_size": "" if size is None else float(f"{size:.6g}"),
            **{k: str(v) for k, v in written.items()}, "warning": warning, "error": ""}


def _measure_stack(image: Path, labels_path: Path, out_dir: Path, name: str, *, picked, calibration, overlay, rois,
                   geojson, volumes, z_step) -> dict:
    """A TIFF stack's measurements written, frame by frame as ``dsb segment`` writes a stack's
    (:func:`dsb.workflows.segment_files.write_stack_measurements`), and with ``volumes`` its 3-D nuclei's;
    its summary row."""
    frames, roles = read_stack(image, picked)
    lead = frames.shape[: len(roles)]
    labels = read_label_stack(labels_path, (*lead, *frames.shape[len(roles): len(roles) + 2]), roles, image=image)
    every = None if picked is None else read_channels(image, frames=True)
    names = () if picked is None else channel_names(image)
    grown = None if calibration.cell_expansion is None else grow_cells(labels, calibration.cell_expansion)
    sections = pd.concat([measure_frame(labels[index], frames[index], None, index, roles,
                                        pixel_size=calibration.pixel_size,
                                        channels=None if every is None else every[index], channel_names=names,
                                        cells=None if grown is None else grown[index])
                          for index in np.ndindex(*lead)], ignore_index=True)
    axis = stitch_axis(roles) if volumes else None
    notes, solids, step = [tiff_page_note(image, picked)], None, None
    if volumes and axis is None:
        notes.append(NO_PLANES_FOR.format("--volumes"))
    elif axis is not None:
        solids, step, said = stack_volumes(sections, roles, axis, lead[axis], pixel_size=calibration.pixel_size,
                                        z_step=z_step, path=image)
        notes += said
        apart = disjoint_sections(labels, axis)
        if apart:
            notes.append(f"{apart} of its {len(solids)} 3-D nuclei have sections in neighbouring planes that do "
                         "not overlap: are its labels numbered plane by plane? --volumes wants 3-D nuclei, as "
                         "dsb segment --stitch and napari's 3-D nuclei label them")
    drawn = [outline_overlay(frames[index], labels[index], cells=None if grown is None else grown[index])
             for index in np.ndindex(*lead)] if overlay else None
    written = write_stack_measurements(out_dir, name, sections, labels, roles, volumes=solids, drawn=drawn,
                                       rois=rois, geojson=geojson, pixel_size=calibration.pixel_size, cells=grown,
                                       z_step=step)
    warning = join_warnings(channel_warning(frames[(0,) * len(roles)], image) if picked is None else "",
                            calibration.note, *notes, _no_nuclei(labels_path) if sections.empty else "")
    return _row(image, labels_path, len(sections if solids is None else solids), calibration.pixel_size, written,
                warning)
