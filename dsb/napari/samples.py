"""Sample images for the plugin's File > Open Sample menu, drawn by the project itself.

No competition image, nor anything derived from one: bright blurred discs on a
dark noisy background (:func:`dsb.workflows.bioimageio.synthetic_image`), and the same
field as a stained, colour (RGB) slide. Nothing here imports napari or Qt.
"""

from __future__ import annotations

import numpy as np

from dsb.workflows.bioimageio import synthetic_image

__all__ = ["fluorescence_nuclei", "stained_nuclei"]

#: Height and width of the samples, and the median nucleus diameter in their pixels.
SIZE = 256
DIAMETER = 22.0


def fluorescence_nuclei() -> list[tuple]:
    """A grey 256 x 256 field of synthetic fluorescent nuclei, as napari layer data.

    Returns
    -------
    list of (ndarray, dict, str)
        One image layer: uint8 data, its name and a grey colour map.

    Examples
    --------
    >>> [(data, meta, kind)] = fluorescence_nuclei()
    >>> data.shape, data.dtype.name, kind
    ((256, 256), 'uint8', 'image')
    """
    image = synthetic_image(DIAMETER, SIZE, seed=1)
    return [(image, {"name": "dsb sample", "colormap": "gray"}, "image")]


def stained_nuclei() -> list[tuple]:
    """The synthetic field as a stained slide: purple nuclei on pink (RGB), as napari layer data.

    Returns
    -------
    list of (ndarray, dict, str)
        One RGB image layer, uint8 (H, W, 3).

    Examples
    --------
    >>> [(data, meta, kind)] = stained_nuclei()
    >>> data.shape, meta["rgb"]
    ((256, 256, 3), True)
    """
    grey = synthetic_image(DIAMETER, SIZE, seed=2).astype(np.float32) / 255
    background = np.array([236, 196, 214], np.float32)  # eosin pink
    nucleus = np.array([92, 52, 140], np.float32)  # haematoxylin purple
    rgb = background + grey[..., None] * (nucleus - background) / max(float(grey.max()), 1e-6)
    return [(np.clip(np.round(rgb), 0, 255).astype(np.uint8), {"name": "dsb stained sample", "rgb": True},
             "image")]
