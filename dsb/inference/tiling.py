"""Tiled inference: any image size through a fully convolutional network in bounded memory.

The image is cut into overlapping tiles whose sides are multiples of the
network's down-sampling factor; each axis gets as many tiles as
``tile_size`` and ``overlap`` require, spread evenly, and the tile length is
shrunk to the smallest multiple that still covers the axis with the requested
overlap (a 520-pixel axis takes three 224-pixel tiles, not three of 256). An
axis shorter than one tile is padded by reflection up to the next multiple.

Predictions are blended with separable raised-cosine weights that taper only
where a neighbouring tile takes over (never at the image's own edges) and are
normalised per axis, so the weights of all tiles sum to one at every pixel: an
identity network gives back the image. Tiles are cut and predicted
``batch_size`` at a time and added into one ``(H, W, C)`` float32 buffer, so
memory grows with the image, not with the number of tiles.

This module imports no deep-learning library: ``predict_batch`` is any
callable from a batch of tiles to a batch of predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dsb.core.validate import check_gray

__all__ = ["AxisPlan", "plan_axis", "tile_starts", "blend_window", "axis_weights", "predict_tiled", "context_needed"]


@dataclass(frozen=True)
class AxisPlan:
    """How one image axis is cut into tiles.

    Attributes
    ----------
    length : int
        The axis length of the image.
    tile : int
        Tile length along this axis (a multiple of the network's factor).
    starts : tuple of int
        Start of each tile in padded coordinates, ascending.
    pad_before, pad_after : int
        Reflection padding added to the image on each side (non-zero only when
        the axis is shorter than one tile).
    """

    length: int
    tile: int
    starts: tuple[int, ...]
    pad_before: int
    pad_after: int

    @property
    def padded(self) -> int:
        return self.length + self.pad_before + self.pad_after


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_starts(length: int, tile: int, count: int) -> np.ndarray:
    """Starts of ``count`` tiles of length ``tile`` spread evenly over ``length`` pixels.

    Returns
    -------
    (count,) ndarray of int64
        The first tile starts at 0 and the last ends at ``length``.
    """
    if count == 1:
        return np.zeros(1, np.int64)
    return np.round(np.linspace(0, length - tile, count)).astype(np.int64)


def plan_axis(length: int, tile_size: int, overlap: int, multiple: int = 16) -> AxisPlan:
    """Choose the tile length, tile starts and padding for one axis.

    The axis is padded by reflection to a multiple of ``multiple`` (split
    between both ends), and every tile starts at a multiple of ``multiple``
    in the padded axis: the network's pooling grid is then the same in every
    tile as in the whole image, so where a tile gives a pixel enough context
    it predicts what the whole image would (a U-Net is not shift-invariant:
    off the grid, predictions differ everywhere, not only near the edges).

    Parameters
    ----------
    length : int
        Axis length in pixels, at least 1.
    tile_size : int
        Largest tile length; rounded down to a multiple of ``multiple``.
    overlap : int
        Least overlap in pixels between neighbouring tiles.
    multiple : int
        Tile lengths and starts are multiples of this (the network's down-sampling factor).
    """
    padded = _round_up(length, multiple)
    pad_before = (padded - length) // 2
    pad_after = padded - length - pad_before
    tile_max = max(multiple, tile_size // multiple * multiple)
    if padded <= tile_max:
        return AxisPlan(length, padded, (0,), pad_before, pad_after)
    overlap = min(overlap, tile_max - multiple)
    # In units of `multiple`: the axis, the largest tile, the least overlap.
    units, most, least = padded // multiple, tile_max // multiple, -(-overlap // multiple)
    count = max(2, math.ceil((units - least) / (most - least)))
    while True:
        # The shortest tile whose evenly spread, grid-aligned starts keep `least` between neighbours.
        for tile in range(max(1, math.ceil((units + (count - 1) * least) / count)), most + 1):
            if -(-(units - tile) // (count - 1)) <= tile - least:
                starts = tile_starts(units, tile, count) * multiple
                return AxisPlan(length, tile * multiple, tuple(int(v) for v in starts), pad_before, pad_after)
        count += 1


def blend_window(tile: int, ramp: int, *, taper_start: bool = True, taper_end: bool = True,
                 margin: int = 0) -> np.ndarray:
    """A 1-D raised-cosine window: ``margin`` pixels of almost nothing, a rise over ``ramp``
    pixels, flat at 1, and the same backwards at the end.

    The window is strictly positive (sampled at pixel centres, and 1e-6 in the
    margins), so a pixel that only one tile covers still gets a weight; the
    margin keeps the pixels a tile sees with too little context from counting
    where a neighbour sees them well.

    Returns
    -------
    (tile,) ndarray of float64
    """
    window = np.ones(tile)
    margin = min(margin, tile)
    ramp = min(ramp, tile - margin)
    rise = np.full(margin + ramp, 1e-6)
    if ramp > 0:
        rise[margin:] = np.maximum(0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp), 1e-6)
    n = rise.size
    if n:
        if taper_start:
            window[:n] = np.minimum(window[:n], rise)
        if taper_end:
            window[tile - n :] = np.minimum(window[tile - n :], rise[::-1])
    return window


def axis_weights(plan: AxisPlan, overlap: int, margin: int = 0) -> np.ndarray:
    """Blending weights of each tile along one axis, normalised to sum to 1 at every pixel.

    Neighbouring tiles hand over in the middle of their overlap: each gives
    ``margin`` pixels at its inner edges (almost) no weight and ramps up over
    the rest of the overlap.

    Returns
    -------
    (len(plan.starts), plan.tile) ndarray of float32
    """
    count = len(plan.starts)
    margin = max(0, min(margin, (overlap - 1) // 2))
    ramp = overlap - 2 * margin
    windows = np.stack(
        [blend_window(plan.tile, ramp, taper_start=i > 0, taper_end=i < count - 1, margin=margin)
         for i in range(count)]
    )
    total = np.zeros(plan.padded)
    for start, window in zip(plan.starts, windows):
        total[start : start + plan.tile] += window
    for i, start in enumerate(plan.starts):
        windows[i] /= total[start : start + plan.tile]
    return windows.astype(np.float32)


def _check(image, tile_size: int, overlap: int, batch_size: int, multiple: int) -> np.ndarray:
    image = check_gray("image", image)
    if image.size == 0:
        raise ValueError(f"`image` (shape {image.shape}) is empty")
    if multiple < 1 or tile_size < multiple:
        raise ValueError(f"`tile_size` ({tile_size}) must be at least `multiple` ({multiple})")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"`overlap` ({overlap}) must be in [0, tile_size) = [0, {tile_size})")
    if batch_size < 1:
        raise ValueError(f"`batch_size` ({batch_size}) must be at least 1")
    return image.astype(np.float32, copy=False)


def predict_tiled(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    multiple: int = 16,
    context: int = 0,
) -> np.ndarray:
    """Predict an image of any size tile by tile and blend the tiles.

    Parameters
    ----------
    predict_batch : callable
        Maps a ``(B, th, tw, 1)`` float32 batch of tiles to ``(B, th, tw, C)``
        predictions (any array convertible with ``np.asarray``). ``th`` and
        ``tw`` are multiples of ``multiple``, at most ``tile_size``; they are the
        same within one image and may differ between images.
    image : (H, W) or (H, W, 1) array_like
        The network's input, e.g. float32 in [0, 1].
    tile_size : int
        Largest tile side.
    overlap : int
        Least overlap between neighbouring tiles, in pixels; blending ramps are
        this long.
    batch_size : int
        Tiles per call of ``predict_batch``.
    multiple : int
        Tile sides are multiples of this (``2**levels`` of a U-Net).
    context : int
        Pixels at a tile's inner edges that get (almost) no weight: the context
        the network needs (:func:`context_needed`). With ``overlap`` at least
        twice this, the blend matches the whole image's prediction.

    Returns
    -------
    (H, W, C) ndarray of float32
        The blended predictions, cropped back to the image.

    Examples
    --------
    >>> image = np.random.default_rng(0).random((300, 37), dtype=np.float32)
    >>> out = predict_tiled(lambda b: b, image, tile_size=128, overlap=32)
    >>> out.shape, bool(np.allclose(out[..., 0], image, atol=1e-6))
    ((300, 37, 1), True)
    """
    image = _check(image, tile_size, overlap, batch_size, multiple)
    rows = plan_axis(image.shape[0], tile_size, overlap, multiple)
    cols = plan_axis(image.shape[1], tile_size, overlap, multiple)
    if rows.pad_before or rows.pad_after or cols.pad_before or cols.pad_after:
        image = np.pad(image, ((rows.pad_before, rows.pad_after), (cols.pad_before, cols.pad_after)), mode="reflect")
    row_weights, col_weights = axis_weights(rows, overlap, context), axis_weights(cols, overlap, context)
    th, tw = rows.tile, cols.tile
    grid = [(i, j) for i in range(len(rows.starts)) for j in range(len(cols.starts))]

    out = None
    batch = np.empty((min(batch_size, len(grid)), th, tw, 1), np.float32)
    for first in range(0, len(grid), batch_size):
        chunk = grid[first : first + batch_size]
        for k, (i, j) in enumerate(chunk):
            y, x = rows.starts[i], cols.starts[j]
            batch[k, :, :, 0] = image[y : y + th, x : x + tw]
        pred = np.asarray(predict_batch(batch[: len(chunk)]), dtype=np.float32)
        if pred.ndim != 4 or pred.shape[:3] != (len(chunk), th, tw):
            raise ValueError(
                f"`predict_batch` returned shape {pred.shape} for a batch of shape {(len(chunk), th, tw, 1)};"
                f" expected ({len(chunk)}, {th}, {tw}, C)"
            )
        if len(grid) == 1:  # one tile: its weights are all 1
            out = pred[0]
            break
        if out is None:
            out = np.zeros((rows.padded, cols.padded, pred.shape[3]), np.float32)
        for k, (i, j) in enumerate(chunk):
            y, x = rows.starts[i], cols.starts[j]
            weight = row_weights[i][:, None] * col_weights[j][None, :]
            out[y : y + th, x : x + tw] += pred[k] * weight[:, :, None]
    # A view, not a copy: the padding is at most a few pixels a side, and every caller reads
    # the probabilities channel by channel anyway.
    return out[rows.pad_before : rows.pad_before + rows.length, cols.pad_before : cols.pad_before + cols.length]


def context_needed(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tolerance: float = 0.01,
    multiple: int = 16,
) -> tuple[int, np.ndarray]:
    """The context a pixel needs, measured: how far from a tile's edge predictions match the whole image's.

    The network predicts ``image`` whole, then a crop of it whose edges fall
    at an arbitrary offset (as tile edges do); ``errors[t]`` is the largest
    difference between the two at pixels ``t`` from the crop's nearest edge.
    A fully convolutional network's receptive field bounds how far the edge
    reaches in theory; this is how far it reaches in practice, for this
    network and this kind of image.

    Parameters
    ----------
    predict_batch : callable
        As for :func:`predict_tiled`.
    image : (H, W) array_like
        A network input, ideally a real image at the network's scale; both
        sides at least ``4 * multiple`` and best several hundred pixels.
    tolerance : float
        Largest difference in probability that counts as matching.
    multiple : int
        The network's down-sampling factor.

    Returns
    -------
    context : int
        The smallest distance from the crop's edge beyond which every pixel
        matches within ``tolerance`` (``errors.size`` when none does).
    errors : (D,) ndarray of float32
        Largest difference at each distance from the crop's edge.
    """
    image = _check(image, multiple, 0, 1, multiple)
    height, width = (n // multiple * multiple for n in image.shape[:2])
    if min(height, width) < 4 * multiple:
        raise ValueError(f"`image` (shape {image.shape}) needs sides of at least {4 * multiple}")
    image = image[:height, :width]
    whole = np.asarray(predict_batch(image[None, :, :, None]), np.float32)[0]
    # Offsets that are not multiples of the down-sampling factor: the pooling grid shifts, as in a tile.
    top, left = 2 * multiple, 2 * multiple
    ch, cw = (height - 2 * top) // multiple * multiple, (width - 2 * left) // multiple * multiple
    crop = np.asarray(predict_batch(image[None, top : top + ch, left : left + cw, None]), np.float32)[0]
    diff = np.abs(crop - whole[top : top + ch, left : left + cw]).max(axis=-1)
    rows, cols = np.arange(ch), np.arange(cw)
    distance = np.minimum.outer(np.minimum(rows, rows[::-1]), np.minimum(cols, cols[::-1]))
    errors = np.zeros(int(distance.max()) + 1, np.float32)
    np.maximum.at(errors, distance.ravel(), diff.ravel())
    # From each distance on, the worst that remains.
    beyond = np.maximum.accumulate(errors[::-1])[::-1]
    matching = np.flatnonzero(beyond <= tolerance)
    return (int(matching[0]) if matching.size else int(errors.size)), errors
