"""daemon.engine: records in, events / dead letters / acks out, delivery rules."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from padim import FeatureExtractor

from daemon.engine import Engine
from daemon.metrics import Metrics
from daemon.records import InboundRecord, OutboundMessage, TopicPartition
from daemon.settings import ScoringSettings, Settings
from daemon.snapshots import SnapshotStore
from tests.daemon.engine_support import (
    MIN_FRAMES,
    TOPIC,
    defect_pixels,
    encode,
    normal_pixels,
    record,
    tiny_settings,
)

P0 = TopicPartition(TOPIC, 0)
CLOCK_S = 1_800_000_000.0
# Enough normal frames to fit (MIN_FRAMES) and then learn a threshold (4 held-out scores).
WARM_UP = MIN_FRAMES + 6

EngineFactory = Callable[..., Engine]


@pytest.fixture
async def make_engine(tmp_path: Path, tiny_extractor: FeatureExtractor,
                      metrics: Metrics) -> AsyncIterator[EngineFactory]:
    """Builds engines on the shared extractor; closes them after the test."""
    engines: list[Engine] = []

    def build(settings: Settings | None = None, engine_metrics: Metrics | None = None) -> Engine:
        settings = settings or tiny_settings(tmp_path / "snapshots")
        engine = Engine(settings, engine_metrics or metrics,
                        SnapshotStore.from_settings(settings.snapshots),
                        clock=lambda: CLOCK_S, extractor=tiny_extractor)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


def normal_records(start: int, count: int, seed: int = 0, label: str | None = "normal",
                   camera: bytes = b"cam-1") -> list[InboundRecord]:
    rng = np.random.default_rng(seed)
    return [record(offset, encode(normal_pixels(rng)), label=label, camera=camera)
            for offset in range(start, start + count)]


def events(messages: list[OutboundMessage]) -> list[dict[str, object]]:
    return [json.loads(m.value) for m in messages if m.kind == "event"]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_not_ready_until_assigned(make_engine: EngineFactory) -> None:
    engine = make_engine()
    assert not engine.ready()
    await engine.assign([P0])
    assert engine.ready()


async def test_learns_then_scores_a_defect_above_normal_frames(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine = make_engine(tiny_settings(tmp_path / "s", scoring=ScoringSettings(emit_all_frames=True)))
    await engine.assign([P0])
    await engine.process(normal_records(0, WARM_UP))
    rng = np.random.default_rng(7)
    probe = [record(WARM_UP, encode(normal_pixels(rng)), label=None),
             record(WARM_UP + 1, encode(defect_pixels(rng)), label=None)]
    scored = {e["source"]["offset"]: e for e in events(await engine.process(probe))}
    normal, defect = scored[WARM_UP], scored[WARM_UP + 1]
    assert defect["score"] > normal["score"]
    assert defect["is_anomaly"] and not normal["is_anomaly"]
    assert defect["threshold"] is not None
    assert defect["event_id"] == f"{TOPIC}:0:{WARM_UP + 1}"
    assert defect["regions"], "an anomalous frame has at least one region"
    x0, y0, x1, y1 = defect["regions"][0]["box"]
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 72  # the original 96x72 frame
    assert x0 < 44 and y0 < 32  # overlaps the magenta patch at x 12..44, y 8..32


async def test_only_anomalies_become_events_by_default(make_engine: EngineFactory,
                                                       metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    warm = await engine.process(normal_records(0, WARM_UP))
    assert events(warm) == []
    out = await engine.process([record(WARM_UP, encode(defect_pixels(np.random.default_rng(3))),
                                       label="anomalous")])
    assert [e["source"]["offset"] for e in events(out)] == [WARM_UP]
    assert out[0].capture_time_s == pytest.approx(1_700_000_000.0)
    assert sample(metrics, "padimd_anomalies_total", camera="cam-1") == 1
    assert sample(metrics, "padimd_labelled_anomalous_total", camera="cam-1", detected="true") == 1


async def test_camera_starts_scoring_mid_batch(make_engine: EngineFactory,
                                               metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, MIN_FRAMES + 2))
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-1") == MIN_FRAMES + 2
    assert sample(metrics, "padimd_frames_scored_total", camera="cam-1") == 2
    assert sample(metrics, "padimd_model_frames_learned", camera="cam-1") == MIN_FRAMES + 2


async def test_unlabelled_frames_while_warming_up_are_skipped(make_engine: EngineFactory,
                                                              metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    assert await engine.process(normal_records(0, 3, label=None)) == []
    assert sample(metrics, "padimd_frames_skipped_total", camera="cam-1", reason="warming_up") == 3
    assert sample(metrics, "padimd_frames_consumed_total", camera="cam-1") == 3


async def test_batches_are_bounded_by_max_batch_size(make_engine: EngineFactory,
                                                     tmp_path: Path, metrics: Metrics) -> None:
    engine = make_engine(tiny_settings(tmp_path / "s", scoring=ScoringSettings(max_batch_size=4)))
    await engine.assign([P0])
    await engine.process(normal_records(0, 10) + normal_records(0, 2, camera=b"cam-2"))
    assert sample(metrics, "padimd_batch_size_count") == 3
    assert sample(metrics, "padimd_batch_size_sum") == 12
    assert sample(metrics, "padimd_inference_seconds_count") == 3


async def test_dead_letters_keep_original_bytes_and_headers(make_engine: EngineFactory,
                                                            metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    bad = record(0, b"\x89PNG not really", headers=(("trace", b"abc"),))
    out = await engine.process([bad, *normal_records(1, 1)])
    [letter] = [m for m in out if m.kind == "dead_letter"]
    assert letter.value == bad.value and letter.key == bad.key
    assert letter.headers[: len(bad.headers)] == bad.headers
    assert ("error_reason", b"undecodable") in letter.headers
    assert ("source_offset", b"0") in letter.headers
    assert sample(metrics, "padimd_decode_errors_total", reason="undecodable") == 1
    assert sample(metrics, "padimd_dead_letter_total") == 1
    assert await engine.checkpoint() == {P0: 2}  # the bad record is done with too


async def test_records_of_unassigned_partitions_are_not_processed(make_engine: EngineFactory,
                                                                  metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    stray = record(0, b"garbage", partition=5)
    assert await engine.process([stray]) == []
    assert sample(metrics, "padimd_frames_skipped_total", camera="cam-1", reason="not_owned") == 1
    assert TopicPartition(TOPIC, 5) not in await engine.checkpoint()


async def test_replay_after_restore_does_not_learn_twice(
    make_engine: EngineFactory, tmp_path: Path, metrics: Metrics
) -> None:
    from prometheus_client import CollectorRegistry

    first = make_engine()
    await first.assign([P0])
    await first.process(normal_records(0, 8))
    assert await first.checkpoint() == {P0: 8}
    # A crash before the commit: a new instance restores and the broker replays 0..8.
    restarted_metrics = Metrics(CollectorRegistry(), backbone="efficientnet_lite0")
    second = make_engine(engine_metrics=restarted_metrics)
    await second.assign([P0])
    assert sample(restarted_metrics, "padimd_model_frames_learned", camera="cam-1") == 8
    await second.process(normal_records(0, 9))
    assert sample(restarted_metrics, "padimd_frames_learned_total", camera="cam-1") == 1
    assert sample(restarted_metrics, "padimd_model_frames_learned", camera="cam-1") == 9
    # The 8 replayed frames were scored (the camera is fitted), not learned.
    assert sample(restarted_metrics, "padimd_frames_scored_total", camera="cam-1") == 9


async def test_replayed_scored_frame_keeps_its_event_id(make_engine: EngineFactory,
                                                        tmp_path: Path) -> None:
    first = make_engine()
    await first.assign([P0])
    await first.process(normal_records(0, WARM_UP))
    await first.checkpoint()
    defect = record(WARM_UP, encode(defect_pixels(np.random.default_rng(3))), label=None)
    before = events(await first.process([defect]))
    second = make_engine()
    await second.assign([P0])
    after = events(await second.process([defect]))
    assert [e["event_id"] for e in before] == [e["event_id"] for e in after] != []


async def test_checkpoint_snapshots_and_release_forgets(make_engine: EngineFactory,
                                                        tmp_path: Path, metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, 3))
    assert await engine.release([P0]) == {P0: 3}
    assert SnapshotStore(tmp_path / "snapshots", 2).cameras(P0) == ["cam-1"]
    assert sample(metrics, "padimd_assigned_partitions") == 0
    assert metrics.registry.get_sample_value("padimd_model_frames_learned",
                                             {"camera": "cam-1"}) is None
    assert sample(metrics, "padimd_last_snapshot_timestamp_seconds") == CLOCK_S
    # Released: new records of that partition are no longer processed.
    assert await engine.process(normal_records(3, 1)) == []


async def test_failed_snapshot_holds_offsets_back(make_engine: EngineFactory, tmp_path: Path,
                                                  metrics: Metrics) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the snapshot directory should be")
    engine = make_engine(tiny_settings(blocker))
    await engine.assign([P0])
    await engine.process(normal_records(0, 2))
    assert await engine.checkpoint() == {}
    assert sample(metrics, "padimd_snapshot_failures_total") == 1


async def test_corrupt_snapshot_falls_back_and_is_counted(make_engine: EngineFactory,
                                                          tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    first = make_engine()
    await first.assign([P0])
    await first.process(normal_records(0, 2))
    await first.checkpoint()
    await first.process(normal_records(2, 2))
    await first.checkpoint()
    newest = SnapshotStore(tmp_path / "snapshots", 2).camera_dir(P0, "cam-1") / "2.padim"
    newest.write_bytes(b"corrupted")
    restarted = Metrics(CollectorRegistry(), backbone="efficientnet_lite0")
    second = make_engine(engine_metrics=restarted)
    await second.assign([P0])
    assert sample(restarted, "padimd_snapshot_fallbacks_total") == 1
    assert sample(restarted, "padimd_model_frames_learned", camera="cam-1") == 2


def control(value: dict[str, object] | bytes, offset: int = 0) -> InboundRecord:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return InboundRecord("padimd-control", 0, offset, None, data, (), 0)


async def test_freeze_stops_learning_until_unfrozen(make_engine: EngineFactory,
                                                    metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, MIN_FRAMES))
    [ack] = await engine.handle_control(control({"command": "freeze", "camera": "cam-1",
                                                 "request_id": "r1"}))
    assert json.loads(ack.value)["status"] == "ok" and ack.kind == "control_ack"
    await engine.process(normal_records(MIN_FRAMES, 2))
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-1") == MIN_FRAMES
    assert sample(metrics, "padimd_frames_scored_total", camera="cam-1") == 2
    await engine.handle_control(control({"command": "unfreeze", "camera": "cam-1"}))
    await engine.process(normal_records(MIN_FRAMES + 2, 1))
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-1") == MIN_FRAMES + 1
    assert sample(metrics, "padimd_control_commands_total", command="freeze", result="ok") == 1


async def test_set_threshold_survives_a_restart(make_engine: EngineFactory) -> None:
    first = make_engine()
    await first.assign([P0])
    await first.process(normal_records(0, 2))
    await first.handle_control(control({"command": "set_threshold", "camera": "cam-1",
                                        "threshold": 123.0}))
    await first.checkpoint()
    from prometheus_client import CollectorRegistry

    restarted = Metrics(CollectorRegistry(), backbone="efficientnet_lite0")
    second = make_engine(engine_metrics=restarted)
    await second.assign([P0])
    assert sample(restarted, "padimd_threshold", camera="cam-1") == 123.0


async def test_bad_control_records_get_error_acks(make_engine: EngineFactory,
                                                  metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    [unknown] = await engine.handle_control(control({"command": "reset", "camera": "nobody"}))
    [garbage] = await engine.handle_control(control(b"\xff\x00"))
    assert json.loads(unknown.value)["reason"] == "unknown_camera"
    assert json.loads(garbage.value)["reason"] == "invalid_command"
    assert sample(metrics, "padimd_control_commands_total", command="reset", result="error") == 1
    assert sample(metrics, "padimd_control_commands_total", command="invalid", result="error") == 1


async def test_model_failure_of_one_camera_spares_the_others(
    make_engine: EngineFactory, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    from padim import NotFittedError, PaDiM

    real = PaDiM.train_embeddings
    calls = {"n": 0}

    def fail_first(self: PaDiM, embeddings: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise NotFittedError("simulated numerical failure")
        real(self, embeddings)  # type: ignore[arg-type]

    monkeypatch.setattr(PaDiM, "train_embeddings", fail_first)
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, 2, camera=b"cam-a") + normal_records(2, 2, camera=b"cam-b"))
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-a") == 0
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-b") == 2


async def test_failed_restore_leaves_the_engine_not_ready(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(self: SnapshotStore, source: TopicPartition) -> list[str]:
        raise PermissionError(13, "Permission denied", str(self.directory))

    monkeypatch.setattr(SnapshotStore, "cameras", unreadable)
    engine = make_engine()
    with pytest.raises(PermissionError):
        await engine.assign([P0])
    assert not engine.ready()


async def test_threshold_is_learned_from_normal_frames_only(make_engine: EngineFactory,
                                                            metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, MIN_FRAMES + 3))
    assert math.isnan(sample(metrics, "padimd_threshold", camera="cam-1"))  # 3 of 4 samples
    await engine.process(normal_records(MIN_FRAMES + 3, 1, seed=1))
    learned = sample(metrics, "padimd_threshold", camera="cam-1")
    assert not math.isnan(learned)
    rng = np.random.default_rng(5)
    defects = [record(offset, encode(defect_pixels(rng)), label=label)
               for offset, label in zip(range(20, 26), ["anomalous", None] * 3, strict=True)]
    await engine.process(defects)
    assert sample(metrics, "padimd_threshold", camera="cam-1") == learned
    assert sample(metrics, "padimd_frames_learned_total", camera="cam-1") == MIN_FRAMES + 4


async def test_event_loop_stays_responsive_while_the_model_works(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine()
    await engine.assign([P0])
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start before the batch
    ticks = 0
    await engine.process(normal_records(0, 16))
    done.set()
    await task
    assert ticks >= 3, "the batch blocked the event loop"


async def test_a_new_camera_counters_exist_at_zero_before_its_first_anomaly(
        make_engine: EngineFactory, metrics: Metrics) -> None:
    engine = make_engine()
    await engine.assign([P0])
    await engine.process(normal_records(0, 2, camera=b"cam-new"))
    # Present (not absent) at 0, so the first anomaly later shows up in rate().
    assert metrics.registry.get_sample_value("padimd_anomalies_total", {"camera": "cam-new"}) == 0.0
    assert metrics.registry.get_sample_value("padimd_frames_scored_total", {"camera": "cam-new"}) == 0.0
