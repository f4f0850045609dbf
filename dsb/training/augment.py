"""Random appearance changes for training: stain and colour jitter, blur, noise, gamma.

Pure functions on arrays; every random number comes from the
:class:`numpy.random.Generator` passed in, so a sample is a function of its
seed. A function whose strength is 0 returns its input unchanged (as float32)
and draws nothing.

Colour functions work on the raw RGB of a stained image, before
:func:`dsb.inference.preprocess.preprocess_image` makes it grey, so that a stain the
training set lacks (strong eosin, a yellow background) still maps to a grey
input the network knows:

* :func:`stain_jitter` scales and shifts the haematoxylin, eosin and DAB
  concentrations of colour deconvolution (Ruifrok and Johnston, the matrices
  of :func:`skimage.color.rgb2hed`), as in Tellez et al. 2018;
* :func:`colour_jitter` rotates the hue and scales saturation and brightness.

Grey functions work on any network input in [0, 1]: :func:`gaussian_blur`
(focus), :func:`add_noise` (read and shot noise), :func:`random_gamma`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["stain_jitter", "colour_jitter", "gaussian_blur", "add_noise", "random_gamma"]

# skimage.color.rgb2hed measures optical density in units of -log(1e-6) (its
# darkest representable pixel is 1); shifts are given in the same units, so
# they compare with what rgb2hed returns (haematoxylin of nuclei: about 0.05-0.1).
_OD_UNIT = -np.log(1e-6)
_DARKEST = 1e-6
_LUMA = np.array([0.2125, 0.7154, 0.0721])  # ITU-R BT.709, as dsb.inference.preprocess


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from an RGB or RGBA image of uint8 or float in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise TypeError(f"`rgb` (shape {image.shape}) must be (H, W, 3) or (H, W, 4)")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"`rgb` has dtype {image.dtype}, expected uint8 or float in [0, 1]")
    return np.clip(image, 0, 1).astype(np.float32, copy=False)


def _gray(gray: np.ndarray) -> np.ndarray:
    gray = np.asarray(gray)
    if not np.issubdtype(gray.dtype, np.floating):
        raise TypeError(f"`gray` has dtype {gray.dtype}, expected float in [0, 1]")
    return gray.astype(np.float32, copy=False)


def _check_strength(name: str, value: float, top: float | None = None) -> float:
    value = float(value)
    if not value >= 0 or (top is not None and value > top):
        bound = f"in [0, {top}]" if top is not None else ">= 0"
        raise ValueError(f"`{name}` is {value}, expected {bound}")
    return value


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, *, scale: float, shift: float) -> np.ndarray:
    """Randomly change the amount of each stain of a brightfield colour image.

    The optical density of each pixel is split into haematoxylin, eosin and
    DAB concentrations (the stain matrix of :func:`skimage.color.rgb2hed`);
    each concentration ``c`` becomes ``c * a + b`` with ``a`` uniform in
    ``[1 - scale, 1 + scale]`` and ``b`` uniform in ``[-shift, shift]``, one
    pair per stain; then back to RGB. Unlike ``rgb2hed`` followed by
    ``hed2rgb``, the concentrations are not clipped at 0, so ``a = 1, b = 0``
    gives the image back. A positive shift also tints the background (eosin:
    pink, DAB: yellow-brown).

    Parameters
    ----------
    rgb : (H, W, 3) or (H, W, 4) ndarray of uint8, or of float in [0, 1]
        Alpha is dropped.
    rng : numpy.random.Generator
    scale : float
        Multiplicative jitter, in [0, 1].
    shift : float
        Additive jitter, >= 0, in the optical-density units of ``rgb2hed``.

    Returns
    -------
    (H, W, 3) ndarray of float32 in [0, 1]

    Examples
    --------
    >>> rgb = np.full((4, 4, 3), 0.8, np.float32); rgb[1:3, 1:3] = (0.4, 0.2, 0.6)
    >>> out = stain_jitter(rgb, np.random.default_rng(0), scale=0.3, shift=0.02)
    >>> out.shape, out.dtype, bool(out.min() >= 0 and out.max() <= 1)
    ((4, 4, 3), dtype('float32'), True)
    >>> np.allclose(stain_jitter(rgb, np.random.default_rng(0), scale=0.0, shift=0.0), rgb)
    True
    """
    from skimage.color import (  # skimage.color is slow to import
        hed_from_rgb,
        rgb_from_hed,
    )

    rgb = _rgb(rgb)
    scale = _check_strength("scale", scale, 1.0)
    shift = _check_strength("shift", shift)
    if scale == 0 and shift == 0:
        return rgb.copy()
    a = 1 + rng.uniform(-scale, scale, 3) if scale > 0 else np.ones(3)
    b = rng.uniform(-shift, shift, 3) * _OD_UNIT if shift > 0 else np.zeros(3)
    # density -> concentrations -> jittered concentrations -> density, as one 3x3 map plus an offset.
    matrix = (hed_from_rgb * a[None, :]) @ rgb_from_hed
    offset = b @ rgb_from_hed
    density = -np.log(np.maximum(rgb, np.float32(_DARKEST)))
    density = density @ matrix.astype(np.float32) + offset.astype(np.float32)
    return np.clip(np.exp(-density), 0, 1).astype(np.float32, copy=False)


def colour_jitter(
    rgb: np.ndarray, rng: np.random.Generator, *, hue: float, saturation: float, brightness: float
) -> np.ndarray:
    """Randomly rotate the hue and scale the saturation and brightness of a colour image.

    As image editors do it, with one 3 x 3 colour matrix (fast, unlike a
    round trip through HSV): the hue turns the colours about the grey axis,
    the saturation moves them away from or towards their luminance, the
    brightness scales all channels.

    Parameters
    ----------
    rgb : (H, W, 3) or (H, W, 4) ndarray of uint8, or of float in [0, 1]
        Alpha is dropped.
    rng : numpy.random.Generator
    hue : float
        Rotation uniform in ``[-hue, hue]`` turns of the colour wheel, in [0, 0.5].
    saturation, brightness : float
        Factors uniform in ``[1 - s, 1 + s]``, in [0, 1]; results are clipped to [0, 1].

    Returns
    -------
    (H, W, 3) ndarray of float32 in [0, 1]

    Examples
    --------
    >>> rgb = np.zeros((2, 2, 3), np.float32); rgb[..., 0] = 0.8  # pure red
    >>> out = colour_jitter(rgb, np.random.default_rng(1), hue=0.2, saturation=0.0, brightness=0.0)
    >>> bool(out[..., 1:].max() > 0), out.dtype
    (True, dtype('float32'))
    >>> grey = np.full((2, 2, 3), 0.5, np.float32)
    >>> np.allclose(colour_jitter(grey, np.random.default_rng(1), hue=0.5, saturation=0.0, brightness=0.0), grey)
    True
    """
    rgb = _rgb(rgb)
    hue = _check_strength("hue", hue, 0.5)
    saturation = _check_strength("saturation", saturation, 1.0)
    brightness = _check_strength("brightness", brightness, 1.0)
    if hue == 0 and saturation == 0 and brightness == 0:
        return rgb.copy()
    dh, fs, fv = rng.uniform(-1, 1, 3) * (hue, saturation, brightness) + (0, 1, 1)
    angle = 2 * np.pi * dh
    u = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    rotate = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(u, u)
    saturate = fs * np.eye(3) + (1 - fs) * np.outer(np.ones(3), _LUMA)
    matrix = fv * saturate @ rotate  # acts on column vectors: out = matrix @ rgb
    return np.clip(rgb @ matrix.T.astype(np.float32), 0, 1)


def gaussian_blur(gray: np.ndarray, rng: np.random.Generator, *, max_sigma: float, min_sigma: float = 0.0) -> np.ndarray:
    """Blur with a gaussian of random width, as an image slightly out of focus.

    Parameters
    ----------
    gray : (H, W) ndarray of float
    rng : numpy.random.Generator
    max_sigma : float
        The standard deviation (pixels) is uniform in ``[min_sigma, max_sigma]``; 0: no blur.
    min_sigma : float

    Returns
    -------
    (H, W) ndarray of float32
        Edges are mirrored.

    Examples
    --------
    >>> gray = np.zeros((9, 9), np.float32); gray[4, 4] = 1
    >>> out = gaussian_blur(gray, np.random.default_rng(0), max_sigma=1.0, min_sigma=1.0)
    >>> bool(out[4, 4] < 1), round(float(out.sum()), 3)
    (True, 1.0)
    """
    gray = _gray(gray)
    max_sigma = _check_strength("max_sigma", max_sigma)
    if not 0 <= min_sigma <= max_sigma:
        raise ValueError(f"`min_sigma` is {min_sigma}, expected in [0, max_sigma ({max_sigma})]")
    if max_sigma == 0:
        return gray
    sigma = float(rng.uniform(min_sigma, max_sigma))
    return ndimage.gaussian_filter(gray, sigma, mode="mirror", truncate=3.0)


def add_noise(gray: np.ndarray, rng: np.random.Generator, *, std: float, shot: float = 0.0) -> np.ndarray:
    """Add read noise and (poisson-like) shot noise, clipped to [0, 1].

    Each pixel gets gaussian noise of standard deviation
    ``sqrt(std**2 + shot**2 * gray)``: a constant part (camera read noise) and
    one that grows with the signal, as photon counts do (the gaussian
    approximation of Poisson noise).

    Parameters
    ----------
    gray : (H, W) ndarray of float in [0, 1]
    rng : numpy.random.Generator
    std : float
        Standard deviation of the constant part, >= 0.
    shot : float
        Standard deviation of the signal part at ``gray = 1``, >= 0.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]

    Examples
    --------
    >>> gray = np.full((64, 64), 0.5, np.float32)
    >>> out = add_noise(gray, np.random.default_rng(0), std=0.05)
    >>> round(float(out.std()), 2), out.dtype
    (0.05, dtype('float32'))
    """
    gray = _gray(gray)
    std = _check_strength("std", std)
    shot = _check_strength("shot", shot)
    if std == 0 and shot == 0:
        return gray
    sigma = np.sqrt(np.float32(std**2) + np.float32(shot**2) * np.clip(gray, 0, 1))
    noise = rng.standard_normal(gray.shape, dtype=np.float32)
    return np.clip(gray + sigma * noise, 0, 1)


def random_gamma(gray: np.ndarray, rng: np.random.Generator, *, strength: float) -> np.ndarray:
    """Raise to a random power ``g``, ``log(g)`` uniform in ``[-strength, strength]``.

    Parameters
    ----------
    gray : (H, W) ndarray of float in [0, 1]
    rng : numpy.random.Generator
    strength : float
        >= 0; 0.3 gives powers between 0.74 and 1.35. 0 and 1 stay fixed.

    Returns
    -------
    (H, W) ndarray of float32 in [0, 1]

    Examples
    --------
    >>> gray = np.array([[0.0, 0.25, 1.0]], np.float32)
    >>> out = random_gamma(gray, np.random.default_rng(0), strength=0.5)
    >>> float(out[0, 0]), float(out[0, 2]), bool(out[0, 1] != 0.25)
    (0.0, 1.0, True)
    """
    gray = _gray(gray)
    strength = _check_strength("strength", strength)
    if strength == 0:
        return gray
    power = np.float32(np.exp(rng.uniform(-strength, strength)))
    return np.clip(gray, 0, 1) ** power
