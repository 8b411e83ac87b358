"""daemon.control: command validation, application to the registry, acks."""

from __future__ import annotations

import json

import pytest
import torch
from padim import FeatureExtractor

from daemon.control import (
    ControlCommand,
    ControlError,
    ack_message,
    apply_command,
    error_ack,
    parse_command,
)
from daemon.models import CameraKey, ModelRegistry
from daemon.records import TopicPartition
from daemon.settings import ThresholdSettings
from tests.daemon.engine_support import MODEL_SIZE, tiny_model_settings

KEY = CameraKey(TopicPartition("camera-frames", 0), "cam-1")


@pytest.fixture
def registry(tiny_extractor: FeatureExtractor) -> ModelRegistry:
    registry = ModelRegistry(tiny_model_settings(), ThresholdSettings(min_normal_scores=1),
                             tiny_extractor)
    state = registry.get_or_create(KEY)
    state.model.train_embeddings(tiny_extractor(torch.rand(2, 3, *MODEL_SIZE)))
    state.frames_learned = 2
    state.threshold.observe_normal(4.0)
    return registry


def command(**fields: object) -> ControlCommand:
    parsed = parse_command(json.dumps(fields).encode())
    assert isinstance(parsed, ControlCommand), parsed
    return parsed


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(b"", "empty"), (b"{not json", "not JSON"), (b"[1, 2]", "command"),
     (b'{"command": "explode", "camera": "c"}', "command"),
     (b'{"command": "freeze"}', "camera"),
     (b'{"command": "set_threshold", "camera": "c"}', "needs a 'threshold'"),
     (b'{"command": "freeze", "camera": "c", "threshold": 2}', "takes no 'threshold'"),
     (b'{"command": "freeze", "camera": "c", "extra": 1}', "extra")],
)
def test_invalid_commands_are_refused_with_a_reason(value: bytes, fragment: str) -> None:
    parsed = parse_command(value)
    assert isinstance(parsed, ControlError)
    assert fragment in parsed.detail


def test_error_keeps_request_id_for_the_ack() -> None:
    parsed = parse_command(b'{"command": "explode", "camera": "c", "request_id": "r-9"}')
    assert isinstance(parsed, ControlError)
    ack = error_ack(parsed)
    assert (ack.status, ack.reason, ack.request_id) == ("error", "invalid_command", "r-9")


def test_freeze_and_unfreeze(registry: ModelRegistry) -> None:
    ack = apply_command(command(command="freeze", camera="cam-1"), registry)
    state = registry.get(KEY)
    assert ack.status == "ok" and state is not None and state.frozen and state.dirty
    apply_command(command(command="unfreeze", camera="cam-1"), registry)
    assert not state.frozen


def test_set_threshold_overrides_and_null_clears(registry: ModelRegistry) -> None:
    state = registry.get(KEY)
    assert state is not None
    apply_command(command(command="set_threshold", camera="cam-1", threshold=9.5), registry)
    assert state.threshold.value() == 9.5
    apply_command(command(command="set_threshold", camera="cam-1", threshold=None), registry)
    assert state.threshold.value() == 4.0


def test_reset_forgets_the_model_but_not_the_learned_offsets(registry: ModelRegistry) -> None:
    state = registry.get(KEY)
    assert state is not None
    state.last_learned_offset = 17
    state.frozen = True
    ack = apply_command(command(command="reset", camera="cam-1", request_id="r-1"), registry)
    assert (ack.status, ack.request_id, ack.cameras_affected) == ("ok", "r-1", 1)
    assert state.model.num_trained == 0 and state.frames_learned == 0
    assert state.threshold.normal_scores == () and not state.frozen
    assert state.last_learned_offset == 17


def test_unknown_camera_is_an_error_ack(registry: ModelRegistry) -> None:
    ack = apply_command(command(command="freeze", camera="nobody"), registry)
    assert (ack.status, ack.reason) == ("error", "unknown_camera")


def test_ack_message_is_typed_json_on_the_output_topic(registry: ModelRegistry) -> None:
    ack = apply_command(command(command="freeze", camera="cam-1", request_id="r-2"), registry)
    message = ack_message(ack, "padimd-events")
    assert message.kind == "control_ack" and message.topic == "padimd-events"
    assert ("type", b"control_ack") in message.headers
    body = json.loads(message.value)
    assert body["request_id"] == "r-2" and body["status"] == "ok"
    assert body["type"] == "control_ack"
