"""``dsb segment`` in micrometres: each file's pixel size, and a nucleus diameter given in micrometres
turned into that file's pixels.

A diameter given in micrometres (``--diameter-um``) holds at every magnification: each file is
segmented at the diameter its own pixel size makes of it, so the images of a 20x and a 63x
objective need no diameter each. The pixel size is the file's own
(:func:`dsb.io.pixel_size.read_pixel_size`) unless one is given (``--pixel-size``), which then
holds for every file and is said beside a file whose metadata differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dsb.core.errors import BadDataError
from dsb.inference.scale import check_diameter
from dsb.io.pixel_size import SQUARE, read_pixel_size
from dsb.workflows.cells import MAX_EXPANSION

__all__ = ["Calibration", "calibrate", "calibrate_files", "check_micrometres"]


@dataclass(frozen=True)
class Calibration:
    """One file's scale for ``dsb segment``.

    Attributes
    ----------
    pixel_size : float or None
        The side of a pixel in micrometres; None where neither the file nor the user says it, or
        the file's pixels are not square.
    diameter : float or None
        The nucleus diameter in pixels to segment at: given, or from a diameter in micrometres; None
        to estimate it.
    note : str
        What the user should hear about the scale (metadata overruled, pixels not square), or ``""``.
    cell_expansion : float or None
        How far to grow each nucleus into its cell, in pixels (:mod:`dsb.workflows.cells`): given, or
        from a distance in micrometres; None to grow no cells.
    """

    pixel_size: float | None = None
    diameter: float | None = None
    note: str = ""
    cell_expansion: float | None = None


def check_micrometres(value, what: str = "pixel size") -> float:
    """A length in micrometres given by a user (``what``: a pixel size, a nucleus diameter), as a float,
    or ValueError saying what is wrong.

    >>> check_micrometres("0.325")
    0.325
    >>> check_micrometres(0)
    Traceback (most recent call last):
    ...
    ValueError: the pixel size must be a positive finite number of micrometres, got 0
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} must be a number of micrometres, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"the {what} must be a positive finite number of micrometres, got {value!r}")
    return number


def calibrate(path, *, diameter: float | None = None, diameter_um: float | None = None,
              pixel_size: float | None = None, cell_expansion: float | None = None,
              cell_expansion_um: float | None = None) -> Calibration:
    """The scale ``dsb segment`` takes for one file.

    Parameters
    ----------
    path : path
        The image file or store.
    diameter : float, optional
        The nucleus diameter in pixels, kept as given.
    diameter_um : float, optional
        The nucleus diameter in micrometres, made pixels by the file's pixel size; not with ``diameter``.
    pixel_size : float, optional
        Micrometres a pixel, instead of the file's metadata.
    cell_expansion : float, optional
        How far to grow each nucleus into its cell, in pixels, kept as given.
    cell_expansion_um : float, optional
        The same in micrometres, made pixels by the file's pixel size; not with ``cell_expansion``.

    Raises
    ------
    BadDataError
        ``diameter_um`` or ``cell_expansion_um`` for a file with no pixel size (or pixels that are not
        square) and none given, or a diameter in pixels outside 2 to 1000 that way, or an expansion
        over :data:`dsb.workflows.cells.MAX_EXPANSION` pixels.
    """
    try:
        read = read_pixel_size(path)
    except BadDataError:
        if (diameter_um is not None or cell_expansion_um is not None) and pixel_size is None:
            raise  # the scale needs the metadata: the file is bad input here already
        read = None  # the image's own reading names what is wrong with it
    notes = []
    if pixel_size is not None:
        if read is not None and (not read.square or abs(read.side - pixel_size) > SQUARE * pixel_size):
            notes.append(f"its metadata ({read.source}) say {read} a pixel; the given {pixel_size:g} \u00b5m was used")
        size = pixel_size
    elif read is not None and not read.square:
        size = None
        notes.append(f"its pixels are not square ({read}, {read.source}): measured in pixels only")
    else:
        size = None if read is None else read.side
    if diameter_um is not None:
        _need_size(size, read, "a diameter in micrometres (--diameter-um)", "--diameter", path)
        try:
            diameter = check_diameter(diameter_um / size)
        except ValueError:
            raise BadDataError(f"a nucleus diameter of {diameter_um:g} \u00b5m is {diameter_um / size:.4g} pixels "
                               f"of {size:.4g} \u00b5m, outside the 2 to 1000 pixels dsb segments at", path=path) from None
    if cell_expansion_um is not None:
        _need_size(size, read, "a cell expansion in micrometres (--cell-expansion-um)", "--cell-expansion", path)
        if cell_expansion_um / size > MAX_EXPANSION:
            raise BadDataError(f"a cell expansion of {cell_expansion_um:g} \u00b5m is {cell_expansion_um / size:.4g} "
                               f"pixels of {size:.4g} \u00b5m, over the {MAX_EXPANSION:g} pixels dsb grows cells by",
                               path=path)
        cell_expansion = cell_expansion_um / size
    return Calibration(size, diameter, "; ".join(notes), cell_expansion)


def _need_size(size: float | None, read, what: str, in_pixels: str, path) -> None:
    """A BadDataError naming ``path`` where ``what`` (a length in micrometres) finds no pixel size: none in its
    metadata, or pixels that are not square (``read``); ``in_pixels`` is the option that gives it in pixels."""
    if size is None:
        why = (f"pixels that are not square ({read}), where {what} needs one pixel size" if read is not None else
               f"no pixel size in its metadata, which {what} needs")
        raise BadDataError(f"has {why}: give --pixel-size UM, or {in_pixels} in pixels", path=path)


def calibrate_files(paths, skips, *, diameter: float | None = None, diameter_um: float | None = None,
                    pixel_size: float | None = None, cell_expansion: float | None = None,
                    cell_expansion_um: float | None = None) -> dict[str, Calibration]:
    """:func:`calibrate` of each path: ``{str(path): Calibration}``, a file that cannot be calibrated handed
    to ``skips`` (:class:`dsb.io.folders.Skips`, which raises it unless it skips bad inputs) and left out."""
    out = {}
    for path in paths:
        try:
            out[str(path)] = calibrate(Path(path), diameter=diameter, diameter_um=diameter_um, pixel_size=pixel_size,
                                       cell_expansion=cell_expansion, cell_expansion_um=cell_expansion_um)
        except BadDataError as exc:
            skips(exc, path=path)
    return out
