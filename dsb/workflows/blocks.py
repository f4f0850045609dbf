"""Block-wise segmentation of one image larger than memory, every nucleus owned by one block.

The image is cut into square cores of ``block_size`` pixels (:class:`BlockPlan`);
each block is segmented with a margin of at least the largest nucleus plus
the network's context around its core, and keeps the nuclei whose centre
lies in its core (:func:`own_nuclei`), as StarDist's ``predict_instances_big``
does: a nucleus is never cut at a block face nor merged across one. One
that reaches the edge of its block's margin (larger than the overlap) is
counted in ``cut`` and reported. Global labels come from a prefix sum of the
per-block counts; each output chunk (one core) is then put together from
the nuclei its block and its eight neighbours own (:func:`assemble_core`),
each block relabelled with its own offset.

One scale and one contrast serve the whole image (:func:`image_settings`):
``diameter`` when given, otherwise estimated once from a sample of windows;
the grey levels mapped to 0 and 1 are the percentiles of the same sample
(all of the image when it holds no more than :data:`SAMPLE_WINDOWS` windows,
so that the network sees exactly what one-piece segmentation shows it).

Two ways to run it: :func:`segment_blocks` returns a lazy Dask array, or
writes the labels to a store; :func:`segment_image_file` is ``dsb segment``
of one large file, in two rounds of small tasks (paths and block
coordinates) through :func:`dsb.workflows.cluster.run_tasks`: the blocks,
whose owned nuclei wait in a scratch folder, then the output chunks; with a
cell expansion a third, each core's cells grown from the labels as written
(:func:`grow_block_cells`). All of it is written under temporary names and
renamed when whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_dir, atomic_path, scratch_dir, writable_dir
from dsb.core.errors import BadDataError, DsbError
from dsb.core.labels import relabel
from dsb.core.progress import track
from dsb.inference.labels import labels_at_scale
from dsb.inference.preprocess import (
    gray_value_range,
    image_type,
    mixed_channels,
    normalize_polarity,
    preprocess_image,
    raw_intensity,
    to_gray,
)
from dsb.inference.predict import use_tta, with_small_nuclei
from dsb.inference.probabilities import predict_probabilities
from dsb.inference.resample import resample
from dsb.inference.scale import choose_scale, prediction_scale
from dsb.inference.small_nuclei import small_pass_scale
from dsb.io.bigimage import (
    create_labels,
    finish_labels,
    label_target,
    labels_layout,
    open_labels,
    open_source,
)
from dsb.io.geojson import nucleus_features, write_features
from dsb.io.images import check_finite
from dsb.io.writers import write_table
from dsb.network.engines import load_network
from dsb.network.model_folder import resolve_model_dir
from dsb.workflows.calibration import Calibration
from dsb.workflows.cells import CellSums, grow_cells
from dsb.workflows.cluster import (
    ModelSpec,
    TaskError,
    remember_network,
    run_tasks,
    worker_network,
)
from dsb.workflows.segment_files import (
    CHANNEL_ADVICE,
    channel_columns,
    in_micrometres,
    join_warnings,
    measure_nuclei,
    summary_row,
    touches_edge,
)

__all__ = [
    "WORKING_BLOCK",
    "SAMPLE_WINDOWS",
    "BlockPlan",
    "ImageSettings",
    "OwnedBlock",
    "block_margin",
    "default_block_size",
    "plan_blocks",
    "image_settings",
    "network_input",
    "own_nuclei",
    "segment_block",
    "block_offsets",
    "assemble_core",
    "block_features",
    "segment_blocks",
    "segment_image_file",
]

# A block's side at the network's scale: the chunk of dsb.inference.predict's large images, measured there
# to keep a 2-core machine's memory bounded; in image pixels it is this over the scale.
WORKING_BLOCK = 2048
# Windows of the sample the scale and contrast are taken from, and their side in image pixels.
SAMPLE_WINDOWS = 9
SAMPLE_SIDE = 1024
# The largest nucleus a block's margin holds whole, in median diameters.
NUCLEUS_SPAN = 3
_CENTRE_COLUMNS = (("centroid_row", "centroid_col"), ("bbox_min_row", "bbox_min_col"),
                   ("bbox_max_row", "bbox_max_col"))


@dataclass(frozen=True)
class BlockPlan:
    """Square cores of ``block`` pixels over an image of ``shape``, each read with ``margin`` around it."""

    shape: tuple[int, int]
    block: int
    margin: int

    @property
    def grid(self) -> tuple[int, int]:
        """Blocks down and across."""
        return tuple(-(-n // self.block) for n in self.shape)

    def indices(self) -> list[tuple[int, int]]:
        """Every block's ``(i, j)``, row by row."""
        return [(i, j) for i in range(self.grid[0]) for j in range(self.grid[1])]

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of the pixels block ``(i, j)`` owns (and writes)."""
        b = self.block
        return i * b, min((i + 1) * b, self.shape[0]), j * b, min((j + 1) * b, self.shape[1])

    def extended(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of the pixels block ``(i, j)`` reads: its core and the margin, within the image."""
        r0, r1, c0, c1 = self.core(i, j)
        m = self.margin
        return max(0, r0 - m), min(self.shape[0], r1 + m), max(0, c0 - m), min(self.shape[1], c1 + m)

    def neighbours(self, i: int, j: int) -> list[tuple[int, int]]:
        """The blocks whose nuclei can reach the core of ``(i, j)``: itself and the eight around it, row by row."""
        rows, cols = self.grid
        return [(a, b) for a in range(max(0, i - 1), min(rows, i + 2)) for b in range(max(0, j - 1), min(cols, j + 2))]


@dataclass(frozen=True)
class ImageSettings:
    """What every block of one image is segmented with: one scale, one image type, one contrast.

    ``low`` and ``high`` are the grey levels (after polarity) mapped to 0 and 1; ``value_range`` the
    raw values mapped to grey 0 and 1 (:func:`dsb.inference.preprocess.gray_value_range` of the sampled
    pixels), so that every block is read on one scale whatever its own brightest pixel (None: each
    block by its own, as a whole image would be). Stained tissue keeps its per-block colour
    deconvolution and stretch (:func:`network_input`). ``warning``: why the sampled pixels' luminance
    may hide the nuclei (:func:`dsb.inference.preprocess.mixed_channels`; empty when a channel was picked).
    """

    scale: float
    diameter: float
    estimated: bool
    kind: str
    low: float
    high: float
    sure: bool = True
    value_range: tuple[float, float] | None = None
    warning: str = ""


@dataclass(frozen=True)
class OwnedBlock:
    """The nuclei one block owns: ``labels`` 1..count over its extended region (0 elsewhere),
    ``cut`` of them reaching the region's inner edge, and their measurements in image coordinates
    (labels 1..count, before the block's offset)."""

    index: tuple[int, int]
    count: int
    cut: int
    labels: np.ndarray
    table: pd.DataFrame


def block_margin(config, scale: float) -> int:
    """The margin around each core, in image pixels: the network's context plus
    :data:`NUCLEUS_SPAN` of the model's nucleus diameters, at the working scale, rounded up to a
    multiple of the network's size multiple.

    A U-Net sees a shifted image differently unless the shift is a multiple of
    its down-sampling factor (16 for the default model): with the block size
    a multiple of it too, every block starts on the whole image's grid and
    the network sees each block's pixels as it sees them in one piece.
    """
    canonical = config.preprocess.diameter or 20.0
    multiple = config.model.size_multiple()
    margin = math.ceil((config.predict.context + NUCLEUS_SPAN * canonical) / scale)
    return int(-(-margin // multiple) * multiple)


def default_block_size(scale: float) -> int:
    """:data:`WORKING_BLOCK` in image pixels at ``scale``, a multiple of 256."""
    return max(256, int(round(WORKING_BLOCK / scale / 256)) * 256)


def plan_blocks(shape, block_size: int, margin: int, *, path=None) -> BlockPlan:
    """A :class:`BlockPlan`, checked: the margin must fit in one block (a core's nuclei reach only
    its eight neighbours), so a block smaller than that is refused with one line naming ``path``."""
    if block_size < margin:
        raise BadDataError(f"a block size of {block_size} px is below what one block needs to hold a whole "
                           f"nucleus and the network's context ({margin} px at this image's scale); "
                           f"give --block-size {margin} or more", path=path)
    return BlockPlan(tuple(int(n) for n in shape), int(block_size), int(margin))


def _sample_windows(shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Up to :data:`SAMPLE_WINDOWS` windows of :data:`SAMPLE_SIDE` spread over the image; all of
    them (the whole image) when it holds no more."""
    plan = BlockPlan(shape, SAMPLE_SIDE, 0)
    every = plan.indices()
    if len(every) > SAMPLE_WINDOWS:
        every = [every[k] for k in np.linspace(0, len(every) - 1, SAMPLE_WINDOWS).round().astype(int)]
    return [plan.core(i, j) for i, j in every]


def network_input(raw: np.ndarray, config, settings: ImageSettings) -> np.ndarray:
    """One block's network input with the whole image's contrast (:func:`dsb.inference.preprocess.preprocess_image`
    stretches each image by its own percentiles; here all blocks share ``settings.low`` and ``high``).

    Stained tissue keeps its per-block colour deconvolution and stretch.
    """
    pre = config.preprocess
    if pre.polarity == "auto" and settings.kind == "stained":
        return preprocess_image(raw, pre, kind="stained")
    gray = normalize_polarity(to_gray(raw, settings.value_range), polarity=pre.polarity, kind=settings.kind)
    if settings.high - settings.low < 1e-6:
        return np.zeros_like(gray)
    return np.clip((gray - np.float32(settings.low)) / np.float32(settings.high - settings.low), 0, 1)


def image_settings(source, network, config, *, diameter: float | None = None) -> ImageSettings:
    """The scale, image type and contrast of a whole image, from a sample of windows (:func:`_sample_windows`).

    With ``diameter`` the scale follows from it; otherwise each window's
    diameter is estimated (:func:`dsb.inference.scale.choose_scale`) and the median
    of them sets the scale. The image type is that of the sampled pixels
    together, the contrast their ``percentile_low`` and ``percentile_high``.
    """
    raws = [source.read(*window) for window in _sample_windows(source.shape)]
    channels = raws[0].shape[2:]
    pixels = np.concatenate([raw.reshape(-1, 1, *channels) for raw in raws])
    check_finite(pixels, source.origin, sampled=True)
    kind = image_type(pixels)
    pre = config.preprocess
    # One scale of raw values for every block: each on its own would be read by its own brightest pixel.
    values = gray_value_range(pixels)
    grays = [normalize_polarity(to_gray(raw, values), polarity=pre.polarity, kind=kind) for raw in raws]
    low, high = np.percentile(np.concatenate([g.ravel() for g in grays]), [pre.percentile_low, pre.percentile_high])
    warning = mixed_channels(pixels) or ""  # none for a picked channel: its pixels are grey
    contrast = {"kind": kind, "low": float(low), "high": float(high), "value_range": values, "warning": warning}
    settings = ImageSettings(1.0, math.nan, False, **contrast)
    if diameter is not None:
        chosen = choose_scale(network, config, grays[0], diameter=diameter)
        return ImageSettings(chosen.scale, chosen.diameter, False, **contrast)
    found = [choose_scale(network, config, network_input(raw, config, settings)) for raw in raws]
    diameters = [s.diameter for s in found if math.isfinite(s.diameter)]
    if not diameters or not pre.diameter:
        return ImageSettings(found[0].scale, math.nan, bool(pre.diameter), sure=False, **contrast)
    median = float(np.median(diameters))
    scale = prediction_scale(pre.diameter / median, config)
    return ImageSettings(scale, median, True, sure=all(s.sure for s in found), **contrast)


def own_nuclei(labels: np.ndarray, plan: BlockPlan, index: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """The nuclei of block ``index``'s extended region whose centre lies in its core, numbered 1..count.

    Returns
    -------
    owned : (h, w) ndarray of int32
    count : int
    cut : int
        Owned nuclei that touch an edge of the region inside the image: larger
        than the margin, they may be cut.
    """
    er0, er1, ec0, ec1 = plan.extended(*index)
    r0, r1, c0, c1 = plan.core(*index)
    n = int(labels.max(initial=0))
    if not n:
        return np.zeros(labels.shape, np.int32), 0, 0
    flat = labels.ravel()
    height, width = labels.shape
    area = np.maximum(np.bincount(flat, minlength=n + 1), 1)
    rows = np.bincount(flat, np.repeat(np.arange(height, dtype=np.float64), width), minlength=n + 1) / area + er0
    cols = np.bincount(flat, np.tile(np.arange(width, dtype=np.float64), height), minlength=n + 1) / area + ec0
    keep = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    keep[0] = False
    inner_edges = [labels[0] if er0 > 0 else None, labels[-1] if er1 < plan.shape[0] else None,
                   labels[:, 0] if ec0 > 0 else None, labels[:, -1] if ec1 < plan.shape[1] else None]
    touching = np.zeros(n + 1, bool)
    touching[np.concatenate([e for e in inner_edges if e is not None] or [np.zeros(0, labels.dtype)])] = True
    return relabel(labels, keep), int(keep.sum()), int((keep & touching).sum())


def segment_block(source, plan: BlockPlan, index: tuple[int, int], spec: ModelSpec, settings: ImageSettings,
                  tta: bool | None = None, measure: bool = True) -> OwnedBlock:
    """Segment block ``index`` of ``source`` with the model of ``spec`` (loaded once per process) and
    keep the nuclei it owns, measured in image coordinates (an empty table unless ``measure``)."""
    er0, er1, ec0, ec1 = plan.extended(*index)
    raw = source.read(er0, er1, ec0, ec1)
    network, config, lock = worker_network(spec)
    gray = network_input(raw, config, settings)
    with lock:
        prob = _probabilities(network, resample(gray, settings.scale), config, use_tta(config, tta))
    labels, confidence = labels_at_scale(prob, settings.scale, gray.shape[:2], config.postprocess,
                                         return_confidence=True)
    del prob
    fine_scale = small_pass_scale(settings.scale, config.predict.small_pass)
    if fine_scale is not None:  # a block shrunk for large nuclei: a finer look for the small ones
        with lock:
            fine = _probabilities(network, resample(gray, fine_scale), config, use_tta(config, tta))
        labels, confidence = with_small_nuclei(labels, confidence, (fine, fine_scale), config)
        del fine
    owned, count, cut = own_nuclei(labels, plan, index)
    if not measure:
        return OwnedBlock(index, count, cut, owned, pd.DataFrame())
    # Each owned nucleus is one of the region's: its confidence follows it.
    # With a channel picked, each nucleus is measured in every channel too.
    every = None if source.channel is None else source.read_channels(er0, er1, ec0, ec1)
    inside = owned > 0
    origin = np.zeros(count + 1, np.int64)
    origin[owned[inside]] = labels[inside]
    table = measure_nuclei(owned, raw_intensity(raw), confidence[origin[1:] - 1], channels=every,
                           channel_names=source.channel_names)
    for row, col in _CENTRE_COLUMNS:
        table[row] += er0
        table[col] += ec0
    table["touches_edge"] = touches_edge(table, plan.shape)  # the image's edge, not the block's
    return OwnedBlock(index, count, cut, owned, table)


def _probabilities(network, work: np.ndarray, config, tta: bool) -> np.ndarray:
    """:func:`dsb.inference.probabilities.predict_probabilities` of one block at the working scale, padded at its
    bottom and right (by reflection) to the network's size multiple first, so that the tiler pads
    nothing before it and the block stays on the image's grid (see :func:`block_margin`)."""
    multiple = config.model.size_multiple()
    height, width = work.shape[:2]
    padded = np.pad(work, ((0, -height % multiple), (0, -width % multiple)), mode="reflect")
    return predict_probabilities(network, padded, config.predict, tta=tta, multiple=multiple)[:height, :width]


def block_offsets(plan: BlockPlan, counts: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """Each block's label offset: the prefix sum of the counts of the blocks before it, row by row."""
    order = plan.indices()
    sizes = np.array([counts.get(index, 0) for index in order], np.int64)
    return dict(zip(order, (np.cumsum(sizes) - sizes).tolist()))


def assemble_core(plan: BlockPlan, index: tuple[int, int], owned: dict, offsets: dict) -> np.ndarray:
    """The final labels of block ``index``'s core, from the owned labels of it and its neighbours.

    Parameters
    ----------
    owned : dict of (i, j) to (h, w) ndarray of int, or None
        Owned labels (1..count over the extended region) of the blocks in
        :meth:`BlockPlan.neighbours`; None for a block that owns nothing.
    offsets : dict of (i, j) to int
        :func:`block_offsets` of those blocks.

    Returns
    -------
    (h, w) ndarray of uint32
        Where two blocks' nuclei claim one pixel, the block first in row order keeps it.
    """
    r0, r1, c0, c1 = plan.core(*index)
    out = np.zeros((r1 - r0, c1 - c0), np.uint32)
    for other in plan.neighbours(*index):
        labels = owned.get(other)
        if labels is None:
            continue
        er0, er1, ec0, ec1 = plan.extended(*other)
        top, bottom, left, right = max(r0, er0), min(r1, er1), max(c0, ec0), min(c1, ec1)
        if top >= bottom or left >= right:
            continue
        part = labels[top - er0 : bottom - er0, left - ec0 : right - ec0]
        window = out[top - r0 : bottom - r0, left - c0 : right - c0]
        free = (part > 0) & (window == 0)
        window[free] = part[free].astype(np.uint32) + np.uint32(offsets[other])
    return out


# ---------------------------------------------------------------- running the blocks


def _owned_file(scratch, index: tuple[int, int]) -> Path:
    return Path(scratch) / f"{index[0]}_{index[1]}.npy"


def _block_task(source, plan: BlockPlan, index, spec: ModelSpec, settings: ImageSettings, tta: bool, scratch):
    """Round one, on a worker: segment one block and leave the nuclei it owns in ``scratch`` (written
    under a temporary name and renamed, so a worker that dies leaves no partial file); return the
    count, the cut count and the measurements."""
    try:
        block = segment_block(source, plan, index, spec, settings, tta)
    except DsbError as exc:
        return TaskError.of(exc)
    if block.count:
        target = _owned_file(scratch, index)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, block.labels.astype(np.uint16 if block.count < 65535 else np.uint32))
        os.replace(tmp, target)
    return block.count, block.cut, block.table


def _chunk_task(plan: BlockPlan, index, offsets: dict, scratch, store, component: str) -> int:
    """Round two, on a worker: one core's final labels from the owned nuclei of it and its
    neighbours (``offsets`` names those that own any), written as one whole chunk."""
    owned = {other: np.load(_owned_file(scratch, other), mmap_mode="r") for other in offsets}
    out = assemble_core(plan, index, owned, offsets)
    r0, r1, c0, c1 = plan.core(*index)
    open_labels(store, component)[r0:r1, c0:c1] = out
    return int(out.max(initial=0))


def _task_source(source, client):
    """What the tasks carry for ``source``: itself (a path, when read from disk), or for an
    in-memory array a future of it, sent to every worker once (so that a worker that dies does
    not take the only copy with it)."""
    if client is not None and source.kind == "array":
        return client.scatter(source, broadcast=True)
    return source


def _run_blocks(source, spec, settings, plan, *, store, component, scratch, client, tta, progress):
    """Both rounds over every block of ``plan``; ``(count, cut, table, owners)`` of the whole image, ``owners``
    each block's first label and count where it owns any (:func:`block_features`)."""
    src = _task_source(source, client)
    counts, cut, tables = {}, 0, {}
    what = f"a block of {source.origin or 'the array'}"
    items = [(src, plan, index, spec, settings, tta, scratch) for index in plan.indices()]
    for item, result in run_tasks(_block_task, items, client=client, progress=progress,
                                  label="segmenting blocks", what=what):
        if not isinstance(result, tuple):
            raise result.error()
        counts[item[2]], block_cut, tables[item[2]] = result
        cut += block_cut
    offsets = block_offsets(plan, counts)
    items = [(plan, index, {o: offsets[o] for o in plan.neighbours(*index) if counts[o]}, scratch, store, component)
             for index in plan.indices()]
    for _ in run_tasks(_chunk_task, items, client=client, progress=progress, label="writing labels", what=what):
        pass
    table = pd.concat([tables[i].assign(label=tables[i]["label"] + offsets[i]) for i in plan.indices()],
                      ignore_index=True)
    owners = {i: (offsets[i] + 1, counts[i]) for i in plan.indices() if counts[i]}
    return sum(counts.values()), cut, table, owners


def block_features(plan: BlockPlan, owners: dict, labels, table: pd.DataFrame, cells=None, reach: float = 0):
    """The GeoJSON features (:func:`dsb.io.geojson.nucleus_features`) of an image segmented block by block,
    traced from its final ``labels`` (a 2-D array or Zarr array, read one block's region at a time):
    each block's own nuclei (``owners``: its first label and count) within its region, which holds them
    whole, measured by ``table`` (the image's measurements, by label); with ``cells`` (the cells grown
    ``reach`` pixels around them, :func:`grow_block_cells`), QuPath cells, the region widened by ``reach``."""
    table = table.sort_values("label", kind="stable")
    known = table["label"].to_numpy()
    halo = 0 if cells is None else _cell_halo(reach)
    height, width = plan.shape
    for index, (first, count) in owners.items():
        er0, er1, ec0, ec1 = plan.extended(*index)
        er0, er1, ec0, ec1 = max(er0 - halo, 0), min(er1 + halo, height), max(ec0 - halo, 0), min(ec1 + halo, width)
        region = np.asarray(labels[er0:er1, ec0:ec1])
        own = np.where((region >= first) & (region < first + count), region, 0)
        grown = None
        if cells is not None:
            grown = np.asarray(cells[er0:er1, ec0:ec1])
            grown = np.where((grown >= first) & (grown < first + count), grown, 0)
        start, stop = np.searchsorted(known, [first, first + count])
        yield from nucleus_features(own, table.iloc[start:stop], origin=(er0, ec0), cells=grown)


def grow_block_cells(plan: BlockPlan, labels_store, component: str, cell_store, source, distance: float,
                     count: int, *, client=None, progress: bool = False) -> CellSums:
    """Grow the cells of an image segmented block by block (:func:`dsb.workflows.cells.grow_cells`), one
    core a task (on the cluster's workers with ``client``): its labels read from ``labels_store`` with a halo
    wider than ``distance``, so that every cell is grown as in one piece, the core of the result written as
    one chunk of ``cell_store`` (made by :func:`dsb.io.bigimage.create_labels` as the labels'), and what each
    cell holds of ``source`` (its intensities, and every channel where one is segmented) summed over the
    blocks. ``count``: the image's nuclei, labelled 1..count."""
    total = CellSums.zeros(count, 1 + (0 if source.channel is None else source.stored_channels))
    items = [(_task_source(source, client), plan, index, labels_store, cell_store, component, distance)
             for index in plan.indices()]
    for _, result in run_tasks(_cell_task, items, client=client, progress=progress, label="growing cells",
                               what=f"the cells of a block of {source.origin or 'the array'}"):
        if isinstance(result, TaskError):
            raise result.error()
        if result is not None:
            total.add(result[1], result[0])
    return total


def _cell_halo(distance: float) -> int:
    """How far around a region its labels are read to grow its cells by ``distance`` as in the whole image:
    every nucleus a cell of the region can reach from, and a pixel more."""
    return int(math.ceil(distance)) + 1


def _cell_task(source, plan: BlockPlan, index, labels_store, cell_store, component: str, distance: float):
    """One core's cells, on a worker: grown, written as one whole chunk of ``cell_store``; ``(first, sums)``
    of what they hold, numbered from the block's smallest label ``first`` (so that a block costs its own
    labels' range, not every nucleus of the image), None for a core of no cell, or a TaskError."""
    halo = _cell_halo(distance)
    height, width = plan.shape
    r0, r1, c0, c1 = plan.core(*index)
    h0, w0 = max(r0 - halo, 0), max(c0 - halo, 0)
    try:
        window = np.asarray(open_labels(labels_store, component)[h0:min(r1 + halo, height), w0:min(c1 + halo, width)])
        core = (slice(r0 - h0, r1 - h0), slice(c0 - w0, c1 - w0))
        grown = grow_cells(window, distance)[core]
        open_labels(cell_store, component)[r0:r1, c0:c1] = grown
        held = grown[grown > 0]
        if not held.size:
            return None
        first = int(held.min())
        nuclei, grown = (np.where(part > 0, part.astype(np.int64) - (first - 1), 0) for part in (window[core], grown))
        every = None if source.channel is None else source.read_channels(r0, r1, c0, c1)
        sums = CellSums.of(nuclei, grown, raw_intensity(source.read(r0, r1, c0, c1)), int(grown.max()), every,
                           edges=(r0 == 0, r1 == height, c0 == 0, c1 == width))
    except DsbError as exc:
        return TaskError.of(exc)
    return first, sums


def _model_spec(model, scale_factor: float | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for what :func:`segment_blocks` was given, its network remembered in this process:
    a model folder (None: the shipped model), or what :func:`dsb.load_model` returned."""
    if model is None or isinstance(model, (str, os.PathLike)):
        path = resolve_model_dir(model)
        network, config = load_network(path, scale_factor=scale_factor)
        # The default precision, as `dsb segment --blocks` asks: each worker computes at its own CPU's.
        spec = ModelSpec(str(path), network.engine, "auto", scale_factor)
    elif all(hasattr(model, name) for name in ("path", "network", "config", "engine")):
        network, config = model.network, model.config.with_scale_factor(scale_factor)
        # A plain callable in place of an engine's network computes as it does: float32 for a worker.
        spec = ModelSpec(str(model.path), model.engine, getattr(model.network, "precision", "float32"), scale_factor)
    else:
        raise TypeError(f"`model` must be a folder path or what dsb.load_model returned, got {type(model).__name__}")
    remember_network(spec, network, config)
    return spec


def _plan(source, spec: ModelSpec, diameter, block_size) -> tuple[ImageSettings, BlockPlan]:
    network, config, _ = worker_network(spec)
    settings = image_settings(source, network, config, diameter=diameter)
    block = default_block_size(settings.scale) if block_size is None else int(block_size)
    return settings, plan_blocks(source.shape, block, block_margin(config, settings.scale), path=source.path)


def _count(block: OwnedBlock) -> tuple[int, int]:
    return block.count, block.cut


def _offsets_task(plan: BlockPlan, counts: list[tuple[int, int]]) -> dict:
    """The blocks' label offsets; nuclei that may be cut at their margin are warned about here,
    once for the whole image (in the process that computes the lazy array, or a worker's log)."""
    _warn_cut("the array", sum(cut for _, cut in counts), plan)
    return block_offsets(plan, {index: count for index, (count, _) in zip(plan.indices(), counts)})


def _assemble_task(plan: BlockPlan, index, blocks: dict, offsets: dict) -> np.ndarray:
    return assemble_core(plan, index, {o: b.labels for o, b in blocks.items() if b.count}, offsets)


def _lazy_labels(source, spec: ModelSpec, settings: ImageSettings, plan: BlockPlan, *, client, tta: bool):
    """The labels as a lazy Dask array, one chunk per core: the blocks' owned nuclei stay in the
    workers' memory until the chunks that need them are done (use ``out`` to bound memory)."""
    import dask
    import dask.array as da

    src = _task_source(source, client)
    src = src if client is not None and source.kind == "array" else dask.delayed(src, pure=True)
    blocks = {i: dask.delayed(segment_block, pure=True)(src, plan, i, spec, settings, tta, False)
              for i in plan.indices()}
    offsets = dask.delayed(_offsets_task, pure=True)(plan, [dask.delayed(_count, pure=True)(blocks[i])
                                                            for i in plan.indices()])
    rows = []
    for i in range(plan.grid[0]):
        row = []
        for j in range(plan.grid[1]):
            r0, r1, c0, c1 = plan.core(i, j)
            chunk = dask.delayed(_assemble_task, pure=True)(plan, (i, j), {o: blocks[o] for o in plan.neighbours(i, j)},
                                                            offsets)
            row.append(da.from_delayed(chunk, (r1 - r0, c1 - c0), dtype=np.uint32))
        rows.append(row)
    return da.block(rows)


def segment_blocks(image, model=None, *, diameter: float | None = None, block_size: int | None = None,
                   client=None, out=None, tta: bool | None = None, progress: bool = False,
                   scale_factor: float | None = None, channel: int | None = None):
    """Label the nuclei of an image of any size, block by block, every nucleus owned by one block.

    Parameters
    ----------
    image : array_like or path
        An ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` NumPy, Zarr or Dask
        array (C in 1..4, any number with ``channel``), or the path of a Zarr array, an OME-Zarr image
        (level 0), a TIFF or a PNG file.
    model : str, os.PathLike or LoadedModel, optional
        As for :func:`dsb.segment`; by default the shipped model.
    diameter : float, optional
        The median nucleus diameter in pixels of the whole image; None
        estimates it once, from a sample of windows (:func:`image_settings`).
    block_size : int, optional
        The side of each block's core in pixels; by default
        :data:`WORKING_BLOCK` pixels at the network's scale
        (:func:`default_block_size`). It must hold a whole nucleus and the
        network's context (:func:`block_margin`).
    client : distributed.Client, optional
        Run on this Dask cluster; an in-memory array is sent to it once.
    out : str or os.PathLike, optional
        Write the labels to this Zarr store (``uint32``, one chunk per core;
        an OME-Zarr label image with ``image-label`` metadata when ``image``
        is OME-Zarr) instead of returning them lazily. The store appears
        only once whole.
    tta : bool, optional
        Average over flips and quarter turns; None follows the model's ``predict.tta``.
    progress : bool
        Progress bars on stderr (with ``out``).
    scale_factor : float, optional
        Predict this many times larger than the estimated (or given) scale, in
        [0.5, 2]; None follows the model's ``predict.scale_factor``.
    channel : int or str, optional
        Segment only this channel, counted from 0 (or by its name in an OME file), of an image of
        any number of channels (:func:`dsb.io.bigimage.open_source`); only that channel
        is read. Without it, a fluorescence image whose channels show
        different stains gets a warning (:func:`dsb.inference.preprocess.mixed_channels`).

    Returns
    -------
    dask.array.Array of uint32
        ``(H, W)``: 0 background, nuclei 1..N numbered block by block. Lazy
        without ``out`` (computing it holds every block's owned nuclei in
        memory at once; give ``out`` for images larger than memory); with
        ``out``, the written store, read lazily.

    Raises
    ------
    BadDataError
        ``image`` is not one 2-D image, has no channel ``channel``,
        ``block_size`` is too small for its nuclei, or ``scale_factor`` is outside [0.5, 2].

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> import dsb
    >>> rr, cc = np.indices((200, 200))
    >>> discs = sum(((rr - r) ** 2 + (cc - c) ** 2 <= 10**2) for r, c in [(40, 40), (100, 97), (160, 150)])
    >>> image = (ndimage.gaussian_filter(discs * 180.0, 1.5) + 15).astype(np.uint8)
    >>> labels = dsb.segment_blocks(image, diameter=20, block_size=128)
    >>> labels.chunksize, int(labels.max().compute())
    ((128, 128), 3)
    """
    source = open_source(image, channel)
    spec = _model_spec(model, scale_factor)
    settings, plan = _plan(source, spec, diameter, block_size)
    if settings.warning:
        warnings.warn(f"{source.origin or 'the array'}: {settings.warning}; give channel=N to segment the "
                      "DNA stain's channel alone", stacklevel=2)
    if out is None:
        return _lazy_labels(source, spec, settings, plan, client=client, tta=tta)
    import dask.array as da

    out = Path(out)
    component, zarr_format = labels_layout(source)
    with atomic_dir(out) as store, _scratch(out.parent, out.stem) as scratch:
        create_labels(store, plan.shape, plan.block, component=component, zarr_format=zarr_format)
        _, cut, _, _ = _run_blocks(source, spec, settings, plan, store=store, component=component, scratch=scratch,
                                   client=client, tta=tta, progress=progress)
        finish_labels(store, source, store, 0)
    _warn_cut(source.path or "the array", cut, plan)
    return da.from_zarr(str(out), component=component or None)


def _scratch(folder: Path, name: str):
    """A hidden scratch folder in ``folder`` (shared with the workers), removed afterwards."""
    writable_dir(folder)
    return scratch_dir(folder, f".{name}.blocks.")


def _warn_cut(path, cut: int, plan: BlockPlan) -> None:
    if cut:
        warnings.warn(f"{path}: {cut} nuclei reach the edge of their block's {plan.margin}-px margin and may be "
                      "cut there: they are larger than the model's nuclei at this scale (give their --diameter)",
                      stacklevel=3)


def _materialise(source, scratch: Path):
    """A PNG (which has no random access) decoded once, here, into a Zarr array in ``scratch`` that
    the workers read by block (every channel where one is picked, to measure the nuclei in each);
    any other source as it is."""
    if source.kind != "png":
        return source
    import zarr

    every = source.channel is not None and source.stored_channels > 1
    raw = (source.read_channels if every else source.read)(0, source.shape[0], 0, source.shape[1])
    store = scratch / "image.zarr"
    array = zarr.create_array(store=str(store), shape=raw.shape, chunks=(1024, 1024, *raw.shape[2:]),
                              dtype=raw.dtype)
    array[...] = raw
    copy = open_source(store, source.channel)
    copy.origin = source.origin  # named after the input in messages and outputs
    copy.channel_names = source.channel_names
    return copy


def segment_image_file(path, *, spec: ModelSpec, out_dir, block_size: int | None = None, client=None,
                       tta: bool | None = None, progress: bool = True, channel: int | None = None,
                       calibration: Calibration = Calibration(), geojson: bool = False) -> dict:
    """``dsb segment`` of one large image, block by block: its labels and measurements in ``out_dir``.

    Writes ``NAME_labels.zarr`` (Zarr and OME-Zarr inputs; OME-Zarr labels
    for OME-Zarr) or ``NAME_labels.tif`` (a tiled BigTIFF, for TIFF and PNG),
    and ``NAME_nuclei.csv`` (:func:`dsb.workflows.segment_files.measure_nuclei`'s
    columns, in image coordinates), with ``geojson`` ``NAME_nuclei.geojson`` (:func:`block_features`, from
    the label image as written) and with ``calibration``'s cell expansion ``NAME_cells`` of the labels' kind
    (:func:`grow_block_cells`, the cells' columns in the table), each under a temporary name until whole.
    ``calibration`` (:func:`dsb.workflows.calibration.calibrate`) gives the nucleus diameter in pixels
    (None: estimated from sample windows), the pixel size of the measurements, the TIFFs and the row, and
    the cell expansion in pixels (None: no cells).

    Returns
    -------
    dict
        The image's ``summary.csv`` row (:func:`dsb.workflows.segment_files.summary_row`).
    """
    path, out_dir = Path(path), Path(out_dir)
    source = open_source(path, channel)
    settings, plan = _plan(source, spec, calibration.diameter, block_size)
    target = label_target(source, out_dir)
    measurements = out_dir / f"{source.name}_nuclei.csv"
    component, zarr_format = labels_layout(source)
    cells = None if calibration.cell_expansion is None else cell_target(target)
    with _scratch(out_dir, source.name) as scratch:
        source = _materialise(source, scratch)
        staged = atomic_dir(target) if target.suffix == ".zarr" else atomic_path(target)
        with staged as tmp, contextlib.ExitStack() as cells_staged:  # the cells' file, whole before the labels'
            store = tmp if target.suffix == ".zarr" else scratch / "labels.zarr"
            create_labels(store, plan.shape, plan.block, component=component, zarr_format=zarr_format)
            count, cut, table, owners = _run_blocks(source, spec, settings, plan, store=store, component=component,
                                                    scratch=scratch, client=client, tta=tta, progress=progress)
            finish_labels(store, source, tmp, count, pixel_size=calibration.pixel_size,
                          progress=lambda rows: track(rows, label="writing TIFF", enabled=progress))
            grown = None
            if cells is not None:  # from the labels as written
                grown, table = _block_cells(source, plan, store, component, cells_staged.enter_context(
                    atomic_dir(cells) if cells.suffix == ".zarr" else atomic_path(cells)), scratch, count, table,
                    calibration, progress, client, zarr_format)
            if calibration.pixel_size is not None:
                table = in_micrometres(table, calibration.pixel_size)
            features = out_dir / f"{source.name}_nuclei.geojson" if geojson else None
            if features is not None:  # traced from the labels as written, the store still at hand
                write_features(features, block_features(plan, owners, open_labels(store, component), table,
                                                        cells=grown, reach=calibration.cell_expansion or 0))
        write_table(measurements, table)
    _warn_cut(path, cut, plan)
    warning = settings.warning and f"{settings.warning}; {CHANNEL_ADVICE}"
    return summary_row(path, "ok", nuclei=count, diameter=settings.diameter, estimated=settings.estimated,
                       sure=settings.sure, pixel_size=calibration.pixel_size, labels=str(target),
                       cells="" if cells is None else str(cells),
                       measurements=str(measurements), geojson="" if features is None else str(features),
                       warning=join_warnings(warning, calibration.note))


def cell_target(labels: Path) -> Path:
    """Where the cells go of an image whose labels go to ``labels`` (:func:`dsb.io.bigimage.label_target` of
    its source as given, before a PNG is staged as Zarr): beside them, of their kind, ``NAME_cells``."""
    return labels.with_name(labels.name[: -len(labels.suffix)].rsplit("_labels", 1)[0] + "_cells" + labels.suffix)


def _block_cells(source, plan: BlockPlan, store, component: str, staged: Path, scratch: Path, count: int,
                 table: pd.DataFrame, calibration: Calibration, progress: bool, client=None, zarr_format: int = 3):
    """The cells of an image segmented block by block, grown from its label ``store`` into ``staged`` (the
    staging name of :func:`cell_target`: a Zarr store, or a TIFF written from one in ``scratch``); returns
    the cell array (for the GeoJSON) and ``table`` with the cell columns."""
    cell_store = scratch / "cells.zarr" if staged.suffix == ".tif" else staged  # a TIFF's staging name ends .tif
    create_labels(cell_store, plan.shape, plan.block, component=component, zarr_format=zarr_format)
    sums = grow_block_cells(plan, store, component, cell_store, source, calibration.cell_expansion, count,
                            client=client, progress=progress)
    finish_labels(cell_store, source, staged, count, pixel_size=calibration.pixel_size,
                  progress=lambda rows: track(rows, label="writing cells", enabled=progress))
    names = [] if source.channel is None else channel_columns(source.channel_names, source.stored_channels)
    return open_labels(cell_store, component), table.assign(**sums.columns(table["label"].to_numpy(np.intp), names))
