"""A folder of images to a validated Kaggle submission CSV (``dsb predict``): where the CSV is written.

:func:`predict_folder` loads a run's network, predicts every image through the
folder pipeline (:mod:`dsb.io.folders`, :mod:`dsb.workflows.pipeline`),
encodes the nuclei (:func:`dsb.kaggle.rle.labels_to_rles`), writes the CSV
(:func:`dsb.kaggle.submission.write_submission`) and validates it before it
takes the place of the output; label images, when asked for, are moved into
place only then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from dsb.core.atomic import atomic_path, os_error, removed_if_left_empty, writable_dir
from dsb.core.config import Config
from dsb.core.errors import BadDataError, DsbError, EnvironmentProblem
from dsb.io.folders import Skips, folder_images, read_images
from dsb.io.writers import write_labels
from dsb.kaggle.rle import labels_to_rles
from dsb.kaggle.submission import (
    read_submission,
    validate_submission,
    write_submission,
)
from dsb.network.engines import load_network
from dsb.workflows.pipeline import nuclei_predictor, predict_each

__all__ = [
    "predict_images",
    "predict_folder",
]


def _writable_file(path: Path) -> None:
    writable_dir(path.parent)
    if path.is_dir():
        raise EnvironmentProblem("is a folder; expected a CSV file name", path=path)


def predict_images(
    model,
    config: Config,
    images_dir,
    *,
    out_csv,
    labels_dir=None,
    tta: bool | None = None,
    diameter: float | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`predict_folder` with a model already in memory.

    Parameters
    ----------
    model : keras.Model or callable
        See :func:`predict_probabilities`.
    config : Config
        The run's config.
    images_dir, out_csv, labels_dir, tta, diameter, skip_bad, progress
        See :func:`predict_folder`.

    Returns
    -------
    pandas.DataFrame
        See :func:`predict_folder`.
    """

    out_csv = Path(out_csv)
    with contextlib.ExitStack() as made:  # folders this call makes are not left empty by a failure
        for folder in (out_csv.parent, labels_dir):
            if folder is not None:
                made.enter_context(removed_if_left_empty(folder))
        return _predict_images(model, config, images_dir, out_csv=out_csv, labels_dir=labels_dir, tta=tta,
                               diameter=diameter, skip_bad=skip_bad, progress=progress)


def _predict_images(model, config: Config, images_dir, *, out_csv: Path, labels_dir, tta, diameter, skip_bad,
                    progress) -> pd.DataFrame:
    _writable_file(out_csv)
    skips = Skips(skip_bad)
    images, problems = folder_images(images_dir)
    for problem in problems:
        skips(problem)
    if labels_dir is not None:
        labels_dir = Path(labels_dir)
        if labels_dir.resolve() in {p.parent.resolve() for p in images.values()}:
            raise BadDataError("is where the input images are; give another folder for the label images",
                               path=labels_dir)
        writable_dir(labels_dir)

    # Every image is read before any is predicted, so that a bad one stops the run before anything is written.
    checked = read_images(images, skips, progress=progress)
    if not checked:
        raise BadDataError(f"none of the {len(images) + len(problems)} images could be read", path=images_dir)

    staging = None
    if labels_dir is not None:
        # Label images wait in a hidden folder until the CSV has passed validation.
        try:
            staging = Path(tempfile.mkdtemp(prefix=".dsb-labels.", suffix=".tmp", dir=labels_dir))
        except OSError as exc:
            raise os_error(exc, labels_dir) from exc
    try:
        rows: list[tuple[str, str]] = []
        shapes: dict[str, tuple[int, int]] = {}
        label_files: list[Path] = []
        predict = nuclei_predictor(model, config, tta=tta, diameter=diameter)
        found = predict_each(predict, checked.images(skips), skips=skips, progress=progress, length=len(checked))
        with contextlib.closing(found):  # a failed write stops the images in flight
            for image_id, _, _, nuclei in found:
                labels = nuclei.labels
                shapes[image_id] = labels.shape
                rles = labels_to_rles(labels)
                rows.extend((image_id, rle) for rle in rles or [""])
                if staging is not None:
                    label_files.append(write_labels(staging / f"{image_id}.png", labels))
        if not shapes:
            raise BadDataError("no image could be predicted", path=images_dir)
        # A skipped image still needs its row, or Kaggle refuses the file: an empty one (no nuclei). So
        # does a sample folder of a stage layout whose image is missing (its folder's name is its id).
        unread = [image_id for image_id in images if image_id not in shapes]
        unread += [Path(problem.path).name for problem in problems
                   if problem.path is not None and Path(problem.path).is_dir()
                   and Path(problem.path).parent == Path(images_dir)]
        unread = sorted(set(unread))
        rows.extend((image_id, "") for image_id in unread)

        table = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])
        table = table.sort_values("ImageId", kind="stable", ignore_index=True)
        table.attrs["skipped"] = skips.records
        table.attrs["empty_rows"] = unread
        with atomic_path(out_csv) as tmp:
            write_submission(table, tmp)
            # Validate the file as written, before it takes the place of out_csv (an empty row fits any shape).
            invalid = validate_submission(read_submission(tmp), {**shapes, **dict.fromkeys(unread, (1, 1))},
                                          path=out_csv)
            if invalid:
                raise DsbError(f"the predicted submission is not valid: {invalid[0]} ({len(invalid)} problems)",
                               path=out_csv)
            for file in label_files:
                try:
                    os.replace(file, labels_dir / file.name)
                except OSError as exc:
                    raise os_error(exc, labels_dir / file.name) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return table


def predict_folder(
    run_dir,
    images_dir,
    *,
    out_csv,
    labels_dir=None,
    tta: bool | None = None,
    diameter: float | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    engine: str = "auto",
    precision: str = "auto",
    scale_factor: float | None = None,
) -> pd.DataFrame:
    """Segment every image of a folder into a validated Kaggle submission CSV.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder (``model.keras`` and ``config.json``, tuned
        post-processing included).
    images_dir : str or os.PathLike
        A stage folder (``{id}/images/{id}.png``) or a flat folder of PNG,
        TIFF or JPEG images (id = file name without suffix).
    out_csv : str or os.PathLike
        The submission to write, atomically, after it has been validated.
    labels_dir : str or os.PathLike, optional
        Also write one label image per input here: ``{id}.png``, 16-bit
        greyscale (``{id}.tif``, 32-bit, above 65535 nuclei).
    tta : bool, optional
        Average over the eight flips and quarter turns; None follows the run's ``predict.tta``.
    diameter : float, optional
        The median nucleus diameter of every image, in pixels; by default
        each image's is estimated (:func:`predict_scaled`).
    skip_bad : bool
        Go on when an image cannot be used, naming it in
        ``result.attrs["skipped"]``; by default the first bad image stops the
        run before anything is written.
    progress : bool
        Draw progress bars on stderr.
    engine : str
        The inference engine: ``"keras"``, ``"onnx"``, ``"openvino"`` or
        ``"auto"`` (see :func:`dsb.network.engines.choose_engine`).
    precision : str
        ``"auto"`` (the default: the fastest format this CPU computes well for the run's files,
        :func:`dsb.network.engines.resolve_precision`), ``"float32"``, ``"bfloat16"``,
        or ``"int8"`` for the run's ``model.int8.onnx`` on an ONNX engine (:mod:`dsb.network.quantize`).
    scale_factor : float, optional
        Predict this many times larger than each image's estimated (or given)
        scale, in [0.5, 2]; None follows the run's ``predict.scale_factor``
        (which ``dsb tune --scale-factors`` chooses).

    Returns
    -------
    pandas.DataFrame
        ``ImageId``, ``EncodedPixels``: one row per nucleus, ids sorted, nuclei
        in label order; an image with no nucleus has one row with an empty
        ``EncodedPixels``. ``attrs["skipped"]`` holds a
        :class:`dsb.io.folders.Skip` per skipped file (empty unless ``skip_bad``), and
        ``attrs["empty_rows"]`` the ids of the skipped images, each written as one empty row
        (as an image without nuclei) so that the file still answers for every image.

    Raises
    ------
    BadDataError
        A bad image (without ``skip_bad``), an empty folder, a bad run folder.
    EnvironmentProblem
        An output that cannot be written.
    """

    model, config = load_network(run_dir, engine, precision, scale_factor=scale_factor)
    return predict_images(
        model, config, images_dir, out_csv=out_csv, labels_dir=labels_dir, tta=tta, diameter=diameter,
        skip_bad=skip_bad, progress=progress,
    )
