"""Base of the variants that learn by gradient descent (PaDiMSVDD, PaDiMNVP).

Each incoming batch of normal images becomes a fixed number of Adam steps
(``steps_per_batch``), each on a random subset of ``patches_per_step`` of the
batch's patches. That is what makes them stream learners with bounded work per
batch, but also what separates them from PaDiM's exact statistics: the result
depends on the order of the batches, early batches fade as later ones move the
weights, and two models cannot be merged.

Everything that decides the next step is state and is saved: the network's
weights and buffers, Adam's moments and step counts, the random generator
that picks the patch subsets, and the image counter. A model saved and loaded
mid-stream therefore continues exactly as if it had not been interrupted (on
the same device and torch build; CPU kernels are deterministic).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any, TypeVar

import torch
from torch import nn

from padim.backbones import WEIGHTS_IMAGENET
from padim.base import PatchModel
from padim.errors import ConfigurationError, InputError, NotFittedError, PersistError, TrainingDivergedError
from padim.features import FeatureExtractor
from padim.postprocess import DEFAULT_BLUR_SIGMA
from padim.variants._training import (
    generator_from_tensor,
    generator_to_tensor,
    optimizer_from_flat,
    optimizer_meta,
    optimizer_to_flat,
    sample_rows,
)

GradientModelT = TypeVar("GradientModelT", bound="GradientPatchModel")

DEFAULT_STEPS_PER_BATCH = 10
DEFAULT_PATCHES_PER_STEP = 1024
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-6
# Patches scored per forward pass: bounds the activations of a large batch
# (32 images at 224 px are 100k patches) to a few tens of MB.
_SCORE_CHUNK = 16384
# Offsets the network/sampling seeds from the channel-subset seed, so that the
# same ``seed`` does not reuse one random stream for two unrelated purposes.
_NET_SEED_OFFSET = 1
_SAMPLER_SEED_OFFSET = 2


class GradientPatchModel(PatchModel):
    """A per-patch network trained online with Adam; subclasses define the network and loss."""

    def __init__(
        self,
        num_embeddings: int | None = 100,
        device: str | torch.device = "cpu",
        backbone: str = "efficientnet_lite0",
        weights: str | os.PathLike[str] = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        seed: int = 0,
        steps_per_batch: int = DEFAULT_STEPS_PER_BATCH,
        patches_per_step: int = DEFAULT_PATCHES_PER_STEP,
        lr: float = DEFAULT_LR,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        if steps_per_batch < 1:
            raise ConfigurationError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
        # BatchNorm (SVDD) and ActNorm (NVP) need a spread within each step.
        if patches_per_step < 2:
            raise ConfigurationError(f"patches_per_step must be >= 2, got {patches_per_step}")
        if not lr > 0 or not weight_decay >= 0:
            raise ConfigurationError(f"need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        super().__init__(num_embeddings, device, backbone, weights, size, seed, blur_sigma, extractor)
        self.steps_per_batch = int(steps_per_batch)
        self.patches_per_step = int(patches_per_step)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self._init_training_state()

    def _init_training_state(self) -> None:
        """Fresh network, optimizer, sampler and counters, all derived from :attr:`seed`."""
        # Initialise the weights from our own seed without touching (or depending
        # on) the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + _NET_SEED_OFFSET)
            self.net = self._build_network().to(self.device).eval()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.sampler = torch.Generator().manual_seed(self.seed + _SAMPLER_SEED_OFFSET)
        self._num_trained = 0.0
        self.num_steps = 0

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _build_network(self) -> nn.Module:
        """The untrained network for (N, d) patches (weights drawn from torch's global RNG)."""

    @abstractmethod
    def _loss(self, patches: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of patches (N, d); the network is in train mode."""

    @abstractmethod
    def _patch_scores(self, patches: torch.Tensor) -> torch.Tensor:
        """Anomaly score per patch (N,) for patches (N, d); the network is in eval mode."""

    def _before_steps(self, patches: torch.Tensor) -> None:
        """Hook run on each batch's patches (N, d) before its gradient steps."""

    def _after_steps(self, patches: torch.Tensor) -> None:
        """Hook run on each batch's patches (N, d) after its gradient steps (eval mode)."""

    def _config(self) -> dict[str, Any]:
        """The subclass's own JSON-able hyper-parameters (constructor keyword arguments)."""
        return {}

    # ------------------------------------------------------------------ learning and scoring

    def train_embeddings(self, embeddings: torch.Tensor) -> None:
        patches = self._patches(embeddings)  # (B, P, d)
        num_images = patches.shape[0]
        # Learning needs autograd even when the caller scores under no_grad or
        # inference_mode (the daemon may); both are switched back on here only.
        with torch.inference_mode(False), torch.enable_grad():
            # clone() outside inference mode: the extractor returns inference
            # tensors, which autograd refuses to save for backward.
            patches = patches.reshape(-1, self.num_embeddings).clone()  # (B*P, d)
            # Images are checked by the extractor; embeddings given directly are
            # not, and one NaN would fix NaN SVDD centres / ActNorm scales for good.
            if not bool(torch.isfinite(patches).all()):
                raise InputError("embeddings contain NaN or infinite values")
            self._before_steps(patches)
            self.net.train()
            try:
                for _ in range(self.steps_per_batch):
                    self._step(patches)
            finally:
                self.net.eval()
            with torch.no_grad():
                self._after_steps(patches)
        self._num_trained += num_images

    def _step(self, patches: torch.Tensor) -> None:
        """One Adam step on a random subset of ``patches`` (N, d)."""
        rows = sample_rows(patches.shape[0], self.patches_per_step, self.sampler)
        loss = self._loss(patches[rows.to(patches.device)])
        if not torch.isfinite(loss):
            # Better to stop here than to write NaN weights that would score
            # everything NaN from now on.
            raise TrainingDivergedError(
                f"{type(self).__name__} training diverged (loss {float(loss.detach())}) "
                f"after {self.num_steps} steps; lower lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.num_steps += 1

    def predict_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        patches = self._patches(embeddings)  # (B, P, d)
        if self._num_trained == 0:
            raise NotFittedError(f"{type(self).__name__} has not learned any image yet")
        flat = patches.reshape(-1, self.num_embeddings)
        self.net.eval()
        with torch.no_grad():
            scores = torch.cat([self._patch_scores(chunk) for chunk in flat.split(_SCORE_CHUNK)])
        return scores.float().reshape(-1, *self.grid)

    @property
    def num_trained(self) -> float:
        return self._num_trained

    def reset(self) -> None:
        """Forget everything learned: the network, optimizer and sampler restart from :attr:`seed`."""
        self._init_training_state()

    def state_bytes(self) -> int:
        # Counted in place rather than via _model_tensors(), which copies the
        # optimizer state: callers may poll this for a memory gauge.
        tensors = list(self.net.state_dict().values())
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        tensors.append(self.sampler.get_state())
        return sum(t.element_size() * t.nelement() for t in tensors) + 8  # + the float64 image count

    # ------------------------------------------------------------------ persistence

    def _model_config(self) -> dict[str, Any]:
        return {
            "steps_per_batch": self.steps_per_batch,
            "patches_per_step": self.patches_per_step,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "num_steps": self.num_steps,
            "optimizer": optimizer_meta(self.optimizer),
            **self._config(),
        }

    def _model_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        optim_tensors, _ = optimizer_to_flat(self.optimizer)
        tensors.update(optim_tensors)
        tensors["sampler"] = generator_to_tensor(self.sampler)
        tensors["num_trained"] = torch.tensor([self._num_trained], dtype=torch.float64)
        # Scalars (BatchNorm's num_batches_tracked, Adam's step) are stored as (1,),
        # the layout this format has always used for them; _restore makes them 0-dim.
        return {k: v.reshape(1) if v.ndim == 0 else v for k, v in tensors.items()}

    @classmethod
    def _restore(
        cls: type[GradientModelT],
        extractor: FeatureExtractor,
        config: dict[str, Any],
        tensors: dict[str, torch.Tensor],
    ) -> GradientModelT:
        keys = ("steps_per_batch", "patches_per_step", "lr", "weight_decay", *cls._config_keys())
        model = cls(extractor=extractor, **{k: config[k] for k in keys})
        expected = model.net.state_dict()
        net_state = {
            k[len("net."):]: _unflatten_scalar(v, expected.get(k[len("net."):]))
            for k, v in tensors.items()
            if k.startswith("net.")
        }
        # strict: a missing or extra tensor means a file for another network.
        model.net.load_state_dict(net_state, strict=True)
        model.net.to(model.device).eval()
        optim_tensors = {k: v.reshape(()) if k.endswith(".step") and v.numel() == 1 else v
                         for k, v in tensors.items() if k.startswith("optim.")}
        optimizer_from_flat(model.optimizer, optim_tensors, config["optimizer"])
        generator_from_tensor(model.sampler, tensors["sampler"])
        num_trained = float(tensors["num_trained"][0])
        if not num_trained >= 0:
            raise PersistError(f"num_trained must be >= 0, got {num_trained}")
        model._num_trained = num_trained
        model.num_steps = int(config["num_steps"])
        return model

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        """Names of the subclass's constructor arguments saved by :meth:`_config`."""
        return ()


def _unflatten_scalar(value: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    """Undo the (1,) storage of a 0-dim tensor when the model expects a 0-dim one."""
    if like is not None and like.ndim == 0 and value.shape == (1,):
        return value.reshape(())
    return value
