"""Two instances in one consumer group share partitions; when one stops, the other
takes its partitions and restores their cameras from the shared snapshot directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.records import TopicPartition
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

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TRAIN = MIN_FRAMES_BEFORE_SCORING + 2
REBALANCE_TIMEOUT_S = 60
# One camera per partition, produced to it explicitly.
CAMERAS = {0: "cam-p0", 1: "cam-p1"}


async def test_stopped_instance_partitions_move_to_the_other_with_their_cameras(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics, input_partitions=2)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "shared-snap",
                                  group_id=topics.input, snapshot_interval_s=3600.0))
    all_partitions = {TopicPartition(topics.input, p) for p in CAMERAS}
    async with running(settings) as a:
        async with running(settings, wait_ready=False) as b:
            await wait_for(lambda: a.service.ready() and b.service.ready()
                           and len(a.service.edge.assigned) == len(b.service.edge.assigned) == 1,
                           REBALANCE_TIMEOUT_S, "one partition per instance")
            owned_by_a = next(iter(a.service.edge.assigned))
            camera_of_a = CAMERAS[owned_by_a.partition]
            await produce(kafka_bootstrap, topics.input, [
                frame(v, camera, "normal", partition=p)
                for p, camera in CAMERAS.items() for v in normal_frames(TRAIN, seed=p)
            ])
            camera_of_b = CAMERAS[next(iter(b.service.edge.assigned)).partition]
            await wait_for(lambda: a.sample("padimd_frames_learned_total", camera=camera_of_a) == TRAIN
                           and b.sample("padimd_frames_learned_total", camera=camera_of_b) == TRAIN,
                           60, "each instance to learn its camera")
        # b stopped: a owns both partitions now, and restored b's camera.
        await wait_for(lambda: a.service.edge.assigned == all_partitions,
                       REBALANCE_TIMEOUT_S, "instance A to take over every partition")
        acks = await produce(kafka_bootstrap, topics.input, [
            frame(normal_frames(1, seed=20 + p)[0], camera, partition=p)
            for p, camera in CAMERAS.items()
        ])
        records = await read_until(kafka_bootstrap, topics.output, event_ids_cover(set(ids_of(acks))))
    assert a.exit_code == b.exit_code == 0
    frames_learned = {e["camera"]: e["model"]["frames_learned"]
                      for e in events_of(records) if e["event_id"] in ids_of(acks)}
    assert frames_learned == {camera: TRAIN for camera in CAMERAS.values()}
