"""Label images, pictures and tables on disk: :func:`write_labels` (the one label writer), :func:`write_png`
and :func:`write_table` (the one writer of measurement tables)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_path

__all__ = [
    "tiff_calibration",
    "write_labels",
    "write_rgb_stack",
    "write_png",
    "write_table",
]


_UINT16_MAX = np.iinfo(np.uint16).max

# Ten significant digits: a 16-bit image's integrated intensity stays exact up to 9,999,999,999 counts, a
# centroid 100,000 pixels from the origin keeps four decimals; six lost both.
TABLE_FLOAT_FORMAT = "%.10g"


def write_table(path, table) -> Path:
    """Write a pandas table of measurements as CSV, atomically, numbers to ten significant digits
    (:data:`TABLE_FLOAT_FORMAT`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format=TABLE_FLOAT_FORMAT)
    return path


def write_labels(path, labels: np.ndarray, frames: str = "", *, pixel_size: float | None = None,
                 z_step: float | None = None) -> Path:
    """Write instance labels as an image that Fiji, napari and scikit-image open, atomically.

    The suffix of ``path`` says the format:

    - ``.png``: 16-bit greyscale PNG; above 65535 nuclei, which a PNG cannot
      hold, a 32-bit TIFF with the suffix ``.tif`` instead (``dsb predict --labels``);
    - ``.tif`` or ``.tiff``: greyscale TIFF, deflate-compressed, 16-bit
      (32-bit above 65535 nuclei) (``dsb segment``).

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    labels : (H, W) ndarray of int, or (F..., H, W) for a stack (TIFF only)
        0 background, 1..N nuclei.
    frames : str
        For a stack, the roles of its leading axes (``t`` time, ``z`` planes, ``f`` unnamed,
        :func:`dsb.io.channels.axis_roles`): a 16-bit TIFF is written as an ImageJ hyperstack, time
        points before slices as ImageJ orders them (an unnamed axis as slices), which Fiji and
        napari open as a stack.
    pixel_size : float, optional
        The side of a pixel in micrometres, written into a TIFF as Fiji reads it (:func:`tiff_calibration`),
        so that the labels lie over their image at its scale; a PNG holds none.
    z_step : float, optional
        The distance between a z-stack's planes in micrometres, written with ``pixel_size`` into an
        ImageJ hyperstack as Fiji reads it (``spacing``).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        ``path`` has another suffix.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_labels(folder / "a.png", np.ones((2, 2), np.int32)).name
    'a.png'
    >>> write_labels(folder / "b.png", np.full((2, 2), 70_000)).name
    'b.tif'
    """
    labels = np.asarray(labels)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(f"`path` ({path}) must end in .png, .tif or .tiff")
    if labels.ndim != 2 + len(frames) or (frames and suffix == ".png"):
        raise ValueError(f"`labels` of shape {labels.shape} with frames {frames!r} must be (H, W), or a stack "
                         "with one frame role per leading axis written as TIFF")
    wide = bool(labels.size) and labels.max() > _UINT16_MAX
    if suffix == ".png" and not wide:
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
        return path
    import tifffile

    if suffix == ".png":
        path = path.with_suffix(".tif")
    order, imagej = _imagej_frames(frames)
    # ImageJ's format (16 bits at most) where it holds the frames or the pixel size.
    as_imagej = (bool(frames) or pixel_size is not None) and not wide
    calibration = tiff_calibration(pixel_size, imagej=as_imagej)
    with atomic_path(path) as tmp:
        if as_imagej:
            labels = np.transpose(labels, [*order, len(frames), len(frames) + 1])
            metadata = {"axes": imagej + "YX", **calibration.pop("metadata", {})}
            if z_step is not None and pixel_size is not None and "Z" in imagej:
                metadata["spacing"] = z_step
            tifffile.imwrite(tmp, labels.astype(np.uint16), imagej=True, metadata=metadata, compression="zlib",
                             **calibration)
        else:
            tifffile.imwrite(tmp, labels.astype(np.uint32 if wide else np.uint16), photometric="minisblack",
                             compression="zlib", **calibration)
    return path


def tiff_calibration(pixel_size: float | None, *, imagej: bool) -> dict:
    """tifffile's ``imwrite`` arguments that record a pixel of ``pixel_size`` micrometres: in an ImageJ
    TIFF its resolution in pixels per micrometre and ``unit=um`` (what Fiji writes and reads), in
    another its resolution in pixels per centimetre; ``{}`` for None. :func:`dsb.io.pixel_size.read_pixel_size`
    reads both."""
    if pixel_size is None:
        return {}
    if imagej:
        return {"resolution": (1.0 / pixel_size, 1.0 / pixel_size), "metadata": {"unit": "um"}}
    return {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"}


def _imagej_frames(frames: str) -> tuple[list[int], str]:
    """The frame axes in ImageJ's order (time points, then slices) and their ImageJ names."""
    order = sorted(range(len(frames)), key=lambda i: frames[i] != "t")
    return order, "".join("T" if frames[i] == "t" else "Z" for i in order)


def write_rgb_stack(path, pages: list, lead: tuple[int, ...], frames: str, *, pixel_size: float | None = None) -> Path:
    """Write RGB uint8 frames (an overlay of a stack) as an ImageJ hyperstack, atomically, frame by frame.

    Parameters
    ----------
    path : path
        A ``.tif`` file.
    pages : list of (H, W, 3) ndarray of uint8
        The frames in the order of ``numpy.ndindex(*lead)``.
    lead : tuple of int
        The frame axes' lengths.
    frames : str
        Their roles, as for :func:`write_labels` (written time points first).
    pixel_size : float, optional
        Micrometres a pixel, as for :func:`write_labels`.
    """
    import tifffile

    path = Path(path)
    order, imagej = _imagej_frames(frames)
    if order != sorted(order):  # stored slices before time points: ImageJ's order moves them
        pages = [pages[i] for i in np.arange(len(pages)).reshape(lead).transpose(order).ravel()]
        lead = tuple(lead[i] for i in order)
    calibration = tiff_calibration(pixel_size, imagej=True)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, iter(pages), shape=(*lead, *pages[0].shape), dtype=np.uint8, imagej=True,
                         metadata={"axes": imagej + "YXS", **calibration.pop("metadata", {})}, compression="zlib",
                         **calibration)
    return path


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array (:mod:`dsb.workflows.drawing`) as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return path
