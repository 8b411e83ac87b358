"""Patch embeddings: frozen backbone taps, aligned to one grid, reduced to d channels.

One :class:`FeatureExtractor` can serve many models (the daemon runs one backbone
forward for a batch of frames from all cameras); its :attr:`identity` says when two
models are compatible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from padim.backbones import WEIGHTS_IMAGENET, LoadedBackbone, load_backbone
from padim.errors import ConfigurationError, InputError

# ToTensor() output is exactly [0, 1]; resampling and colour conversions can
# overshoot by a hair, which is harmless. A value of 2 or 255 is a caller's mistake.
_RANGE_TOLERANCE = 1e-3
# Backbone strides go up to 16 (the deepest tap): sizes that are multiples of it
# make every tap's grid exactly 2x or 4x the next, so nearest upsampling aligns.
SIZE_MULTIPLE = 16


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` picks CUDA when available; anything else is passed to torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def _normalise_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise ConfigurationError(f"size must be an int or (height, width), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 2 * SIZE_MULTIPLE or w < 2 * SIZE_MULTIPLE or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ConfigurationError(
            f"size {(h, w)} must be multiples of {SIZE_MULTIPLE} and at least {2 * SIZE_MULTIPLE} "
            "so that the backbone's feature grids align"
        )
    return h, w


def select_channels(total: int, num_embeddings: int, seed: int) -> torch.Tensor:
    """The seeded random channel subset of the paper: sorted LongTensor (num_embeddings,)."""
    if not 1 <= num_embeddings <= total:
        raise ConfigurationError(f"num_embeddings must be in [1, {total}] for this backbone, got {num_embeddings}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:num_embeddings].sort().values


class FeatureExtractor:
    """Frozen backbone + tap alignment + random channel subset.

    Call it with images (B, 3, H, W), float RGB in [0, 1] at :attr:`size`; it returns
    float32 embeddings (B, d, h, w) on :attr:`device`.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        num_embeddings: int | None = 100,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channel_indices: torch.Tensor | None = None,
    ) -> None:
        self.size = _normalise_size(size)
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.weights = str(weights)
        loaded: LoadedBackbone = load_backbone(backbone, weights, seed=self.seed)
        self.spec = loaded.spec
        self.weights_id = loaded.weights_id
        self._net = loaded.taps.to(self.device)
        total = self.spec.total_channels
        if channel_indices is None:
            d = self.spec.default_num_embeddings if num_embeddings is None else int(num_embeddings)
            channel_indices = select_channels(total, d, self.seed)
        else:
            channel_indices = channel_indices.to(torch.long).cpu()
            if channel_indices.ndim != 1 or len(channel_indices) == 0 or bool(
                torch.any(channel_indices[1:] <= channel_indices[:-1])
            ) or int(channel_indices[0]) < 0 or int(channel_indices[-1]) >= total:
                raise ConfigurationError("channel_indices must be strictly increasing indices into the taps")
        self.channel_indices = channel_indices
        # Per-tap local indices, so only the kept channels are upsampled.
        bounds = torch.tensor([0, *torch.cumsum(torch.tensor(self.spec.tap_channels), 0).tolist()])
        self._tap_indices = []
        for i in range(len(self.spec.tap_channels)):
            keep = channel_indices[(channel_indices >= bounds[i]) & (channel_indices < bounds[i + 1])] - bounds[i]
            self._tap_indices.append(keep.to(self.device))
        stride = self.spec.tap_strides[0]
        self.grid = (self.size[0] // stride, self.size[1] // stride)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def num_embeddings(self) -> int:
        return int(self.channel_indices.numel())

    @property
    def backbone(self) -> str:
        return self.spec.name

    @property
    def num_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def identity(self) -> dict[str, Any]:
        """JSON-able facts that must match for features to be interchangeable."""
        return {
            "backbone": self.spec.name,
            "weights_id": self.weights_id,
            "taps": list(self.spec.tap_names),
            "size": list(self.size),
            "grid": list(self.grid),
            "num_embeddings": self.num_embeddings,
            "channel_indices": self.channel_indices.tolist(),
        }

    def check_images(self, imgs: Any) -> torch.Tensor:
        """Validate a batch and return it as float32; raise :class:`InputError` otherwise."""
        if not isinstance(imgs, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor (B, 3, H, W), got {type(imgs).__name__}")
        if not imgs.is_floating_point():
            raise InputError(
                f"images must be a float tensor in [0, 1], got dtype {imgs.dtype}; "
                "convert uint8 images with torchvision.transforms.ToTensor() or padim.image_to_tensor"
            )
        if imgs.ndim != 4:
            hint = " (a single image needs a batch dimension: imgs.unsqueeze(0))" if imgs.ndim == 3 else ""
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(imgs.shape)}{hint}")
        if imgs.shape[0] == 0:
            raise InputError("empty batch")
        if imgs.shape[1] != 3:
            raise InputError(f"images must have 3 (RGB) channels, got {imgs.shape[1]}")
        if tuple(imgs.shape[2:]) != self.size:
            raise InputError(
                f"images are {tuple(imgs.shape[2:])} (H, W) but this model works at {self.size}; "
                "resize them first (padim.image_to_tensor does), nothing is reshaped silently"
            )
        imgs = imgs.to(torch.float32)
        if not bool(torch.isfinite(imgs).all()):
            raise InputError("images contain NaN or infinite values")
        lo, hi = float(imgs.min()), float(imgs.max())
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            raise InputError(
                f"image values span [{lo:g}, {hi:g}] but must be RGB in [0, 1] "
                "(as torchvision.transforms.ToTensor gives); the model normalises them itself"
            )
        return imgs

    @torch.inference_mode()
    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, d, h, w), float32, for validated images (B, 3, H, W)."""
        x = self.check_images(imgs).to(self.device, non_blocking=True)
        x = (x - self._mean) / self._std
        taps = self._net(x)
        parts = []
        for feature, keep in zip(taps, self._tap_indices, strict=True):
            if keep.numel() == 0:
                continue
            feature = feature.index_select(1, keep)
            if feature.shape[-2:] != self.grid:
                feature = F.interpolate(feature, size=self.grid, mode="nearest")
            parts.append(feature)
        return torch.cat(parts, dim=1).float().contiguous()
