"""Fixtures of the daemon core tests (helpers live in engine_support.py)."""

from __future__ import annotations

import pytest
from padim import FeatureExtractor
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics
from daemon.models import build_extractor
from tests.daemon.engine_support import tiny_model_settings


@pytest.fixture(scope="session")
def tiny_extractor() -> FeatureExtractor:
    """One random-init 64x64 backbone for the whole session (building one per test
    would dominate the suite's time on a shared machine)."""
    return build_extractor(tiny_model_settings())


@pytest.fixture
def metrics() -> Metrics:
    """Metrics on a fresh registry, so counts never leak between tests."""
    return Metrics(CollectorRegistry(), backbone="efficientnet_lite0", version="test")
