"""What every padim model shares: features in, patch distances out, maps, persistence.

A concrete model (:class:`padim.PaDiM` and the variants) implements how it learns
from and scores embeddings, and how its state becomes tensors; this base turns that
into the public surface (``train_one_batch``, ``train``, ``predict``, ``score``,
``save``/``load``, ``to_bytes``/``from_bytes``) and keeps the checks in one place.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from padim.backbones import WEIGHTS_IMAGENET
from padim.errors import ConfigurationError, IncompatibleModelError, InputError, PersistError
from padim.features import FeatureExtractor
from padim.persist import ModelRecord, decode, encode, read_file, write_atomic
from padim.postprocess import DEFAULT_BLUR_SIGMA, anomaly_maps, image_scores

ModelT = TypeVar("ModelT", bound="PatchModel")

_VARIANTS: dict[str, type[PatchModel]] = {}


class PatchModel(ABC):
    """Base of the patch-distribution models. Subclasses set :attr:`variant`."""

    variant: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.variant:
            _VARIANTS[cls.variant] = cls

    def __init__(
        self,
        num_embeddings: int | None = 100,
        device: str | torch.device = "cpu",
        backbone: str = "efficientnet_lite0",
        weights: str | os.PathLike[str] = WEIGHTS_IMAGENET,
        size: int | tuple[int, int] = (224, 224),
        seed: int = 0,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        if blur_sigma < 0:
            raise ConfigurationError(f"blur_sigma must be >= 0, got {blur_sigma}")
        if extractor is None:
            extractor = FeatureExtractor(
                backbone=backbone, weights=weights, size=size, num_embeddings=num_embeddings,
                seed=seed, device=device,
            )
        self.extractor = extractor
        self.blur_sigma = float(blur_sigma)
        self.seed = int(seed)
        #: Library version that wrote the file this model was loaded from (None if built here).
        self.saved_library_version: str | None = None

    # ------------------------------------------------------------------ shape facts

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    @property
    def size(self) -> tuple[int, int]:
        """Input (H, W) the model works at."""
        return self.extractor.size

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of the distances."""
        return self.extractor.grid

    @property
    def num_embeddings(self) -> int:
        return self.extractor.num_embeddings

    def _patches(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) embeddings -> (B, P, d) patch samples, after checking the shape."""
        expected = (self.num_embeddings, *self.grid)
        if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != expected:
            raise InputError(f"embeddings must be (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(embeddings.shape)}")
        return embeddings.flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ to implement

    @abstractmethod
    def train_embeddings(self, embeddings: torch.Tensor) -> None:
        """Learn from embeddings (B, d, h, w) of normal images."""

    @abstractmethod
    def predict_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Patch anomaly distances (B, h, w), float32, for embeddings (B, d, h, w)."""

    @property
    @abstractmethod
    def num_trained(self) -> float:
        """Images learned so far (weighted when the model forgets)."""

    @abstractmethod
    def state_bytes(self) -> int:
        """Bytes of learned state (what is saved)."""

    @abstractmethod
    def _model_config(self) -> dict[str, Any]:
        """JSON-able hyper-parameters needed to rebuild this model."""

    @abstractmethod
    def _model_tensors(self) -> dict[str, torch.Tensor]:
        """The learned state as named tensors."""

    @classmethod
    @abstractmethod
    def _restore(
        cls: type[ModelT], extractor: FeatureExtractor, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> ModelT:
        """Rebuild a model from :meth:`_model_config` and :meth:`_model_tensors` output."""

    def inference_bytes(self) -> int:
        """Bytes of caches kept for scoring beyond :meth:`state_bytes` (0 when none)."""
        return 0

    # ------------------------------------------------------------------ public surface

    def train_one_batch(self, imgs: torch.Tensor) -> None:
        """Learn from a batch of normal images (B, 3, H, W), RGB in [0, 1] at :attr:`size`."""
        self.train_embeddings(self.extractor(imgs))

    def train(self, dataloader: Iterable[Any], progress: bool = False) -> None:
        """Learn from every batch of ``dataloader`` (tensors, or tuples whose first item is the images)."""
        batches: Iterable[Any] = dataloader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(dataloader, desc="learning", unit="batch")
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                if not batch:
                    raise InputError("the dataloader yielded an empty tuple")
                batch = batch[0]
            self.train_one_batch(batch)

    def predict(self, imgs: torch.Tensor) -> torch.Tensor:
        """Patch anomaly distances (B, h, w) for a batch of images."""
        return self.predict_embeddings(self.extractor(imgs))

    def anomaly_maps(self, distances: torch.Tensor) -> torch.Tensor:
        """Pixel anomaly maps (B, H, W) from patch distances (B, h, w)."""
        return anomaly_maps(distances, self.size, self.blur_sigma)

    def score_embeddings(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_scores (B,), maps (B, H, W)) for embeddings (B, d, h, w)."""
        maps = self.anomaly_maps(self.predict_embeddings(embeddings))
        return image_scores(maps), maps

    def score(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_scores (B,), maps (B, H, W)): maps upsampled and smoothed, score = max of the map."""
        return self.score_embeddings(self.extractor(imgs))

    # ------------------------------------------------------------------ persistence

    def _extractor_config(self) -> dict[str, Any]:
        ex = self.extractor
        return {"backbone": ex.backbone, "weights": ex.weights, "weights_id": ex.weights_id,
                "size": list(ex.size), "seed": ex.seed, "identity": ex.identity}

    def to_bytes(self) -> bytes:
        """The model as bytes in padim's safe file format (see :mod:`padim.persist`)."""
        config = {"extractor": self._extractor_config(), "model": self._model_config(),
                  "blur_sigma": self.blur_sigma, "seed": self.seed}
        tensors = {f"model.{k}": v for k, v in self._model_tensors().items()}
        tensors["extractor.channel_indices"] = self.extractor.channel_indices
        return encode(self.variant, config, tensors)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` atomically."""
        write_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(
        cls: type[ModelT], data: bytes, device: str | torch.device = "cpu",
        extractor: FeatureExtractor | None = None, source: str = "model data",
    ) -> ModelT:
        """Rebuild a model from :meth:`to_bytes` output.

        With ``extractor`` given (to share one backbone), the file must have been made
        with the same backbone, weights, size and channels, or
        :class:`IncompatibleModelError` is raised.
        """
        record = decode(data, source)
        target = cls._class_for(record, source)
        return target._from_record(record, device, extractor, source)

    @classmethod
    def load(
        cls: type[ModelT], path: str | os.PathLike[str], device: str | torch.device = "cpu",
        extractor: FeatureExtractor | None = None,
    ) -> ModelT:
        """Read a model saved with :meth:`save`."""
        return cls.from_bytes(read_file(path), device=device, extractor=extractor, source=repr(str(Path(path))))

    @classmethod
    def _class_for(cls, record: ModelRecord, source: str) -> type[PatchModel]:
        target = _VARIANTS.get(record.variant)
        if target is None:
            raise PersistError(f"{source} holds an unknown model variant {record.variant!r}")
        if cls.variant and target is not cls:
            raise IncompatibleModelError(
                f"{source} holds a {target.__name__} model, not a {cls.__name__}; "
                f"use {target.__name__}.load or padim.load_model"
            )
        return target

    @classmethod
    def _from_record(
        cls: type[ModelT], record: ModelRecord, device: str | torch.device,
        extractor: FeatureExtractor | None, source: str,
    ) -> ModelT:
        try:
            ex_cfg = record.config["extractor"]
            identity = ex_cfg["identity"]
            channels = record.tensors["extractor.channel_indices"]
            model_cfg = record.config["model"]
            blur_sigma = float(record.config["blur_sigma"])
            seed = int(record.config["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PersistError(f"{source} lacks a required field: {exc}") from exc
        if extractor is None:
            extractor = FeatureExtractor(
                backbone=ex_cfg["backbone"], weights=ex_cfg["weights"], size=tuple(ex_cfg["size"]),
                seed=int(ex_cfg["seed"]), device=device, channel_indices=channels,
            )
        mismatched = sorted(k for k in identity if extractor.identity.get(k) != identity[k])
        if mismatched:
            details = ", ".join(
                f"{k}: file {_short(identity[k])} vs here {_short(extractor.identity.get(k))}" for k in mismatched
            )
            raise IncompatibleModelError(f"{source} was made with a different feature configuration ({details})")
        tensors = {k[len("model."):]: v for k, v in record.tensors.items() if k.startswith("model.")}
        try:
            model = cls._restore(extractor, model_cfg, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PersistError(f"{source} has inconsistent model state: {exc}") from exc
        model.blur_sigma = blur_sigma
        model.seed = seed
        model.saved_library_version = record.library_version
        return model

    def _check_compatible(self, other: PatchModel) -> None:
        if type(other) is not type(self):
            raise ConfigurationError(f"cannot combine a {type(other).__name__} with a {type(self).__name__}")
        if other.extractor.identity != self.extractor.identity:
            raise IncompatibleModelError("models use different feature configurations")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_model(
    source: str | os.PathLike[str] | bytes, device: str | torch.device = "cpu",
    extractor: FeatureExtractor | None = None,
) -> PatchModel:
    """Load any padim model (PaDiM or a variant) from a path or bytes, by its header."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return PatchModel.from_bytes(bytes(source), device=device, extractor=extractor)
    return PatchModel.load(source, device=device, extractor=extractor)
