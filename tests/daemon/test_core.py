"""daemon.core: the routing table of the module docstring, row by row."""

from __future__ import annotations

import pytest

from daemon.core import NEW_CAMERA, Action, CameraView, Decision, after, route

MIN = 5
WARM = CameraView(frames_learned=2, frozen=False, last_learned_offset=1)
FITTED = CameraView(frames_learned=MIN, frozen=False, last_learned_offset=10)
FROZEN_FITTED = CameraView(frames_learned=MIN, frozen=True, last_learned_offset=10)
FROZEN_COLD = CameraView(frames_learned=1, frozen=True, last_learned_offset=0)

LEARN = Decision(Action.LEARN)
SCORE = Decision(Action.SCORE)
HELD_OUT = Decision(Action.SCORE, threshold_sample=True)
SCORE_THEN_LEARN = Decision(Action.SCORE_AND_LEARN, threshold_sample=True)


def skip(reason: str) -> Decision:
    return Decision(Action.SKIP, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("label", "offset", "camera", "expected"),
    [
        ("normal", 0, NEW_CAMERA, LEARN),
        ("normal", 2, WARM, LEARN),
        ("normal", 11, FITTED, SCORE_THEN_LEARN),
        ("anomalous", 2, WARM, skip("warming_up")),
        ("anomalous", 11, FITTED, SCORE),
        (None, 2, WARM, skip("warming_up")),
        (None, 11, FITTED, SCORE),
        ("normal", 11, FROZEN_FITTED, HELD_OUT),
        ("anomalous", 11, FROZEN_FITTED, SCORE),
        (None, 11, FROZEN_FITTED, SCORE),
        ("normal", 5, FROZEN_COLD, skip("frozen")),
        ("anomalous", 5, FROZEN_COLD, skip("frozen")),
        ("normal", 10, FITTED, SCORE),  # replayed: learned before, score only
        ("normal", 1, WARM, skip("replayed")),  # replayed, still warming up
        ("anomalous", 10, FITTED, SCORE),
    ],
)
def test_routing_table(label: str | None, offset: int, camera: CameraView,
                       expected: Decision) -> None:
    assert route(label, offset, camera, min_frames_before_scoring=MIN) == expected  # type: ignore[arg-type]


def test_not_owned_is_skipped_whatever_the_state() -> None:
    decision = route("normal", 0, NEW_CAMERA, min_frames_before_scoring=MIN, owned=False)
    assert decision == skip("not_owned")


def test_unlabelled_frames_learn_when_configured() -> None:
    assert route(None, 2, WARM, min_frames_before_scoring=MIN,
                 unlabelled_as_normal=True) == LEARN
    assert route(None, 11, FITTED, min_frames_before_scoring=MIN,
                 unlabelled_as_normal=True) == SCORE_THEN_LEARN


def test_anomalous_frames_are_never_learned() -> None:
    for camera in (NEW_CAMERA, WARM, FITTED, FROZEN_FITTED):
        assert not route("anomalous", 99, camera, min_frames_before_scoring=MIN).learns


def test_after_counts_learned_frames_so_a_batch_crosses_into_scoring() -> None:
    view = NEW_CAMERA
    actions = []
    for offset in range(MIN + 2):
        decision = route("normal", offset, view, min_frames_before_scoring=MIN)
        view = after(view, decision, offset)
        actions.append(decision.action)
    assert actions == [Action.LEARN] * MIN + [Action.SCORE_AND_LEARN] * 2
    assert view == CameraView(frames_learned=MIN + 2, frozen=False, last_learned_offset=MIN + 1)


def test_after_leaves_state_alone_when_nothing_is_learned() -> None:
    assert after(FITTED, SCORE, 99) == FITTED
