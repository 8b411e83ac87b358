"""The routing decision for one frame, from the frame and its camera's state. No I/O.

| camera state            | normal (*)                  | anomalous      | unlabelled     |
|-------------------------|-----------------------------|----------------|----------------|
| not owned               | skip not_owned              | skip not_owned | skip not_owned |
| frozen, not fitted      | skip frozen                 | skip frozen    | skip frozen    |
| frozen, fitted          | score (held out)            | score          | score          |
| replayed, not fitted    | skip replayed               | skip warming_up| skip warming_up|
| replayed, fitted        | score (no threshold sample) | score          | score          |
| learning, not fitted    | learn                       | skip warming_up| skip warming_up|
| learning, fitted        | score, held out, then learn | score          | score          |

(*) and unlabelled frames when ``input.unlabelled_as_normal``. "Fitted" means the camera
has learned at least ``model.min_frames_before_scoring`` frames. "Replayed" means a
normal frame at or below the last offset the camera learned from this partition (after a
restart the broker redelivers what the snapshot already holds). A held-out score is one
taken before the frame is learned, so it is a fair sample for the learned threshold.
Anomalous frames are never learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from daemon.frames import Label

# The reasons of padimd_frames_skipped_total (docs/metrics.md).
SkipReason = Literal["warming_up", "frozen", "not_owned", "replayed"]


class Action(StrEnum):
    """What the engine does with a frame."""

    LEARN = "learn"
    SCORE = "score"
    SCORE_AND_LEARN = "score_and_learn"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CameraView:
    """The parts of a camera's state that routing reads."""

    frames_learned: int  # unweighted count of frames learned (forgetting does not lower it)
    frozen: bool
    last_learned_offset: int | None  # in the partition the frame comes from


@dataclass(frozen=True, slots=True)
class Decision:
    """The routing outcome: an action, why a frame is skipped, whether its score is a
    held-out normal sample for the learned threshold."""

    action: Action
    skip_reason: SkipReason | None = None
    threshold_sample: bool = False

    @property
    def scores(self) -> bool:
        """The frame is scored."""
        return self.action in (Action.SCORE, Action.SCORE_AND_LEARN)

    @property
    def learns(self) -> bool:
        """The frame is folded into the model."""
        return self.action in (Action.LEARN, Action.SCORE_AND_LEARN)


NEW_CAMERA = CameraView(frames_learned=0, frozen=False, last_learned_offset=None)


def route(
    label: Label | None,
    offset: int,
    camera: CameraView,
    *,
    min_frames_before_scoring: int,
    owned: bool = True,
    unlabelled_as_normal: bool = False,
) -> Decision:
    """Decide what to do with one frame (see the module table)."""
    if not owned:
        return Decision(Action.SKIP, "not_owned")
    fitted = camera.frames_learned >= min_frames_before_scoring
    normal = label == "normal" or (label is None and unlabelled_as_normal)
    if camera.frozen:
        if not fitted:
            return Decision(Action.SKIP, "frozen")
        return Decision(Action.SCORE, threshold_sample=normal)
    if not normal:
        return Decision(Action.SCORE) if fitted else Decision(Action.SKIP, "warming_up")
    replayed = camera.last_learned_offset is not None and offset <= camera.last_learned_offset
    if replayed:
        # Learned before the restart: learning it again would count it twice, and its
        # score was already a threshold sample then. Not fitted yet: nothing to do, and
        # counted apart so a replay after a crash is visible, not hidden in warm-up.
        return Decision(Action.SCORE) if fitted else Decision(Action.SKIP, "replayed")
    if not fitted:
        return Decision(Action.LEARN)
    return Decision(Action.SCORE_AND_LEARN, threshold_sample=True)


def after(camera: CameraView, decision: Decision, offset: int) -> CameraView:
    """The camera's view once ``decision`` has been carried out for the frame at
    ``offset``; lets the engine route a whole batch before running the model."""
    if not decision.learns:
        return camera
    return CameraView(frames_learned=camera.frames_learned + 1, frozen=camera.frozen,
                      last_learned_offset=offset)
