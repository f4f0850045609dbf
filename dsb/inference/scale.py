"""Nucleus scale: the diameter of an image's nuclei, estimated or given, and the scale to predict at.

Images in the wild show nuclei from about 6 to 150 pixels across. The network
is trained with every image resampled so that its median nucleus is
``preprocess.diameter`` pixels across (:func:`zoom_for`), so at prediction an
image is resampled by ``scale = diameter / its nucleus diameter``.
:func:`choose_scale` finds that scale: from ``diameter`` when the caller knows
it, otherwise by running the network on a window of the image and measuring
the nuclei it finds (:func:`area_weighted_diameter`), then cross-checking the
measurement at half the scale, where nuclei far larger than the network's
reveal themselves (see :data:`CROSS_CHECK_RATIO`), and at a quarter where the
network still doubts a reading that half the scale confirmed (nuclei so large
that they are pieces at both). A coarser reading whose nuclei turn out to be
whole cells, each holding a nucleus the first pass found, gives way to the
first (see :data:`CELL_PEAK`). The result says how sure it is.

This module is the one home of the scale estimate; resampling is
:mod:`dsb.inference.resample`, and bringing labels back to the image's grid
:mod:`dsb.inference.labels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dsb.core.config import Config, PostprocessConfig
from dsb.core.labels import touching_edge
from dsb.core.validate import check_labels
from dsb.inference.labels import labels_to_shape
from dsb.inference.probabilities import predict_at_scale, predict_probabilities
from dsb.inference.resample import resample
from dsb.inference.watershed import finish_nuclei, labels_from_probabilities, unfinished

__all__ = [
    "DIAMETER_RANGE",
    "ESTIMATE_WATERSHED",
    "nucleus_diameters",
    "median_diameter",
    "area_weighted_diameter",
    "clip_scale",
    "prediction_scale",
    "zoom_for",
    "network_zoom",
    "check_diameter",
    "Scale",
    "choose_scale",
]


# A nucleus diameter outside this range (pixels) is a typo, not a microscope.
DIAMETER_RANGE = (2.0, 1000.0)

# The watershed the estimate measures nuclei with, the same for every run: the settings its rules
# below were set on (the shipped model's post-processing, contact and core ignored, no split). It is not
# the run's own post-processing: ``dsb tune`` scores settings on probabilities at the scales the
# estimate chose, so settings that also moved the estimate would be judged at scales that
# prediction then does not use.
ESTIMATE_WATERSHED = PostprocessConfig(
    marker_threshold=0.5, border_threshold=0.4, contact_threshold=1.0, core_threshold=0.0, mask_threshold=0.5,
    min_marker_size=16, min_size=12, flood="probability", fill_holes=True, keep_unmarked=True, split_ratio=0.0,
    min_confidence=0.0,
)


def nucleus_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter ``sqrt(4 * area / pi)`` of each nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, nuclei 1..N (gaps in the numbering are skipped).

    Returns
    -------
    (K,) ndarray of float64
        One diameter per label present, in label order.

    Examples
    --------
    >>> lab = np.zeros((10, 10), np.int32); lab[:2, :2] = 1; lab[5:, 5:] = 3
    >>> nucleus_diameters(lab).round(2)
    array([2.26, 5.64])
    """
    labels = check_labels("labels", labels, ndim=None, bool_ok=False)
    areas = np.bincount(labels.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / np.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the nuclei of ``labels`` in pixels; NaN with no nucleus.

    >>> lab = np.zeros((10, 10), np.int32); lab[:2, :2] = 1
    >>> round(median_diameter(lab), 2)
    2.26
    """
    d = nucleus_diameters(labels)
    return float(np.median(d)) if d.size else math.nan


def area_weighted_diameter(labels: np.ndarray) -> float:
    """The diameter of the nucleus that the median pixel of nucleus area lies in; NaN with no nucleus.

    The median with each nucleus weighted by its area. A network that sees
    nuclei at the wrong scale cuts large ones into fragments, and the plain
    median counts each fragment as a nucleus; weighted by area, the whole
    nuclei that remain outweigh them. Measured as the estimate of
    :func:`dsb.inference.scale.choose_scale` on the 132 group-held-out validation
    images of the default run, against the plain median: the score rose from
    0.529 to 0.564 (stained tissue 0.201 to 0.281), although fewer estimates
    fall within 25 % of the true median (67 % against 74 %): it errs on the
    large side, where the network fails more gently than on the small.

    >>> lab = np.zeros((20, 20), np.int32); lab[0, 0] = 1; lab[0, 2] = 2; lab[5:15, 5:15] = 3
    >>> round(median_diameter(lab), 2), round(area_weighted_diameter(lab), 2)
    (1.13, 11.28)
    """
    d = nucleus_diameters(labels)
    return _weighted_median(d, d**2) if d.size else math.nan


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value the middle of the weight lies on, ``values`` sorted (the lower one at a tie)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def clip_scale(scale: float, low: float, high: float) -> float:
    """``scale`` within ``[low, high]``."""
    return float(min(max(scale, low), high))


def prediction_scale(scale: float, config) -> float:
    """The scale an image is predicted at when ``scale`` brings its nuclei to the network's
    diameter: ``scale`` within ``predict.min_scale`` .. ``max_scale``, times
    ``predict.scale_factor``, within them again."""
    pc = config.predict
    return clip_scale(clip_scale(scale, pc.min_scale, pc.max_scale) * pc.scale_factor, pc.min_scale, pc.max_scale)


def zoom_for(diameter: float, canonical: float) -> float:
    """The factor that takes nuclei of ``diameter`` pixels to ``canonical`` (1 when either is unknown or 0).

    >>> zoom_for(40.0, 20.0)
    0.5
    >>> zoom_for(float("nan"), 20.0)
    1.0
    """
    if not canonical or not diameter or not math.isfinite(diameter) or diameter <= 0:
        return 1.0
    return float(canonical) / float(diameter)


def network_zoom(diameter: float, config) -> float:
    """The zoom that takes a training image whose median nucleus is ``diameter`` pixels across to the
    network's ``preprocess.diameter``, within prediction's ``predict.min_scale`` to ``max_scale`` (beyond
    them an image is used as near as they allow); 1 when either diameter is unknown or 0."""
    return clip_scale(zoom_for(diameter, config.preprocess.diameter), config.predict.min_scale,
                      config.predict.max_scale)


def check_diameter(value) -> float:
    """A nucleus diameter in pixels given by a user, as a float, or ValueError saying what is wrong.

    >>> check_diameter("12.5")
    12.5
    >>> check_diameter(0)
    Traceback (most recent call last):
    ...
    ValueError: the nucleus diameter must be a number of pixels in [2, 1000], got 0
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the nucleus diameter must be a number of pixels, got {value!r}") from None
    low, high = DIAMETER_RANGE
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"the nucleus diameter must be a number of pixels in [{low:g}, {high:g}], got {value!r}")
    return number


@dataclass(frozen=True)
class Scale:
    """The scale one image is predicted at.

    Attributes
    ----------
    scale : float
        Working size over the image's own size (1: not resampled).
    diameter : float
        The image's median nucleus diameter in its own pixels: given, or
        estimated; NaN when unknown (no scale normalisation, or no nucleus found).
    estimated : bool
        Whether ``diameter`` was estimated.
    passes : int
        Network passes the estimate took.
    agreement : float
        How well the estimate's cross-check agreed: the diameter measured at half the
        chosen scale over the diameter chosen (1 when they agree; NaN when no cross-check
        could run). See :func:`choose_scale`.
    sure : bool
        False when the estimate could not be checked or had to move: a caller warns about
        such an image (``dsb segment`` names it).
    """

    scale: float
    diameter: float
    estimated: bool
    passes: int = 0
    agreement: float = math.nan
    sure: bool = True


def _prefix_sums(values: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
    """Sums of ``values`` along ``axis`` over ``[0, k)`` for each ``k`` in ``at`` (ascending, in
    ``[0, n]``), in float64: one pass of block sums between the wanted indices, not a full cumsum."""
    n = values.shape[axis]
    edges = np.union1d([0], at[at < n])
    blocks = np.add.reduceat(values, edges, axis=axis, dtype=np.float64)
    shape = list(blocks.shape)
    shape[axis] = 1
    prefix = np.concatenate([np.zeros(shape), np.cumsum(blocks, axis=axis)], axis=axis)
    return np.take(prefix, np.searchsorted(np.append(edges, n), at), axis=axis)


def _window(gray: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` x ``side`` part of ``gray`` with the most signal (nuclei are bright in the
    network's input), or all of an axis shorter than ``side``; the whole image when the
    window would hold half of it or more (the pass can then serve as the prediction)."""
    height, width = gray.shape[:2]
    sh, sw = min(side, height), min(side, width)
    if 2 * sh * sw >= height * width:
        return gray
    plane = gray[:, :, 0] if gray.ndim == 3 else gray
    # Window sums on a grid of a quarter window, from the summed-area table at the grid's corners only.
    rows = np.unique(np.linspace(0, height - sh, max(1, 4 * height // sh)).astype(int))
    cols = np.unique(np.linspace(0, width - sw, max(1, 4 * width // sw)).astype(int))
    row_at, col_at = np.union1d(rows, rows + sh), np.union1d(cols, cols + sw)
    table = _prefix_sums(_prefix_sums(plane, row_at, 0), col_at, 1)
    top, bottom = np.searchsorted(row_at, rows), np.searchsorted(row_at, rows + sh)
    left, right = np.searchsorted(col_at, cols), np.searchsorted(col_at, cols + sw)
    sums = (table[np.ix_(bottom, right)] - table[np.ix_(top, right)]
            - table[np.ix_(bottom, left)] + table[np.ix_(top, left)])
    i, j = np.unravel_index(np.argmax(sums), sums.shape)
    return gray[rows[i] : rows[i] + sh, cols[j] : cols[j] + sw]


def _look_window(gray: np.ndarray, scale: float, config: Config) -> np.ndarray:
    """The window a look of the estimate at ``scale`` sees (:func:`_window`): ``predict.estimate_size``
    pixels a side at that scale, and one pixel more in the image's, so that it resamples to at least that."""
    return _window(gray, max(1, math.ceil(config.predict.estimate_size / scale) + 1))


def _inner_diameter(labels: np.ndarray, whole: bool) -> float:
    """:func:`dsb.inference.scale.area_weighted_diameter` of the nuclei a window holds whole: those that touch its
    edge are cut and would read small, unless the window is the image or fewer than 3 are inside."""
    if not whole:
        inner = np.where(touching_edge(labels, int(labels.max(initial=0)))[labels], 0, labels)
        if len(np.unique(inner)) > 3:
            labels = inner
    return area_weighted_diameter(labels)


def choose_scale(model, config: Config, gray: np.ndarray, *, diameter: float | None = None) -> Scale:
    """The scale to predict a preprocessed image at.

    With ``config.preprocess.diameter`` set (the canonical diameter ``D``),
    the image is resampled by ``D / diameter`` when ``diameter`` is given.
    Otherwise the diameter is estimated: a pass at ``predict.estimate_scale``
    gives nuclei whose area-weighted median diameter ``d``
    (:func:`dsb.inference.scale.area_weighted_diameter`) suggests the scale ``D / d``; when that
    is more than 20 % away from the current one, the next pass runs there, up
    to ``config.predict.diameter_passes`` passes, and one more when the last
    pass's window was under 6 of its nuclei across; after the last, the image
    is predicted at the scale that pass suggests. The scale stays within
    ``predict.min_scale`` .. ``max_scale``; prediction then runs at
    ``predict.scale_factor`` times it (:func:`prediction_scale`), which the
    returned scale includes.

    Each pass sees a window of at most ``predict.estimate_size`` pixels a side
    at its scale, where the image is brightest, and measures the nuclei it
    holds whole (found by :data:`ESTIMATE_WATERSHED`, whatever the run's own
    post-processing), so that the estimate costs little next to the prediction
    itself; when the window is the whole image and the scale factor 1, its
    last pass is the prediction. The first pass runs at ``predict.estimate_scale``, by default
    the image's own scale (starting at half scale lost the small nuclei of
    held-out brightfield images).

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
    gray : (H, W) ndarray of float32
        The network input (:func:`dsb.inference.preprocess.preprocess_image`).
    diameter : float, optional
        The image's median nucleus diameter in pixels; None estimates it.

    Returns
    -------
    Scale
    """
    return choose_scale_and_pass(model, config, gray, diameter)[0]


# A network sees the texture inside a nucleus much larger than its own diameter as many nuclei of
# about its own size, so one pass cannot tell 100-pixel nuclei from 20-pixel ones. A look at half
# the scale can: real nuclei measure about the same there (in the image's pixels), fragments of
# large ones measure far larger. Crowded small nuclei also read larger there (they merge), but
# unlike large nuclei they keep growing further down, so a move to a coarser reading is made
# only when a look at half that scale again agrees with it. On synthetic fields
# (dsb.io.synthetic) the shipped network's readings at half the scale were within 1.3 times of
# real nuclei, 2.2 times or more above fragments and merges.
CROSS_CHECK_RATIO = 1.4
# A coarser reading replaces the first only where the network doubts far less there (:func:`_doubt`):
# under a quarter of its first doubt, or 0.7 of it when the first pass left it confused (a doubt of
# 1 or more: more unsure pixels than nuclei). On synthetic fields and the held-out images enlarged
# 2 and 3 times, whole large nuclei cut the doubt of their fragments by 3 to 30 times; on the
# held-out brightfield fields of 10 to 17-pixel nuclei, whose carpets of cells read as 100-pixel
# blobs at a quarter of the scale, it fell only to 0.3 to 0.9 of the first, from under 0.8.
# Looser (0.7 throughout) found more of the enlarged nuclei but lost the held-out brightfield
# fields at their own size; one look further instead of several lost the nuclei enlarged 3 times
# (dsb evaluate --zoom; the figures are in the documentation's model card).
CROSS_CHECK_DOUBT = 0.25
CONFUSED_DOUBT, CONFUSED_CROSS_CHECK_DOUBT = 1.0, 0.7
# Such a move is called sure only where the network doubts little at the two looks that agreed:
# whole large nuclei of the held-out fluorescence enlarged 3 times left 0.05 to 0.12 at one of
# them, and carpets of small brightfield cells read as 140-pixel blobs 0.23 or more at both.
# Stained tissue enlarged 3 times left 0.13 to 0.43, the same band as the carpets, so the move
# is made (refusing it above this cost 0.01 of the held-out score at zoom 3 for 0.001 at 1x)
# and the image is flagged.
CROSS_CHECK_MAX_DOUBT = 0.2
# The least doubt whole large nuclei left at the look that saw them (0.05 to 0.12 above; 0.06 for
# the held-out fluorescence enlarged 3 times whose nuclei are fragments even at half the scale).
WHOLE_DOUBT = 0.05
# A coarser reading that two looks agree on where the network doubts at most this at both, and
# under half its first doubt, replaces the first even when the doubt fell by less than
# CROSS_CHECK_DOUBT: whole large nuclei (0.05 to 0.12 above), never the brightfield carpets (0.23
# or more at both looks). A second network of the shipped recipe read touching synthetic nuclei
# of 72 pixels as their 11-pixel texture, its doubt falling from 0.34 to 0.088 at half the scale
# (0.26 of it, where CROSS_CHECK_DOUBT asks 0.25): it found none of them.
CLEAR_DOUBT, CLEAR_RATIO = 0.12, 0.5
# How far the cross-check looks: scales down to this fraction of predict.min_scale.
CROSS_CHECK_REACH = 0.5
# A reading over this many times the largest nucleus prediction can bring to the network's diameter
# (preprocess.diameter / predict.min_scale: 160 pixels with the shipped settings) is never called
# sure: prediction runs at min_scale whatever the reading, so nothing there can confirm it. On the
# held-out images at 1x and enlarged 3 times (nuclei up to 180 pixels), every such reading of two
# networks of the shipped recipe was of whole fields or of merged nuclei (210 to 362 pixels for
# nuclei of 37 to 118), and one of a 150-pixel nucleus was off by twice.
READING_CEILING = 1.25
# Whole cells can read as large nuclei too: in brightfield smears, a cell of 100 to 150 pixels (its
# cytoplasm faintly bright in the network's input) around a nucleus of 10 to 16, which a coarse look
# reads as one blob the network doubts as little as whole large nuclei. What tells them apart is
# what the first pass found inside (:func:`_nesting`): in each cell a nucleus, far brighter than the
# rest of it, among pieces of cytoplasm; in a large nucleus, pieces of texture about as bright as the
# rest. A move to a coarser reading is undone (and the image flagged) where the coarse nuclei hold at
# least CELL_PIECES pieces, the brightest at least CELL_PEAK times the rest. On the held-out images at
# 1x, 2x and 3x the shipped network moved 110 times: in the three brightfield smears among them the
# coarse nuclei held 5 to 10 of the first pass's pieces, the brightest 2.06 to 3.0 times the rest;
# in the 107 moves to large nuclei, at most 1.48 times where they held 4 or more (1.78 with fewer).
# The check looks at most at the image's own scale, so that it costs one pass over the coarse
# look's window at most, and only where the estimate moved.
CELL_PEAK, CELL_PIECES = 1.75, 4.0


def _doubt(prob: np.ndarray) -> float:
    """How unsure the network is of its nuclei: pixels whose body probability is between 0.2 and
    0.8, over pixels above 0.5 (inf with none). Low at the scale the network knows; high where it
    sees only the texture of larger nuclei, or a blur of smaller ones."""
    body = prob[..., 0]
    inside = np.count_nonzero(body > 0.5)
    return np.count_nonzero((body > 0.2) & (body < 0.8)) / inside if inside else math.inf


def _measure(model, config: Config, gray: np.ndarray, scale: float):
    """One pass of the estimate at ``scale``: the window's nuclei diameter in the image's pixels
    (NaN when none), the network's doubt (:func:`_doubt`), and the pass's probabilities and
    (unsplit) labels when it saw the whole image (else None)."""
    pc = config.predict
    multiple = config.model.size_multiple()
    window = _look_window(gray, scale, config)
    whole = window.shape == gray.shape
    if whole:
        prob = predict_at_scale(model, window, scale, config)
    else:
        # Every window the same shape at the working scale: an engine prepares a shape once.
        side = pc.estimate_size // multiple * multiple or multiple
        work = resample(window, scale)[:side, :side]
        prob = predict_probabilities(model, work, config.predict, multiple=multiple)
    # Measured before the split of merged-looking nuclei: the estimate's thresholds were set on
    # the watershed without it, and a merged pair reads a little large either way. The labels
    # handed on stay unsplit: only the pass that serves the prediction is split, once.
    labels = labels_from_probabilities(prob, ESTIMATE_WATERSHED, finish=False)
    found = _inner_diameter(labels, whole) / scale
    return found, _doubt(prob), (prob, labels) if whole else None


def _passes(model, config: Config, gray: np.ndarray) -> tuple[float, float, float, int, tuple | None]:
    """The passes of the estimate, each at the scale the previous suggests: ``(scale, diameter,
    doubt, passes, whole)``, ``whole`` being the last pass's probabilities and labels when it ran at the
    chosen scale and saw the whole image."""
    canonical = config.preprocess.diameter
    pc = config.predict
    scale, passes = clip_scale(pc.estimate_scale, pc.min_scale, pc.max_scale), 0
    while True:
        found, doubt, whole = _measure(model, config, gray, scale)
        passes += 1
        if not math.isfinite(found):
            return scale, found, doubt, passes, whole
        wanted = clip_scale(canonical / found, pc.min_scale, pc.max_scale)
        if abs(math.log(wanted / scale)) < math.log(1.2):
            return scale, found, doubt, passes, whole
        # A window fewer than 6 diameters across holds few whole nuclei, and the large ones
        # least: one more pass measures them at the scale this one suggests.
        crowded = found * scale * 6 > pc.estimate_size
        if passes >= pc.diameter_passes + crowded:
            # No pass left to check it, but the last measurement still says where to predict.
            return wanted, found, doubt, passes, None
        scale = wanted


def choose_scale_and_pass(
    model, config: Config, gray: np.ndarray, diameter
) -> tuple[Scale, np.ndarray | None, np.ndarray | None]:
    """:func:`choose_scale`, and the probabilities and watershed labels of its last pass when that
    pass saw the whole image at the chosen scale (so neither the network nor the watershed need
    run again); None and None otherwise. The labels are None too when the run's post-processing
    is not the estimate's own (:data:`ESTIMATE_WATERSHED`): its watershed runs on the probabilities."""
    canonical = config.preprocess.diameter
    pc = config.predict
    if not canonical:
        return Scale(prediction_scale(1.0, config), math.nan, False), None, None
    if diameter is not None:
        return Scale(prediction_scale(canonical / check_diameter(diameter), config), float(diameter), False), None, None
    scale, found, doubt, passes, whole = _passes(model, config, gray)
    first_reading = scale, found, whole
    looks = _Looks(model, config, gray)
    first = clip_scale(pc.estimate_scale, pc.min_scale, pc.max_scale)
    agreement, sure = math.nan, False
    if not pc.cross_check:
        sure = math.isfinite(found)
    elif not math.isfinite(found):
        # Nothing at the first scale: an empty field, or nuclei the network cannot see there. A
        # look coarser and finer finds the latter: never zero nuclei at one scale when another finds them.
        for at in (first / 2, first / 4, min(2 * first, pc.max_scale)):
            if math.isfinite(looks.diameter(at)):
                found, whole = looks.diameter(at), None
                scale = clip_scale(canonical / found, pc.min_scale, pc.max_scale)
                break
    else:
        # The cross-check: a look at half the scale of the coarser of the first pass and the choice.
        at = min(scale, first) / 2
        coarse = looks.diameter(at)
        agreement = coarse / found
        sure = _agree(found, coarse)
        if sure:
            # Nuclei over about four times the network's diameter are fragments at half the scale
            # too, so the two agree. A look at a quarter sees them whole: far larger, confirmed by
            # a look at half that again, and where the network is far surer than where it started
            # (which it cannot be where it doubts little already: most images skip this look).
            deeper = at / 2
            far = looks.diameter(deeper) if CROSS_CHECK_DOUBT * doubt > WHOLE_DOUBT else math.nan
            if (far > CROSS_CHECK_RATIO * coarse and _agree(far, looks.diameter(deeper / 2))
                    and looks.doubt(deeper) < CROSS_CHECK_DOUBT * doubt
                    and looks.doubt(deeper) <= CROSS_CHECK_MAX_DOUBT):
                scale, found, whole = clip_scale(canonical / far, pc.min_scale, pc.max_scale), far, None
                agreement = looks.diameter(deeper / 2) / far
        elif coarse > found:
            # Larger and less sure at half the scale is how small nuclei merge: that backs the first reading.
            sure = looks.doubt(at) >= doubt
            # Or fragments of large nuclei: look coarser while the reading keeps growing; two looks
            # that agree, where the network is far surer than where it started, confirm large nuclei.
            factor = CONFUSED_CROSS_CHECK_DOUBT if doubt >= CONFUSED_DOUBT else CROSS_CHECK_DOUBT
            while math.isfinite(coarse):
                coarser = looks.diameter(at / 2)
                if _agree(coarse, coarser) and (looks.doubt(at) < factor * doubt or looks.clear(at, doubt)):
                    scale, found, whole = clip_scale(canonical / coarse, pc.min_scale, pc.max_scale), coarse, None
                    agreement = coarser / coarse
                    sure = min(looks.doubt(at), looks.doubt(at / 2)) <= CROSS_CHECK_MAX_DOUBT
                    break
                if not coarser > coarse:
                    break
                at, coarse = at / 2, coarser
    if found > CROSS_CHECK_RATIO * first_reading[1] and _cells_not_nuclei(
            model, config, gray, min(first_reading[0], 1.0), clip_scale(canonical / found, pc.min_scale, pc.max_scale)):
        # Whole cells, the nuclei inside them found by the first pass: its reading stands, flagged.
        (scale, found, whole), sure = first_reading, False
    if found > READING_CEILING * canonical / pc.min_scale:
        sure = False
    chosen = Scale(prediction_scale(scale, config), found, True, passes + looks.count, agreement, sure)
    if whole is None or chosen.scale != scale:  # the last pass ran at another scale than prediction's
        return chosen, None, None
    prob, labels = whole
    if not _same_watershed(config.postprocess):  # not the shipped settings: the run's own watershed, on the same probabilities
        return chosen, prob, None
    return chosen, prob, finish_nuclei(labels, prob, config.postprocess)


def _nesting(model, config: Config, gray: np.ndarray, fine: float, coarse: float) -> tuple[float, float]:
    """How the nuclei seen at ``coarse`` hold those seen at ``fine``: ``(peak, pieces)``.

    Both passes see the window a look at ``coarse`` sees (:func:`_measure`). For each nucleus of the
    coarse pass that holds nuclei of the fine pass: ``peak``, the brightest of them over the rest of
    it, each above the background (the network's input outside the coarse nuclei); ``pieces``,
    how many fine nuclei lie in it; the median of each over the coarse nuclei, weighted by area. NaN
    where none holds any.

    Texture inside a large nucleus is at most about half again as bright as the rest of it; a nucleus
    inside a whole cell (the coarse pass reading cytoplasm and nucleus as one) is two times or more.
    """
    window = _look_window(gray, coarse, config)
    plane = (window[:, :, 0] if window.ndim == 3 else window).astype(np.float64)

    def found(at: float) -> np.ndarray:
        prob = predict_at_scale(model, window, at, config)
        return labels_from_probabilities(prob, ESTIMATE_WATERSHED, finish=False)

    coarse_labels = found(coarse)
    outer, inner = labels_to_shape(coarse_labels, plane.shape), labels_to_shape(found(fine), plane.shape)
    n, m = int(outer.max(initial=0)), int(inner.max(initial=0))
    if not n or not m or not (outer == 0).any():
        return math.nan, math.nan
    background = float(np.median(plane[outer == 0]))
    inside = inner > 0
    area = np.bincount(outer.ravel(), minlength=n + 1)[1:]
    held = np.bincount(outer[inside], minlength=n + 1)[1:]
    # The rest of each coarse nucleus away from its edge: brought back from the coarse grid by the
    # nearest pixel, its outline strays up to a coarse pixel into the background.
    deep = labels_to_shape(ndimage.binary_erosion(coarse_labels > 0).astype(np.int32), plane.shape) > 0
    deep &= ~inside
    rest = np.bincount(outer[deep], minlength=n + 1)[1:]
    # Only coarse nuclei the fine ones leave a quarter or more of: a cell is mostly not its nucleus.
    keep = (held > 0) & (rest >= area / 4)
    if not keep.any():
        return math.nan, math.nan
    rest_mean = np.bincount(outer[deep], weights=plane[deep], minlength=n + 1)[1:][keep] / rest[keep] - background
    # Each fine nucleus: its mean brightness, and the coarse nucleus it reaches furthest into (the largest label under it).
    pixels = np.bincount(inner.ravel(), minlength=m + 1)
    means = np.bincount(inner.ravel(), weights=plane.ravel(), minlength=m + 1) / np.maximum(pixels, 1)
    owner = np.asarray(ndimage.maximum(outer, inner, np.arange(1, m + 1)), dtype=np.int64)
    brightest = np.full(n + 1, -np.inf)
    np.maximum.at(brightest, owner, means[1:])
    peak = (brightest[1:][keep] - background) / np.maximum(rest_mean, 1e-3)
    pieces = np.bincount(owner, minlength=n + 1)[1:][keep].astype(np.float64)
    weights = area[keep]
    return _weighted_median(peak, weights), _weighted_median(pieces, weights)


def _cells_not_nuclei(model, config: Config, gray: np.ndarray, fine: float, coarse: float) -> bool:
    """Whether the nuclei a coarse look read are whole cells holding the nuclei the first pass found
    (:func:`_nesting`): several fine nuclei in each, the brightest :data:`CELL_PEAK` times the rest or more."""
    peak, pieces = _nesting(model, config, gray, fine, coarse)
    return peak >= CELL_PEAK and pieces >= CELL_PIECES


def _same_watershed(postprocess: PostprocessConfig) -> bool:
    """Whether ``postprocess`` floods as :data:`ESTIMATE_WATERSHED` does (the split and the drop of
    unsure nuclei aside), so that the estimate's labels of its last pass serve the prediction."""
    return unfinished(postprocess) == ESTIMATE_WATERSHED


def _agree(a: float, b: float) -> bool:
    """Two diameters within :data:`CROSS_CHECK_RATIO` of each other (False when either is NaN)."""
    return 1 / CROSS_CHECK_RATIO <= b / a <= CROSS_CHECK_RATIO


class _Looks:
    """The cross-check's passes, each run once: diameter and doubt at a scale."""

    def __init__(self, model, config: Config, gray: np.ndarray):
        self.model, self.config, self.gray = model, config, gray
        self._seen: dict[float, tuple[float, float]] = {}

    @property
    def count(self) -> int:
        return len(self._seen)

    def _look(self, at: float) -> tuple[float, float]:
        """NaN and inf where the image is too small to look at, or below the reach of the cross-check."""
        if at < self.config.predict.min_scale * CROSS_CHECK_REACH or min(self.gray.shape[:2]) * at < 16:
            return math.nan, math.inf
        if at not in self._seen:
            self._seen[at] = _measure(self.model, self.config, self.gray, at)[:2]
        return self._seen[at]

    def diameter(self, at: float) -> float:
        return self._look(at)[0]

    def doubt(self, at: float) -> float:
        return self._look(at)[1]

    def clear(self, at: float, first_doubt: float) -> bool:
        """Whether the network doubts little at ``at`` and at half of it, and far less than at first
        (:data:`CLEAR_DOUBT`)."""
        worst = max(self.doubt(at), self.doubt(at / 2))
        return worst <= CLEAR_DOUBT and self.doubt(at) < CLEAR_RATIO * first_doubt
