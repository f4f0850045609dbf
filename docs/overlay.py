"""Make docs/_static/overlay.png: the shipped model on a synthetic fluorescence field (no competition image).

Run from the repository root: ``python docs/overlay.py``.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

import dsb
from dsb.workflows.drawing import outline_overlay


def synthetic_field(size: int = 320, count: int = 60, seed: int = 3) -> np.ndarray:
    """Bright textured ellipses of 14 to 30 pixels, some touching, on a dark noisy background."""
    rng = np.random.default_rng(seed)
    rr, cc = np.indices((size, size), dtype=np.float32)
    image = np.zeros((size, size), np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(10, size - 10, 2)
        a, b = rng.uniform(7, 15), rng.uniform(6, 12)
        angle = rng.uniform(0, np.pi)
        y, x = rr - cy, cc - cx
        u = (x * np.cos(angle) + y * np.sin(angle)) / a
        v = (-x * np.sin(angle) + y * np.cos(angle)) / b
        inside = u**2 + v**2 <= 1
        image = np.maximum(image, inside * rng.uniform(0.35, 0.9))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 2.0).astype(np.float32)
    image = ndimage.gaussian_filter(image * (1 + 0.25 * texture), 1.2) + 0.05
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


if __name__ == "__main__":
    field = synthetic_field()
    labels = dsb.segment(field)
    overlay = outline_overlay(field, labels)
    picture = np.concatenate([np.repeat(field[:, :, None], 3, axis=2), np.full((field.shape[0], 8, 3), 255, np.uint8),
                              overlay], axis=1)
    out = Path(__file__).parent / "_static" / "overlay.png"
    Image.fromarray(picture).save(out, optimize=True)
    print(f"{out}: {labels.max()} nuclei")
