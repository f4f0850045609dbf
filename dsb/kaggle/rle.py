"""Kaggle's run-length encoding of masks, both ways, vectorised.

Pixels are numbered from 1, top to bottom then left to right (column-major:
the order of ``mask.ravel(order="F")``). An encoding is a string of
space-separated ``start length`` pairs with ascending starts, e.g. ``"1 3 10 2"``
sets pixels 1, 2, 3, 10 and 11. The empty string is the empty mask.

Everything works on whole arrays (run boundaries from :func:`numpy.diff`), never
with a Python loop over pixels or runs.

Examples
--------
>>> import numpy as np
>>> mask = np.array([[0, 1], [1, 1]], bool)
>>> rle_encode(mask)
'2 3'
>>> rle_decode("2 3", (2, 2)).astype(int).tolist()
[[0, 1], [1, 1]]
"""

from __future__ import annotations

import re

import numpy as np

from dsb.core.errors import BadDataError
from dsb.core.validate import check_2d, check_labels

__all__ = [
    "RLEError",
    "rle_encode",
    "rle_decode",
    "rle_runs",
    "rle_runs_many",
    "labels_to_rles",
    "rles_to_labels",
]

# Only ASCII digits and ASCII whitespace may appear: this excludes signs,
# underscores and non-ASCII digits, all of which int() would otherwise accept.
_BAD_CHAR = re.compile(r"[^0-9 \t\n\r\f\v]")
_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_LONG = re.compile(r"[0-9]{19,}")
# int64 holds any 18-digit number; longer tokens (beyond leading zeros) cannot
# be a pixel number of any image.
_MAX_DIGITS = 18


class RLEError(BadDataError):
    """A run-length encoding that is not well formed, or does not fit its image.

    ``masks`` holds the 0-based indices of the encodings at fault when
    :func:`rles_to_labels` or :func:`rle_runs_many` raise it (one, or two
    that overlap), else ``()``.
    """

    def __init__(self, message: str, *, path=None, where: str | None = None, masks: tuple[int, ...] = ()):
        self.masks = tuple(masks)
        super().__init__(message, path=path, where=where)


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"`shape` must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"`shape` must be positive, got {(h, w)}")
    return h, w


def _parse_values(rle: str) -> np.ndarray:
    """The integers of ``rle`` as int64, or RLEError naming the first bad token."""
    bad = _BAD_CHAR.search(rle)
    if bad is not None:
        # Report the whole token around the bad character: "12x" reads better than "x".
        token = _SPACE.split(rle[: bad.start()])[-1] + _SPACE.split(rle[bad.start() :], maxsplit=1)[0]
        raise RLEError(f"{token[:20]!r} is not a non-negative integer")
    tokens = rle.split()
    if not tokens:
        return np.zeros(0, np.int64)
    long = [t for t in tokens if len(t) > _MAX_DIGITS and len(t.lstrip("0")) > _MAX_DIGITS]
    if long:
        raise RLEError(f"value {long[0][:20]}... is too large for a pixel number")
    return np.array(tokens, dtype=np.int64)


def _explain(starts, lengths, ends, h: int, w: int) -> None:
    """Raise the RLEError for the first rule the runs break."""
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        i = bad[0]
        raise RLEError(f"pair {i + 1} starts at pixel {starts[i]}; pixels are numbered from 1")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        i = bad[0]
        raise RLEError(f"pair {i + 1} (start {starts[i]}) has length {lengths[i]}; lengths must be positive")
    bad = np.flatnonzero(starts[1:] <= starts[:-1])
    if bad.size:
        i = bad[0]
        raise RLEError(
            f"starts not ascending: pair {i + 2} starts at {starts[i + 1]}, after pair {i + 1} at {starts[i]}"
        )
    bad = np.flatnonzero(starts[1:] <= ends[:-1])
    if bad.size:
        i = bad[0]
        raise RLEError(
            f"runs overlap: pair {i + 1} covers pixels {starts[i]}-{ends[i]}, "
            f"pair {i + 2} starts at {starts[i + 1]}"
        )
    # Starts ascend and runs do not overlap, so only the last run can reach furthest.
    raise RLEError(
        f"run beyond the image: pair {starts.size} covers pixels {starts[-1]}-{ends[-1]}, "
        f"but a {h}x{w} image has {h * w} pixels"
    )


def rle_runs(rle: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an encoding into its runs.

    Parameters
    ----------
    rle : str
        Space-separated ``start length`` pairs, starts from 1, ascending; any
        ASCII whitespace separates values. The empty (or all-blank) string has
        no runs.
    shape : tuple of int
        ``(height, width)`` of the image the encoding refers to.

    Returns
    -------
    starts : (R,) ndarray of int64
        0-based index of each run's first pixel in ``mask.ravel(order="F")``.
    lengths : (R,) ndarray of int64
        Pixels in each run, all positive.

    Raises
    ------
    RLEError
        An odd number of values, a token that is not a non-negative integer, a
        start below 1, a length below 1, starts that do not ascend, runs that
        overlap, or a run that ends beyond the image's last pixel.
    """
    if not isinstance(rle, str):
        raise TypeError(f"`rle` must be a str, got {type(rle).__name__}")
    h, w = _check_shape(shape)
    values = _parse_values(rle)
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}); expected 'start length' pairs")
    starts, lengths = values[0::2], values[1::2]
    if starts.size == 0:
        return starts, lengths
    ends = starts + lengths - 1  # last pixel of each run, 1-based
    # One combined test first; the checks that say which rule broke run only on failure.
    if starts[0] < 1 or lengths.min() < 1 or (starts[1:] <= ends[:-1]).any() or ends[-1] > h * w:
        _explain(starts, lengths, ends, h, w)
    return starts - 1, lengths


def rle_runs_many(rles, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and validate many encodings of one image at once.

    All the text is parsed in one go and checked with whole-array tests, so the
    cost per encoding is a string split, not a round of numpy calls; only when
    something is wrong are the encodings checked one by one, to say which.

    Parameters
    ----------
    rles : sequence of str
        Encodings as for :func:`rle_runs`.
    shape : tuple of int
        ``(height, width)`` of the image.

    Returns
    -------
    starts, lengths : (R,) ndarray of int64
        As :func:`rle_runs`, the runs of all encodings one after another.
    index : (R,) ndarray of int64
        0-based position in ``rles`` of the encoding each run comes from.

    Raises
    ------
    RLEError
        For the first malformed encoding, with ``masks=(i,)`` and
        ``where="mask i"``. Overlaps between different encodings are allowed.
    """
    h, w = _check_shape(shape)
    rles = list(rles)
    for i, rle in enumerate(rles):
        if not isinstance(rle, str):
            raise TypeError(f"`rles[{i}]` must be a str, got {type(rle).__name__}")
    text = " ".join(rles)
    counts = np.fromiter((len(r.split()) for r in rles), np.int64, len(rles))
    if not (_BAD_CHAR.search(text) or _LONG.search(text) or (counts % 2).any()):
        values = np.array(text.split(), dtype=np.int64)
        starts, lengths = values[0::2], values[1::2]
        index = np.repeat(np.arange(len(rles)), counts // 2)
        ends = starts + lengths - 1
        same = index[1:] == index[:-1]
        if starts.size == 0 or (
            starts.min() >= 1
            and lengths.min() >= 1
            and ends.max() <= h * w
            and not (same & (starts[1:] <= ends[:-1])).any()
        ):
            return starts - 1, lengths, index
    # Something is wrong: find the first encoding at fault and say what.
    parts = []
    for i, rle in enumerate(rles):
        try:
            parts.append(rle_runs(rle, (h, w)))
        except RLEError as exc:
            raise RLEError(exc.message, where=f"mask {i}", masks=(i,)) from None
    # Not reached when the fast checks agree with rle_runs; stays correct if not.
    index = np.repeat(np.arange(len(rles)), [p[0].size for p in parts])
    return (
        np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
        np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
        index,
    )


def _run_pixels(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of every pixel of the runs, run after run.

    Pixel k of the concatenated runs lies at k plus its run's start minus the
    number of pixels in earlier runs: one repeat and one add, in time
    proportional to the pixels covered, not to the image.
    """
    shift = starts - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))


def rle_decode(rle: str, shape) -> np.ndarray:
    """Decode one run-length encoding into a mask.

    Parameters
    ----------
    rle : str
        Space-separated ``start length`` pairs (see :func:`rle_runs`); ``""`` is
        the empty mask.
    shape : tuple of int
        ``(height, width)`` of the mask.

    Returns
    -------
    mask : (H, W) ndarray of bool

    Raises
    ------
    RLEError
        When ``rle`` is malformed or does not fit ``shape``; the message says why.

    Examples
    --------
    >>> rle_decode("1 2 6 1", (3, 2)).astype(int).tolist()
    [[1, 0], [1, 0], [0, 1]]
    """
    h, w = _check_shape(shape)
    starts, lengths = rle_runs(rle, (h, w))
    flat = np.zeros(h * w, bool)
    flat[_run_pixels(starts, lengths)] = True
    return flat.reshape((h, w), order="F")


def _format_runs(starts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Tokens ``[start1, length1, start2, ...]`` as strings, starts made 1-based."""
    pairs = np.empty(2 * starts.size, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return list(map(str, pairs.tolist()))


def rle_encode(mask) -> str:
    """Encode one mask.

    Parameters
    ----------
    mask : (H, W) array_like
        Nonzero (or True) pixels belong to the object.

    Returns
    -------
    str
        ``"start length ..."`` with 1-based, ascending starts; ``""`` for an
        empty mask.

    Examples
    --------
    >>> rle_encode([[1, 0], [1, 0], [0, 1]])
    '1 2 6 1'
    """
    mask = check_2d("mask", mask)
    flat = np.zeros(mask.size + 2, bool)
    flat[1:-1] = mask.ravel(order="F")
    # Indices where the value flips: alternately a run's start and one past its end.
    flips = np.flatnonzero(flat[1:] != flat[:-1])
    starts, stops = flips[0::2], flips[1::2]
    return " ".join(_format_runs(starts, stops - starts))


def labels_to_rles(labels) -> list[str]:
    """Encode every object of a label image, in one pass over the image.

    Parameters
    ----------
    labels : (H, W) array_like of int or bool
        0 is background; each other value is one object. Values need not be
        consecutive.

    Returns
    -------
    list of str
        One encoding per distinct nonzero label, in increasing label order.

    Examples
    --------
    >>> labels_to_rles([[0, 2], [5, 2]])
    ['3 2', '2 1']
    """
    labels = check_labels("labels", labels)
    flat = labels.ravel(order="F")
    pixels = np.flatnonzero(flat)
    if pixels.size == 0:
        return []
    values = flat[pixels]
    # Group the pixels by label; the stable sort keeps each group in pixel order.
    order = np.argsort(values, kind="stable")
    pixels, values = pixels[order], values[order]
    new_run = np.ones(pixels.size, bool)
    new_run[1:] = (values[1:] != values[:-1]) | (pixels[1:] != pixels[:-1] + 1)
    run_first = np.flatnonzero(new_run)
    lengths = np.diff(np.append(run_first, pixels.size))
    starts, run_labels = pixels[run_first], values[run_first]
    tokens = _format_runs(starts, lengths)
    # Token index where each label's runs begin and end (2 tokens per run).
    bounds = 2 * np.flatnonzero(np.r_[True, run_labels[1:] != run_labels[:-1], True])
    bounds = bounds.tolist()
    return [" ".join(tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def rles_to_labels(rles, shape, *, allow_overlap: bool = False) -> np.ndarray:
    """Paint a list of encodings into one label image.

    Parameters
    ----------
    rles : sequence of str
        One encoding per object; object ``i`` (0-based) gets label ``i + 1``.
        An empty string is an object with no pixels: its label is absent.
    shape : tuple of int
        ``(height, width)`` of the image.
    allow_overlap : bool, default False
        Leave pixels shared by several masks to the earliest of them instead of
        raising (as :func:`dsb.io.images.read_labels` does with mask files); a
        mask left with no pixel has its label absent. Six stage1_train images
        have masks sharing a pixel or two, so truth is read with this on;
        submissions may not overlap.

    Returns
    -------
    labels : (H, W) ndarray of int32

    Raises
    ------
    RLEError
        When an encoding is malformed (the message names its 0-based index) or,
        unless ``allow_overlap``, two encodings share a pixel.

    Examples
    --------
    >>> rles_to_labels(["1 2", "6 1"], (3, 2)).tolist()
    [[1, 0], [1, 0], [0, 2]]
    """
    h, w = _check_shape(shape)
    starts, lengths, index = rle_runs_many(rles, (h, w))
    if starts.size == 0:
        return np.zeros((h, w), np.int32)
    run_labels = (index + 1).astype(np.int32)
    order = np.argsort(starts, kind="stable")
    starts, lengths, run_labels = starts[order], lengths[order], run_labels[order]
    # Runs of one mask never overlap (checked above), so after sorting by start an
    # overlap between masks always shows between neighbours.
    clash = np.flatnonzero(starts[1:] < starts[:-1] + lengths[:-1])
    if clash.size and allow_overlap:
        return _paint_overlapping(h, w, starts, lengths, run_labels)
    if clash.size:
        k = clash[0]
        a, b = sorted((int(run_labels[k]) - 1, int(run_labels[k + 1]) - 1))
        raise RLEError(f"masks {a} and {b} overlap at pixel {starts[k + 1] + 1}", masks=(a, b))
    flat = np.zeros(h * w, np.int32)
    flat[_run_pixels(starts, lengths)] = np.repeat(run_labels, lengths)
    return flat.reshape((h, w), order="F")


def _paint_overlapping(h: int, w: int, starts, lengths, run_labels) -> np.ndarray:
    """Paint runs that may overlap; the lowest label (the earliest mask) keeps a shared pixel."""
    background = np.iinfo(np.int32).max
    flat = np.full(h * w, background, np.int32)
    # Plain fancy assignment leaves the winner of a repeated index unspecified.
    np.minimum.at(flat, _run_pixels(starts, lengths), np.repeat(run_labels, lengths))
    flat[flat == background] = 0
    return flat.reshape((h, w), order="F")
