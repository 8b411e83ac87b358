"""PaDiM: one multivariate Gaussian per patch position (arXiv 2011.08785)."""

from __future__ import annotations

import os
from typing import Any

import torch

from padim.backbones import WEIGHTS_IMAGENET
from padim.base import PatchModel
from padim.errors import ConfigurationError
from padim.features import FeatureExtractor
from padim.postprocess import DEFAULT_BLUR_SIGMA
from padim.stats import DEFAULT_EPSILON, GaussianStats


class PaDiM(PatchModel):
    """Patch Distribution Modeling with constant memory and resumable, exact learning.

    The state is per-position sufficient statistics (:class:`GaussianStats`): learning
    more images never needs more memory, training and scoring interleave freely, and
    two models trained on different images merge into the model of their union.

    Args:
        num_embeddings: channels kept by the random subset (paper: 100 for ResNet18,
            550 for WideResNet50); ``None`` takes the backbone's default.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        backbone: ``efficientnet_lite0`` (weights bundled), ``resnet18``, ``resnet50``,
            ``wide_resnet50_2``.
        weights: ``"imagenet"``, ``"none"`` (random init) or a checkpoint path.
        size: input (H, W); images must already have this size.
        seed: seeds the channel subset (and a random-init backbone).
        epsilon: regularisation added to each covariance's diagonal.
        half_life: if set, images older than ``half_life`` images weigh half as much
            (exponential forgetting, to follow slow drift); ``None`` keeps all equally.
        blur_sigma: Gaussian smoothing of the anomaly maps in pixels (0 disables).
        extractor: a shared :class:`FeatureExtractor`; overrides the feature arguments.
    """

    variant = "padim"

    def __init__(
        self,
        num_embeddings: int | None = 100,
        device: str | torch.device = "cpu",
        backbone: str = "efficientnet_lite0",
        weights: str | os.PathLike[str] = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        seed: int = 0,
        epsilon: float = DEFAULT_EPSILON,
        half_life: float | None = None,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        if not epsilon > 0:
            raise ConfigurationError(f"epsilon must be > 0, got {epsilon}")
        if half_life is not None and not half_life > 0:
            raise ConfigurationError(f"half_life must be > 0 images (or None), got {half_life}")
        super().__init__(num_embeddings, device, backbone, weights, size, seed, blur_sigma, extractor)
        self.epsilon = float(epsilon)
        self.half_life = None if half_life is None else float(half_life)
        self.stats = GaussianStats(self._stats_positions(), self.num_embeddings, self.device)

    def _stats_positions(self) -> int:
        """How many Gaussians the model keeps: one per patch position."""
        return self.extractor.num_positions

    # ------------------------------------------------------------------ learning and scoring

    def train_embeddings(self, embeddings: torch.Tensor) -> None:
        patches = self._patches(embeddings)  # (B, P, d)
        if self.half_life is not None:
            self.stats.decay(0.5 ** (patches.shape[0] / self.half_life))
        self.stats.update(patches)

    def predict_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        patches = self._patches(embeddings)
        distances = self.stats.mahalanobis(patches, self.epsilon)  # (B, P)
        return distances.reshape(-1, *self.grid)

    @property
    def num_trained(self) -> float:
        return self.stats.count

    def merge(self, other: PaDiM) -> None:
        """Fold another model's learned images into this one (exact)."""
        self._check_compatible(other)
        self.stats.merge(other.stats)

    def reset(self) -> None:
        """Forget every learned image (keeps the configuration)."""
        self.stats.reset()

    def covariance(self) -> torch.Tensor:
        """Regularised per-position covariances, float64 (P, d, d)."""
        return self.stats.covariance(self.epsilon)

    def state_bytes(self) -> int:
        return self.stats.state_bytes()

    def inference_bytes(self) -> int:
        return self.stats.cache_bytes()

    # ------------------------------------------------------------------ persistence

    def _model_config(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "half_life": self.half_life}

    def _model_tensors(self) -> dict[str, torch.Tensor]:
        return {f"stats.{k}": v for k, v in self.stats.state_dict().items()}

    @classmethod
    def _restore(
        cls, extractor: FeatureExtractor, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> PaDiM:
        model = cls(extractor=extractor, epsilon=float(config["epsilon"]), half_life=config["half_life"])
        model.stats.load_state_dict({k[len("stats."):]: v for k, v in tensors.items() if k.startswith("stats.")})
        return model
