"""Kaggle submission and solution CSVs: strict reading, atomic writing, validation, scoring.

A submission has the header ``ImageId,EncodedPixels`` and one row per predicted
nucleus; an image with no nucleus has one row with an empty ``EncodedPixels``.
A solution (the truth, as Kaggle keeps it) adds ``Height,Width`` and optionally
``Usage``.

Row numbers
-----------
Every message and :class:`Problem` counts **data rows from 1**: row 1 is the
first line after the header, which is ``df.iloc[0]`` of the frame that
:func:`read_submission` returns. In the file, row ``n`` is line ``n + 1`` (a
record never spans lines), and messages about a file give both:
``row 3 (line 4)``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path, os_error
from dsb.core.errors import BadDataError
from dsb.core.validate import check_2d
from dsb.io.folders import folder_images
from dsb.io.images import image_shape, image_shapes, read_labels
from dsb.kaggle.metric import score_labels
from dsb.kaggle.rle import RLEError, rle_runs, rle_runs_many, rles_to_labels

__all__ = [
    "SUBMISSION_COLUMNS",
    "SOLUTION_COLUMNS",
    "Problem",
    "read_submission",
    "read_solution",
    "solution_shapes",
    "write_submission",
    "validate_submission",
    "submission_to_labels",
    "validate_against_images",
    "load_truth",
    "score_submission",
]

SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")
SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")
_USAGE = "Usage"
# Whitespace that may pad EncodedPixels; ASCII only, like the RLE parser.
_PAD = " \t\r\n\f\v"
#: The most pixels (Height x Width) a solution's image may have: its masks are decoded whole to be scored.
MAX_PIXELS = 2 ** 28


def _where(row: int | None, *, in_file: bool = True) -> str | None:
    if row is None:
        return None
    return f"row {row} (line {row + 1})" if in_file else f"row {row}"


# ---------------------------------------------------------------- reading


def _read_lines(path) -> list[str]:
    """The file's lines: UTF-8 (an optional BOM dropped), '\\n' or '\\r\\n' endings."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadDataError("no such file", path=path) from None
    except IsADirectoryError:
        raise BadDataError("is a folder, expected a CSV file", path=path) from None
    except OSError as exc:
        raise os_error(exc, path) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadDataError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", path=path
        ) from None
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    # A final newline, or a few blank lines at the end, are not rows.
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _split(line: str, path, row: int | None) -> list[str]:
    """Fields of one CSV line; quotes are honoured when present."""
    if '"' not in line:
        return line.split(",")
    try:
        return next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration) as exc:
        where = "line 1" if row is None else _where(row)
        raise BadDataError(f"not valid CSV ({exc})", path=path, where=where) from None


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_id(image_id: str, path, row: int) -> None:
    if not image_id:
        raise BadDataError("empty ImageId", path=path, where=_where(row))
    if image_id.strip() != image_id or not image_id.isprintable():
        raise BadDataError(
            f"ImageId {_show(image_id)} has spaces or control characters", path=path, where=_where(row)
        )


def _read_table(path, required: tuple[str, ...], optional: tuple[str, ...], hints: Mapping[tuple, str]):
    """Header check plus rows split into fields: ``(columns, rows)``.

    The header is ``required`` followed by a prefix of ``optional``; ``hints``
    adds a sentence to the error for headers that betray a known mix-up.
    """
    lines = _read_lines(path)
    if not lines:
        raise BadDataError(f"empty file; expected the header {','.join(required)}", path=path)
    header = tuple(_split(lines[0], path, None))
    allowed = [required + optional[:k] for k in range(len(optional) + 1)]
    if header not in allowed:
        expected = ",".join(required) + "".join(f"[,{c}]" for c in optional)
        hint = hints.get(header, "")
        raise BadDataError(f"header is {_show(lines[0])}, expected {expected}{hint}", path=path, where="line 1")
    columns = tuple(header)
    rows = []
    for row, line in enumerate(lines[1:], start=1):
        if not line.strip():
            raise BadDataError("empty line", path=path, where=_where(row))
        fields = _split(line, path, row)
        if len(fields) != len(columns):
            extra = " (a comma inside a field?)" if len(fields) > len(columns) else ""
            raise BadDataError(
                f"{len(fields)} fields, expected {len(columns)} ({','.join(columns)}){extra}",
                path=path,
                where=_where(row),
            )
        _check_id(fields[0], path, row)
        fields[1] = fields[1].strip(_PAD)
        rows.append(fields)
    return columns, rows


def read_submission(path) -> pd.DataFrame:
    """Read a submission CSV, checking its structure strictly.

    The header must be exactly ``ImageId,EncodedPixels`` (a UTF-8 byte-order
    mark and Windows line endings are fine). Every row needs a non-empty
    ``ImageId`` without spaces and exactly two fields; whitespace around
    ``EncodedPixels`` is dropped, and an empty ``EncodedPixels`` means "no
    nucleus" for that image. The encodings themselves are checked by
    :func:`validate_submission`, which knows the image sizes.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    pandas.DataFrame
        Columns ``ImageId`` and ``EncodedPixels`` (str, never missing), one
        row per data row, index ``0..n-1`` (data row ``n`` is index ``n - 1``).

    Raises
    ------
    BadDataError
        Naming the file and, where it applies, ``row n (line n+1)``: a missing
        or wrong header, a wrong number of fields, an empty ImageId, text that
        is not UTF-8.
    """
    _, rows = _read_table(path, SUBMISSION_COLUMNS, (), {})
    return pd.DataFrame(
        {
            "ImageId": pd.Series([r[0] for r in rows], dtype=str),
            "EncodedPixels": pd.Series([r[1] for r in rows], dtype=str),
        }
    )


def _size(text: str, name: str, path, row: int) -> int:
    text = text.strip(_PAD)
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or not digits:
        raise BadDataError(f"{name} {_show(text)} is not a positive integer", path=path, where=_where(row))
    if len(digits) > 18:  # no image is this large, and Python will not read some such numbers
        raise BadDataError(f"{name} {_show(text)} is too large for an image's side", path=path, where=_where(row))
    return int(digits)


def read_solution(path) -> pd.DataFrame:
    """Read a Kaggle solution CSV: the truth, with each image's size.

    Parameters
    ----------
    path : str or os.PathLike
        Header ``ImageId,EncodedPixels,Height,Width``, optionally ``,Usage``.

    Returns
    -------
    pandas.DataFrame
        Columns ``ImageId``, ``EncodedPixels`` (str), ``Height``, ``Width``
        (int64) and ``Usage`` (str) when the file has it.

    Raises
    ------
    BadDataError
        As :func:`read_submission`, and for a header without ``Height`` and
        ``Width``, a size that is not a positive integer, or one ImageId given
        two different sizes (both rows are named).
    """
    hints = {SUBMISSION_COLUMNS: " (no Height and Width: this is a submission or training labels, not a solution)"}
    columns, rows = _read_table(path, SOLUTION_COLUMNS, (_USAGE,), hints)
    heights, widths = [], []
    first_row: dict[str, tuple[int, int, int]] = {}
    for row, fields in enumerate(rows, start=1):
        h = _size(fields[2], "Height", path, row)
        w = _size(fields[3], "Width", path, row)
        if h * w > MAX_PIXELS:
            raise BadDataError(f"ImageId {fields[0]!r} is {h}x{w}, over the {MAX_PIXELS:,} pixels an image scored "
                               "whole may have", path=path, where=_where(row))
        seen = first_row.setdefault(fields[0], (row, h, w))
        if seen[1:] != (h, w):
            raise BadDataError(
                f"ImageId {fields[0]!r} is {h}x{w} here but {seen[1]}x{seen[2]} in row {seen[0]}",
                path=path,
                where=_where(row),
            )
        heights.append(h)
        widths.append(w)
    table = {
        "ImageId": pd.Series([r[0] for r in rows], dtype=str),
        "EncodedPixels": pd.Series([r[1] for r in rows], dtype=str),
        "Height": pd.Series(heights, dtype=np.int64),
        "Width": pd.Series(widths, dtype=np.int64),
    }
    if _USAGE in columns:
        table[_USAGE] = pd.Series([r[4].strip(_PAD) for r in rows], dtype=str)
    return pd.DataFrame(table)


def solution_shapes(solution: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{ImageId: (Height, Width)}`` of a frame from :func:`read_solution`, in first-row order."""
    first = solution.drop_duplicates("ImageId")
    return {
        i: (int(h), int(w))
        for i, h, w in zip(first["ImageId"].tolist(), first["Height"].tolist(), first["Width"].tolist())
    }


# ---------------------------------------------------------------- writing


def _text_cell(value) -> str:
    """A cell as text; missing values (None, NaN) are empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def write_submission(df: pd.DataFrame, path) -> Path:
    """Write a submission CSV atomically and deterministically.

    Parameters
    ----------
    df : pandas.DataFrame
        With columns ``ImageId`` and ``EncodedPixels`` (others are ignored);
        rows are written in the order given. A missing ``EncodedPixels``
        (None, NaN) is written empty.
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
        ``path``. The file has the header ``ImageId,EncodedPixels``, UTF-8
        without BOM, ``\\n`` line endings, no quoting.

    Raises
    ------
    BadDataError
        A column is missing, or a cell holds a comma, a quote or a line break
        (it would not read back), or an ImageId is empty.
    """
    missing = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    if missing:
        raise BadDataError(f"the frame has no column {', '.join(missing)}", path=path)
    lines = [",".join(SUBMISSION_COLUMNS)]
    for row, (image_id, rle) in enumerate(
        zip(df["ImageId"].tolist(), df["EncodedPixels"].tolist()), start=1
    ):
        image_id, rle = _text_cell(image_id), _text_cell(rle)
        for name, cell in (("ImageId", image_id), ("EncodedPixels", rle)):
            if any(c in cell for c in ',"\r\n'):
                raise BadDataError(
                    f"{name} {_show(cell)} holds a comma, quote or line break", path=path, where=f"row {row}"
                )
        if not image_id:
            raise BadDataError("empty ImageId", path=path, where=f"row {row}")
        lines.append(f"{image_id},{rle}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return Path(path)


# ---------------------------------------------------------------- validating


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission.

    Attributes
    ----------
    row : int or None
        1-based data row (see the module notes), None for the whole file or a
        missing image.
    image_id : str or None
    message : str
        One line saying what is wrong.
    path : str or None
        The file the frame was read from, if known. ``str(problem)`` leaves it
        out, so that callers can prefix it once.
    """

    row: int | None
    image_id: str | None
    message: str
    path: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.row is not None:
            parts.append(_where(self.row, in_file=self.path is not None))
        if self.image_id is not None:
            parts.append(f"ImageId {self.image_id!r}")
        parts.append(self.message)
        return ": ".join(parts)


def _overlapping_rows(starts, lengths, rows) -> list[tuple[int, int]]:
    """Pairs of rows whose runs share a pixel, found from runs sorted by start.

    A run overlaps an earlier one exactly when it starts before the furthest end
    reached so far; the run that reached it is then one partner.
    """
    order = np.argsort(starts, kind="stable")
    starts, ends, rows = starts[order], starts[order] + lengths[order], rows[order]
    reach = np.maximum.accumulate(ends)
    owner = np.maximum.accumulate(np.where(ends == reach, np.arange(ends.size), 0))
    hits = np.flatnonzero(starts[1:] < reach[:-1]) + 1
    pairs = {tuple(sorted((int(rows[owner[k - 1]]), int(rows[k])))) for k in hits.tolist()}
    return sorted(pairs)


def validate_submission(df: pd.DataFrame, shapes: Mapping[str, tuple[int, int]], *, path=None) -> list[Problem]:
    """Check a submission against the images it is for; report every problem.

    Parameters
    ----------
    df : pandas.DataFrame
        As returned by :func:`read_submission`.
    shapes : mapping of str to (int, int)
        ``{ImageId: (height, width)}`` of every image the submission is for.
    path : str or os.PathLike, optional
        The file ``df`` was read from; rows are then also given as file lines.

    Returns
    -------
    list of Problem
        Empty for a valid submission. Otherwise, in row order: columns other
        than ``ImageId,EncodedPixels`` (then nothing else is checked), an
        empty or unknown ImageId, an encoding that is malformed, unsorted,
        overlapping itself or beyond its image, two masks of one image that
        share pixels (one Problem per pair, on the later row); then every image
        with no row at all.
    """
    where_path = None if path is None else str(path)
    if tuple(df.columns) != SUBMISSION_COLUMNS:
        cols = ",".join(map(str, df.columns))
        return [Problem(None, None, f"columns are {cols!r}, expected 'ImageId,EncodedPixels'", where_path)]
    problems: list[Problem] = []
    groups: dict[str, tuple[list[int], list[str]]] = {}
    seen: set[str] = set()
    for row, (image_id, rle) in enumerate(zip(df["ImageId"].tolist(), df["EncodedPixels"].tolist()), start=1):
        image_id, rle = _text_cell(image_id), _text_cell(rle)
        if not image_id:
            problems.append(Problem(row, None, "empty ImageId", where_path))
            continue
        seen.add(image_id)
        if image_id not in shapes:
            message = f"unknown ImageId (not one of the {len(shapes)} images)"
            problems.append(Problem(row, image_id, message, where_path))
            continue
        rows, rles = groups.setdefault(image_id, ([], []))
        rows.append(row)
        rles.append(rle)
    for image_id, (rows, rles) in groups.items():
        shape = shapes[image_id]
        try:
            starts, lengths, index = rle_runs_many(rles, shape)
            run_rows = np.asarray(rows)[index]
        except RLEError:
            # At least one row is malformed: check them one by one to report each.
            parts = []
            for row, rle in zip(rows, rles):
                try:
                    parts.append((*rle_runs(rle, shape), row))
                except RLEError as exc:
                    problems.append(Problem(row, image_id, f"EncodedPixels: {exc.message}", where_path))
            if not parts:
                continue
            starts = np.concatenate([p[0] for p in parts])
            lengths = np.concatenate([p[1] for p in parts])
            run_rows = np.concatenate([np.full(p[0].size, p[2]) for p in parts])
        if np.unique(run_rows).size < 2:
            continue
        for first, second in _overlapping_rows(starts, lengths, run_rows):
            problems.append(Problem(second, image_id, f"mask overlaps the mask in row {first}", where_path))
    problems.sort(key=lambda p: p.row)
    for image_id in shapes:
        if image_id not in seen:
            problems.append(
                Problem(
                    None,
                    image_id,
                    "no row for this image (an image without nuclei needs one row with empty EncodedPixels)",
                    where_path,
                )
            )
    return problems


def submission_to_labels(
    df: pd.DataFrame,
    shapes: Mapping[str, tuple[int, int]],
    *,
    path=None,
    skip_unknown: bool = False,
    allow_overlap: bool = False,
) -> dict[str, np.ndarray]:
    """Paint each image's rows into a label image.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``ImageId`` and ``EncodedPixels`` (a submission or a solution).
    shapes : mapping of str to (int, int)
        ``{ImageId: (height, width)}``.
    path : str or os.PathLike, optional
        The file ``df`` came from, for messages.
    skip_unknown : bool, default False
        Leave out rows whose ImageId is not in ``shapes`` instead of failing.
    allow_overlap : bool, default False
        Leave pixels shared by several rows to the earliest of them instead of
        failing: for reading the truth (a few training masks overlap).

    Returns
    -------
    dict of str to (H, W) ndarray of int32
        One entry per ImageId that has at least one row, in order of first
        appearance; the non-empty rows of an image are labels 1..N in row
        order. Images of ``shapes`` with no row are absent.

    Raises
    ------
    BadDataError
        At the first unknown ImageId, malformed encoding or pair of overlapping
        masks, naming the row (see :func:`validate_submission` to list all).
    """
    in_file = path is not None
    groups: dict[str, tuple[list[str], list[int]]] = {}
    for row, (image_id, rle) in enumerate(zip(df["ImageId"].tolist(), df["EncodedPixels"].tolist()), start=1):
        image_id, rle = _text_cell(image_id), _text_cell(rle)
        if image_id not in shapes:
            if skip_unknown:
                continue
            raise BadDataError(
                f"unknown ImageId {_show(image_id)} (not one of the {len(shapes)} images)",
                path=path,
                where=_where(row, in_file=in_file),
            )
        rles, rows = groups.setdefault(image_id, ([], []))
        if rle.strip(_PAD):
            rles.append(rle)
            rows.append(row)
    labels = {}
    for image_id, (rles, rows) in groups.items():
        try:
            labels[image_id] = rles_to_labels(rles, shapes[image_id], allow_overlap=allow_overlap)
        except RLEError as exc:
            if len(exc.masks) == 2:
                first, second = rows[exc.masks[0]], rows[exc.masks[1]]
                message = f"ImageId {image_id!r}: mask overlaps the mask in row {first}"
            else:
                second = rows[exc.masks[0]]
                message = f"ImageId {image_id!r}: EncodedPixels: {exc.message}"
            raise BadDataError(message, path=path, where=_where(second, in_file=in_file)) from None
    return labels


def validate_against_images(csv, images_dir) -> list[Problem]:
    """Read a submission CSV and check it against a folder of the images it is for.

    Parameters
    ----------
    csv : str or os.PathLike
        The submission.
    images_dir : str or os.PathLike
        A stage folder (``{id}/images/{id}.png``) or a flat folder of images,
        read as ``dsb predict`` reads it (:func:`dsb.io.folders.folder_images`).

    Returns
    -------
    list of Problem
        As :func:`validate_submission`: empty for a valid submission.

    Raises
    ------
    BadDataError
        The CSV is malformed (:func:`read_submission`), or the folder holds an
        entry that is not a usable image (the first one) or no image at all.
    """

    paths, bad = folder_images(images_dir)
    if bad:
        raise bad[0]
    shapes = {image_id: image_shape(path) for image_id, path in paths.items()}
    return validate_submission(read_submission(csv), shapes, path=csv)


# ---------------------------------------------------------------- scoring


def load_truth(truth_path) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """True labels and image shapes by id, from a solution CSV or a stage1_train-layout folder.

    Parameters
    ----------
    truth_path : str or os.PathLike
        A Kaggle solution CSV (``ImageId,EncodedPixels,Height,Width[,Usage]``;
        images whose rows are all ``Ignored`` are left out) or a folder of
        ``{id}/images/{id}.png`` and ``{id}/masks/*.png``. Pixels that masks of
        the truth share stay with the earlier mask (row order in a CSV, file
        name order in a folder), as :func:`dsb.io.images.read_labels` settles them.

    Returns
    -------
    labels : dict of str to (H, W) ndarray of int32
    shapes : dict of str to (int, int)
        Of every image the truth names, ignored ones included.

    Raises
    ------
    BadDataError
        A malformed file, or a truth with no image to score.
    """

    truth_path = Path(truth_path)
    if truth_path.is_dir():
        shapes = image_shapes(truth_path)
        truth = {i: read_labels(truth_path / i, shapes[i], return_fixes=True)[0] for i in shapes}
    else:
        solution = read_solution(truth_path)
        shapes = solution_shapes(solution)
        if "Usage" in solution.columns:
            solution = solution[solution["Usage"] != "Ignored"]
        truth = submission_to_labels(
            solution[["ImageId", "EncodedPixels"]], shapes, path=truth_path, allow_overlap=True
        )
    if not truth:
        raise BadDataError("the truth holds no images to score", path=truth_path)
    return truth, shapes


def score_submission(
    submission,
    truth,
    *,
    image_types: Mapping[str, str] | None = None,
    allow_extra: bool = False,
) -> tuple[float, pd.DataFrame]:
    """Score a whole submission against the truth, as Kaggle would.

    Parameters
    ----------
    submission : str, os.PathLike or pandas.DataFrame
        A submission CSV, or a frame with columns ``ImageId`` and
        ``EncodedPixels`` (see :func:`dsb.read_submission`).
    truth : str, os.PathLike or mapping of str to (H, W) ndarray of int
        A Kaggle solution CSV (``ImageId,EncodedPixels,Height,Width[,Usage]``),
        a folder in stage1_train layout (``{id}/images/{id}.png`` and
        ``{id}/masks/*.png``), or ``{ImageId: labels}``.

    image_types : mapping of str to str, optional
        ``{ImageId: type}``: the table gets a ``type`` column
        (:func:`dsb.kaggle.metric.score_labels`).
    allow_extra : bool, default False
        Ignore submission rows for images the truth does not hold, instead of
        failing at the first one.

    Returns
    -------
    score : float
        Mean of the per-image scores (:func:`score`) over the images of the
        truth; an image with no row in the submission scores 0.
    table : pandas.DataFrame
        One row per image of the truth: ``ImageId``, ``score``, the counts at
        IoU 0.5 and 0.75 (``tp_50`` ... ``fn_75``), ``n_true`` and ``n_pred``;
        ``attrs["unanswered"]`` lists the images without any row (an empty row answers).

    Raises
    ------
    BadDataError
        A malformed file, a row for an image the truth does not hold, a
        malformed encoding or two overlapping masks (naming the row).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import dsb
    >>> truth = {"a": np.array([[1, 1, 0], [0, 0, 2]])}
    >>> rows = pd.DataFrame({"ImageId": ["a", "a"], "EncodedPixels": ["1 1 3 1", "6 1"]})
    >>> mean, table = dsb.score_submission(rows, truth)
    >>> mean, table["n_pred"].tolist()
    (1.0, [2])
    """

    # The truth first: when both files are bad, the error names the truth.
    if isinstance(truth, Mapping):
        truth = {str(i): check_2d(f"truth[{i!r}]", labels) for i, labels in truth.items()}
        shapes = {i: labels.shape for i, labels in truth.items()}
    elif isinstance(truth, (str, os.PathLike)):
        truth, shapes = load_truth(truth)
    else:
        raise TypeError(f"`truth` must be a path or a mapping of ImageId to labels, got {type(truth).__name__}")
    if isinstance(submission, pd.DataFrame):
        missing = [c for c in SUBMISSION_COLUMNS if c not in submission.columns]
        if missing:
            raise ValueError(
                f"`submission` has no column {', '.join(missing)} (columns: {list(submission.columns)})"
            )
        frame, path = submission, None
    elif isinstance(submission, (str, os.PathLike)):
        frame, path = read_submission(submission), submission
    else:
        raise TypeError(f"`submission` must be a CSV path or a DataFrame, got {type(submission).__name__}")
    pred = submission_to_labels(frame, shapes, path=path, skip_unknown=allow_extra)
    value, table = score_labels(truth, pred, image_types=image_types)
    table.attrs["unanswered"] = [i for i in truth if i not in pred]
    return value, table
