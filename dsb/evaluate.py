"""Score a run on its own validation images, as the competition would.

The validation images are held out of training by ``dsb train`` and named in
the run's ``config.json``; scoring them with the run's tuned post-processing
gives a figure comparable to the leaderboard without touching the test set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .metric import score_labels
from .progress import track
from .tune import validation_data

__all__ = ["evaluate"]


def evaluate(run_dir, data_dir, *, tta: bool = False, progress: bool = True) -> tuple[float, pd.DataFrame]:
    """Predict a run's validation images and score them with the competition metric.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder (``model.keras`` and ``config.json`` with ``validation_ids``).
    data_dir : str or os.PathLike
        A stage1_train folder, or a folder holding one.
    tta : bool
        Average over the eight flips and rotations.
    progress : bool
        Draw a progress bar on stderr.

    Returns
    -------
    score : float
        The mean over validation images of the per-image score.
    table : pandas.DataFrame
        One row per image, as :func:`dsb.metric.score_labels`, with its ``type``.
    """
    from .predict import predict_labels
    from .run import load_run

    model, config = load_run(Path(run_dir))
    images, truth, types = validation_data(config, data_dir, progress=False)
    predicted = {
        image_id: predict_labels(model, config, raw, tta=tta)
        for image_id, raw in track(images.items(), length=len(images), label="predicting", enabled=progress)
    }
    return score_labels(truth, predicted, image_types=types)
