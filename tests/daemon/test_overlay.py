"""Heatmap overlays (daemon/overlay.py): colormap, scaling, regions and the rendered PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daemon.overlay import OUTLINE_RGB, jet, normalise_map, render_overlay


def test_jet_runs_from_dark_blue_through_green_to_dark_red() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert colours.dtype == np.uint8
    # Matplotlib's jet: (0, 0, 0.5), (0.5, 1, 0.5), (0.5, 0, 0) at 0, 0.5 and 1.
    np.testing.assert_array_equal(colours, [[0, 0, 128], [128, 255, 128], [128, 0, 0]])


def test_jet_clips_out_of_range_and_nan_values() -> None:
    colours = jet(np.array([-3.0, np.nan, 7.0]))
    np.testing.assert_array_equal(colours[0], colours[1])  # NaN renders like the minimum
    np.testing.assert_array_equal(colours[2], jet(np.array([1.0]))[0])


def test_normalise_map_without_threshold_spans_min_to_max() -> None:
    scaled = normalise_map(np.array([[2.0, 4.0], [6.0, 10.0]]))
    np.testing.assert_allclose(scaled, [[0.0, 0.25], [0.5, 1.0]])


def test_normalise_map_with_threshold_keeps_normal_maps_below_full_scale() -> None:
    # The map never reaches the threshold, so nothing may be painted "anomalous" red.
    scaled = normalise_map(np.array([[2.0, 4.0], [6.0, 10.0]]), threshold=18.0)
    assert scaled.max() == pytest.approx(0.5)


def test_normalise_map_with_threshold_saturates_above_it() -> None:
    scaled = normalise_map(np.array([[0.0, 5.0], [10.0, 20.0]]), threshold=10.0)
    np.testing.assert_allclose(scaled, [[0.0, 0.5], [1.0, 1.0]])


def test_normalise_map_of_a_constant_map_is_zero() -> None:
    assert not normalise_map(np.full((3, 3), 4.0)).any()


def test_render_overlay_has_the_input_size_not_the_map_size() -> None:
    image = Image.new("RGB", (90, 60), (40, 80, 120))
    overlay = render_overlay(image, np.random.default_rng(0).random((16, 16)))
    assert overlay.size == (90, 60)
    assert overlay.mode == "RGB"


def test_render_overlay_colours_the_hot_spot_redder_than_the_background() -> None:
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    amap = np.zeros((32, 32))
    amap[:, 16:] = 10.0  # right half anomalous
    pixels = np.asarray(render_overlay(image, amap), dtype=int)
    left, right = pixels[32, 4], pixels[32, 60]
    assert right[0] > left[0] and right[2] < left[2]


def test_render_overlay_outlines_regions_above_the_threshold() -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    amap = np.zeros((32, 32))
    amap[8:24, 8:24] = 10.0
    pixels = np.asarray(render_overlay(image, amap, threshold=5.0))
    outlined = np.all(pixels == OUTLINE_RGB, axis=-1)
    # The region spans rows/cols 16..47 in image pixels: its border is drawn, its centre
    # and the far corner are not.
    assert outlined[16, 32] and outlined[32, 16]
    assert not outlined[32, 32] and not outlined[2, 2]


def test_render_overlay_boxes_a_region_apart_from_its_contour() -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    amap = np.zeros((32, 32))
    amap[8:24, 8:24] = 10.0
    pixels = np.asarray(render_overlay(image, amap, threshold=5.0))
    column = np.all(pixels[:32, 32] == OUTLINE_RGB, axis=-1).astype(int)  # down to the centre
    # Two separate outlined runs above the centre: the box line, then the contour.
    runs = int(np.sum(np.diff(np.concatenate([[0], column])) == 1))
    assert runs == 2


def test_render_overlay_contours_but_does_not_box_a_region_below_the_minimum_area() -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    amap = np.zeros((32, 32))
    amap[8:24, 8:24] = 10.0  # 256 map pixels
    boxed = np.asarray(render_overlay(image, amap, threshold=5.0, min_region_px=1))
    unboxed = np.asarray(render_overlay(image, amap, threshold=5.0, min_region_px=257))
    outlined = [np.all(p == OUTLINE_RGB, axis=-1).sum() for p in (boxed, unboxed)]
    assert 0 < outlined[1] < outlined[0]  # the contour stays, the box goes


def test_render_overlay_draws_no_outline_without_a_threshold() -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    amap = np.zeros((32, 32))
    amap[8:24, 8:24] = 10.0
    pixels = np.asarray(render_overlay(image, amap))
    assert not np.all(pixels == OUTLINE_RGB, axis=-1).any()


def test_render_overlay_rejects_a_map_that_is_not_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        render_overlay(Image.new("RGB", (8, 8)), np.zeros((1, 8, 8)))
