"""daemon.thresholds: fixed, learned from held-out normal scores, or overridden."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.settings import ThresholdPolicy
from daemon.thresholds import CameraThreshold

QUANTILE = ThresholdPolicy(mode="quantile", quantile=0.9)


def learned(window: int = 100, minimum: int = 10) -> CameraThreshold:
    return CameraThreshold(QUANTILE, window=window, min_normal_scores=minimum)


def test_unknown_until_enough_normal_scores() -> None:
    threshold = learned(minimum=10)
    for score in range(9):
        threshold.observe_normal(float(score))
    assert math.isnan(threshold.value())
    assert not threshold.is_anomaly(1e9)  # nothing is flagged while unknown
    threshold.observe_normal(9.0)
    assert not math.isnan(threshold.value())


def test_learned_threshold_is_a_high_quantile_of_normal_scores() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(10.0, 1.0, 100)
    threshold = learned()
    for score in normal:
        threshold.observe_normal(float(score))
    value = threshold.value()
    assert value in set(normal.tolist())  # an observed score, not an interpolation
    assert np.mean(normal > value) <= 0.1
    assert np.mean(normal > value) >= 0.05
    assert threshold.is_anomaly(normal.max() + 5.0)
    assert not threshold.is_anomaly(float(np.median(normal)))


def test_window_forgets_old_scores() -> None:
    threshold = learned(window=20, minimum=5)
    for _ in range(20):
        threshold.observe_normal(100.0)
    for _ in range(20):
        threshold.observe_normal(1.0)
    assert threshold.value() == 1.0
    assert len(threshold.normal_scores) == 20


def test_non_finite_scores_are_ignored() -> None:
    threshold = learned(minimum=1)
    threshold.observe_normal(math.nan)
    threshold.observe_normal(math.inf)
    assert threshold.normal_scores == ()


def test_fixed_policy_needs_no_samples() -> None:
    fixed = CameraThreshold(ThresholdPolicy(mode="fixed", fixed_value=3.5), window=10,
                            min_normal_scores=5)
    assert fixed.value() == 3.5
    assert fixed.is_anomaly(3.6) and not fixed.is_anomaly(3.5)


def test_override_beats_policy_and_clears() -> None:
    threshold = learned(minimum=1)
    threshold.observe_normal(2.0)
    threshold.set_override(50.0)
    assert threshold.value() == 50.0
    threshold.set_override(None)
    assert threshold.value() == 2.0


def test_override_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        learned().set_override(math.inf)


def test_restored_scores_give_the_same_threshold() -> None:
    original = learned(minimum=3)
    for score in (1.0, 5.0, 3.0, 4.0):
        original.observe_normal(score)
    restored = CameraThreshold(QUANTILE, window=100, min_normal_scores=3,
                               scores=original.normal_scores)
    assert restored.value() == original.value()
