"""The periodic checkpoint: snapshots written and offsets committed while running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    committed_offset,
    config,
    frame,
    make_topics,
    normal_frames,
    produce,
    running,
    settings_of,
    wait_for,
)

pytestmark = pytest.mark.kafka

FRAMES = 5
INTERVAL_S = 0.5


async def test_running_service_commits_processed_offsets_every_interval(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    snapshots = tmp_path / "snap"
    settings = settings_of(config(kafka_bootstrap, topics, snapshots, group_id=topics.input,
                                  snapshot_interval_s=INTERVAL_S))
    async with running(settings) as svc:
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, "cam-p", "normal") for v in normal_frames(FRAMES)])
        await wait_for(lambda: svc.sample("padimd_frames_learned_total", camera="cam-p") == FRAMES,
                       60, "the frames to be learned")
        deadline = time.monotonic() + 20 * INTERVAL_S
        committed = None
        while committed != FRAMES and time.monotonic() < deadline:
            await asyncio.sleep(INTERVAL_S / 2)
            committed = await committed_offset(kafka_bootstrap, topics.input, topics.input)
        snapshot_files = list(snapshots.rglob("*.padim"))
    assert committed == FRAMES
    assert snapshot_files, "the commit came before any snapshot"
