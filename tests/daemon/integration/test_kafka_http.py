"""The service's HTTP endpoint while it consumes from a real broker."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.integration.support import (
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

FRAMES = 3


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_readyz_answers_200_once_partitions_are_assigned(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics, input_partitions=2)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings) as svc:
        status, _ = await asyncio.to_thread(_get, svc.service.http.port, "/readyz")
        assigned = svc.sample("padimd_assigned_partitions")
    assert status == 200
    assert assigned == 2


async def test_metrics_endpoint_counts_consumed_frames(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings) as svc:
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, "cam-m", "normal") for v in normal_frames(FRAMES)])
        await wait_for(lambda: svc.sample("padimd_frames_learned_total", camera="cam-m") == FRAMES,
                       60, "the frames to be learned")
        status, text = await asyncio.to_thread(_get, svc.service.http.port, "/metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert status == 200
    assert samples[("padimd_frames_consumed_total", (("camera", "cam-m"),))] == FRAMES
    assert samples[("padimd_consumer_lag", (("partition", "0"), ("topic", topics.input)))] == 0
