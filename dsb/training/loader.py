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
from dataclasses import asdict, dataclass

import keras
import numpy as np
from scipy import ndimage

from dsb.core.config import Config, PreprocessConfig, TrainConfig
from dsb.core.labels import edge_runs
from dsb.core.validate import check_labels
from dsb.inference.labels import labels_to_shape
from dsb.inference.preprocess import preprocess_image, to_network_input
from dsb.inference.resample import resample
from dsb.training import augment as appearance
from dsb.training.crowding import GAP as CROWDING_GAP
from dsb.training.crowding import MAX_OVERLAP as CROWDING_OVERLAP
from dsb.training.crowding import paste_neighbours
from dsb.training.groups import held_out_groups

__all__ = [
    "make_targets",
    "TargetSpec",
    "contact_widths",
    "core_target",
    "CORE_FRACTION",
    "split_ids",
    "augment_crop",
    "CropLoader",
    "ValidationLoader",
    "to_network_input",
]

# A nucleus's core: its pixels at least this share of its own largest distance from its outline.
CORE_FRACTION = 0.5

# Tags that keep the streams of random numbers apart.
_ORDER, _SAMPLE = 0, 1


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _near_two(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels, nucleus or background, within ``width`` of two different nuclei of ``labels``."""
    # The largest label nearby differs from the smallest nucleus label nearby
    # (background lifted out of the minimum).
    footprint = _disk(width)
    lifted = np.where(labels > 0, labels, np.iinfo(labels.dtype).max)
    high = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
    low = ndimage.minimum_filter(lifted, footprint=footprint, mode="nearest")
    return (high > 0) & (low < high)


def core_target(labels: np.ndarray, fraction: float = CORE_FRACTION) -> np.ndarray:
    """Each nucleus's core: its pixels at least ``fraction`` of its own deepest distance from its outline.

    The distance of a nucleus pixel is to the nearest pixel outside the
    nucleus, background or another nucleus, so two nuclei pressed together get
    two cores however faint the line between them: seeds for the watershed,
    one per nucleus. The array's edge is not an outline: a nucleus cut by the
    edge of a crop keeps its core against that edge. A nucleus too thin to have
    an inside (one or two pixels across) is all core.

    Returns
    -------
    (H, W) ndarray of bool

    Examples
    --------
    >>> labels = np.zeros((7, 12), np.int32); labels[1:6, 1:6] = 1; labels[1:6, 6:11] = 2
    >>> core_target(labels).astype(int)[3]
    array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0])
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    inside = labels > 0
    # A pixel is inner when its four neighbours in the array carry its own label.
    inside[1:] &= labels[1:] == labels[:-1]
    inside[:-1] &= labels[:-1] == labels[1:]
    inside[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    inside[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    if not inside.any():
        return labels > 0
    depth = ndimage.distance_transform_edt(inside)
    deepest = np.zeros(int(labels.max()) + 1)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    return (labels > 0) & (depth >= fraction * deepest[labels])


def contact_widths(labels: np.ndarray, scale: float, most: int) -> np.ndarray:
    """Each nucleus's own contact width: ``scale`` times its diameter, rounded, from 1 to ``most``.

    The diameter is the equivalent diameter (of a disc of the nucleus's
    area); a nucleus cut by the array's edge (a crop's) measures at least
    the length of the cut, the run of its pixels along that edge, so that a
    nucleus half outside a crop is not read as a small one (and a long
    nucleus that only grazes the edge is not read as a large one).

    Returns
    -------
    (n + 1,) ndarray of int
        Indexed by label; 0 for the background.

    Examples
    --------
    >>> labels = np.zeros((40, 40), np.int32); labels[5:15, 5:15] = 1; labels[20:38, 20:38] = 2
    >>> contact_widths(labels, 0.1, 4).tolist()
    [0, 1, 2]
    """
    n = int(labels.max(initial=0))
    diameter = np.maximum(2.0 * np.sqrt(np.bincount(labels.ravel(), minlength=n + 1) / np.pi), edge_runs(labels, n))
    widths = np.clip(np.rint(scale * diameter), 1, most).astype(np.int64)
    widths[0] = 0
    return widths


def make_targets(
    labels: np.ndarray, *, border_width: int, contact_width: int | None = None, contact_scale: float = 0.0,
    core: bool = False,
) -> np.ndarray:
    """Body, border and (optionally) contact and core targets from instance labels.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..N nuclei.
    border_width : int
        Width in pixels of the border ring; 0 gives an empty border channel.
    contact_width : int, optional
        When given, a third channel (contact): 1 on every pixel, nucleus or
        background, within ``contact_width`` of two different nuclei. It
        marks where neighbours touch or nearly touch, the places a crowded
        field gets merged, wider than the border ring there.
    contact_scale : float
        When above 0 (with ``contact_width``), the contact band between two
        nuclei follows their size: it is as wide as the smaller nucleus's
        own width, ``contact_scale`` times its diameter, rounded, from 1 to
        ``2 * contact_width`` pixels (:func:`contact_widths`). A small nucleus
        beside a large one then keeps most of its body, and two large ones
        get a band in proportion. With ``contact_scale = contact_width / d``,
        nuclei of diameter ``d`` get ``contact_width`` as with a fixed width.
    core : bool
        With ``contact_width``, a fourth channel (core): each nucleus's inner
        part (:func:`core_target`), one seed per nucleus.

    Returns
    -------
    (H, W, 2), (H, W, 3) or (H, W, 4) ndarray of float32
        Channel 0 (body): 1 on every nucleus pixel. Channel 1 (border): 1 on
        nucleus pixels within ``border_width`` (Euclidean) of a pixel of another
        label, background or a touching nucleus, so body minus border separates
        touching nuclei. The image edge does not count as a border. Channel 2
        (contact), with ``contact_width``. Channel 3 (core), with ``core``.

    Examples
    --------
    >>> labels = np.zeros((5, 7), np.int32); labels[1:4, 1:4] = 1; labels[1:4, 4:6] = 2
    >>> make_targets(labels, border_width=1)[..., 1].astype(int)[2]
    array([0, 1, 0, 1, 1, 1, 0])
    >>> make_targets(labels, border_width=1, contact_width=1)[..., 2].astype(int)[2]
    array([0, 0, 0, 1, 1, 0, 0])
    """
    labels = check_labels("labels", labels, bool_ok=False)
    _check_target_options(border_width, contact_width, contact_scale, core)
    body = labels > 0
    targets = np.zeros(labels.shape + (2 if contact_width is None else 4 if core else 3,), np.float32)
    targets[..., 0] = body
    if border_width > 0:
        # A pixel is near another label when the max or min label in its
        # neighbourhood differs from its own; "nearest" keeps the edge neutral.
        footprint = _disk(border_width)
        high = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
        low = ndimage.minimum_filter(labels, footprint=footprint, mode="nearest")
        targets[..., 1] = body & ((high != labels) | (low != labels))
    if contact_width is not None:
        if contact_scale == 0:
            targets[..., 2] = _near_two(labels, contact_width)
        else:
            # Band w holds the pairs whose smaller nucleus is at least w wide: pixels within w
            # of two nuclei of width >= w. Their union is each pair's band at its own width.
            widths = contact_widths(labels, contact_scale, 2 * contact_width)
            contact = np.zeros(labels.shape, bool)
            for width in range(1, int(widths.max(initial=0)) + 1):
                wide = widths >= width
                if np.count_nonzero(wide) < 2:
                    break
                contact |= _near_two(np.where(wide[labels], labels, 0), width)
            targets[..., 2] = contact
    if core:
        targets[..., 3] = core_target(labels)
    return targets


def _check_target_options(border_width, contact_width, contact_scale, core) -> None:
    """ValueError naming the first of :func:`make_targets`'s options that is out of range."""
    if border_width < 0:
        raise ValueError(f"`border_width` must be >= 0, got {border_width}")
    if contact_width is not None and contact_width < 1:
        raise ValueError(f"`contact_width` must be >= 1, got {contact_width}")
    if not (math.isfinite(contact_scale) and contact_scale >= 0):
        raise ValueError(f"`contact_scale` must be a finite number >= 0, got {contact_scale}")
    if contact_scale and contact_width is None:
        raise ValueError("`contact_scale` needs `contact_width` (the contact target)")
    if core and contact_width is None:
        raise ValueError("`core` needs `contact_width`: the core is the fourth channel, after contact")


@dataclass(frozen=True)
class TargetSpec:
    """Which targets a network learns: :func:`make_targets`'s options, as one record.

    Every crop of a run, training or validation, gets its targets from the
    same record, so a new kind of target is one field here rather than an
    argument threaded through each loader.

    Attributes
    ----------
    border_width : int
    contact_width : int or None
        None: no contact channel (nor core).
    contact_scale : float
        0: the contact band is ``contact_width`` wide; above 0 it follows nucleus size.
    core : bool
        A fourth channel, each nucleus's core.

    Examples
    --------
    >>> spec = TargetSpec(border_width=1, contact_width=1)
    >>> labels = np.zeros((5, 7), np.int32); labels[1:4, 1:4] = 1; labels[1:4, 4:6] = 2
    >>> spec(labels).shape
    (5, 7, 3)
    """

    border_width: int = 2
    contact_width: int | None = None
    contact_scale: float = 0.0
    core: bool = False

    def __post_init__(self):
        _check_target_options(self.border_width, self.contact_width, self.contact_scale, self.core)

    @classmethod
    def for_config(cls, config: Config) -> "TargetSpec":
        """The targets of ``config``'s network outputs, with its ``preprocess`` widths."""
        pre, outputs = config.preprocess, config.model.outputs
        contact = "contact" in outputs
        return cls(
            border_width=pre.border_width,
            contact_width=pre.contact_width if contact else None,
            contact_scale=pre.contact_scale if contact else 0.0,
            core="core" in outputs,
        )

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """:func:`make_targets` of ``labels`` with these options."""
        return make_targets(labels, **asdict(self))


def split_ids(
    ids: Sequence[str], types: Sequence[str], *, fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Split image ids into training and validation, stratified by image type.

    Without ``groups``, each type contributes ``round(fraction * n_type)``
    images to validation, chosen by a generator seeded with ``seed``.

    With ``groups`` (imaging-experiment groups, :mod:`dsb.training.groups`), whole
    groups are held out, so validation measures images of experiments never
    seen in training: each type with two or more groups holds out one or more
    of them and keeps at least one, the held-out image count as close to
    ``fraction`` of the type's images as whole groups allow, drawn with ``seed``
    (:func:`dsb.training.groups.held_out_groups`). Whole groups often overshoot: 0.15
    holds out about 17-23% of stage1_train. A type with a single group
    falls back to a random ``round(fraction * n_type)`` of its images, as
    without groups.

    Either way the result does not depend on the order of ``ids``.

    Parameters
    ----------
    ids : sequence of str
    types : sequence of str
        Image type of each id (same length as ``ids``).
    fraction : float
        In [0, 1).
    seed : int
    groups : sequence of str, optional
        Group of each id (same length as ``ids``); a group must not span two types.

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
    if groups is not None:
        groups = [str(g) for g in groups]
        if len(groups) != len(ids):
            raise ValueError(f"`ids` ({len(ids)}) and `groups` ({len(groups)}) must have the same length")
    held_out: set[str] = set()
    if groups is not None:
        held_groups = set(held_out_groups(groups, types, fraction=fraction, seed=seed))
        held_out.update(i for i, g in zip(ids, groups) if g in held_groups)
    for i, kind in enumerate(sorted(set(types))):
        if groups is not None and len({g for g, t in zip(groups, types) if t == kind}) > 1:
            continue
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


def _resample_window(array, start, scale: float, crop_size: int, *, order: int) -> np.ndarray:
    """The ``crop_size`` window of ``array`` (H, W) or (H, W, C) at ``start``, zoomed by ``scale``.

    Mirrored padding outside the image. Linear sampling (``order=1``) is
    low-passed first when shrinking, so that small nuclei do not alias away;
    ``order=0`` (labels) samples the nearest pixel.
    """
    (r0, c0) = start
    inv = 1.0 / scale
    window = crop_size * inv
    if order > 0 and scale < 0.8:
        # Blur only the part of the image the window reads (plus the filter's reach).
        sigma = 0.5 * (inv - 1.0)
        reach = int(math.ceil(3 * sigma)) + 2
        r_lo, c_lo = max(0, int(r0) - reach), max(0, int(c0) - reach)
        r_hi = min(array.shape[0], int(math.ceil(r0 + window)) + reach)
        c_hi = min(array.shape[1], int(math.ceil(c0 + window)) + reach)
        if r_lo < r_hi and c_lo < c_hi:
            part = array[r_lo:r_hi, c_lo:c_hi]
            sigmas = (sigma, sigma) + (0,) * (array.ndim - 2)
            array, r0, c0 = ndimage.gaussian_filter(part, sigmas, mode="mirror"), r0 - r_lo, c0 - c_lo
    # Output pixel o samples the input at (o + 0.5) / scale - 0.5 + start (pixel centres aligned).
    matrix, offset = (inv, inv), (r0 + 0.5 * inv - 0.5, c0 + 0.5 * inv - 0.5)
    shape = (crop_size, crop_size)
    if array.ndim == 3:
        matrix, offset, shape = matrix + (1.0,), offset + (0.0,), shape + (array.shape[2],)
    return ndimage.affine_transform(array, matrix, offset=offset, output_shape=shape, order=order, mode="mirror")


def _extract(image, labels, start, scale: float, crop_size: int):
    """Crop (and rescale by ``scale``) with mirrored padding: linear for the image, nearest for labels."""
    (r0, c0) = start
    if scale == 1.0 and r0 >= 0 and c0 >= 0 and r0 + crop_size <= image.shape[0] and c0 + crop_size <= image.shape[1]:
        window = np.s_[r0 : r0 + crop_size, c0 : c0 + crop_size]
        return to_network_input(image[window]), np.ascontiguousarray(labels[window])
    out_image = _resample_window(to_network_input(image), start, scale, crop_size, order=1)
    out_labels = _resample_window(labels, start, scale, crop_size, order=0)
    return out_image.astype(np.float32, copy=False), out_labels


def augment_crop(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int,
    targets: TargetSpec = TargetSpec(),
    zoom: float = 1.0,
    flips: bool = True,
    rotations: bool = True,
    scale_jitter: float = 0.0,
    zoom_octaves: float = 0.0,
    crowding: float = 0.0,
    crowding_gap: tuple[float, float] = CROWDING_GAP,
    crowding_overlap: float = CROWDING_OVERLAP,
    intensity_jitter: float = 0.0,
    contrast_jitter: float = 0.0,
    colour: np.ndarray | None = None,
    preprocess: PreprocessConfig | None = None,
    stain_jitter: float = 0.0,
    stain_shift: float = 0.0,
    hue_jitter: float = 0.0,
    colour_jitter: float = 0.0,
    blur_probability: float = 0.0,
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
    gamma_jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One random training sample from an image and its labels.

    Picks a zoom factor ``zoom * j``, where ``zoom`` takes the image's nuclei to
    the canonical diameter (:func:`dsb.inference.scale.zoom_for`) and ``j`` is
    uniform in ``[1 - scale_jitter, 1 + scale_jitter]`` times ``2 ** u``, ``u``
    uniform in ``[-zoom_octaves, zoom_octaves]``; takes a window of ``crop_size /
    (zoom * j)`` pixels (images smaller than the window are padded by
    reflection), resamples it to ``crop_size`` (image linear, labels nearest);
    with probability ``crowding`` pastes copies of the crop's nuclei against
    its nuclei (:func:`dsb.training.crowding.paste_neighbours`, with
    ``crowding_gap`` and ``crowding_overlap`` as its ``gap`` and
    ``max_overlap``); derives the
    targets at the crop's own scale (so the border is ``targets.border_width``
    pixels wide in what the network sees), then flips and rotates by multiples of 90
    degrees, and jitters brightness and contrast.

    Parameters
    ----------
    image : (H, W) ndarray of uint8 or float
        uint8 is scaled to [0, 1].
    labels : (H, W) ndarray of int
    rng : numpy.random.Generator
    targets : TargetSpec
        Which targets, and how wide (see :func:`make_targets`).
    colour : (H, W, 3) or (H, W, 4) ndarray of uint8, optional
        The raw RGB of a stained ``image``. When given, the same window is
        resampled from it, its stains and colours jittered
        (:func:`dsb.training.augment.stain_jitter` with ``stain_jitter`` and
        ``stain_shift``, :func:`dsb.training.augment.colour_jitter` with ``hue_jitter``
        and ``colour_jitter``), and the crop made grey by
        :func:`dsb.inference.preprocess.preprocess_image` with ``preprocess`` replaces
        the crop of ``image``. The contrast stretch then uses the crop's own
        percentiles, not the whole image's as the cache (and prediction) do:
        stretching the whole jittered image would cost a deconvolution of
        all of it per sample, and the stained images (256 x 320) are about
        one crop in size.
    preprocess : PreprocessConfig, optional
        For ``colour``; the default ``PreprocessConfig()`` otherwise.
    blur_probability, blur_sigma, noise_std, gamma_jitter : float
        Grey-level augmentation of every crop, last: with probability
        ``blur_probability`` a gaussian blur of standard deviation uniform
        in ``[0.3, blur_sigma]``; a power ``g``, ``log(g)`` uniform in
        ``[-gamma_jitter, gamma_jitter]``; read and shot noise, each of a
        standard deviation uniform in ``[0, noise_std]`` (:mod:`dsb.training.augment`).

    Returns
    -------
    x : (crop_size, crop_size, 1) ndarray of float32 in [0, 1]
    y : (crop_size, crop_size, 2, 3 or 4) ndarray of float32
        See :func:`make_targets`.
    """
    jitter = float(rng.uniform(1.0 - scale_jitter, 1.0 + scale_jitter)) if scale_jitter > 0 else 1.0
    if zoom_octaves > 0:
        jitter *= float(2.0 ** rng.uniform(-zoom_octaves, zoom_octaves))
    scale = float(zoom) * jitter
    window = crop_size / scale
    start = (_window_start(rng, image.shape[0], window), _window_start(rng, image.shape[1], window))
    if colour is None:
        x, crop_labels = _extract(image, labels, start, scale, crop_size)
    else:  # the grey crop comes from the jittered colour instead of the cache
        rgb, crop_labels = _extract(colour[..., :3], labels, start, scale, crop_size)
        rgb = appearance.stain_jitter(rgb, rng, scale=stain_jitter, shift=stain_shift)
        rgb = appearance.colour_jitter(rgb, rng, hue=hue_jitter, saturation=colour_jitter, brightness=colour_jitter)
        x = preprocess_image(rgb, preprocess, kind="stained")
    if crowding > 0 and rng.random() < crowding:
        x, crop_labels = paste_neighbours(x, crop_labels, rng, gap=crowding_gap, max_overlap=crowding_overlap)
    y = targets(crop_labels)
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
    if blur_probability > 0 and rng.random() < blur_probability:
        x = appearance.gaussian_blur(x, rng, max_sigma=blur_sigma, min_sigma=min(0.3, blur_sigma))
    x = appearance.random_gamma(x, rng, strength=gamma_jitter)
    if noise_std > 0:
        std, shot = rng.uniform(0, noise_std, 2)
        x = appearance.add_noise(x, rng, std=std, shot=shot)
    return np.ascontiguousarray(x, np.float32)[..., None], np.ascontiguousarray(y, np.float32)


def _zooms(zooms, n: int) -> list[float]:
    if zooms is None:
        return [1.0] * n
    zooms = [float(z) for z in zooms]
    if len(zooms) != n or not all(math.isfinite(z) and z > 0 for z in zooms):
        raise ValueError(f"`zooms` must hold {n} positive factors, one per image")
    return zooms


def _colour(colour, images) -> list:
    """``colour`` checked against ``images``: one RGB (same height and width) or None per image."""
    if colour is None:
        return [None] * len(images)
    colour = list(colour)
    if len(colour) != len(images):
        raise ValueError(f"`colour` holds {len(colour)} entries for {len(images)} images")
    for i, (rgb, image) in enumerate(zip(colour, images)):
        if rgb is not None and (rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.shape[:2] != image.shape[:2]):
            raise ValueError(
                f"`colour[{i}]` (shape {rgb.shape}) must be (H, W, 3) or (H, W, 4) with the (H, W) "
                f"of `images[{i}]` {image.shape[:2]}"
            )
    return colour


def _appearance(a: TrainConfig, colour, preprocess) -> dict:
    """The colour and grey-level arguments of :func:`augment_crop` from a config."""
    return dict(
        colour=colour if a.colour_augmentation else None,
        preprocess=preprocess,
        stain_jitter=a.stain_jitter,
        stain_shift=a.stain_shift,
        hue_jitter=a.hue_jitter,
        colour_jitter=a.colour_jitter,
        blur_probability=a.blur_probability,
        blur_sigma=a.blur_sigma,
        noise_std=a.noise_std,
        gamma_jitter=a.gamma_jitter,
    )


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
    crop_size : int
    targets : TargetSpec
        Which targets each crop gets (see :func:`make_targets`).
    zooms : list of float, optional
        Per pair, the factor that takes its nuclei to the canonical diameter
        (:func:`dsb.inference.scale.zoom_for`); 1 for all by default.
    augment : TrainConfig, optional
        Flips, rotations and jitters to apply; None: plain crops.
    colour : list of (H, W, 3) ndarray of uint8 or None, optional
        Aligned with ``images``: the raw RGB of each stained image, None for
        the others. With ``augment.colour_augmentation``, crops of these
        images are jittered in colour and made grey again (see
        :func:`augment_crop`); the others use ``images``.
    preprocess : PreprocessConfig, optional
        How ``images`` were made from the raw images; used for ``colour``.
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
        targets: TargetSpec = TargetSpec(),
        zooms: Sequence[float] | None = None,
        augment: TrainConfig | None = None,
        colour: Sequence[np.ndarray | None] | None = None,
        preprocess: PreprocessConfig | None = None,
        start_step: int = 0,
        shard: tuple[int, int] = (0, 1),
        workers: int = 1,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.pairs = _pairs(images, labels, batch_size, shard, "training")  # shuffled as pairs, never as two lists
        self.colour = _colour(colour, images)
        self.preprocess = preprocess
        index, count = shard
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = int(seed)
        self.crop_size = int(crop_size)
        self.targets = targets
        self.zooms = _zooms(zooms, len(self.pairs))
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
        pick = order[(batch * self.batch_size + position) % len(order)]
        image, labels = self.pairs[pick]
        rng = np.random.default_rng([self.seed, _SAMPLE, epoch, batch, position])
        a = self.augment
        return augment_crop(
            image,
            labels,
            rng,
            crop_size=self.crop_size,
            targets=self.targets,
            zoom=self.zooms[pick],
            flips=bool(a and a.flips),
            rotations=bool(a and a.rotations),
            scale_jitter=a.scale_jitter if a else 0.0,
            zoom_octaves=a.zoom_octaves if a else 0.0,
            crowding=a.crowding if a else 0.0,
            crowding_gap=a.crowding_gap if a else CROWDING_GAP,
            crowding_overlap=a.crowding_overlap if a else CROWDING_OVERLAP,
            intensity_jitter=a.intensity_jitter if a else 0.0,
            contrast_jitter=a.contrast_jitter if a else 0.0,
            **(_appearance(a, self.colour[pick], self.preprocess) if a else {}),
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


def _zoom_pair(image: np.ndarray, labels: np.ndarray, zoom: float):
    """A whole image and its labels resampled by ``zoom`` (the image as float32 in [0, 1])."""
    if zoom == 1.0:
        return image, labels
    # As prediction resamples an image, so that validation sees what prediction will.
    resized = resample(to_network_input(image), zoom)
    return resized, labels_to_shape(labels, resized.shape).astype(labels.dtype, copy=False)


class ValidationLoader(keras.utils.PyDataset):
    """Fixed, unaugmented crops that cover every validation image.

    Each image is covered by ``crop_size`` windows (the last ones shifted back
    inside the image; images smaller than a window are centred and padded by
    reflection). The list is padded with its first crops to whole batches, so
    every batch has ``batch_size`` samples (needed to split batches over
    devices). The same batches every epoch, so validation figures compare.
    With ``zooms``, each image (and its labels) is first resampled to the
    canonical nucleus diameter, as prediction will.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        batch_size: int,
        crop_size: int = 256,
        targets: TargetSpec = TargetSpec(),
        zooms: Sequence[float] | None = None,
        shard: tuple[int, int] = (0, 1),
        workers: int = 1,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        pairs = _pairs(images, labels, batch_size, shard, "validation")
        self.pairs = [_zoom_pair(image, lab, zoom) for (image, lab), zoom in zip(pairs, _zooms(zooms, len(pairs)))]
        self.targets = targets
        index, count = shard
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
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
            ys.append(self.targets(crop_labels))
        return np.stack(xs), np.stack(ys)
