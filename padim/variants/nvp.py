"""PaDiMNVP: a RealNVP normalizing flow as the density of normal patches.

A flow (:class:`~padim.variants.flow.RealNVP`) maps each patch embedding to
z ~ N(0, I); the patch score is the negative log-likelihood -log p(x) in nats
under the learned density. Unlike PaDiM's Gaussian it can model multi-modal,
non-elliptical patch distributions, with one density for all positions (not
conditioned on position), trained online by maximum likelihood with Adam.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from padim.backbones import WEIGHTS_IMAGENET
from padim.errors import ConfigurationError
from padim.features import FeatureExtractor
from padim.postprocess import DEFAULT_BLUR_SIGMA
from padim.variants._gradient import (
    DEFAULT_LR,
    DEFAULT_PATCHES_PER_STEP,
    DEFAULT_STEPS_PER_BATCH,
    DEFAULT_WEIGHT_DECAY,
    GradientPatchModel,
)
from padim.variants.flow import RealNVP


class PaDiMNVP(GradientPatchModel):
    """RealNVP patch density with the PaDiM surface.

    Args:
        num_embeddings, device, backbone, weights, size, seed, blur_sigma,
            extractor: as :class:`padim.PaDiM` (``num_embeddings`` >= 2).
            ``seed`` also seeds the flow's weights, permutations and the patch sampling.
        num_blocks: coupling blocks (each ActNorm, affine coupling, permutation).
        hidden: width of each coupling's two hidden layers.
        steps_per_batch: Adam steps per :meth:`train_embeddings` call.
        patches_per_step: patches sampled (without replacement) for each step.
        lr, weight_decay: Adam's.
    """

    variant = "nvp"

    def __init__(
        self,
        num_embeddings: int | None = 100,
        device: str | torch.device = "cpu",
        backbone: str = "efficientnet_lite0",
        weights: str | os.PathLike[str] = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        seed: int = 0,
        num_blocks: int = 7,
        hidden: int = 130,
        steps_per_batch: int = DEFAULT_STEPS_PER_BATCH,
        patches_per_step: int = DEFAULT_PATCHES_PER_STEP,
        lr: float = DEFAULT_LR,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        if num_blocks < 1 or hidden < 1:
            raise ConfigurationError(f"num_blocks and hidden must be >= 1, got {num_blocks}, {hidden}")
        self.num_blocks, self.hidden = int(num_blocks), int(hidden)
        super().__init__(
            num_embeddings, device, backbone, weights, size, seed,
            steps_per_batch, patches_per_step, lr, weight_decay, blur_sigma, extractor,
        )
        if self.num_embeddings < 2:
            raise ConfigurationError("a coupling flow needs num_embeddings >= 2")

    @property
    def flow(self) -> RealNVP:
        """The trained flow."""
        assert isinstance(self.net, RealNVP)
        return self.net

    def _build_network(self) -> nn.Module:
        if self.num_embeddings < 2:
            raise ConfigurationError("a coupling flow needs num_embeddings >= 2")
        # The permutations come from torch's global RNG, seeded by the caller
        # (GradientPatchModel forks and seeds it around this call).
        return RealNVP(self.num_embeddings, self.num_blocks, self.hidden)

    def _loss(self, patches: torch.Tensor) -> torch.Tensor:
        return self.flow.nll(patches).mean()

    def _patch_scores(self, patches: torch.Tensor) -> torch.Tensor:
        return self.flow.nll(patches)

    def _config(self) -> dict[str, Any]:
        return {"num_blocks": self.num_blocks, "hidden": self.hidden}

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        return ("num_blocks", "hidden")
