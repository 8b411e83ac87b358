"""From patch distances to pixel anomaly maps and image scores."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

DEFAULT_BLUR_SIGMA = 4.0


def blur_kernel_size(sigma: float) -> int:
    """Odd kernel covering +-4 sigma, the usual truncation of a Gaussian."""
    return 2 * math.ceil(4.0 * sigma) + 1


def anomaly_maps(
    distances: torch.Tensor, size: tuple[int, int], blur_sigma: float = DEFAULT_BLUR_SIGMA
) -> torch.Tensor:
    """Upsample (B, h, w) patch distances to (B, H, W) and smooth them with a Gaussian.

    Bilinear upsampling followed by a blur of ``blur_sigma`` pixels (0 disables it),
    as in the paper's evaluation protocol.
    """
    if distances.ndim != 3:
        raise ValueError(f"distances must be (B, h, w), got {tuple(distances.shape)}")
    maps = F.interpolate(distances.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    if blur_sigma > 0:
        k = blur_kernel_size(blur_sigma)
        # Reflect padding needs the kernel to fit inside the map.
        k = min(k, 2 * ((min(size) - 1) // 2) + 1)
        maps = gaussian_blur(maps, kernel_size=[k, k], sigma=[blur_sigma, blur_sigma])
    return maps.squeeze(1)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score: the maximum of each (H, W) map -> (B,)."""
    return maps.flatten(1).amax(dim=1)
