"""PaDiMSVDD: Deep-SVDD heads on patch embeddings instead of a Gaussian.

Every patch embedding goes through K small bias-free MLPs
(:class:`~padim.variants.heads.SVDDHeads`), trained online so that normal
patches land close to each head's fixed centre c_k (Ruff et al., ICML 2018).
The patch score is the distance to the nearest centre, min_k ||phi_k(x) - c_k||
(minus the head's radius R_k with the soft-boundary objective).

Position: the heads see the embedding only, no position encoding, so the model
is position-invariant like PaDiMShared and PaDiMNVP. Two coordinates next to
100+ feature channels would barely move a network whose objective is to map
*every* normal patch onto one point: positions are uniformly spread over the
normal data, so the loss rewards ignoring them. A position-specific model is
what PaDiM itself is for.
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
from padim.variants._training import sample_rows
from padim.variants.heads import Objective, SVDDHeads

OBJECTIVES: tuple[str, ...] = ("one-class", "soft-boundary")
# Patches of the first batch used to fix the centres: enough for a stable mean,
# bounded so that a first batch of many large images costs no more.
_CENTRE_PATCHES = 16384


class PaDiMSVDD(GradientPatchModel):
    """Deep-SVDD patch model with the PaDiM surface.

    Args:
        num_embeddings, device, backbone, weights, size, seed, blur_sigma,
            extractor: as :class:`padim.PaDiM`. ``seed`` also seeds the heads'
            initial weights and the patch sampling.
        num_heads: independent heads; a patch's score is its smallest distance.
        f: width unit of each head (layers d -> 4f -> 2f -> rep_dim).
        rep_dim: output dimension of each head.
        objective: ``"one-class"`` (mean squared distance to c) or
            ``"soft-boundary"`` (radius R with a fraction ``nu`` of patches outside).
        nu: the soft-boundary's outlier fraction, in (0, 1].
        steps_per_batch: Adam steps per :meth:`train_embeddings` call.
        patches_per_step: patches sampled (without replacement) for each step.
        lr, weight_decay: Adam's.
    """

    variant = "svdd"

    def __init__(
        self,
        num_embeddings: int | None = 100,
        device: str | torch.device = "cpu",
        backbone: str = "efficientnet_lite0",
        weights: str | os.PathLike[str] = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        seed: int = 0,
        num_heads: int = 3,
        f: int = 16,
        rep_dim: int = 32,
        objective: Objective = "one-class",
        nu: float = 0.1,
        steps_per_batch: int = DEFAULT_STEPS_PER_BATCH,
        patches_per_step: int = DEFAULT_PATCHES_PER_STEP,
        lr: float = DEFAULT_LR,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigurationError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0.0 < nu <= 1.0:
            raise ConfigurationError(f"nu must be in (0, 1], got {nu}")
        if min(num_heads, f, rep_dim) < 1:
            raise ConfigurationError(f"num_heads, f and rep_dim must be >= 1, got {num_heads}, {f}, {rep_dim}")
        self.num_heads, self.f, self.rep_dim = int(num_heads), int(f), int(rep_dim)
        self.objective: Objective = objective
        self.nu = float(nu)
        super().__init__(
            num_embeddings, device, backbone, weights, size, seed,
            steps_per_batch, patches_per_step, lr, weight_decay, blur_sigma, extractor,
        )

    @property
    def heads(self) -> SVDDHeads:
        """The trained heads (centres in ``heads.centres``, radii in ``heads.radii``)."""
        assert isinstance(self.net, SVDDHeads)
        return self.net

    def _build_network(self) -> nn.Module:
        return SVDDHeads(self.num_embeddings, self.num_heads, self.f, self.rep_dim)

    def _before_steps(self, patches: torch.Tensor) -> None:
        # The centres are fixed once, from the first batch, and never move:
        # a centre that followed the data would let the heads chase it.
        if not bool(self.heads.centred):
            rows = sample_rows(patches.shape[0], _CENTRE_PATCHES, self.sampler)
            self.heads.set_centres(patches[rows.to(patches.device)])

    def _loss(self, patches: torch.Tensor) -> torch.Tensor:
        return self.heads.loss(patches, self.objective, self.nu)

    def _after_steps(self, patches: torch.Tensor) -> None:
        if self.objective == "soft-boundary":
            rows = sample_rows(patches.shape[0], _CENTRE_PATCHES, self.sampler)
            self.heads.update_radii(patches[rows.to(patches.device)], self.nu)

    def _patch_scores(self, patches: torch.Tensor) -> torch.Tensor:
        return self.heads.scores(patches, self.objective)

    def _config(self) -> dict[str, Any]:
        return {"num_heads": self.num_heads, "f": self.f, "rep_dim": self.rep_dim,
                "objective": self.objective, "nu": self.nu}

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        return ("num_heads", "f", "rep_dim", "objective", "nu")
