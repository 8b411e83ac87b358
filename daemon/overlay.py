"""Heatmap overlays: an input image blended with its colour-mapped anomaly map.

`padimd score --heatmaps DIR` writes one PNG per scored image with `render_overlay`;
the colormap is a few lines of numpy (no matplotlib). When a threshold is given, the
pixels above it are outlined and each connected region gets a bounding box (the
regions the service reports in its events, `daemon.events.find_regions`), so an
operator sees *where* the model objects, not only how much.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from daemon.events import find_regions
from daemon.settings import ScoringSettings

# Weight of the heatmap in the blend: 0.5 keeps the scene recognisable under the colour.
DEFAULT_ALPHA = 0.5
# Contour and box colour: white stands out against every jet colour.
OUTLINE_RGB = (255, 255, 255)
# Regions smaller than this (pixels at model size) get a contour but no box: the same
# rule, and default, as the regions of the service's events.
DEFAULT_MIN_REGION_PX: int = ScoringSettings.model_fields["region_min_area_px"].default
# Outline thickness relative to the image's shorter side, so a 4K frame and a
# 64 px thumbnail both get a visible but thin line.
OUTLINE_FRACTION = 1 / 150


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to jet RGB colours: 0 dark blue, 0.5 green, 1 dark red.

    The classic piecewise-linear jet: each channel is a clipped tent centred a quarter
    apart (blue at 1/4, green at 1/2, red at 3/4). Values outside [0, 1] are clipped;
    NaN is treated as 0 so a degenerate map still renders. Returns uint8 (..., 3).
    """
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, 1.0)
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue
    rgb = np.clip(1.5 - np.abs(4.0 * x[..., None] - 4.0 * centres), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def normalise_map(anomaly_map: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Scale an anomaly map to [0, 1] for colouring.

    Without a threshold the scale is the map's own min..max (a relative picture: even a
    normal image shows its "least normal" spot in red). With a threshold the top of the
    scale is the threshold itself, so full red means "anomalous" in every overlay and
    normal images stay cool instead of being stretched to red.
    """
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float64), nan=0.0)
    low = float(amap.min())
    high = float(amap.max()) if threshold is None else float(threshold)
    if high <= low:
        # Constant map, or a threshold below everything: every pixel is either
        # uninformative (0) or above the threshold (1).
        return np.zeros_like(amap) if threshold is None else (amap >= high).astype(np.float64)
    return np.clip((amap - low) / (high - low), 0.0, 1.0)


def _resize_map(anomaly_map: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height) via Pillow's float mode."""
    image = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size_wh, Image.Resampling.BILINEAR), dtype=np.float64)


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels within `thickness` of the mask's boundary (dilation minus erosion)."""
    kernel = 2 * (thickness // 2) + 1  # Pillow's rank filters need an odd size >= 3
    kernel = max(kernel, 3)
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    dilated = np.asarray(image.filter(ImageFilter.MaxFilter(kernel))) > 0
    eroded = np.asarray(image.filter(ImageFilter.MinFilter(kernel))) > 0
    return dilated & ~eroded


def render_overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    threshold: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_region_px: int = DEFAULT_MIN_REGION_PX,
) -> Image.Image:
    """Blend `image` with the jet-coloured `anomaly_map`; outline regions above `threshold`.

    `anomaly_map` (h, w) may be at the model's resolution; it is resized (bilinear) to the
    image's size, so the overlay always has the input's size. With a threshold, pixels
    above it are contoured, and each region of at least `min_region_px` map pixels is
    boxed. Returns a new RGB image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D (h, w), got shape {amap.shape}")
    rgb = image.convert("RGB")
    width, height = rgb.size
    full_map = _resize_map(amap, (width, height))  # (H, W) at the image's size
    colours = jet(normalise_map(full_map, threshold)).astype(np.float64)  # (H, W, 3)
    pixels = np.asarray(rgb, dtype=np.float64)  # (H, W, 3)
    blended = np.round((1.0 - alpha) * pixels + alpha * colours).astype(np.uint8)
    if threshold is None:
        return Image.fromarray(blended, mode="RGB")

    thickness = max(1, round(min(width, height) * OUTLINE_FRACTION))
    blended[_outline(full_map > threshold, thickness)] = OUTLINE_RGB
    out = Image.fromarray(blended, mode="RGB")
    draw = ImageDraw.Draw(out)
    # The box stands a little outside the contour so that a small region shows both
    # (without the margin a tiny region's box would hide inside its contour line).
    margin = 2 * thickness + 1
    regions = find_regions(torch.from_numpy(amap), threshold, (width, height),
                           min_area_px=min_region_px)
    for region in regions:
        x0, y0, x1, y1 = region.box  # original pixels, x1/y1 exclusive
        # Pillow's rectangle includes its end point, hence the - 1.
        draw.rectangle(
            (max(x0 - margin, 0), max(y0 - margin, 0),
             min(x1 - 1 + margin, width - 1), min(y1 - 1 + margin, height - 1)),
            outline=OUTLINE_RGB, width=thickness,
        )
    return out
