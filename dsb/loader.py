"""Training data: targets from instance labels, augmented crops, the validation split.

Determinism is by construction: every training sample is drawn from a random
generator seeded by ``(seed, epoch, batch, position in batch)`` and every
epoch's image order from ``(seed, epoch)``, so batch ``b`` of epoch ``e`` is the
same whatever the number of loader threads, processes or restarts. The
training loader is an endless :class:`keras.utils.PyDataset` indexed by the
global step; a resumed run starts it at ``epoch * steps_per_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from scipy import ndimage

from .config import TrainConfig

__all__ = [
    "make_targets",
    "split_ids",
    "augment_crop",
    "CropLoader",
    "ValidationLoader",
    "to_network_input",
]

# Tags that keep the streams of random numbers apart.
_ORDER, _SAMPLE = 0, 1


def to_network_input(image: np.ndarray) -> np.ndarray:
    """A prepared uint8 grey image as the network sees it: float32 in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return image.astype(np.float32, copy=False)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def make_targets(labels: np.ndarray, *, border_width: int) -> np.ndarray:
    """Body and border targets from instance labels.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..N nuclei.
    border_width : int
        Width in pixels of the border ring; 0 gives an empty border channel.

    Returns
    -------
    (H, W, 2) ndarray of float32
        Channel 0 (body): 1 on every nucleus pixel. Channel 1 (border): 1 on
        nucleus pixels within ``border_width`` (Euclidean) of a pixel of another
        label, background or a touching nucleus, so body minus border separates
        touching nuclei. The image edge does not count as a border.

    Examples
    --------
    >>> labels = np.zeros((5, 7), np.int32); labels[1:4, 1:4] = 1; labels[1:4, 4:6] = 2
    >>> make_targets(labels, border_width=1)[..., 1].astype(int)[2]
    array([0, 1, 0, 1, 1, 1, 0])
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`labels` must be 2-D (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`labels` must hold integers, got dtype {labels.dtype}")
    if border_width < 0:
        raise ValueError(f"`border_width` must be >= 0, got {border_width}")
    body = labels > 0
    targets = np.zeros(labels.shape + (2,), np.float32)
    targets[..., 0] = body
    if border_width > 0:
        # A pixel is near another label when the max or min label in its
        # neighbourhood differs from its own; "nearest" keeps the edge neutral.
        footprint = _disk(border_width)
        high = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
        low = ndimage.minimum_filter(labels, footprint=footprint, mode="nearest")
        targets[..., 1] = body & ((high != labels) | (low != labels))
    return targets


def split_ids(ids: Sequence[str], types: Sequence[str], *, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split image ids into training and validation, stratified by image type.

    Each type contributes ``round(fraction * n_type)`` images to validation,
    chosen by a generator seeded with ``seed``; the result does not depend on
    the order of ``ids``.

    Parameters
    ----------
    ids : sequence of str
    types : sequence of str
        Image type of each id (same length as ``ids``).
    fraction : float
        In [0, 1).
    seed : int

    Returns
    -------
    (train_ids, validation_ids) : tuple of list of str
        Both in the order of ``ids``.
    """
    ids = [str(i) for i in ids]
    types = [str(t) for t in types]
    if len(ids) != len(types):
        raise ValueError(f"`ids` ({len(ids)}) and `types` ({len(types)}) must have the same length")
    if len(set(ids)) != len(ids):
        raise ValueError("`ids` holds duplicates")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}")
    held_out: set[str] = set()
    for i, kind in enumerate(sorted(set(types))):
        group = sorted(id_ for id_, t in zip(ids, types) if t == kind)
        n_val = int(round(fraction * len(group)))
        rng = np.random.default_rng([seed, i])
        held_out.update(group[j] for j in rng.permutation(len(group))[:n_val])
    return [i for i in ids if i not in held_out], [i for i in ids if i in held_out]


def _window_start(rng: np.random.Generator, size: int, window: float) -> int:
    """Start of a window of ``window`` pixels on an axis of ``size`` (negative: reflected padding)."""
    slack = size - window
    if slack >= 0:
        return int(rng.integers(0, math.floor(slack) + 1))
    return int(rng.integers(math.floor(slack), 1))


def _extract(image, labels, start, scale: float, crop_size: int):
    """Crop (and rescale by ``scale``) with mirrored padding: linear for the image, nearest for labels."""
    (r0, c0) = start
    if scale == 1.0 and r0 >= 0 and c0 >= 0 and r0 + crop_size <= image.shape[0] and c0 + crop_size <= image.shape[1]:
        window = np.s_[r0 : r0 + crop_size, c0 : c0 + crop_size]
        return to_network_input(image[window]), np.ascontiguousarray(labels[window])
    # Output pixel o samples the input at (o + 0.5) / scale - 0.5 + start (pixel centres aligned).
    inv = 1.0 / scale
    offset = (r0 + 0.5 * inv - 0.5, c0 + 0.5 * inv - 0.5)
    shape = (crop_size, crop_size)
    out_image = ndimage.affine_transform(
        to_network_input(image), (inv, inv), offset=offset, output_shape=shape, order=1, mode="mirror"
    )
    out_labels = ndimage.affine_transform(
        labels, (inv, inv), offset=offset, output_shape=shape, order=0, mode="mirror"
    )
    return out_image.astype(np.float32, copy=False), out_labels


def augment_crop(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int,
    border_width: int,
    flips: bool = True,
    rotations: bool = True,
    scale_jitter: float = 0.0,
    intensity_jitter: float = 0.0,
    contrast_jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One random training sample from an image and its labels.

    Picks a zoom factor in ``[1 - scale_jitter, 1 + scale_jitter]`` and a
    window of ``crop_size / zoom`` pixels (images smaller than the window are
    padded by reflection), resamples it to ``crop_size`` (image linear, labels
    nearest), derives the targets at the crop's own scale (so the border is
    ``border_width`` pixels wide in what the network sees), then flips and
    rotates by multiples of 90 degrees, and jitters brightness and contrast.

    Parameters
    ----------
    image : (H, W) ndarray of uint8 or float
        uint8 is scaled to [0, 1].
    labels : (H, W) ndarray of int
    rng : numpy.random.Generator

    Returns
    -------
    x : (crop_size, crop_size, 1) ndarray of float32 in [0, 1]
    y : (crop_size, crop_size, 2) ndarray of float32
    """
    scale = float(rng.uniform(1.0 - scale_jitter, 1.0 + scale_jitter)) if scale_jitter > 0 else 1.0
    window = crop_size / scale
    start = (_window_start(rng, image.shape[0], window), _window_start(rng, image.shape[1], window))
    x, crop_labels = _extract(image, labels, start, scale, crop_size)
    y = make_targets(crop_labels, border_width=border_width)
    if flips and rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    if flips and rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    if rotations:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k), np.rot90(y, k)
    if contrast_jitter > 0 or intensity_jitter > 0:
        contrast = rng.uniform(1.0 - contrast_jitter, 1.0 + contrast_jitter) if contrast_jitter > 0 else 1.0
        shift = rng.uniform(-intensity_jitter, intensity_jitter) if intensity_jitter > 0 else 0.0
        mean = x.mean()
        x = np.clip((x - mean) * np.float32(contrast) + np.float32(mean + shift), 0.0, 1.0)
    return np.ascontiguousarray(x, np.float32)[..., None], np.ascontiguousarray(y, np.float32)


def _pairs(images, labels, batch_size: int, shard: tuple[int, int], what: str) -> list:
    """(image, labels) pairs, after the checks both loaders need."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    if not images:
        raise ValueError(f"no {what} images")
    if batch_size % shard[1]:
        raise ValueError(f"batch size {batch_size} does not split over {shard[1]} processes")
    return list(zip(images, labels))


class CropLoader(keras.utils.PyDataset):
    """Endless stream of augmented training batches, indexed by global step.

    Batch ``i`` belongs to epoch ``e = (start_step + i) // steps_per_epoch``.
    Each epoch visits the images in a fresh order (a permutation seeded by
    ``(seed, e)``), ``batch_size`` (image, labels) pairs per batch, wrapping
    around when an epoch asks for more samples than there are images.

    Parameters
    ----------
    images : list of (H, W) ndarray of uint8
    labels : list of (H, W) ndarray of int32
        Paired with ``images``; sizes may differ between pairs.
    batch_size : int
        Samples in the global batch (over all replicas and processes).
    steps_per_epoch : int
    seed : int
    crop_size, border_width : int
    augment : TrainConfig, optional
        Flips, rotations and jitters to apply; None: plain crops.
    start_step : int
        Global step of index 0 (``epoch * steps_per_epoch`` on resume).
    shard : (int, int)
        ``(index, count)``: this process yields samples
        ``[index * batch_size // count, (index + 1) * batch_size // count)`` of each
        global batch (multi-host training); the global batch stays the same.
    workers, max_queue_size
        Passed to :class:`keras.utils.PyDataset` (threads; order is kept).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        crop_size: int = 256,
        border_width: int = 2,
        augment: TrainConfig | None = None,
        start_step: int = 0,
        shard: tuple[int, int] = (0, 1),
        workers: int = 1,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.pairs = _pairs(images, labels, batch_size, shard, "training")  # shuffled as pairs, never as two lists
        index, count = shard
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = int(seed)
        self.crop_size = int(crop_size)
        self.border_width = int(border_width)
        self.augment = augment
        self.start_step = int(start_step)
        self.local = range(index * batch_size // count, (index + 1) * batch_size // count)

    @property
    def num_batches(self):
        return None  # endless: fit(steps_per_epoch=...) cuts it into epochs

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which ``epoch`` visits the images."""
        return np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self.pairs))

    def sample(self, epoch: int, batch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``position`` of batch ``batch`` of ``epoch``: ``(x (S,S,1), y (S,S,2))``."""
        order = self.epoch_order(epoch)
        image, labels = self.pairs[order[(batch * self.batch_size + position) % len(order)]]
        rng = np.random.default_rng([self.seed, _SAMPLE, epoch, batch, position])
        a = self.augment
        return augment_crop(
            image,
            labels,
            rng,
            crop_size=self.crop_size,
            border_width=self.border_width,
            flips=bool(a and a.flips),
            rotations=bool(a and a.rotations),
            scale_jitter=a.scale_jitter if a else 0.0,
            intensity_jitter=a.intensity_jitter if a else 0.0,
            contrast_jitter=a.contrast_jitter if a else 0.0,
        )

    def __getitem__(self, index: int):
        epoch, batch = divmod(self.start_step + int(index), self.steps_per_epoch)
        samples = [self.sample(epoch, batch, k) for k in self.local]
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])


def _starts(size: int, crop: int) -> list[int]:
    """Window starts that cover an axis; one centred window when the axis is shorter."""
    if size <= crop:
        return [(size - crop) // 2]
    n = math.ceil(size / crop)
    return sorted({round(i * (size - crop) / (n - 1)) for i in range(n)})


class ValidationLoader(keras.utils.PyDataset):
    """Fixed, unaugmented crops that cover every validation image.

    Each image is covered by ``crop_size`` windows (the last ones shifted back
    inside the image; images smaller than a window are centred and padded by
    reflection). The list is padded with its first crops to whole batches, so
    every batch has ``batch_size`` samples (needed to split batches over
    devices). The same batches every epoch, so validation figures compare.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        batch_size: int,
        crop_size: int = 256,
        border_width: int = 2,
        shard: tuple[int, int] = (0, 1),
        workers: int = 1,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.pairs = _pairs(images, labels, batch_size, shard, "validation")
        index, count = shard
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.border_width = int(border_width)
        self.crops = [
            (i, (r, c))
            for i, (image, _) in enumerate(self.pairs)
            for r in _starts(image.shape[0], crop_size)
            for c in _starts(image.shape[1], crop_size)
        ]
        self.n_crops = len(self.crops)
        missing = -len(self.crops) % batch_size
        self.crops += [self.crops[k % self.n_crops] for k in range(missing)]
        self.local = range(index * batch_size // count, (index + 1) * batch_size // count)

    def __len__(self) -> int:
        return len(self.crops) // self.batch_size

    def __getitem__(self, index: int):
        xs, ys = [], []
        for k in self.local:
            i, start = self.crops[index * self.batch_size + k]
            image, labels = self.pairs[i]
            x, crop_labels = _extract(image, labels, start, 1.0, self.crop_size)
            xs.append(x[..., None])
            ys.append(make_targets(crop_labels, border_width=self.border_width))
        return np.stack(xs), np.stack(ys)
