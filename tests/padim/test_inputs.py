"""Bad inputs and bad arguments fail loudly, with messages that say what to do."""

from __future__ import annotations

import pytest
import torch

from padim import ConfigurationError, FeatureExtractor, InputError, PaDiM

from tests.padim.support import random_images


@pytest.fixture
def trained(small_model: PaDiM) -> PaDiM:
    small_model.train_one_batch(random_images(4, seed=0))
    return small_model


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 64, 96), "works at"),
        (torch.rand(2, 1, 64, 64), "3 \\(RGB\\) channels"),
        (torch.rand(2, 4, 64, 64), "3 \\(RGB\\) channels"),
        ((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), "float tensor"),
        (torch.rand(3, 64, 64), "unsqueeze"),
        (torch.rand(2, 3, 64, 64) * 255, "must be RGB in \\[0, 1\\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (torch.rand(0, 3, 64, 64), "empty batch"),
    ],
    ids=["size", "gray", "rgba", "uint8", "no-batch-dim", "0-255-range", "nan", "empty"],
)
@pytest.mark.parametrize("method", ["train_one_batch", "predict", "score"])
def test_bad_images_raise_input_error(trained: PaDiM, method: str, images: torch.Tensor, message: str) -> None:
    count = trained.num_trained
    with pytest.raises(InputError, match=message):
        getattr(trained, method)(images)
    assert trained.num_trained == count  # nothing half-learned


def test_non_tensor_input_is_rejected(trained: PaDiM) -> None:
    with pytest.raises(InputError, match="torch.Tensor"):
        trained.predict([[0.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, "unknown backbone"),
        ({"size": (60, 64)}, "multiples of 16"),
        ({"size": 16}, "at least 32"),
        ({"num_embeddings": 10_000}, "num_embeddings must be in"),
        ({"num_embeddings": 0}, "num_embeddings must be in"),
        ({"weights": "/nonexistent/ckpt.pth"}, "neither 'imagenet', 'none' nor an existing"),
        ({"device": "cuda:7"}, "CUDA is not available|invalid device"),
    ],
)
def test_bad_configuration_names_the_problem(kwargs: dict, message: str) -> None:
    args = {"backbone": "resnet18", "weights": "none", "size": 64} | kwargs
    with pytest.raises(ConfigurationError if "weights" not in kwargs else Exception, match=message):
        FeatureExtractor(**args)


@pytest.mark.parametrize(("kwargs", "message"), [({"epsilon": 0}, "epsilon"), ({"half_life": -1}, "half_life")])
def test_bad_model_arguments(small_extractor: FeatureExtractor, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PaDiM(extractor=small_extractor, **kwargs)


def test_embeddings_of_another_shape_are_rejected(trained: PaDiM) -> None:
    with pytest.raises(InputError, match="embeddings must be"):
        trained.predict_embeddings(torch.rand(1, 7, 16, 16))
