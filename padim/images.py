"""Turning PIL images and image files into model input tensors."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from padim.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def image_to_tensor(image: Image.Image, size: int | Sequence[int]) -> torch.Tensor:
    """A PIL image as float RGB (3, H, W) in [0, 1], resized (bilinear, antialiased) to ``size`` (H, W)."""
    h, w = _pair(size)
    rgb = image.convert("RGB")
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def load_image(path: str | os.PathLike[str], size: int | Sequence[int]) -> torch.Tensor:
    """Read one image file as (3, H, W); unreadable files raise :class:`InputError` naming the path."""
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_tensor(image, size)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc


def load_images(paths: Iterable[str | os.PathLike[str]], size: int | Sequence[int]) -> torch.Tensor:
    """Read image files into one batch (B, 3, H, W) at ``size``."""
    tensors = [load_image(p, size) for p in paths]
    if not tensors:
        raise InputError("no images given")
    return torch.stack(tensors)


def images_to_tensor(images: Iterable[Image.Image], size: int | Sequence[int]) -> torch.Tensor:
    """A batch (B, 3, H, W) from PIL images."""
    tensors = [image_to_tensor(im, size) for im in images]
    if not tensors:
        raise InputError("no images given")
    return torch.stack(tensors)
