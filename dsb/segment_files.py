"""Segment any microscope image with a trained model and measure each nucleus.

``dsb segment`` is for people with their own images and no wish to train: it
takes PNG, TIFF or JPEG files of any size, 8 or 16 bits, grey or colour, and
writes per image

- ``<name>_labels.tif``: the nuclei as a 16-bit label image (0 background,
  1..N nuclei) that Fiji, napari and scikit-image open;
- ``<name>_nuclei.csv``: one row per nucleus (see :func:`measure_nuclei`);
- ``<name>_overlay.png`` (optional): the image with the nuclei outlined;

plus ``summary.csv`` with one row per input file. With no model given it uses
the model shipped inside the package (:func:`default_model_dir`).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, writable_dir
from .dataset import IMAGE_SUFFIXES
from .errors import BadDataError, DsbError, EnvironmentProblem
from .progress import track

__all__ = [
    "MEASUREMENT_COLUMNS",
    "SUMMARY_COLUMNS",
    "OUTLINE_COLOURS",
    "default_model_dir",
    "find_images",
    "measure_nuclei",
    "to_rgb8",
    "draw_outlines",
    "outline_overlay",
    "write_label_tiff",
    "write_png",
    "segment_paths",
]

MEASUREMENT_COLUMNS = (
    "label",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "area",
    "perimeter",
    "eccentricity",
    "mean_intensity",
)
SUMMARY_COLUMNS = ("file", "status", "nuclei", "diameter", "labels", "measurements", "overlay", "error")
# Outlines in yellow on a dark (fluorescence) image, in blue on a light (brightfield) one.
OUTLINE_COLOURS = {"dark": (255, 255, 0), "light": (0, 70, 255)}

_DEFAULT_MODEL = Path(__file__).parent / "models" / "default"
# regionprops_table's names -> ours: row/col say which axis, unlike -0/-1.
_REGIONPROPS_NAMES = {
    "label": "label",
    "centroid-0": "centroid_row",
    "centroid-1": "centroid_col",
    "bbox-0": "bbox_min_row",
    "bbox-1": "bbox_min_col",
    "bbox-2": "bbox_max_row",
    "bbox-3": "bbox_max_col",
    "area": "area",
    "perimeter": "perimeter",
    "eccentricity": "eccentricity",
    "intensity_mean": "mean_intensity",
}


def default_model_dir() -> Path:
    """The run folder of the model shipped inside the package.

    Returns
    -------
    Path
        ``dsb/models/default``, holding ``model.keras`` and ``config.json``.

    Raises
    ------
    EnvironmentProblem
        When this installation has no shipped model yet.
    """
    if not (_DEFAULT_MODEL / "model.keras").is_file():
        raise EnvironmentProblem(
            "this installation ships no default model (model.keras is missing); "
            "pass a run folder with --model",
            path=_DEFAULT_MODEL,
        )
    return _DEFAULT_MODEL


def find_images(paths) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into the image files to segment.

    A folder contributes the image files (PNG, TIFF, JPEG, BMP: the suffixes
    of :data:`dsb.dataset.IMAGE_SUFFIXES`) directly inside it, not those of its
    subfolders; hidden files and other suffixes are left alone. A file named
    explicitly must have one of those suffixes.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Image files and folders of images.

    Returns
    -------
    images : list of Path
        The files to segment, in the order given (each folder sorted by name),
        without duplicates.
    problems : list of (Path, str)
        Paths that cannot be segmented and why: missing, a file with another
        suffix, a folder with no images.
    """
    images: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            images.append(path)

    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                problems.append((path, f"folder holds no images (expected files ending {', '.join(IMAGE_SUFFIXES)})"))
            for p in found:
                add(p)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                add(path)
            else:
                problems.append((path, f"suffix {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_SUFFIXES)}"))
        else:
            problems.append((path, "no such file or folder"))
    return images, problems


def measure_nuclei(labels: np.ndarray, intensity: np.ndarray) -> pd.DataFrame:
    """Measure each nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 for background, 1..N for nuclei.
    intensity : (H, W) ndarray of float
        The grey image the mean intensity is taken from (``to_gray``'s [0, 1]
        scale in ``dsb segment``).

    Returns
    -------
    DataFrame
        One row per nucleus, by label, with the columns of
        :data:`MEASUREMENT_COLUMNS`: ``label``; ``centroid_row``, ``centroid_col``
        (pixels); ``bbox_min_row``, ``bbox_min_col`` (inclusive) and
        ``bbox_max_row``, ``bbox_max_col`` (exclusive, as in Python slicing);
        ``area`` (pixels); ``perimeter`` (pixels); ``eccentricity`` (0 for a
        circle); ``mean_intensity``.

    Examples
    --------
    >>> labels = np.zeros((5, 5), np.int32)
    >>> labels[1:3, 1:4] = 1
    >>> row = measure_nuclei(labels, np.ones((5, 5))).iloc[0]
    >>> int(row.area), float(row.centroid_row), float(row.centroid_col)
    (6, 1.5, 2.0)
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    intensity = np.asarray(intensity)
    if labels.ndim != 2:
        raise TypeError(f"`labels` must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`labels` must hold integers, got {labels.dtype}")
    if intensity.shape != labels.shape:
        raise ValueError(
            f"`intensity` (shape {intensity.shape}) must have the same shape as `labels` (shape {labels.shape})"
        )
    table = regionprops_table(
        labels,
        intensity_image=intensity.astype(np.float64, copy=False),
        properties=("label", "centroid", "bbox", "area", "perimeter", "eccentricity", "intensity_mean"),
    )
    frame = pd.DataFrame(table).rename(columns=_REGIONPROPS_NAMES)
    return frame.loc[:, list(MEASUREMENT_COLUMNS)].astype(
        {"label": np.int64, "bbox_min_row": np.int64, "bbox_min_col": np.int64,
         "bbox_max_row": np.int64, "bbox_max_col": np.int64, "area": np.int64}
    )


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """An image of any depth and channel count as RGB uint8 for display.

    Grey is repeated into three channels, alpha is dropped, and the intensities
    are stretched between the 0.5 and 99.8 percentiles so that dim 8-bit and
    16-bit fluorescence images are visible.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        C is 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    image = np.asarray(image)
    if image.ndim == 3 and 1 <= image.shape[2] <= 4:
        # Grey plus alpha keeps its grey; RGBA drops its alpha.
        image = image[..., :3] if image.shape[2] >= 3 else image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"`image` must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
    values = image.astype(np.float32)
    if values.size == 0:
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(values, (0.5, 99.8))
    if high > low:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    else:
        # A flat image has nothing to stretch: keep its level within its dtype's range.
        top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
        scaled = np.clip(values / top, 0.0, 1.0)
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
    labels = np.asarray(labels)
    if labels.shape != out.shape[:2]:
        raise ValueError(f"`labels` (shape {labels.shape}) must match the image (shape {out.shape[:2]})")
    if labels.any():
        edges = find_boundaries(labels, mode=mode)
        if width > 1:
            from scipy.ndimage import binary_dilation

            edges = binary_dilation(edges, iterations=width - 1)
        out[edges] = colour
    return out


def outline_overlay(image: np.ndarray, labels: np.ndarray, *, colour=None) -> np.ndarray:
    """The image for display (:func:`to_rgb8`) with every nucleus outlined.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    labels : (H, W) ndarray of int
    colour : tuple of 3 ints, optional
        By default yellow on a dark image, blue on a light one
        (:data:`OUTLINE_COLOURS`).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    rgb = to_rgb8(image)
    if colour is None:
        colour = OUTLINE_COLOURS["dark" if rgb.mean() < 128 else "light"]
    return draw_outlines(rgb, labels, colour)


def write_label_tiff(path, labels: np.ndarray) -> Path:
    """Write labels as a 16-bit greyscale TIFF (32-bit above 65535 nuclei), atomically.

    Compressed with deflate, which Fiji, napari and scikit-image read.
    """
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.size == 0 or labels.max() <= np.iinfo(np.uint16).max else np.uint32
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), photometric="minisblack", compression="zlib")
    return path


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def _check_image(path: Path):
    """Read one image (BadDataError naming the file if the model cannot take it); return (raw, grey)."""
    from .dataset import read_image
    from .preprocess import to_gray

    image = read_image(path)  # checks the layout: (H, W) or (H, W, 1..4), at least one pixel
    return image, to_gray(image)


def _outputs(out_dir: Path, image: Path) -> dict[str, Path]:
    return {
        "labels": out_dir / f"{image.stem}_labels.tif",
        "measurements": out_dir / f"{image.stem}_nuclei.csv",
        "overlay": out_dir / f"{image.stem}_overlay.png",
    }


def segment_paths(
    paths,
    *,
    model_dir=None,
    out_dir,
    tta: bool = False,
    overlay: bool = False,
    diameter: float | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment microscope images and measure their nuclei.

    Every image is checked before anything is written: a bad one (unreadable,
    not an image, an unsupported shape) stops the run with one line naming the
    file, unless ``skip_bad``, which reports it on stderr and goes on. All
    files are written atomically.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        PNG, TIFF or JPEG files, and folders of them (see :func:`find_images`).
    model_dir : str or os.PathLike, optional
        A run folder (``model.keras`` and ``config.json``); by default the
        model shipped with the package.
    out_dir : str or os.PathLike
        Where ``<name>_labels.tif``, ``<name>_nuclei.csv``, ``<name>_overlay.png``
        and ``summary.csv`` go; created if needed.
    tta : bool
        Average predictions over flips and 90-degree rotations.
    overlay : bool
        Also write ``<name>_overlay.png``.
    diameter : float, optional
        The median nucleus diameter in pixels of every image; by default each
        image's is estimated (:func:`dsb.predict.predict_scaled`). The
        summary's ``diameter`` column says which was used.
    skip_bad : bool
        Report bad images and go on with the others instead of stopping.
    progress : bool
        Draw a progress bar over the files on stderr.

    Returns
    -------
    DataFrame
        One row per input with :data:`SUMMARY_COLUMNS`: ``file``, ``status``
        ("ok" or "skipped"), ``nuclei``, ``diameter`` (pixels, given or
        estimated; empty when unknown), the paths written (empty when not
        written) and ``error`` (empty when ok).

    Raises
    ------
    BadDataError
        For a bad input without ``skip_bad``, for two inputs that would write
        the same output files, and when there is no image at all.
    EnvironmentProblem
        When there is no model or ``out_dir`` is not writable.
    """
    out_dir = Path(out_dir)
    # Resolved first, so that a missing default model is said before any image is read.
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    paths = [Path(p) for p in paths]
    images, problems = find_images(paths)
    # Rows keyed by input so that the summary keeps the order the files were given in.
    rows: dict[Path, dict] = {}

    def skip(path: Path, exc: DsbError) -> None:
        if not skip_bad:
            raise exc
        print(f"skipped: {exc}", file=sys.stderr)
        rows[path] = _row(path, "skipped", error=exc.message)

    for path, message in problems:
        skip(path, BadDataError(message, path=path))

    by_name: dict[str, Path] = {}
    for image in images:
        other = by_name.setdefault(image.stem, image)
        if other != image:
            raise BadDataError(
                f"would write the same output files as {other} (same name {image.stem!r}); rename one of them",
                path=image,
            )

    # Check every image first so that a bad one stops the run before anything is written.
    good: list[Path] = []
    for image in track(images, label="checking images", enabled=progress and len(images) > 1):
        try:
            _check_image(image)
        except DsbError as exc:
            skip(image, exc)
        else:
            good.append(image)
    if not good:
        raise BadDataError("no image to segment", path=", ".join(str(p) for p in paths) or None)

    predict = _predictor(model_dir, tta=tta, diameter=diameter)
    writable_dir(out_dir)
    for image in track(good, label="segmenting", enabled=progress):
        try:
            raw, gray = _check_image(image)
            nuclei = predict(raw)
            labels = nuclei.labels
        except BadDataError as exc:
            skip(image, exc)
            continue
        targets = _outputs(out_dir, image)
        table = measure_nuclei(labels, gray)
        write_label_tiff(targets["labels"], labels)
        with atomic_path(targets["measurements"]) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        if overlay:
            write_png(targets["overlay"], outline_overlay(raw, labels))
        else:
            del targets["overlay"]
        rows[image] = _row(image, "ok", nuclei=len(table), diameter=nuclei.diameter,
                           **{k: str(v) for k, v in targets.items()})

    order = [path for path, _ in problems] + images
    summary = pd.DataFrame([rows[p] for p in order if p in rows], columns=list(SUMMARY_COLUMNS))
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary


def _row(path: Path, status: str, *, nuclei: int = 0, diameter: float = math.nan, labels: str = "",
         measurements: str = "", overlay: str = "", error: str = "") -> dict:
    return {"file": str(path), "status": status, "nuclei": nuclei,
            "diameter": round(diameter, 2) if math.isfinite(diameter) else "", "labels": labels,
            "measurements": measurements, "overlay": overlay, "error": error}


def _predictor(model_dir, *, tta: bool, diameter: float | None = None):
    """Load the model once; return a function from a raw image to its :class:`dsb.predict.Nuclei`."""
    from .predict import predict_nuclei
    from .run import load_run

    model, config = load_run(model_dir)
    return lambda raw: predict_nuclei(model, config, raw, tta=tta, diameter=diameter)
