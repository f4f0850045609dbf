"""Drawing nuclei onto images for people to look at: pure functions from arrays to RGB.

:func:`to_rgb8` makes any microscope image displayable; :func:`draw_outlines`
paints label outlines; :func:`outline_overlay` is what ``dsb segment
--overlay`` writes; :func:`compare_overlay` shows the truth beside a prediction
in ``dsb report``. Writing the pictures to files is :mod:`dsb.workflows.pipeline`'s.
"""

from __future__ import annotations

import numpy as np

from dsb.core.validate import check_2d, check_image, check_same_grid
from dsb.inference.preprocess import as_float

__all__ = ["OUTLINE_COLOURS", "CELL_COLOURS", "OVERLAY_COLOURS", "to_rgb8", "draw_outlines", "outline_overlay",
           "compare_overlay"]

# Outlines in yellow on a dark (fluorescence) image, in blue on a light (brightfield) one.
OUTLINE_COLOURS = {"dark": (255, 255, 0), "light": (0, 70, 255)}
# Cells around the nuclei, on a dark image and on a light one.
CELL_COLOURS = {"dark": (255, 0, 255), "light": (230, 120, 0)}
# Outlines tell true from predicted; the two kinds of error are also filled, so
# that they stand out where outlines crowd, and not by hue alone.
OVERLAY_COLOURS = {
    "true nucleus (outline)": (0, 230, 0),
    "predicted, matched (outline)": (40, 150, 255),
    "false positive (red fill)": (255, 40, 40),
    "missed nucleus (yellow fill)": (255, 215, 0),
}
_TRUE, _MATCHED, _FALSE_POSITIVE, _MISSED = OVERLAY_COLOURS.values()


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """An image of any depth and channel count as RGB uint8 for display.

    Grey is repeated into three channels, alpha is dropped, and the intensities
    are stretched between the 0.5 and 99.8 percentiles so that dim 8-bit and
    16-bit fluorescence images are visible (negative values of a signed or
    float image too); a flat image shows its level as
    :func:`dsb.inference.preprocess.as_float` reads it.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        C is 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    image = check_image("image", image)
    if image.ndim == 3:
        # Grey plus alpha keeps its grey; RGBA drops its alpha.
        image = image[..., :3] if image.shape[2] >= 3 else image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    values = image.astype(np.float32)
    if values.size == 0:
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(values, (0.5, 99.8))
    if high > low:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    else:
        # A flat image has nothing to stretch: its level as the network reads it (as_float's one rule).
        scaled = as_float(image)
    return np.round(scaled * 255).astype(np.uint8)


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, colour, *, mode: str = "inner", width: int = 1) -> np.ndarray:
    """Paint the outline of every labelled object onto a copy of ``rgb``.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
    colour : tuple of 3 ints
    mode : str
        ``skimage.segmentation.find_boundaries`` mode: "inner" paints the
        objects' own edge pixels, "outer" the background pixels just outside.
    width : int
        Line width in pixels: wider lines survive the downscaling of a large
        image on screen.

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    from skimage.segmentation import find_boundaries

    out = np.array(rgb, dtype=np.uint8, copy=True)
    labels = check_2d("labels", labels)
    check_same_grid("labels", labels, "rgb", out)
    if labels.any():
        edges = find_boundaries(labels, mode=mode)
        if width > 1:
            from scipy.ndimage import binary_dilation

            edges = binary_dilation(edges, iterations=width - 1)
        out[edges] = colour
    return out


def outline_overlay(image: np.ndarray, labels: np.ndarray, *, colour=None,
                    cells: np.ndarray | None = None) -> np.ndarray:
    """The image for display (:func:`to_rgb8`) with every nucleus outlined, and its cell where given.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    labels : (H, W) ndarray of int
    colour : tuple of 3 ints, optional
        By default yellow on a dark image, blue on a light one
        (:data:`OUTLINE_COLOURS`).
    cells : (H, W) ndarray of int, optional
        The nuclei's cells (:func:`dsb.workflows.cells.grow_cells`), outlined first in
        :data:`CELL_COLOURS` (magenta on a dark image, orange on a light one), the nuclei over them.

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    rgb = to_rgb8(image)
    light = "dark" if rgb.mean() < 128 else "light"
    if colour is None:
        colour = OUTLINE_COLOURS[light]
    if cells is not None:
        rgb = draw_outlines(rgb, cells, CELL_COLOURS[light])
    return draw_outlines(rgb, labels, colour)


def compare_overlay(
    image: np.ndarray | None, true_labels: np.ndarray | None, pred_labels: np.ndarray, *, width: int = 1
) -> np.ndarray:
    """The image with true and predicted outlines, false positives and missed nuclei.

    Colours are those of :data:`OVERLAY_COLOURS`: true nuclei outlined just
    outside their edge, predicted nuclei outlined on their edge (matched ones in
    blue, false positives in red over a red fill), missed true nuclei filled in
    yellow. A prediction is matched at IoU > 0.5.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray, or None
        The raw image (any depth; see :func:`to_rgb8`); None draws
        on black.
    true_labels : (H, W) ndarray of int, or None
        None draws the predictions alone, all in the matched colour.
    pred_labels : (H, W) ndarray of int
    width : int
        Outline width in pixels.

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    pred_labels = check_2d("pred_labels", pred_labels)
    shape = pred_labels.shape
    if image is None:
        rgb = np.zeros(shape + (3,), np.uint8)
    else:
        rgb = to_rgb8(image)
        check_same_grid("image", image, "pred_labels", pred_labels)
    if true_labels is None:
        return draw_outlines(rgb, pred_labels, _MATCHED, width=width)
    true_labels = np.asarray(true_labels)
    from dsb.kaggle.metric import match_nuclei

    matched, false_positives, missed = match_nuclei(true_labels, pred_labels)
    fp_mask = np.isin(pred_labels, false_positives)
    missed_mask = np.isin(true_labels, missed)
    out = rgb.astype(np.float32)
    for mask, colour in ((missed_mask, _MISSED), (fp_mask, _FALSE_POSITIVE)):
        out[mask] = 0.5 * out[mask] + 0.5 * np.asarray(colour, np.float32)
    out = np.round(out).astype(np.uint8)
    out = draw_outlines(out, true_labels, _TRUE, mode="outer", width=width)
    out = draw_outlines(out, np.where(fp_mask, 0, pred_labels), _MATCHED, width=width)
    return draw_outlines(out, np.where(fp_mask, pred_labels, 0), _FALSE_POSITIVE, width=width)
