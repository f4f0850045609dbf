"""dsb: nucleus instance segmentation for the 2018 Data Science Bowl.

From Python (a notebook, a script), an image is an array and so are its nuclei:

>>> import numpy as np
>>> import dsb
>>> image = np.zeros((64, 64), np.uint8)
>>> image[20:36, 20:36] = 200
>>> labels = dsb.segment(image)       # (H, W) int32: 0 background, 1..N nuclei
>>> labels.shape
(64, 64)

=========================  ==================================================
:func:`segment`            label the nuclei of one image (grey or colour)
:func:`load_model`         load a trained model once, for many images
:func:`segment_blocks`     label an image larger than memory, block by block
:func:`measure`            measure each nucleus of a label image in its image
:func:`score`              the competition metric on one image
:func:`score_submission`   the competition metric on a submission
:func:`rle_encode`         one mask to Kaggle's run-length encoding
:func:`rle_decode`         a run-length encoding back to a mask
:func:`read_submission`    read and check a submission CSV
:func:`write_submission`   write a submission CSV
=========================  ==================================================

Everything else (training, tuning, the folder pipelines of the ``dsb``
command) lives in the submodules. Names are imported on first use, so that
``import dsb`` and ``dsb --help`` load neither Keras nor pandas.
"""

from dsb.core.lazy import lazy_names

# Not typing.TYPE_CHECKING: importing typing would double the import time; checkers know the name.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = [
    "segment",
    "load_model",
    "segment_blocks",
    "measure",
    "score",
    "score_submission",
    "rle_encode",
    "rle_decode",
    "read_submission",
    "write_submission",
]

# Public name -> the module it is defined in.
_HOMES = {
    "segment": ".api",
    "load_model": ".api",
    "segment_blocks": ".workflows.blocks",
    "measure": ".api",
    "score": ".api",
    "score_submission": ".kaggle.submission",
    "rle_encode": ".kaggle.rle",
    "rle_decode": ".kaggle.rle",
    "read_submission": ".kaggle.submission",
    "write_submission": ".kaggle.submission",
}

if TYPE_CHECKING:
    from dsb.api import load_model, score, segment
    from dsb.kaggle.rle import rle_decode, rle_encode
    from dsb.workflows.blocks import segment_blocks
    from dsb.kaggle.submission import read_submission, score_submission, write_submission


__getattr__, __dir__ = lazy_names(__name__, _HOMES, globals(), extra=("__version__",))
