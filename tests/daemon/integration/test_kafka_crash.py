"""kill -9 in the middle of a stream, then restart: at-least-once without double learning.

The daemon runs as a subprocess so that SIGKILL really skips the drain: no final
snapshot, no final commit, whatever the producer and the snapshot timer were doing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    DaemonProcess,
    Record,
    config,
    event_ids_cover,
    events_of,
    frame,
    free_port,
    ids_of,
    make_topics,
    normal_frames,
    produce,
    read_until,
    to_toml,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CAMERA = "cam-k"
NORMALS = 96
UNLABELLED_EVERY = 8  # after warm-up, one unlabelled frame per this many records
CHUNK = 4
KILL_AFTER_LEARNED = 32


def _stream() -> list[Record]:
    """Normal frames with unlabelled ones interleaved once the model is fitted."""
    normals = normal_frames(NORMALS)
    unlabelled = normal_frames(NORMALS // UNLABELLED_EVERY, seed=3)
    records: list[Record] = []
    for i, value in enumerate(normals):
        records.append(frame(value, CAMERA, "normal"))
        if i >= 16 and i % UNLABELLED_EVERY == 0:
            records.append(frame(unlabelled[i // UNLABELLED_EVERY], CAMERA))
    return records


async def test_kill9_mid_stream_loses_no_frame_and_learns_none_twice(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    port = free_port()
    cfg_path = tmp_path / "padimd.toml"
    cfg_path.write_text(to_toml(config(
        kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input, http_port=port,
        snapshot_interval_s=0.3, scoring={"max_batch_size": 2, "max_batch_wait_ms": 5},
    )))
    stream = _stream()
    daemon = DaemonProcess(cfg_path, port, tmp_path / "padimd.log")
    acks = []

    async def producer() -> None:
        # A camera that keeps sending while the daemon dies and comes back.
        for start in range(0, len(stream), CHUNK):
            acks.extend(await produce(kafka_bootstrap, topics.input, stream[start:start + CHUNK]))
            await asyncio.sleep(0.05)

    try:
        daemon.start()
        await daemon.wait_ready()
        sending = asyncio.create_task(producer())
        learned_at_kill = await daemon.wait_sample(
            "padimd_frames_learned_total", {"camera": CAMERA}, lambda v: v >= KILL_AFTER_LEARNED)
        assert learned_at_kill < NORMALS, "the stream had ended: this would test nothing"
        daemon.kill()
        daemon.start()
        await daemon.wait_ready()
        await sending
        [marker] = await produce(kafka_bootstrap, topics.input, [frame(normal_frames(1, seed=11)[0], CAMERA)])
        unlabelled_ids = {i for i, r in zip(ids_of(acks), stream, strict=True)
                          if dict(r.headers).get("label") is None}
        records = await read_until(kafka_bootstrap, topics.output,
                                   event_ids_cover(unlabelled_ids | set(ids_of([marker]))), 120)
        assert daemon.terminate() == 0
    finally:
        daemon.ensure_stopped()
    events = events_of(records)
    [final] = [e for e in events if e["event_id"] == ids_of([marker])[0]]
    # The marker comes after every normal frame in the partition: the model that scored
    # it holds each normal frame exactly once, across the crash.
    assert final["model"]["frames_learned"] == NORMALS
    assert all(
        e["event_id"] == f"{e['source']['topic']}:{e['source']['partition']}:{e['source']['offset']}"
        for e in events
    )
