"""A clean stop snapshots and commits; the next start restores and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    MIN_FRAMES_BEFORE_SCORING,
    config,
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

TRAIN = MIN_FRAMES_BEFORE_SCORING + 3


async def test_restart_restores_learned_cameras_from_the_snapshot(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    # A long interval: only the shutdown can have written the snapshot.
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input,
                                  snapshot_interval_s=3600.0))
    async with running(settings) as first:
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, "cam-r", "normal") for v in normal_frames(TRAIN)])
        await wait_for(lambda: first.sample("padimd_frames_learned_total", camera="cam-r") == TRAIN,
                       60, f"{TRAIN} frames learned")
    assert first.exit_code == 0

    async with running(settings) as second:
        [ack] = await produce(kafka_bootstrap, topics.input, [frame(normal_frames(1, seed=9)[0], "cam-r")])
        records = await read_until(kafka_bootstrap, topics.output, event_ids_cover(set(ids_of([ack]))))
        relearned = second.sample("padimd_frames_learned_total", camera="cam-r")
    [event] = [e for e in events_of(records) if e["event_id"] == ids_of([ack])[0]]
    # Scored straight away (no warm-up) by a model that holds the first run's frames,
    # and none of them was consumed and learned a second time.
    assert event["model"]["frames_learned"] == TRAIN
    assert relearned == 0.0  # the series exists from the camera's first frame, at zero
