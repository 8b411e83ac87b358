"""Small helpers shared by the library tests."""

from __future__ import annotations

import torch

SMALL_SIZE = (64, 64)


def random_images(n: int, seed: int, size: tuple[int, int] = SMALL_SIZE) -> torch.Tensor:
    """``n`` uniform-noise RGB images in [0, 1], reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=generator)
