"""Per-camera decision thresholds: fixed, or learned from held-out normal scores.

A learned threshold is the configured quantile of the last ``window`` scores of normal
frames, each scored *before* the model learned it (so the score is what an unseen
normal frame gets). It needs no anomalous examples at all. Until ``min_normal_scores``
such scores exist the threshold is unknown (NaN) and nothing is flagged.
An operator override (control command ``set_threshold``) beats every policy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from daemon.settings import ThresholdPolicy

UNKNOWN = math.nan


class CameraThreshold:
    """The threshold state of one camera."""

    def __init__(
        self,
        policy: ThresholdPolicy,
        *,
        window: int,
        min_normal_scores: int,
        override: float | None = None,
        scores: Iterable[float] = (),
    ) -> None:
        if min_normal_scores > window:
            raise ValueError(f"min_normal_scores {min_normal_scores} > window {window}")
        self._policy = policy
        self._min_normal_scores = min_normal_scores
        self._scores: deque[float] = deque(maxlen=window)
        self._override: float | None = None
        self.set_override(override)
        for score in scores:
            self.observe_normal(score)

    @property
    def override(self) -> float | None:
        """The operator's threshold, if one is set."""
        return self._override

    def set_override(self, value: float | None) -> None:
        """Set (or with None clear) the operator's threshold."""
        if value is not None and not math.isfinite(value):
            raise ValueError(f"threshold override must be finite, got {value!r}")
        self._override = value

    def observe_normal(self, score: float) -> None:
        """Record the held-out score of a normal frame; non-finite scores are ignored
        (one broken frame must not poison the quantile)."""
        if math.isfinite(score):
            self._scores.append(float(score))

    def clear(self) -> None:
        """Forget the learned scores and the override (after a model reset)."""
        self._scores.clear()
        self._override = None

    @property
    def normal_scores(self) -> tuple[float, ...]:
        """The window of held-out normal scores, oldest first (for snapshots)."""
        return tuple(self._scores)

    def value(self) -> float:
        """The current threshold, NaN while unknown."""
        if self._override is not None:
            return self._override
        if self._policy.mode == "fixed":
            assert self._policy.fixed_value is not None  # the policy validates this
            return self._policy.fixed_value
        if len(self._scores) < self._min_normal_scores:
            return UNKNOWN
        # "higher": the threshold is an observed normal score, never an interpolation
        # below one, so at most (1 - q) of the window lies above it.
        return float(np.quantile(np.fromiter(self._scores, dtype=np.float64),
                                 self._policy.quantile, method="higher"))

    def is_anomaly(self, score: float) -> bool:
        """True when ``score`` exceeds a known threshold."""
        threshold = self.value()
        return not math.isnan(threshold) and score > threshold
