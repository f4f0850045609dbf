"""How large a pixel is, in micrometres, from what an image file says of itself.

A microscope's software records the size of a pixel in the sample in the file's metadata, where
Fiji, napari and QuPath read it; :func:`read_pixel_size` reads it from the places they write:

- an OME-TIFF's OME-XML (``PhysicalSizeX``, ``PhysicalSizeY`` and their units, micrometres when
  unsaid), for the first image of the file;
- an ImageJ TIFF's resolution tags in the unit its description names (``unit=micron``);
- any other TIFF's resolution tags when their unit is the centimetre (some microscope software
  writes them so), not the inch: a number of dots per inch is a printer's, not a microscope's;
- an OME-Zarr store's ``multiscales``: the scale of the level that is read, times the store's own
  scale, in the unit of the ``y`` and ``x`` axes.

PNG, JPEG and BMP files hold no pixel size a microscope writes; nor does a plain Zarr array.

:func:`read_z_step` reads a z-stack's distance between planes from an OME-TIFF (``PhysicalSizeZ``)
and an ImageJ TIFF (``spacing``, in its ``unit``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from dsb.core.errors import BadDataError
from dsb.io.ome import first_pixels, image_level, open_zarr
from dsb.io.tiff_reading import open_tiff

__all__ = ["PixelSize", "read_pixel_size", "read_z_step", "to_micrometres"]

# Units of length as metadata spell them, in micrometres.
_UNITS = {
    "pm": 1e-6, "picometer": 1e-6, "picometre": 1e-6,
    "a": 1e-4, "\u00c5": 1e-4, "\u212b": 1e-4, "angstrom": 1e-4,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
}
# Two sides this close (relative) are one pixel size: metadata rounds them a little apart.
SQUARE = 0.01
# A plain TIFF's resolution in centimetres is taken as a pixel size only within this range
# (micrometres): an image editor set to metric writes its 72 dpi so, 353 micrometres a pixel.
PLAIN_TIFF_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class PixelSize:
    """The size of a pixel in the sample: ``y`` (rows) and ``x`` (columns) in micrometres, and where
    it was read (``"OME-XML"``, ``"ImageJ"``, ``"TIFF resolution"``, ``"OME-Zarr"``, ``"given"``)."""

    y: float
    x: float
    source: str = "given"

    @property
    def square(self) -> bool:
        """Whether rows and columns are as far apart (within :data:`SQUARE`)."""
        return abs(self.y - self.x) <= SQUARE * max(self.y, self.x)

    @property
    def side(self) -> float:
        """The side of a square pixel, micrometres (the mean of the two, which :attr:`square` says agree)."""
        return 0.5 * (self.y + self.x)

    def __str__(self) -> str:
        # Width by height, as Fiji says it.
        return f"{self.side:.4g} \u00b5m" if self.square else f"{self.x:.4g} x {self.y:.4g} \u00b5m (width x height)"


def to_micrometres(value, unit: str | None) -> float | None:
    """``value`` in ``unit`` (a name or symbol of a unit of length, as metadata spell it) in
    micrometres; None for a unit that is no length (``pixel``, an inch's dots) or a value that is no
    positive finite number.

    Examples
    --------
    >>> to_micrometres(325, "nm"), to_micrometres(0.5, "micron"), to_micrometres(1, "pixel")
    (0.325, 0.5, None)
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(unit, str):
        return None
    key = unit.strip()
    key = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), key)  # ImageJ's escaped \u00B5m
    factor = _UNITS.get(key) or _UNITS.get(key.lower())
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor


def read_pixel_size(path) -> PixelSize | None:
    """The size of a pixel of an image file in the sample, as its metadata say; None where they do not
    (or say it in no unit of length).

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF (OME, ImageJ or plain), an OME-Zarr store, or another image file (None).

    Returns
    -------
    PixelSize or None
        None too for metadata that cannot be made sense of (a unit that is no length, a size that is
        no positive number, an OME-XML with one side only).

    Raises
    ------
    BadDataError
        A TIFF or Zarr store that cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        return _zarr_pixel_size(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    with open_tiff(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_xml_pixel_size(tif.ome_metadata)
        page = tif.pages.first
        unit = source = None
        if "XResolution" in page.tags and "YResolution" in page.tags:
            if tif.is_imagej:
                unit, source = (tif.imagej_metadata or {}).get("unit"), "ImageJ"
            elif int(page.resolutionunit) == 3:  # RESUNIT.CENTIMETER
                unit, source = "cm", "TIFF resolution"
        resolution = page.resolution
    if source is None or not all(r > 0 for r in resolution):
        return None
    x, y = (to_micrometres(1.0 / r, unit) for r in resolution)
    if x is None or y is None:
        return None
    low, high = PLAIN_TIFF_RANGE
    if source == "TIFF resolution" and not (low <= x <= high and low <= y <= high):
        return None
    return PixelSize(y, x, source)


def read_z_step(path) -> float | None:
    """The distance between the planes of a TIFF or OME-Zarr z-stack in micrometres, as its metadata say
    (OME-XML's ``PhysicalSizeZ``, ImageJ's ``spacing`` in its ``unit``, OME-Zarr's z scale and unit); None
    where they do not, or say it in no unit of length.

    Raises
    ------
    BadDataError
        A TIFF that cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        return _zarr_steps(path).get("z")
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    with open_tiff(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            pixels = first_pixels(tif.ome_metadata)
            return None if pixels is None else to_micrometres(pixels.get("PhysicalSizeZ"),
                                                              pixels.get("PhysicalSizeZUnit", "\u00b5m"))
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            return to_micrometres(meta.get("spacing"), meta.get("unit"))
    return None


def _ome_xml_pixel_size(xml: str) -> PixelSize | None:
    """The first image's ``Pixels`` sizes in an OME-XML document."""
    pixels = first_pixels(xml)
    if pixels is None:
        return None
    sides = [to_micrometres(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "\u00b5m"))
             for a in "YX"]
    return None if None in sides else PixelSize(sides[0], sides[1], "OME-XML")


def _zarr_pixel_size(path: Path) -> PixelSize | None:
    """The pixel size of the level of an OME-Zarr store that ``dsb segment`` reads (its first)."""
    steps = _zarr_steps(path)
    if steps.get("y") is None or steps.get("x") is None:
        return None
    return PixelSize(steps["y"], steps["x"], "OME-Zarr")


def _zarr_steps(path: Path) -> dict[str, float | None]:
    """Micrometres a step along each spatial axis (``z``, ``y``, ``x``) of the level of an OME-Zarr image
    that dsb reads, from its scale and axis units; ``{}`` for a plain array and for metadata not as OME-NGFF
    says (axes not one per array axis, scales of another length, values that are no numbers)."""
    node = open_zarr(path)
    if hasattr(node, "shape"):  # a plain array says no pixel size
        return {}
    try:
        _, axes, meta = image_level(path, node)
    except BadDataError:  # the reading names the problem
        return {}
    scale = None if axes is None else _scales(meta, len(axes))
    if scale is None:
        return {}
    units = [a.get("unit") if isinstance(a, dict) else None for a in meta["axes"]]
    return {a: to_micrometres(step, unit) for a, step, unit in zip(axes.lower(), scale, units) if a in "zyx"}


def _scales(meta: dict, length: int) -> list[float] | None:
    """The scale of each axis of the first level of a ``multiscales`` entry: the level's own times the
    whole multiscale's; None where a scale is not one number per axis."""
    scale = [1.0] * length
    for transforms in (meta["datasets"][0].get("coordinateTransformations"), meta.get("coordinateTransformations")):
        for transform in transforms or []:
            values = transform.get("scale") if isinstance(transform, dict) and transform.get("type") == "scale" \
                else None
            if values is None:
                continue
            if not isinstance(values, list) or len(values) != length:
                return None
            try:
                scale = [s * float(v) for s, v in zip(scale, values)]
            except (TypeError, ValueError):
                return None
    return scale
