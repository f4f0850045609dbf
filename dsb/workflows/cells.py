"""Cells around nuclei: each nucleus grown by a distance into the background around it.

A nuclear stain outlines nuclei, not cells; what lies outside the nucleus (a cytoplasmic marker, a
protein that moves between nucleus and cytoplasm) is measured in a ring grown around each nucleus,
as QuPath's cell expansion and CellProfiler's *IdentifySecondaryObjects* (distance method) grow it.
:func:`grow_cells` grows every nucleus by up to a distance, each background pixel going to its
nearest nucleus (:func:`skimage.segmentation.expand_labels`), so that neighbours share the space
between them along the line halfway across and never overlap. A cell keeps its nucleus's label; its
cytoplasm is the cell less the nucleus.

:func:`cell_measurements` gives what ``dsb segment --cell-expansion`` and ``dsb measure
--cell-expansion`` add to each nucleus's row (:data:`CELL_COLUMNS`, and each channel's means in the
cell and the cytoplasm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsb.core.labels import label_sums

__all__ = ["CELL_COLUMNS", "CELL_MICROMETRE_COLUMNS", "MAX_EXPANSION", "check_expansion", "grow_cells", "CellSums",
           "cell_measurements", "cell_columns"]

#: The columns a nucleus's row gets for its cell (:func:`cell_measurements`).
CELL_COLUMNS = ("cell_area", "cytoplasm_area", "cell_touches_edge", "cell_mean_intensity", "cytoplasm_mean_intensity")
#: Added where the pixel size is known.
CELL_MICROMETRE_COLUMNS = ("cell_area_um2", "cytoplasm_area_um2")
#: The largest expansion taken, in pixels: a cell of 2,000 pixels' radius is a whole field, not a cell.
MAX_EXPANSION = 1000.0


def check_expansion(value) -> float:
    """A cell expansion in pixels, as a float, or ValueError saying what is wrong: from 0 (the nuclei
    themselves) to :data:`MAX_EXPANSION`.

    >>> check_expansion("8"), check_expansion(0)
    (8.0, 0.0)
    >>> check_expansion(-1)
    Traceback (most recent call last):
    ...
    ValueError: the cell expansion must be a number of pixels from 0 to 1000, got -1
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the cell expansion must be a number of pixels, got {value!r}") from None
    if not (math.isfinite(number) and 0 <= number <= MAX_EXPANSION):
        raise ValueError(f"the cell expansion must be a number of pixels from 0 to {MAX_EXPANSION:g}, got {value!r}")
    return number


def grow_cells(labels: np.ndarray, distance: float) -> np.ndarray:
    """Each nucleus of ``labels`` grown by up to ``distance`` pixels into the background: its cell.

    Parameters
    ----------
    labels : (H, W) ndarray of int, or (F..., H, W)
        0 background, one value per nucleus; a stack's frames each grown on their own.
    distance : float
        How far a cell reaches beyond its nucleus, in pixels (Euclidean); 0 gives the nuclei.

    Returns
    -------
    ndarray of the same shape and type
        Each background pixel within ``distance`` of a nucleus takes the label of the nearest one
        (where two are as near, one of them), so that cells hold their nuclei whole and never overlap.

    Examples
    --------
    >>> grow_cells(np.array([[0, 0, 1, 0, 0, 0, 2]]), 2).tolist()
    [[1, 1, 1, 1, 1, 2, 2]]
    """
    from skimage.segmentation import expand_labels

    labels = np.asarray(labels)
    distance = check_expansion(distance)
    if labels.ndim < 2:
        raise ValueError(f"`labels` must be (H, W) or a stack of them, got shape {labels.shape}")
    if distance == 0 or not labels.any():
        return labels.copy()
    if labels.ndim == 2:
        return expand_labels(labels, distance).astype(labels.dtype, copy=False)
    cells = np.empty_like(labels)
    for index in np.ndindex(*labels.shape[:-2]):
        cells[index] = expand_labels(labels[index], distance)
    return cells


def cell_columns(channel_columns) -> list[str]:
    """The columns of each channel's mean in the cell and in the cytoplasm, after the nucleus's own
    (``mean_intensity_DAPI``...).

    >>> cell_columns(["mean_intensity_GFP"])
    ['cell_mean_intensity_GFP', 'cytoplasm_mean_intensity_GFP']
    """
    return [f"{part}_{name}" for name in channel_columns for part in ("cell", "cytoplasm")]


def cell_measurements(nuclei: np.ndarray, cells: np.ndarray, intensity: np.ndarray, found: np.ndarray, *,
                      channels: np.ndarray | None = None, channel_columns=()) -> dict[str, np.ndarray]:
    """What each nucleus's cell holds: :data:`CELL_COLUMNS`, and with ``channels`` each channel's means.

    Parameters
    ----------
    nuclei, cells : (H, W) ndarray of int
        The nuclei and their cells (:func:`grow_cells`), labelled alike 1..N (compact: sized lookups).
    intensity : (H, W) ndarray
        The image the nuclei's ``mean_intensity`` is of.
    found : (K,) ndarray of int
        The labels to report, in the order of the rows they go to.
    channels : (H, W, C) ndarray, optional
        Every channel of the image, with ``channel_columns`` (C names, ``mean_intensity_NAME``).

    Returns
    -------
    dict of str to (K,) ndarray
        ``cell_area`` and ``cytoplasm_area`` (pixels: the cell less its nucleus), ``cell_touches_edge``
        (the image's edge cuts the cell), ``cell_mean_intensity`` and ``cytoplasm_mean_intensity`` (NaN
        for a cytoplasm of no pixel, where neighbours leave a nucleus no room), and per channel
        ``cell_mean_intensity_NAME`` and ``cytoplasm_mean_intensity_NAME``: a cytoplasmic marker's
        nuclear/cytoplasmic ratio is ``mean_intensity_NAME / cytoplasm_mean_intensity_NAME``.

    Examples
    --------
    >>> nuclei = np.array([[0, 1, 1, 0, 0]])
    >>> found = cell_measurements(nuclei, grow_cells(nuclei, 1), np.array([[4.0, 1, 1, 2, 9]]), np.array([1]))
    >>> [found[c].tolist() for c in ("cell_area", "cytoplasm_area", "cytoplasm_mean_intensity")]
    [[4], [2], [3.0]]
    """
    nuclei, cells = np.asarray(nuclei), np.asarray(cells)
    if cells.shape != nuclei.shape:
        raise ValueError(f"`cells` (shape {cells.shape}) must have the nuclei's shape {nuclei.shape}")
    found = np.asarray(found, np.intp)
    top = max(int(cells.max(initial=0)), int(nuclei.max(initial=0)), int(found.max(initial=0)))
    return CellSums.of(nuclei, cells, intensity, top, channels, edges=(True,) * 4).columns(found, channel_columns)


@dataclass
class CellSums:
    """What the cells of labels 0..N hold, as sums that add up over the parts of an image (its blocks):
    pixels of each cell and cytoplasm, the sum and count of the finite values of the image (and of each
    channel, ``(N + 1, C)``) over them, and whether the image's edge cuts the cell."""

    cell_area: np.ndarray
    cytoplasm_area: np.ndarray
    sums: np.ndarray  # (N + 1, 2, 1 + C): over the cell, then the cytoplasm; the image, then each channel
    counts: np.ndarray
    edge: np.ndarray

    @classmethod
    def of(cls, nuclei: np.ndarray, cells: np.ndarray, intensity: np.ndarray, top: int,
           channels: np.ndarray | None = None, edges: tuple[bool, bool, bool, bool] = (False,) * 4) -> CellSums:
        """The sums of one image or part of one, whose top, bottom, left and right sides ``edges`` says lie on
        the image's edge (all four for a whole image): the cells there touch it."""
        cytoplasm = np.where(nuclei == 0, cells, 0)
        edge = np.zeros(top + 1, bool)
        sides = (cells[0], cells[-1], cells[:, 0], cells[:, -1])
        edge[np.concatenate([side for side, on in zip(sides, edges) if on] or [np.zeros(0, np.intp)])] = True
        sums = np.zeros((top + 1, 2, 1 + (0 if channels is None else np.shape(channels)[-1])))
        counts = np.zeros_like(sums)
        for part, labels in enumerate((cells, cytoplasm)):
            sums[:, part, 0], counts[:, part, 0] = label_sums(labels, intensity, top)
            if channels is not None:
                sums[:, part, 1:], counts[:, part, 1:] = label_sums(labels, channels, top)
        return cls(np.bincount(cells.ravel(), minlength=top + 1), np.bincount(cytoplasm.ravel(), minlength=top + 1),
                   sums, counts, edge)

    @classmethod
    def zeros(cls, top: int, planes: int) -> CellSums:
        """Nothing yet, for labels 0..``top`` and ``planes`` images (the image, then each channel)."""
        return cls(np.zeros(top + 1, np.int64), np.zeros(top + 1, np.int64), np.zeros((top + 1, 2, planes)),
                   np.zeros((top + 1, 2, planes)), np.zeros(top + 1, bool))

    def add(self, other: CellSums, first: int = 1) -> None:
        """Add ``other``, whose labels 1..K are this one's ``first``..``first + K - 1`` (a part of the image
        numbered from its smallest label, so that a part costs its own labels, not the image's)."""
        at = slice(first, first + len(other.cell_area) - 1)
        self.cell_area[at] += other.cell_area[1:]
        self.cytoplasm_area[at] += other.cytoplasm_area[1:]
        self.sums[at] += other.sums[1:]
        self.counts[at] += other.counts[1:]
        self.edge[at] |= other.edge[1:]

    def columns(self, found: np.ndarray, channel_columns=()) -> dict[str, np.ndarray]:
        """:func:`cell_measurements`' columns for the labels ``found``."""
        found = np.asarray(found, np.intp)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(self.counts > 0, self.sums / self.counts, np.nan)[found]
        edge = self.edge.copy()
        edge[0] = False
        out = dict(zip(CELL_COLUMNS, (self.cell_area[found], self.cytoplasm_area[found], edge[found],
                                      means[:, 0, 0], means[:, 1, 0])))
        names = cell_columns(channel_columns)
        for k in range(len(channel_columns)):
            out[names[2 * k]], out[names[2 * k + 1]] = means[:, 0, k + 1], means[:, 1, k + 1]
        return out
