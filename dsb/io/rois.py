"""Nuclei as a Fiji ROI set: one traced polygon per nucleus in a ZIP that the ROI Manager opens.

In Fiji, **File > Open** of the ZIP (or dragging it onto the window) fills the ROI Manager, whose
**Measure** then measures every nucleus in whatever image or channel is open. Each ROI is the nucleus's outline along its pixels' edges
(:func:`dsb.core.outlines.label_outlines`), of the type Fiji's wand traces, so it holds exactly the
nucleus's pixels, and is named by the nucleus's label (zero-padded, so that the ROI Manager lists
them in order): the ``label`` of ``NAME_nuclei.csv``.

Written with the ``roifile`` package (Christoph Gohlke's reader and writer of ImageJ's ROI
format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_path
from dsb.core.outlines import label_outlines

__all__ = ["imagej_rois", "write_rois"]


def imagej_rois(labels: np.ndarray, *, position: dict[str, int] | None = None, prefix: str = "",
                width: int = 4) -> list:
    """One ``roifile.ImagejRoi`` per nucleus of ``labels``, in label order.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..N nuclei.
    position : dict, optional
        Where in a stack the frame lies, 0-based: ``{"position": k}`` for a stack of one frame
        axis (Fiji's slice), ``{"t": i, "z": j}`` for a hyperstack.
    prefix : str
        Put before each ROI's name (a stack's frame: ``"t3-z2-"``).
    width : int
        The least number of digits of a name (zero-padded label).

    Returns
    -------
    list of roifile.ImagejRoi
    """
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    found, outlines = label_outlines(labels)
    rois = []
    for label, outline in zip(found.tolist(), outlines):
        # Fiji's pixel (x, y) spans x .. x + 1: our corners, at half-integer (row, col), plus 0.5.
        points = np.rint(outline[:, ::-1] + 0.5).astype(np.int32)
        roi = ImagejRoi.frompoints(points, name=f"{prefix}{label:0{width}d}", **(position or {}))
        roi.roitype = ROI_TYPE.TRACED  # as Fiji's wand traces: along the pixels' edges
        # No overlay options; but coordinates past ImageJ's 16-bit ones (beyond 60535 pixels) keep the
        # float coordinates roifile stores them in.
        roi.options = roi.options & ROI_OPTIONS.SUB_PIXEL_RESOLUTION
        roi.right, roi.bottom = int(points[:, 0].max()), int(points[:, 1].max())  # corners, not pixels
        rois.append(roi)
    return rois


def write_rois(path, labels: np.ndarray, frames: str = "") -> Path:
    """Write each nucleus of ``labels`` as a Fiji ROI into the ZIP ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ZIP to write (``NAME_rois.zip``); one ``NAME.roi`` entry per nucleus.
    labels : (H, W) ndarray of int, or (F..., H, W) for a stack
        0 background, 1..N nuclei (each frame of a stack numbered on its own).
    frames : str
        For a stack, the roles of its leading axes as :func:`dsb.io.writers.write_labels` takes them
        (``t`` time, ``z`` planes, ``f`` unnamed): each ROI then carries its frame's position in the
        label TIFF written with the same roles (its slice where the stack has one frame axis, its time
        point and plane in a hyperstack) and its name starts with it (``t3-z2-0042``: time point 3,
        plane 2, nucleus 42; an unnamed axis as ``s``, a slice).

    Returns
    -------
    Path
        The file written. An image without nuclei gets a ZIP without entries.

    Raises
    ------
    ValueError
        ``labels`` has not one frame role per leading axis.
    """
    import zipfile

    labels = np.asarray(labels)
    path = Path(path)
    if labels.ndim != 2 + len(frames):
        raise ValueError(f"`labels` of shape {labels.shape} with frames {frames!r} must be (H, W), or a stack "
                         "with one frame role per leading axis")
    width = max(4, len(str(int(labels.max(initial=0)))))
    letters = ["s" if role == "f" else role for role in frames]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for index in np.ndindex(*labels.shape[: len(frames)]):
            if len(frames) == 1:
                position = {"position": index[0]}
            else:  # a hyperstack: ImageJ's time points and slices (an unnamed axis is written as slices)
                position = {"t" if role == "t" else "z": i for role, i in zip(frames, index)}
            prefix = "".join(f"{letter}{i + 1}-" for letter, i in zip(letters, index))
            for roi in imagej_rois(labels[index], position=position if frames else None, prefix=prefix,
                                   width=width):
                archive.writestr(f"{roi.name}.roi", roi.tobytes())
    return path
