"""Shared helpers for the library tests: small random-init models keep them fast."""

from __future__ import annotations

import pytest

from padim import FeatureExtractor, PaDiM

from tests.padim.support import SMALL_SIZE


@pytest.fixture(scope="session")
def small_extractor() -> FeatureExtractor:
    """A random-init resnet18 at 64x64 with 32 channels: a 16x16 grid in milliseconds."""
    return FeatureExtractor(backbone="resnet18", weights="none", size=SMALL_SIZE, num_embeddings=32, seed=0)


@pytest.fixture
def small_model(small_extractor: FeatureExtractor) -> PaDiM:
    return PaDiM(extractor=small_extractor)

