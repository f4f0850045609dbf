"""Checks of array arguments, one message per problem, shared by every module.

Messages name the argument, what was seen and what was expected, in the
style of scikit-image: "`labels` (shape (10, 12, 3)) must be 2-D".
TypeError for a wrong type, dtype or number of dimensions; ValueError for
wrong values or shapes. File contents are checked where files are read
(:mod:`dsb.io.images`), with :class:`dsb.core.errors.BadDataError` naming the file.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_2d", "check_gray", "check_image", "check_labels", "check_same_shape", "check_same_grid"]


def check_2d(name: str, array) -> np.ndarray:
    """``array`` as an ndarray, or TypeError unless it is 2-D.

    Examples
    --------
    >>> check_2d("mask", [[1, 0]]).shape
    (1, 2)
    >>> check_2d("mask", [1, 0])
    Traceback (most recent call last):
    ...
    TypeError: `mask` (shape (2,)) must be 2-D
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise TypeError(f"`{name}` (shape {array.shape}) must be 2-D")
    return array


def check_gray(name: str, image) -> np.ndarray:
    """A one-channel image as (H, W): TypeError unless it is (H, W) or (H, W, 1)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise TypeError(f"`{name}` (shape {image.shape}) must be 2-D (H, W) or (H, W, 1)")
    return image


def check_image(name: str, image, *, pixels: bool = False) -> np.ndarray:
    """An image as an ndarray: (H, W) grey or (H, W, C) with C = 1 to 4 channels.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    image : array_like
    pixels : bool
        Also require at least one pixel (ValueError otherwise).

    Raises
    ------
    TypeError
        Another number of dimensions or channels.
    ValueError
        With ``pixels``, an image with no pixel.
    """
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and 1 <= image.shape[2] <= 4)):
        raise TypeError(f"`{name}` (shape {image.shape}) must be (H, W) grey or (H, W, C) with 1 to 4 channels")
    if pixels and (image.shape[0] < 1 or image.shape[1] < 1):
        raise ValueError(f"`{name}` (shape {image.shape}) has no pixels")
    return image


def check_labels(name: str, labels, *, ndim: int | None = 2, bool_ok: bool = True) -> np.ndarray:
    """Instance labels: integers (or booleans, as 0/1 intp), none negative, 2-D by default.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    labels : array_like
    ndim : int or None
        The number of dimensions required; None takes any.
    bool_ok : bool
        Accept a boolean mask as labels 0 and 1.

    Returns
    -------
    ndarray of int
        ``labels`` itself, or a boolean mask as intp.

    Examples
    --------
    >>> check_labels("labels", [[0.5]])
    Traceback (most recent call last):
    ...
    TypeError: `labels` (dtype float64) must hold integers
    """
    labels = np.asarray(labels)
    if ndim is not None and labels.ndim != ndim:
        raise TypeError(f"`{name}` (shape {labels.shape}) must be {ndim}-D")
    if labels.dtype == bool and bool_ok:
        return labels.astype(np.intp)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`{name}` (dtype {labels.dtype}) must hold integers")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger):
        low = labels.min()
        if low < 0:
            raise ValueError(f"`{name}` (minimum {low}) must be non-negative")
    return labels


def check_same_shape(name: str, array, other_name: str, other) -> None:
    """ValueError unless two arrays have the same shape."""
    shape, other_shape = np.shape(array), np.shape(other)
    if shape != other_shape:
        raise ValueError(
            f"`{name}` (shape {shape}) must have the same shape as `{other_name}` (shape {other_shape})"
        )


def check_same_grid(name: str, array, image_name: str, image) -> None:
    """ValueError unless ``array`` has the height and width of ``image`` (which may have channels)."""
    shape, image_shape = np.shape(array), np.shape(image)
    if shape[:2] != image_shape[:2]:
        raise ValueError(
            f"`{name}` (shape {shape}) must have the height and width of `{image_name}` (shape {image_shape})"
        )
