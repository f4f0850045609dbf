"""The folder a fine-tune widget keeps: the user's corrected images and the models trained on them.

A project folder holds::

    corrections/NAME.tif          an image the user corrected (as shown in the viewer)
    corrections/NAME_masks.tif    its corrected nuclei: 16- or 32-bit labels, 0 background
    models/finetune-NNN/          one ordinary ``dsb`` run folder per fine-tune

``corrections/`` is in the annotation layout (b) of :mod:`dsb.io.annotations`, so
``dsb train --init MODEL --data PROJECT/corrections`` reads it as it is, and
every ``models/finetune-NNN`` folder is a run that ``dsb segment --model`` and
:func:`dsb.load_model` take unchanged. Nothing here imports napari or Qt.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_path, os_error
from dsb.core.errors import BadDataError
from dsb.io.annotations import find_samples
from dsb.io.writers import write_labels

__all__ = ["Project", "check_correction", "correction_name", "spatial_shape"]

CORRECTIONS = "corrections"
MODELS = "models"
_MODEL_PREFIX = "finetune-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# A stem that ends like a label file would read as the label image of another stem.
_LABEL_ENDINGS = ("_cp_masks", "_masks", "_labels")


def spatial_shape(image: np.ndarray, rgb: bool) -> tuple[int, ...]:
    """The shape of ``image`` without its colour axis (the last one, when ``rgb``)."""
    return tuple(image.shape[:-1] if rgb else image.shape)


def correction_name(layer_name: str, frame: int | None = None) -> str:
    """A file stem for one corrected image: the layer's name made safe, and the frame of a stack.

    Examples
    --------
    >>> correction_name("cells 1.tif")
    'cells_1_tif'
    >>> correction_name("stack", 3)
    'stack-t003'
    >>> correction_name("x_masks")
    'x_masks-image'
    """
    stem = _UNSAFE.sub("_", str(layer_name)).strip("_-") or "image"
    if stem.endswith(_LABEL_ENDINGS):
        stem += "-image"
    return stem if frame is None else f"{stem}-t{int(frame):03d}"


def check_correction(image: np.ndarray, labels: np.ndarray, *, rgb: bool = False) -> np.ndarray:
    """The corrected labels of one 2-D image, checked for training.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    labels : (H, W) array_like of int
    rgb : bool
        Whether ``image`` has a colour axis last.

    Returns
    -------
    (H, W) ndarray of int32 or int64

    Raises
    ------
    BadDataError
        The labels have another shape than the image, hold no nucleus, or are not integers.
    """
    labels = np.asarray(labels)
    shape = spatial_shape(np.asarray(image), rgb)
    if labels.shape != shape:
        raise BadDataError(f"the labels have shape {labels.shape} but the image has {shape}; "
                           "pick the Labels layer drawn on this image")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise BadDataError(f"the labels hold {labels.dtype} values, expected integers")
    if not labels.any():
        raise BadDataError("the labels hold no nucleus: segment the image or paint its nuclei first")
    if labels.min() < 0:
        raise BadDataError("the labels hold negative values")
    return labels


class Project:
    """A project folder of corrected images and fine-tuned models (see the module's docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The folder; made on the first :meth:`save_correction`.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    @property
    def corrections(self) -> Path:
        """The folder of corrected images, in the layout ``dsb train --data`` reads."""
        return self.path / CORRECTIONS

    @property
    def models(self) -> Path:
        """The folder of fine-tuned run folders."""
        return self.path / MODELS

    def names(self) -> list[str]:
        """The stems of the corrected images saved so far, sorted."""
        if not self.corrections.is_dir():
            return []
        return sorted(p.name[: -len("_masks.tif")] for p in self.corrections.glob("*_masks.tif")
                      if (self.corrections / (p.name[: -len("_masks.tif")] + ".tif")).is_file())

    def save_correction(self, name: str, image: np.ndarray, labels: np.ndarray, *, rgb: bool = False
                        ) -> tuple[Path, Path]:
        """Save one corrected image, replacing an earlier one of the same name.

        Parameters
        ----------
        name : str
            The file stem (:func:`correction_name`).
        image : (H, W) or (H, W, C) ndarray
            The image as shown: grey, or colour with ``rgb``.
        labels : (H, W) ndarray of int
            The corrected nuclei.
        rgb : bool
            Whether ``image`` has a colour axis last.

        Returns
        -------
        (Path, Path)
            The image file and the label file.

        Raises
        ------
        BadDataError
            As :func:`check_correction`, or a name that is not a safe file stem.
        EnvironmentProblem
            The folder cannot be written.
        """
        import tifffile

        if name != correction_name(name):
            raise BadDataError(f"{name!r} is not a usable file stem; expected {correction_name(name)!r}")
        labels = check_correction(image, labels, rgb=rgb)
        image = np.asarray(image)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        folder = self.corrections
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, folder) from None
        image_path = folder / f"{name}.tif"
        with atomic_path(image_path) as tmp:
            tifffile.imwrite(tmp, image, photometric="rgb" if rgb else "minisblack", compression="zlib")
        labels_path = write_labels(folder / f"{name}_masks.tif", labels)
        return image_path, labels_path

    def check(self) -> int:
        """How many corrected images ``dsb train`` finds in the project (:func:`dsb.io.annotations.find_samples`).

        Raises
        ------
        BadDataError
            No corrected image yet, or a file the training data loader refuses.
        """
        if not self.corrections.is_dir():
            raise BadDataError("holds no corrected image yet", path=self.path)
        return len(find_samples(self.corrections))

    def new_model_dir(self) -> Path:
        """A fresh run folder name for the next fine-tune: ``models/finetune-NNN``, one above the last."""
        numbers = [int(p.name[len(_MODEL_PREFIX):]) for p in self.models.glob(f"{_MODEL_PREFIX}*")
                   if p.name[len(_MODEL_PREFIX):].isdigit()]
        return self.models / f"{_MODEL_PREFIX}{max(numbers, default=0) + 1:03d}"
