"""From a raw image of any kind to the network's input: one grey channel, nuclei bright.

The competition mixes three kinds of microscopy: fluorescence (bright nuclei on
a dark background, the large majority), brightfield (dark nuclei on a light grey
background) and stained tissue (purple nuclei on a light, coloured background,
H&E-like). :func:`image_type` tells them apart from two statistics that leave a
wide gap between the kinds on all 664 training and 65 test images:

* brightness, the median over pixels of the brightest channel: at most 0.21
  for fluorescence, at least 0.69 for the other two;
* colourfulness, the mean spread between the largest and smallest channel:
  exactly 0 for the grey brightfield images, at least 0.047 for stained ones.

:func:`preprocess_image` then gives nuclei-bright grey in [0, 1]. For stained
images the default is the geometric mean of inverted luminance and the
hematoxylin channel of :func:`skimage.color.rgb2hed`: measured with the masks on
the 107 stained training images (area under the ROC curve of nucleus vs
background pixels), inverted luminance is best on most images (median 0.986)
but fails where eosin is strong (worst 0.63); hematoxylin never fails (worst
0.92) but is noisier (median 0.978); their geometric mean keeps the best of
both (median 0.982, worst 0.92, mean 0.980).
"""

from __future__ import annotations

import numpy as np

from dsb.core.validate import check_image

__all__ = [
    "IMAGE_TYPES",
    "STAINED_CHANNELS",
    "as_float",
    "intensity_range",
    "gray_value_range",
    "to_network_input",
    "to_gray",
    "raw_intensity",
    "image_stats",
    "image_type",
    "mixed_channels",
    "normalize_polarity",
    "hematoxylin",
    "stained_gray",
    "stretch",
    "preprocess_image",
    "to_uint8",
]

IMAGE_TYPES = ("fluorescence", "brightfield", "stained")
STAINED_CHANNELS = ("both", "hematoxylin", "luminance")

# Thresholds sit in the middle of the gaps measured on the real images (see the
# module docstring): brightness 0.21 .. 0.69, colourfulness 0.0 .. 0.047.
LIGHT_BACKGROUND = 0.45
COLOURFUL = 0.025
# Below this correlation two colour channels of a fluorescence image show different stains. Every
# fluorescence image of stage1_train has equal channels; a tinted grey image correlates at 1.
MIXED_CORRELATION = 0.9
DARK_SHARE = 0.02  # of pixels under 0.1 in every channel: a fluorescence background
_CHANNEL_NAMES = ("red", "green", "blue")

_LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R BT.709, as skimage.color.rgb2gray
_LUMA_64 = np.array([0.2125, 0.7154, 0.0721])  # the same, summing to 1 in float64


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    """The raw values :func:`as_float` maps to 0 and 1.

    (0, 255) for 8 bits; for wider integers (0, 2**b - 1), ``b`` the smallest of 10, 12, 14 or
    16 bits (and so on) that holds the maximum; (0, 1) for booleans and for floats within [0, 1];
    the minimum and maximum of other floats, and of signed integers holding a negative value (whose
    signal a range from 0 would clip away). Taken once over a whole image (or a sample of it), the
    range converts every part of that image alike (``as_float(part, value_range)``): each part
    on its own would be scaled by its own maximum.

    Examples
    --------
    >>> intensity_range(np.array([0, 200], np.uint8)), intensity_range(np.array([0, 3000], np.uint16))
    ((0.0, 255.0), (0.0, 4095.0))
    >>> intensity_range(np.array([0, 3000], np.int16)), intensity_range(np.array([-300, -100], np.int16))
    ((0.0, 4095.0), (-300.0, -100.0))
    """
    image = np.asarray(image)
    if image.dtype == bool:
        return 0.0, 1.0
    if np.issubdtype(image.dtype, np.integer):
        bottom = int(image.min()) if image.size and np.issubdtype(image.dtype, np.signedinteger) else 0
        if bottom < 0:
            return float(bottom), float(image.max())
        top = int(image.max()) if image.size else 0
        if image.dtype == np.uint8 or top <= 255:
            return 0.0, 255.0
        bits = int(np.ceil(np.log2(top + 1)))
        return 0.0, float(2 ** (bits + bits % 2) - 1)
    if np.issubdtype(image.dtype, np.floating):
        return _float_range(_finite(image))
    raise TypeError(f"`image` has dtype {image.dtype}, expected bool, integer or float")


def gray_value_range(image: np.ndarray) -> tuple[float, float]:
    """:func:`intensity_range` of the channels :func:`to_gray` reads: the colour ones, or the grey
    one, never alpha. The ``value_range`` that converts every part of ``image`` as a whole."""
    image = np.asarray(image)
    return intensity_range(image[..., :3] if image.ndim == 3 and image.shape[2] >= 3 else _grey_channel(image))


def _float_range(clean: np.ndarray) -> tuple[float, float]:
    """:func:`intensity_range` of a float image already cleared of NaN and infinities."""
    lo, hi = (float(clean.min()), float(clean.max())) if clean.size else (0.0, 1.0)
    return (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)


def _as_range(value_range) -> tuple[float, float] | None:
    """``value_range`` as a pair of floats (a tuple, list or array of two), or None."""
    return None if value_range is None else (float(value_range[0]), float(value_range[1]))


def as_float(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Scale an image of any dtype to float32 in [0, 1], channels kept.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray of bool, uint or int, or float
        Integer images are divided by the largest value of their bit depth:
        255 for 8 bits; for wider types the smallest of 10, 12, 14 or 16 bits
        (and so on) that holds the maximum, so a 12-bit camera image stored as
        uint16 keeps its brightness. Signed integers are read so too while
        none is negative (an int16 image of 0..4095 is a 12-bit one); one
        holding a negative value is scaled from its minimum and maximum, as
        floats are (its minimum to 0, its maximum to 1). Floats already in
        [0, 1] are kept; other floats are scaled from their minimum and
        maximum; NaN and infinite values count as 0. The one rule by which
        every image's values become the network's grey and a display's
        (:func:`intensity_range`); measurements keep the values as stored
        (:func:`raw_intensity`).
    value_range : (float, float), optional
        The raw values to map to 0 and 1 instead of ``image``'s own
        (:func:`intensity_range` of the whole image it is part of); values
        beyond are clipped.

    Returns
    -------
    (H, W) or (H, W, C) ndarray of float32
    """
    image = np.asarray(image)
    value_range = _as_range(value_range)
    if image.dtype == bool:
        return image.astype(np.float32)
    if image.dtype == np.uint8 and value_range in (None, (0.0, 255.0)):
        return image.astype(np.float32) / np.float32(255)
    if np.issubdtype(image.dtype, np.integer):
        lo, hi = intensity_range(image) if value_range is None else value_range
        scaled = image.astype(np.float32) if lo == 0 else image.astype(np.float32) - np.float32(lo)
        return np.clip(scaled / np.float32(max(hi - lo, 1e-12)), 0, 1)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"`image` has dtype {image.dtype}, expected bool, integer or float")
    image = _finite(image)  # scaled in its own precision: a float64's large values would overflow float32
    lo, hi = _float_range(image) if value_range is None else value_range
    if value_range is None and (lo, hi) == (0.0, 1.0):
        return image.astype(np.float32, copy=False)
    out = ((image - lo) / max(hi - lo, 1e-12)).astype(np.float32, copy=False)
    return out if value_range is None else np.clip(out, 0, 1)


def _finite(image: np.ndarray) -> np.ndarray:
    """A float image with its NaN and infinite pixels (no measurement, or a failed computation's) set to 0,
    in its own precision, at least float32's."""
    image = image.astype(np.promote_types(image.dtype, np.float32), copy=False)
    return np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)


def _rgb(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray | None:
    """(H, W, 3) float32 colour channels, or None for a grey image (alpha dropped)."""
    if image.ndim == 3 and image.shape[2] >= 3:
        return as_float(image[..., :3], value_range)
    return None


def _grey_channel(image: np.ndarray) -> np.ndarray:
    """The single intensity channel of a grey (H, W), (H, W, 1) or grey+alpha image."""
    return image if image.ndim == 2 else image[..., 0]


# The float32 value of each 8-bit level, as as_float gives it.
_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)


def _grey_plane(image: np.ndarray) -> np.ndarray | None:
    """The (H, W) plane of an image that is grey (or grey+alpha), or RGB(A) with three equal channels
    (most fluorescence images are stored so); None for a colour image."""
    if image.ndim == 2 or image.shape[2] < 3:
        return _grey_channel(image)
    r = image[..., 0]
    return r if np.array_equal(r, image[..., 1]) and np.array_equal(r, image[..., 2]) else None


def _grey_levels(image: np.ndarray) -> np.ndarray | None:
    """:func:`_grey_plane` of an 8-bit image, None for any other. Every grey value of such an
    image is one of 256, so an elementwise step runs on a table of 256 instead of every pixel."""
    return _grey_plane(image) if image.dtype == np.uint8 else None


def to_gray(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Luminance of an image, whatever its channels and dtype.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray, C in 1..4
        Grey, grey+alpha, RGB or RGBA; alpha is ignored.
    value_range : (float, float), optional
        As for :func:`as_float`: for one part of a larger image, that image's range.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
        Polarity is kept: nuclei stay dark in brightfield images. An RGB image
        with three equal channels is grey: its luminance is that channel (the
        weights sum to 1).
    """
    image = check_image("image", image)
    value_range = _as_range(value_range)
    levels = _grey_levels(image) if value_range in (None, (0.0, 255.0)) else None
    return _luminance(image, value_range) if levels is None else np.take(_LEVELS, levels)


def raw_intensity(image: np.ndarray) -> np.ndarray:
    """Brightness of each pixel in the image's own units, for measuring nuclei.

    Unlike :func:`to_gray`, nothing is scaled: a 16-bit camera's counts stay counts, and every
    part of a large image read block by block is on the same scale, so values compare across
    images of one camera and with other tools' measurements.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray, C in 1..4
        Grey, grey+alpha, RGB or RGBA; alpha is ignored.

    Returns
    -------
    (H, W) ndarray of float64
        The grey channel's values as stored; for colour, the luminance of the three channels
        (scikit-image's rgb2gray weights: ITU-R BT.709's, rounded to sum to 1); an RGB image with three
        equal channels gives that channel exactly.

    Examples
    --------
    >>> raw_intensity(np.array([[0, 1000]], np.uint16)).tolist()
    [[0.0, 1000.0]]
    >>> raw_intensity(np.full((1, 1, 3), 200, np.uint8)).tolist()
    [[200.0]]
    """
    image = check_image("image", image)
    plane = _grey_plane(image)  # grey stored as RGB: that channel, exactly
    return plane.astype(np.float64) if plane is not None else image[..., :3].astype(np.float64) @ _LUMA_64


def _luminance(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """:func:`to_gray` of an image that is not 8-bit grey (:func:`_grey_levels` gave None)."""
    rgb = _rgb(image, value_range)
    if rgb is None:
        return as_float(_grey_channel(image), value_range).astype(np.float32, copy=False)
    return np.clip(rgb @ _LUMA, 0, 1)


def image_stats(image: np.ndarray) -> tuple[float, float]:
    """The two statistics :func:`image_type` decides on.

    Returns
    -------
    brightness : float
        Median over pixels of the brightest channel, in [0, 1] (the background
        level, since background covers most pixels).
    colourfulness : float
        Mean over pixels of (largest - smallest channel), in [0, 1]; 0 for grey.
    """
    image = check_image("image", image)
    if image.ndim == 2 or image.shape[2] < 3:
        return _median(_grey_channel(image)), 0.0
    # Elementwise over channels, in the stored dtype: numpy reduces a short last axis slowly.
    r, g, b = (image[..., k] for k in range(3))
    if image.dtype == np.uint8:
        top, bottom = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
        return _median(top), float((top - bottom).mean(dtype=np.float64)) / 255
    # as_float's scale depends on the maximum: scale both alike
    both = as_float(np.stack([np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)]))
    top, bottom = both[0], both[1]
    return float(np.median(top)), float((top - bottom).mean())


def _median(values: np.ndarray) -> float:
    """The median of ``as_float(values)``; for uint8 from the counts of its levels."""
    if values.dtype != np.uint8:
        return float(np.median(as_float(values)))
    return _median_of_levels(_level_counts(values))


def _level_counts(levels: np.ndarray) -> np.ndarray:
    """How many of the uint8 ``levels`` are 0, 1, .., 255, from numpy's stable sort, which for
    8-bit values is a radix sort (every image is classified before it is predicted) and unlike
    np.bincount does not hold the GIL that the other streams' threads wait for (two at once on
    two threads: 1.9 times one, against 0.6 with np.bincount)."""
    ordered = np.sort(levels.reshape(-1), kind="stable")
    return np.diff(np.r_[np.searchsorted(ordered, np.arange(256, dtype=np.uint8)), ordered.size])


def _median_of_levels(counts: np.ndarray) -> float:
    """np.median of the 8-bit image whose level counts are ``counts``, on its [0, 1] scale."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    # The levels of rank (n - 1) // 2 and n // 2 (0-based), averaged as np.median does.
    below, above = np.searchsorted(cumulative, [(n - 1) // 2 + 1, n // 2 + 1])
    return (int(below) + int(above)) / 2 / 255


def image_type(image: np.ndarray) -> str:
    """Which kind of microscopy an image comes from: one of :data:`IMAGE_TYPES`.

    A dark background means fluorescence; a light one means brightfield when
    grey and stained tissue when coloured (see :func:`image_stats`).

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        The raw image, as :func:`dsb.io.images.read_image` returns it.

    Returns
    -------
    str
        "fluorescence", "brightfield" or "stained".
    """
    return _kind(*image_stats(image))


def _kind(brightness: float, colourfulness: float) -> str:
    if brightness < LIGHT_BACKGROUND:
        return "fluorescence"
    return "stained" if colourfulness >= COLOURFUL else "brightfield"


def mixed_channels(image: np.ndarray) -> str | None:
    """Why the grey the network sees may hide an image's nuclei, or None.

    Without a channel picked, an image is segmented from its luminance (grey+alpha: from its
    grey). That is right for grey images, tinted ones and stained tissue, but a fluorescence
    image whose channels hold different stains (a DNA stain in blue beside a cytoplasm stain in
    green) puts the other stains into the grey, and the nuclei may be lost in them; and where a
    second or fourth channel, read as transparency, holds an image, that image is left out.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        As :func:`dsb.io.images.read_image` returns it.

    Returns
    -------
    str or None
        What is wrong, as a noun phrase that names the channels (counted from 0), for a
        fluorescence image (:func:`image_type`, or :data:`DARK_SHARE` of its pixels dark in every
        colour channel): its colour channels correlate below :data:`MIXED_CORRELATION` over its
        pixels, or the last of two or four channels, read as alpha, has more than two values;
        None otherwise. A
        sample of about 65,000 pixels is looked at.

    Examples
    --------
    >>> rr, cc = np.indices((64, 64))
    >>> nuclei = ((rr % 16 - 8) ** 2 + (cc % 16 - 8) ** 2 < 16) * 200
    >>> grey = np.dstack([nuclei] * 3).astype(np.uint8)
    >>> mixed_channels(grey) is None
    True
    >>> composite = np.dstack([0 * nuclei, 150 * (nuclei == 0) * (cc % 16 > 3), nuclei]).astype(np.uint8)
    >>> mixed_channels(composite)[:45]
    'a colour fluorescence image whose channels 1 '
    >>> stained = np.dstack([200 - nuclei // 2, 150 - nuclei // 2, 220 - nuclei // 4]).astype(np.uint8)
    >>> mixed_channels(stained) is None
    True
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 2:
        return None
    channels = image.shape[2]
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 65536)))
    sample = image[::step, ::step]
    values = sample.reshape(-1, channels).astype(np.float64)
    values = values[np.isfinite(values).all(axis=1)]
    if len(values) < 2:
        return None
    # Stained tissue has colour channels of their own; a fluorescence composite has them on a dark
    # background, which may be a small part of a confluent field (whose bright cytoplasm stain then
    # makes image_type read it as stained): no stained image of stage1_train has a pixel whose
    # brightest channel is under 0.1.
    colours = 1 if channels == 2 else 3
    dark = float((as_float(sample[..., :colours]).max(axis=-1) < 0.1).mean())
    if dark < DARK_SHARE and image_type(sample) != "fluorescence":
        return None
    if channels in (2, 4) and np.unique(values[:, -1]).size > 2:  # transparency: opaque, or opaque and clear
        if channels == 2:
            return ("a two-channel image whose second channel (1) is no transparency mask but an image of its "
                    "own: only channel 0 was segmented")
        return ("a four-channel image whose fourth channel (3) is no transparency mask but an image of its "
                "own: it was left out")
    if channels == 2:
        return None
    rgb = values[:, :3]
    spread = rgb.std(axis=0)
    live = np.flatnonzero(spread > 0.05 * spread.max()) if spread.max() > 0 else []
    if len(live) < 2:
        return None
    corr = np.corrcoef(rgb[:, live].T)
    pairs = [(corr[a, b], live[a], live[b]) for a in range(len(live)) for b in range(a + 1, len(live))]
    low, first, second = min(pairs)
    if low >= MIXED_CORRELATION:
        return None
    return (f"a colour fluorescence image whose channels {first} ({_CHANNEL_NAMES[first]}) and {second} "
            f"({_CHANNEL_NAMES[second]}) show different things (correlation {low:.2f}): their luminance "
            "was segmented")


def normalize_polarity(
    gray: np.ndarray, image: np.ndarray | None = None, *, polarity: str = "auto", kind: str | None = None
) -> np.ndarray:
    """Make nuclei bright on a dark background.

    Parameters
    ----------
    gray : (H, W) ndarray of float in [0, 1]
        A luminance image (:func:`to_gray`).
    image : (H, W) or (H, W, C) ndarray, optional
        The raw image ``gray`` came from, which decides "auto"; ``gray`` itself
        is used when it is not given.
    polarity : {"auto", "keep", "invert"}
        "auto" inverts images with a light background (brightfield and stained);
        "keep" and "invert" force the choice.
    kind : str, optional
        The image's type (:func:`image_type`), when already known.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
    """
    gray = np.asarray(gray, dtype=np.float32)
    if polarity == "keep":
        return gray
    if polarity == "invert":
        return 1 - gray
    if polarity != "auto":
        raise ValueError(f"`polarity` is {polarity!r}, expected 'auto', 'keep' or 'invert'")
    if kind is None:
        kind = image_type(gray if image is None else image)
    light = kind != "fluorescence"
    return 1 - gray if light else gray


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density of a colour image (colour deconvolution).

    Parameters
    ----------
    image : (H, W, 3) or (H, W, 4) ndarray
        A stained image; alpha is ignored.

    Returns
    -------
    (H, W) ndarray of float32
        High where the nuclear stain is dense (not scaled to [0, 1]).
    """
    # skimage.color is slow to import; only stained images need it
    from skimage.color import hed_from_rgb, rgb2hed

    image = check_image("image", image)
    if not (image.ndim == 3 and image.shape[2] >= 3):
        raise TypeError("`image` must have colour channels for colour deconvolution")
    if image.dtype == np.uint8:
        # rgb2hed's hematoxylin column is a sum over channels of a function of each channel's
        # level: summed from tables of the 256 levels, it takes a third of the time (the 12 stained
        # stage-1 test images: 0.04 against 0.11 CPU s) and gives the same float32 (tested); the
        # float64 sums may differ only in their last bits.
        density = np.log(np.maximum(_LEVELS, 1e-6)) / np.log(1e-6)  # rgb2hed's optical density
        tables = density[None, :] * hed_from_rgb[:, :1]  # (channel, level)
        summed = np.take(tables[0], image[..., 0])
        summed += np.take(tables[1], image[..., 1])
        summed += np.take(tables[2], image[..., 2])
        return np.maximum(summed, 0).astype(np.float32)
    return rgb2hed(_rgb(image))[..., 0].astype(np.float32)


def stained_gray(image: np.ndarray, *, channel: str = "both", low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Nuclei-bright grey for a stained (H&E-like) colour image.

    Parameters
    ----------
    image : (H, W, 3) or (H, W, 4) ndarray
    channel : {"both", "hematoxylin", "luminance"}
        "luminance" is inverted luminance; "hematoxylin" the hematoxylin
        density; "both" the geometric mean of the two after stretching each,
        which is bright only where both agree (eosin-rich tissue is dark in
        luminance but carries little hematoxylin).
    low, high : float
        Percentiles for :func:`stretch`.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
    """
    if channel not in STAINED_CHANNELS:
        raise ValueError(f"`channel` is {channel!r}, expected one of {', '.join(map(repr, STAINED_CHANNELS))}")
    if channel == "luminance":
        return stretch(1 - to_gray(image), low=low, high=high)
    hema = stretch(hematoxylin(image), low=low, high=high)
    if channel == "hematoxylin":
        return hema
    return np.sqrt(hema * stretch(1 - to_gray(image), low=low, high=high))


def stretch(gray: np.ndarray, *, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles to 0 and 1, clipping outside.

    Parameters
    ----------
    gray : (H, W) ndarray of float
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
        All zeros for a flat image.
    """
    _check_percentiles(low, high)
    gray = np.asarray(gray, dtype=np.float32)
    if gray.size == 0:
        return gray
    return _stretch_between(gray, *_percentiles(gray, [low, high]))


def _check_percentiles(low: float, high: float) -> None:
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles `low` {low} and `high` {high} must satisfy 0 <= low < high <= 100")


def _stretch_between(gray: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``gray`` with ``lo`` and ``hi`` mapped to 0 and 1, clipped; all zeros when they are too close."""
    if hi - lo < 1e-6:
        return np.zeros_like(gray)
    return np.clip((gray - np.float32(lo)) / np.float32(hi - lo), 0, 1)


def _percentiles(values: np.ndarray, q) -> np.ndarray:
    """``np.percentile(values, q)`` for float32 ``values``, to the bit (tested), in about a third
    of its time: the order statistics it interpolates come from histograms of the values' bit
    patterns (high 16 bits, then the low 16 of the one bin that holds each rank), which sort as
    non-negative finite floats do; any other value falls back to ``np.percentile``."""
    at, below, ranks = _ranks(values.size, q)
    bits = values.reshape(-1).view(np.uint32)
    high = bits >> 16
    counts = np.bincount(high, minlength=1 << 16)
    if counts[0x7F80:].any():  # infinite, NaN or negative (sign bit set)
        return np.percentile(values, q)
    cumulative = np.cumsum(counts)
    bins = np.searchsorted(cumulative, ranks + 1)
    found = np.empty(ranks.size, np.uint32)
    for top in np.unique(bins):
        low = np.cumsum(np.bincount(bits[high == top] & 0xFFFF, minlength=1 << 16))
        rank = ranks[bins == top] - (cumulative[top - 1] if top else 0)
        found[bins == top] = (np.uint32(top) << 16) | np.searchsorted(low, rank + 1).astype(np.uint32)
    return _between_ranks(at, below, found.view(np.float32))


def _between_ranks(at: np.ndarray, below: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """np.percentile's linear interpolation between the order statistics of ranks ``below`` and
    ``below + 1`` (``stats``, those of the first then those of the second), in its dtypes and with
    its two formulas."""
    a, b = stats[: below.size], stats[below.size :]
    t = at - below
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _ranks(n: int, q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where np.percentile's ``q`` fall among ``n`` sorted values: the fractional positions, the
    ranks below them, and the ranks below then above them, to look up."""
    at = (n - 1) * (np.asarray(q, np.float64) / 100)
    below = np.floor(at).astype(np.intp)
    return at, below, np.r_[below, np.minimum(below + 1, n - 1)]


def _percentiles_of_levels(table: np.ndarray, counts: np.ndarray, q) -> np.ndarray:
    """``np.percentile(table[levels], q)``, to the bit, from the ``counts`` of each level (as
    :func:`_level_counts`): the order statistics are the table's values in their sorted order,
    each as often as its level is counted."""
    order = np.argsort(table, kind="stable")
    cumulative = np.cumsum(counts[order])
    at, below, ranks = _ranks(int(cumulative[-1]), q)
    return _between_ranks(at, below, table[order][np.searchsorted(cumulative, ranks + 1)])


def to_network_input(image: np.ndarray) -> np.ndarray:
    """A prepared uint8 grey image (the training cache's :func:`preprocess_image` times 255) as the
    network sees it: float32 in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return image.astype(np.float32, copy=False)


def preprocess_image(image: np.ndarray, config=None, *, kind: str | None = None) -> np.ndarray:
    """The network's input for one raw image: grey, nuclei bright, stretched.

    Training and prediction both go through this function, so they see the
    same input.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        The raw image, as :func:`dsb.io.images.read_image` returns it.
    config : dsb.core.config.PreprocessConfig, optional
        ``polarity`` ("auto" picks per image type; "keep" / "invert" apply to
        luminance for every image), ``stained_channel`` (see
        :func:`stained_gray`), and the stretch percentiles ``percentile_low``
        and ``percentile_high``. Defaults to ``PreprocessConfig()``.
    kind : str, optional
        The image's type (:func:`image_type`), when already known.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]
    """
    if config is None:
        from dsb.core.config import PreprocessConfig

        config = PreprocessConfig()
    image = check_image("image", image)
    low, high = config.percentile_low, config.percentile_high
    # An 8-bit grey image (most fluorescence images are RGB with equal channels) goes through the
    # same steps on its 256 levels and then one lookup per pixel: to the bit as on every pixel
    # (tested), in under half the time; its type and percentiles come from its levels' counts.
    levels = _grey_levels(image) if image.size else None
    counts = None if levels is None else _level_counts(levels)
    if config.polarity == "auto" and kind is None:
        kind = image_type(image) if counts is None else _kind(_median_of_levels(counts), 0.0)
    if config.polarity == "auto" and kind == "stained":
        return stained_gray(image, channel=config.stained_channel, low=low, high=high)
    if counts is None:
        gray = normalize_polarity(_luminance(image), image, polarity=config.polarity, kind=kind)
        return stretch(gray, low=low, high=high)
    _check_percentiles(low, high)
    table = normalize_polarity(_LEVELS, polarity=config.polarity, kind=kind)
    return np.take(_stretch_between(table, *_percentiles_of_levels(table, counts, [low, high])), levels)


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Quantise a [0, 1] float image to uint8 (rounded, clipped).

    Parameters
    ----------
    gray : (H, W) ndarray of float

    Returns
    -------
    (H, W) ndarray of uint8
    """
    return np.round(np.clip(np.asarray(gray, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
