"""``dsb segment``'s inputs, whatever they are: image files and folders in this process or one task per image
on a Dask cluster, TIFF stacks frame by frame (:func:`dsb.workflows.segment_files.segment_stack`), images
larger than memory block by block (:mod:`dsb.workflows.blocks`), and OME-Zarr plates field by field.

:func:`segment_inputs` sorts the inputs (a Zarr store, or a TIFF or PNG with a side above the block size, goes
block-wise; a plate's fields are images), runs them where :func:`dsb.workflows.cluster.cluster_client` says, and
writes ``summary.csv`` (and each plate's ``PLATE_wells.csv``: :mod:`dsb.workflows.plates`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from dsb.core.atomic import atomic_path, removed_if_left_empty, writable_dir
from dsb.core.errors import BadDataError, DsbError
from dsb.inference.predict import predict_nuclei
from dsb.io.bigimage import image_side, open_source
from dsb.io.channels import FRAME_WORDS
from dsb.io.folders import Skips, claim_name, find_images
from dsb.io.images import read_image, read_stack, stack_frames, tiff_page_note
from dsb.io.ome import is_plate, is_plate_field, is_zarr
from dsb.network.model_folder import resolve_model_dir
from dsb.workflows.blocks import segment_image_file
from dsb.workflows.calibration import Calibration, calibrate_files
from dsb.workflows.cluster import (
    ModelSpec,
    TaskError,
    cluster_client,
    run_tasks,
    worker_network,
)
from dsb.workflows.pipeline import nuclei_predictor
from dsb.workflows.plates import with_well_tables
from dsb.workflows.volumes import Stitch
from dsb.workflows.segment_files import (
    check_cell_options,
    SUMMARY_COLUMNS,
    check_scale_options,
    join_warnings,
    nothing_to_segment,
    segment_paths,
    segment_stack,
    summary_row,
    write_outputs,
)

__all__ = [
    "BIG_SIDE",
    "segment_folder",
    "segment_inputs",
    "segment_stacks",
]


# A TIFF or PNG with a side above this goes block-wise when --block-size is not given.
BIG_SIDE = 8192



def _check_task(path: Path, channel: int | None = None, stack: bool = False) -> TaskError | None:
    """Read one image (or, with ``stack``, one TIFF stack) as it will be segmented: None, or why not."""
    try:
        read_stack(path, channel) if stack else read_image(path, channel)
    except DsbError as exc:
        return TaskError.of(exc)
    return None



def _segment_task(path: Path, name: str, out_dir: Path, spec: ModelSpec, tta: bool, overlay: bool, rois: bool,
                  geojson: bool, calibration: Calibration, channel: int | None = None):
    """One image of a folder, on a worker: read, segment with the worker's model at the calibration's
    diameter (None: estimated), write its files."""
    try:
        raw = read_image(path, channel)
        network, config, lock = worker_network(spec)
        with lock:
            nuclei = predict_nuclei(network, config, raw, tta=tta, diameter=calibration.diameter)
        return write_outputs(out_dir, name, path, raw, nuclei, overlay=overlay, rois=rois, geojson=geojson,
                             calibration=calibration, channel=channel)
    except DsbError as exc:
        return TaskError.of(exc)



def segment_folder(images: dict[str, Path], *, spec: ModelSpec, out_dir: Path, client, skips: Skips,
                   scales: dict[str, Calibration], tta: bool | None = None, overlay: bool = False,
                   rois: bool = False, geojson: bool = False, progress: bool = True,
                   channel: int | None = None) -> dict[str, dict]:
    """``dsb segment`` of many images, one Dask task per image: ``{file: summary row}``, each image at the
    scale of its :class:`~dsb.workflows.calibration.Calibration` in ``scales`` (by ``str(path)``).

    Every image is read and checked on the workers before any is segmented,
    so a bad one (without ``skip_bad``) stops the run before anything is written.
    """
    bad: set[str] = set()
    for (path, _), problem in run_tasks(_check_task, [(p, channel) for p in images.values()], client=client,
                                      progress=progress, label="checking images", what="checking"):
        if problem is not None:
            skips(problem.error(), path=path)
            bad.add(str(path))
    rows: dict[str, dict] = {}
    items = [(p, name, out_dir, spec, tta, overlay, rois, geojson, scales[str(p)], channel)
             for name, p in images.items() if str(p) not in bad]
    for item, row in run_tasks(_segment_task, items, client=client, progress=progress, label="segmenting",
                               what="segmenting"):
        if isinstance(row, TaskError):
            skips(row.error(), path=item[0])
        else:
            rows[str(item[0])] = row
    return rows



def _stack_task(path: Path, name: str, out_dir: Path, spec: ModelSpec, tta: bool, overlay: bool, rois: bool,
                geojson: bool, calibration: Calibration, channel: int | None, progress: bool = False,
                stitch: Stitch | None = None):
    """One TIFF stack, on a worker or in this process: segment it frame by frame with the model of
    ``spec`` (:func:`dsb.workflows.segment_files.segment_stack`); its summary row or a TaskError."""
    try:
        network, config, lock = worker_network(spec)
        predict = nuclei_predictor(network, config, tta=tta, diameter=calibration.diameter)
        with lock:
            return segment_stack(path, name, out_dir, predict, channel=channel, overlay=overlay, rois=rois,
                                 geojson=geojson, progress=progress, calibration=calibration, stitch=stitch)
    except DsbError as exc:
        return TaskError.of(exc)


def check_stacks(stacks: dict[str, Path], *, client, skips: Skips, channel: int | None = None,
                 progress: bool = True) -> dict[str, Path]:
    """The stacks that read whole (on the cluster's workers when ``client``); each other one goes to
    ``skips``, which raises it unless it skips bad inputs. Run before anything is written, so that a
    damaged stack stops the run as a damaged image does."""
    bad: set[str] = set()
    for (path, *_), problem in run_tasks(_check_task, [(p, channel, True) for p in stacks.values()], client=client,
                                         progress=progress and len(stacks) > 1, label="checking stacks",
                                         what="checking"):
        if problem is not None:
            skips(problem.error(), path=path)
            bad.add(str(path))
    return {name: path for name, path in stacks.items() if str(path) not in bad}


def segment_stacks(stacks: dict[str, Path], *, spec: ModelSpec, out_dir: Path, client, skips: Skips,
                   scales: dict[str, Calibration], tta: bool | None = None, overlay: bool = False,
                   rois: bool = False, geojson: bool = False, progress: bool = True, channel: int | None = None,
                   stitch: Stitch | None = None) -> dict[str, dict]:
    """``dsb segment`` of TIFF stacks: ``{file: summary row}``; one Dask task per stack on a cluster,
    else here, frame after frame with a progress bar over each stack's frames; each at the scale of its
    :class:`~dsb.workflows.calibration.Calibration` in ``scales``, a z-stack's planes joined with ``stitch``
    (:class:`dsb.workflows.volumes.Stitch`)."""
    rows: dict[str, dict] = {}
    items = [(p, name, out_dir, spec, tta, overlay, rois, geojson, scales[str(p)], channel,
              progress and client is None, stitch) for name, p in stacks.items()]
    for item, row in run_tasks(_stack_task, items, client=client, progress=progress and client is not None,
                               label="segmenting stacks", what="segmenting"):
        if isinstance(row, TaskError):
            skips(row.error(), path=item[0])
        else:
            rows[str(item[0])] = row
    return rows


# What a block-wise image does not get of what `dsb segment` was asked for.
BLOCK_WISE_NOTHING = "no overlay or ROIs are written for it (its label image holds every nucleus)"


def _split_inputs(paths: list[Path], block_size: int | None, channel: int | None = None):
    """What ``dsb segment`` was given, sorted out: the inputs to segment block by block (Zarr stores,
    and TIFF and PNG files and OME-Zarr plates' fields, named or in a folder or plate, with a side above
    ``block_size`` or :data:`BIG_SIDE`), the other images by name in the order given, those of them that
    are TIFF or OME-Zarr stacks (:func:`dsb.io.images.stack_frames`), the paths that are no image
    (:func:`dsb.io.folders.find_images`), and the TIFFs and fields whose header says they are neither one
    image nor a stack of them (or lack the channel asked for)."""
    # A plate's fields are images as a folder's files are: a field larger than `limit` goes block by block.
    zarrs = [path for path in paths if is_zarr(path) and not is_plate(path) and not is_plate_field(path)]
    others = [path for path in paths if path not in zarrs]
    images, problems = find_images(others) if others else ({}, [])
    # A store's outputs are named as a file's (a.ome.zarr and a.tif both write a_nuclei.csv).
    names = dict(images)
    for path in zarrs:
        claim_name(names, path)
    limit = BIG_SIDE if block_size is None else block_size
    big = [path for path in images.values()
           if (path.suffix.lower() in (".tif", ".tiff", ".png") or is_zarr(path)) and _side(path) > limit]
    rest, stacks, refused = {}, {}, []
    for name, path in images.items():
        if path in big:
            continue
        rest[name] = path
        try:
            if stack_frames(path, channel):
                stacks[name] = path
        except BadDataError as exc:
            refused.append(exc)
    return zarrs + big, rest, stacks, problems, refused


def _side(path: Path) -> int:
    """The longer side of an image file; 0 for one whose header cannot be read, which then goes with
    the small images, whose check names it or, with ``skip_bad``, skips it."""
    try:
        return image_side(path)
    except BadDataError:
        return 0


def segment_inputs(paths, *, model_dir=None, out_dir, tta: bool | None = None, overlay: bool = False,
                   rois: bool = False, geojson: bool = False, diameter: float | None = None, skip_bad: bool = False,
                   progress: bool = True, engine: str = "auto", precision: str = "auto", block_size: int | None = None,
                   workers: int | None = None, scheduler: str | None = None, client=None,
                   scale_factor: float | None = None, channel: int | None = None, diameter_um: float | None = None,
                   pixel_size: float | None = None, stitch: Stitch | None = None, cell_expansion: float | None = None,
                   cell_expansion_um: float | None = None) -> pd.DataFrame:
    """``dsb segment`` with large images block by block and, optionally, on a Dask cluster.

    Zarr and OME-Zarr stores, and TIFF or PNG files and OME-Zarr plates' fields with a side above
    ``block_size`` (:data:`BIG_SIDE` when None), are segmented block-wise
    (:func:`dsb.workflows.blocks.segment_image_file`); an OME-Zarr plate's other fields, as images of their
    own, and its wells in ``PLATE_wells.csv`` (:func:`dsb.workflows.plates.with_well_tables`); the other
    images as
    :func:`dsb.workflows.segment_files.segment_paths` does, on the cluster's workers
    when ``workers`` or ``scheduler`` is given. Parameters and the returned
    summary are those of :func:`~dsb.workflows.segment_files.segment_paths` (``rois``, ``geojson``,
    ``scale_factor``, ``channel``, ``diameter_um``, ``pixel_size`` and the cell expansions included; an
    image segmented block-wise gets neither an overlay nor ROIs, but its GeoJSON and its cells), plus
    ``stitch`` (join each z-stack's
    planes into 3-D nuclei: :func:`dsb.workflows.segment_files.segment_stack`),
    ``block_size`` (pixels a side), ``workers`` and ``scheduler``
    (:func:`cluster_client`), or a ``client`` already connected (a
    dask-gateway cluster's, whose address needs its credentials).
    """

    out_dir = Path(out_dir)
    diameter, diameter_um, pixel_size = check_scale_options(diameter, diameter_um, pixel_size)
    cell_expansion, cell_expansion_um = check_cell_options(cell_expansion, cell_expansion_um)
    paths = [Path(p) for p in paths]
    big, listed, stacks, problems, refused = _split_inputs(paths, block_size, channel)
    spec = ModelSpec(str(resolve_model_dir(model_dir)), engine, precision, scale_factor)
    skips = Skips(skip_bad)
    # What can be told from headers is told before anything is written: a TIFF that is neither an
    # image nor a stack of them, or lacks the channel, and each large input opened (metadata only).
    for exc in refused:
        if not skip_bad:
            raise exc
    unreadable = []
    for path in big:
        try:
            frames = stack_frames(path, channel)
            if frames:
                kinds = " and ".join(FRAME_WORDS[a] for a in frames)
                if is_zarr(path) and not is_plate_field(path):
                    raise BadDataError(f"is a stack (of {kinds}), and a Zarr store is segmented block by block, "
                                       "which takes one 2-D image", path=path)
                raise BadDataError(f"is a stack (of {kinds}), and block by block (a side above "
                                   f"{BIG_SIDE if block_size is None else block_size} px) dsb segment takes one "
                                   "2-D image" + ("" if block_size is None else "; give no --block-size"), path=path)
            open_source(path, channel)
        except BadDataError as exc:
            exc = exc if exc.path is not None else BadDataError(exc.message, path=path, where=exc.where)
            if not skip_bad:
                raise exc from None
            unreadable.append(exc)
    # How the unnamed pages of a plain multi-page TIFF were read, where another reading was as likely.
    notes = {str(p): note for p in listed.values() if (note := tiff_page_note(p, channel))}
    rows: dict[str, dict] = {}
    given = contextlib.nullcontext(client) if client is not None else cluster_client(workers, scheduler)
    with removed_if_left_empty(out_dir), given as client:
        if client is None and not big and not refused and not stacks and not notes:  # as before
            summary = segment_paths(paths, model_dir=spec.path, out_dir=out_dir, tta=tta, overlay=overlay,
                                    rois=rois, geojson=geojson, diameter=diameter, skip_bad=skip_bad,
                                    progress=progress, engine=engine, precision=precision, scale_factor=scale_factor,
                                    channel=channel, diameter_um=diameter_um, pixel_size=pixel_size,
                                    cell_expansion=cell_expansion, cell_expansion_um=cell_expansion_um)
            return with_well_tables(summary, paths, out_dir)
        for problem in problems + refused + unreadable:
            skips(problem)
        # The summary lists the inputs as they were given; a refused one in its place.
        order = [problem.path for problem in problems] + [str(p) for p in listed.values()] + [str(p) for p in big]
        out = {str(exc.path) for exc in refused + unreadable}
        # Each input's scale, told from its header before anything is written.
        scales = calibrate_files([p for p in [*listed.values(), *big] if str(p) not in out], skips,
                                 diameter=diameter, diameter_um=diameter_um, pixel_size=pixel_size,
                                 cell_expansion=cell_expansion, cell_expansion_um=cell_expansion_um)
        out |= {str(p) for p in [*listed.values(), *big] if str(p) not in scales}
        stacks = {name: p for name, p in stacks.items() if str(p) not in out}
        small = {name: p for name, p in listed.items() if name not in stacks and str(p) not in out}
        stacks = check_stacks(stacks, client=client, skips=skips, channel=channel, progress=progress)
        if small and client is None:
            try:
                done = segment_paths(list(small.values()), model_dir=spec.path, out_dir=out_dir, tta=tta,
                                     overlay=overlay, rois=rois, geojson=geojson, diameter=diameter,
                                     skip_bad=skip_bad, progress=progress, engine=engine, precision=precision,
                                     scale_factor=scale_factor, channel=channel, diameter_um=diameter_um,
                                     pixel_size=pixel_size, cell_expansion=cell_expansion,
                                     cell_expansion_um=cell_expansion_um)
            except BadDataError as exc:
                if not (skip_bad and getattr(exc, "skipped", None)):
                    raise
                skips.records += exc.skipped  # all of them skipped: said with the others' below
            else:
                rows.update({row["file"]: row for row in done.to_dict("records") if row["status"] == "ok"})
                skips.records += done.attrs["skipped"]
        elif small:
            writable_dir(out_dir)
            rows.update(segment_folder(small, spec=spec, out_dir=out_dir, client=client, skips=skips,
                                       scales=scales, tta=tta, overlay=overlay, rois=rois, geojson=geojson,
                                       progress=progress, channel=channel))
        if stacks:
            writable_dir(out_dir)
            rows.update(segment_stacks(stacks, spec=spec, out_dir=out_dir, client=client, skips=skips,
                                       scales=scales, tta=tta, overlay=overlay, rois=rois, geojson=geojson,
                                       progress=progress, channel=channel, stitch=stitch))
        for path in big:
            if str(path) in out:
                continue
            try:
                row = segment_image_file(path, spec=spec, out_dir=out_dir, block_size=block_size, client=client,
                                         tta=tta, progress=progress, channel=channel, calibration=scales[str(path)],
                                         geojson=geojson)
            except BadDataError as exc:
                skips(exc, path=path)
                continue
            if overlay or rois:  # asked for, and not written: said where the user looks
                row["warning"] = join_warnings(row["warning"], f"segmented block-wise: {BLOCK_WISE_NOTHING}")
            rows[str(path)] = row
    for path, note in notes.items():
        if path in rows:
            rows[path]["warning"] = join_warnings(rows[path]["warning"], note)
    return with_well_tables(_write_summary(out_dir, rows, skips, order), paths, out_dir)


def _write_summary(out_dir: Path, rows: dict[str, dict], skips: Skips, order: list[str]) -> pd.DataFrame:
    for skip in skips.records:
        rows[skip.path] = summary_row(skip.path, "skipped", error=skip.message)
    if not any(row["status"] == "ok" for row in rows.values()):
        raise nothing_to_segment(order, skips)
    summary = pd.DataFrame([rows[p] for p in dict.fromkeys(order) if p in rows], columns=list(SUMMARY_COLUMNS))
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    summary.attrs["skipped"] = list(skips.records)
    return summary
