"""dsb.workflows.drawing: images made displayable, outlines, the overlays of dsb segment and dsb report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_discs, true_and_predicted_discs

from dsb.workflows.drawing import (
    OUTLINE_COLOURS,
    OVERLAY_COLOURS,
    compare_overlay,
    draw_outlines,
    outline_overlay,
    to_rgb8,
)

RADIUS = 8
TRUE_OUTLINE, MATCHED, FALSE_POSITIVE, MISSED = (np.array(c) for c in OVERLAY_COLOURS.values())


def test_to_rgb8_stretches_dim_16_bit_and_drops_alpha():
    dim = (make_discs() > 0).astype(np.uint16) * 900 + 100
    rgb = to_rgb8(dim)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert rgb.max() == 255 and rgb.min() == 0

    rgba = np.zeros((8, 9, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 0] = 0
    out = to_rgb8(rgba)
    assert out.shape == (8, 9, 3)
    assert (out[..., 1:] == 0).all()

    assert (to_rgb8(np.full((4, 4), 7, np.uint8)) == 7).all()  # flat: kept, no division by zero
    assert (to_rgb8(np.full((4, 4), 1023, np.uint16)) == 255).all()  # flat 10-bit: as the network reads it
    with pytest.raises(TypeError, match="shape"):
        to_rgb8(np.zeros((4, 4, 5)))
    assert to_rgb8(np.zeros((4, 4, 2), np.uint8)).shape == (4, 4, 3)  # grey and alpha


def test_outline_overlay_paints_the_edges_only():
    labels = make_discs()
    rgb = outline_overlay(np.zeros((64, 64), np.uint8), labels, colour=(255, 0, 0))
    red = (rgb == (255, 0, 0)).all(axis=2)
    assert red[20, 20 - RADIUS] and red[20, 20 + RADIUS]  # the disc's edge
    assert not red[20, 20] and not red[0, 0]  # not its centre, not the background
    padded = np.pad(labels, 1)
    neighbours = [padded[1 + dr : 65 + dr, 1 + dc : 65 + dc] for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    on_edge = (labels > 0) & np.any([n != labels for n in neighbours], axis=0)
    np.testing.assert_array_equal(red, on_edge)
    # The default colour shows on the background: yellow on dark, blue on light.
    assert (outline_overlay(np.zeros((64, 64)), labels)[20, 12] == OUTLINE_COLOURS["dark"]).all()
    assert (outline_overlay(np.ones((64, 64)), labels)[20, 12] == OUTLINE_COLOURS["light"]).all()


def test_draw_outlines_names_both_shapes_when_they_differ():
    with pytest.raises(ValueError, match=r"`labels` \(shape \(4, 5\)\) must have the height and width of `rgb` "
                                         r"\(shape \(4, 4, 3\)\)"):
        draw_outlines(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int32), (255, 0, 0))
    with pytest.raises(TypeError, match=r"`labels` \(shape \(4,\)\) must be 2-D"):
        draw_outlines(np.zeros((4, 4, 3), np.uint8), np.zeros(4, np.int32), (255, 0, 0))


def test_compare_overlay_colours_each_kind_of_nucleus():
    true, pred = true_and_predicted_discs()
    image = np.zeros((64, 64), np.uint8)
    rgb = compare_overlay(image, true, pred)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)

    def is_colour(pixel, colour):
        return bool((rgb[pixel] == colour).all())

    assert is_colour((14, 14 - 7), MATCHED)  # edge of the exact match
    assert is_colour((14, 14 - 8), TRUE_OUTLINE)  # just outside the true disc
    assert is_colour((50, 56 - 7), FALSE_POSITIVE)  # edge of the extra prediction
    # Fills are half the colour over the (black) image.
    np.testing.assert_allclose(rgb[50, 56], FALSE_POSITIVE / 2, atol=1)
    np.testing.assert_allclose(rgb[46, 30], MISSED / 2, atol=1)
    assert (rgb[14, 14] == 0).all() and (rgb[0, 0] == 0).all()  # matched interiors and background untouched


def test_compare_overlay_without_truth_or_image():
    _, pred = true_and_predicted_discs()
    rgb = compare_overlay(None, None, pred)
    assert (rgb[14, 14 - 7] == MATCHED).all() and (rgb[14, 14] == 0).all()
    assert not (rgb == FALSE_POSITIVE).all(axis=2).any()
    with pytest.raises(ValueError, match=r"`image` \(shape \(10, 10\)\) must have the height and width of `pred_labels`"):
        compare_overlay(np.zeros((10, 10)), None, pred)
