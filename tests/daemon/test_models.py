"""daemon.models: one shared extractor, per-partition camera states, the worker thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
from padim import FeatureExtractor

from daemon.models import CameraKey, ModelRegistry, ModelWorker
from daemon.records import TopicPartition
from daemon.settings import ThresholdSettings
from tests.daemon.engine_support import tiny_model_settings

P0 = TopicPartition("camera-frames", 0)
P1 = TopicPartition("camera-frames", 1)


@pytest.fixture
def registry(tiny_extractor: FeatureExtractor) -> ModelRegistry:
    threshold = ThresholdSettings(min_normal_scores=1, cameras={"cam-f": {"mode": "fixed",
                                                                          "fixed_value": 2.0}})
    return ModelRegistry(tiny_model_settings(), threshold, tiny_extractor)


def test_every_camera_shares_the_one_extractor(registry: ModelRegistry) -> None:
    a = registry.get_or_create(CameraKey(P0, "cam-a"))
    b = registry.get_or_create(CameraKey(P1, "cam-b"))
    assert a.model.extractor is registry.extractor
    assert b.model.extractor is registry.extractor
    assert a.model is not b.model


def test_get_or_create_returns_the_same_state(registry: ModelRegistry) -> None:
    key = CameraKey(P0, "cam-a")
    assert registry.get(key) is None
    assert registry.get_or_create(key) is registry.get_or_create(key)
    assert len(registry) == 1


def test_cameras_are_found_by_partition_and_by_id(registry: ModelRegistry) -> None:
    for key in (CameraKey(P0, "cam-a"), CameraKey(P1, "cam-a"), CameraKey(P1, "cam-b")):
        registry.get_or_create(key)
    assert [s.key.camera for s in registry.in_partitions([P1])] == ["cam-a", "cam-b"]
    assert [s.key.source for s in registry.by_camera("cam-a")] == [P0, P1]
    registry.remove(CameraKey(P1, "cam-a"))
    assert [s.key.source for s in registry.by_camera("cam-a")] == [P0]


def test_camera_threshold_policy_comes_from_settings(registry: ModelRegistry) -> None:
    assert registry.get_or_create(CameraKey(P0, "cam-f")).threshold.value() == 2.0


async def test_worker_runs_jobs_off_the_loop_thread_in_order() -> None:
    worker = ModelWorker()
    seen: list[tuple[int, str]] = []

    def job(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    try:
        results = await asyncio.gather(*(worker.run(job, n) for n in range(5)))
    finally:
        worker.close()
    assert results == [0, 2, 4, 6, 8]
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
    assert {name for _, name in seen} != {threading.current_thread().name}
    assert all(name.startswith("padimd-model") for _, name in seen)


async def test_worker_applies_the_configured_thread_count_on_its_own_thread() -> None:
    import torch

    wanted = 1 if torch.get_num_threads() != 1 else 2
    worker = ModelWorker(threads=wanted)
    try:
        assert await worker.threads() == wanted
    finally:
        worker.close()
