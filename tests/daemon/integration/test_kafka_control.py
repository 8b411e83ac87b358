"""Operator commands on the control topic reach the running service and are acked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    MIN_FRAMES_BEFORE_SCORING,
    Record,
    config,
    defective_frames,
    event_ids_cover,
    events_of,
    frame,
    ids_of,
    make_topics,
    normal_frames,
    produce,
    read_until,
    running,
    settings_of,
    wait_for,
)

pytestmark = pytest.mark.kafka

CAMERA = "cam-c"
OVERRIDE = 12345.0


def _acks(records):
    return [json.loads(r.value) for r in records if dict(r.headers).get("type") == b"control_ack"]


async def test_set_threshold_command_is_acked_and_applies_to_later_frames(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings) as svc:
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, CAMERA, "normal") for v in normal_frames(MIN_FRAMES_BEFORE_SCORING)])
        await wait_for(lambda: svc.sample("padimd_frames_learned_total", camera=CAMERA)
                       == MIN_FRAMES_BEFORE_SCORING and svc.service.edge.control_positioned.is_set(),
                       60, "the camera to be known and the control reader positioned")
        command = {"command": "set_threshold", "camera": CAMERA, "threshold": OVERRIDE,
                   "request_id": "req-1"}
        await produce(kafka_bootstrap, topics.control,
                      [Record(json.dumps(command).encode(), None, [])])
        acked = await read_until(kafka_bootstrap, topics.output,
                                 lambda rs: any(a["request_id"] == "req-1" for a in _acks(rs)))
        [ack] = [a for a in _acks(acked) if a["request_id"] == "req-1"]
        [scored] = await produce(kafka_bootstrap, topics.input, [frame(defective_frames(1)[0], CAMERA)])
        records = await read_until(kafka_bootstrap, topics.output, event_ids_cover(set(ids_of([scored]))))
    [event] = [e for e in events_of(records) if e["event_id"] == ids_of([scored])[0]]
    assert ack["status"] == "ok"
    assert event["threshold"] == OVERRIDE
    assert event["is_anomaly"] is False
