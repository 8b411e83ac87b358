"""Learning then scoring through a real broker: frames in, events out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    MIN_FRAMES_BEFORE_SCORING,
    MIN_NORMAL_SCORES,
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
)

pytestmark = pytest.mark.kafka

# Enough labelled normals to fit the model and then give the threshold its samples.
TRAIN = MIN_FRAMES_BEFORE_SCORING + MIN_NORMAL_SCORES + 6
CAMERA = "cam-a"


async def test_normal_frames_are_learned_and_later_frames_scored(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings) as svc:
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, CAMERA, "normal") for v in normal_frames(TRAIN)])
        test_acks = await produce(kafka_bootstrap, topics.input,
                                  [frame(v, CAMERA) for v in defective_frames(2)])
        records = await read_until(kafka_bootstrap, topics.output,
                                   event_ids_cover(set(ids_of(test_acks))))
        learned = svc.sample("padimd_frames_learned_total", camera=CAMERA)
    by_id = {e["event_id"]: e for e in events_of(records)}
    assert learned == TRAIN
    for event_id in ids_of(test_acks):
        assert by_id[event_id]["model"]["frames_learned"] == TRAIN
        assert by_id[event_id]["threshold"] is not None


async def test_defective_frames_score_above_held_out_normal_frames(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings):
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, CAMERA, "normal") for v in normal_frames(TRAIN)])
        normal_acks = await produce(kafka_bootstrap, topics.input,
                                    [frame(v, CAMERA) for v in normal_frames(4, seed=7)])
        defect_acks = await produce(kafka_bootstrap, topics.input,
                                    [frame(v, CAMERA) for v in defective_frames(4, seed=7)])
        wanted = set(ids_of(normal_acks) + ids_of(defect_acks))
        records = await read_until(kafka_bootstrap, topics.output, event_ids_cover(wanted))
    score = {e["event_id"]: e["score"] for e in events_of(records)}
    normal_scores = sorted(score[i] for i in ids_of(normal_acks))
    defect_scores = sorted(score[i] for i in ids_of(defect_acks))
    # Median against median: a pasted scratch or blob is far from the brick texture
    # even for a random-weight backbone, while one odd crop must not flip the test.
    assert defect_scores[len(defect_scores) // 2] > normal_scores[len(normal_scores) // 2]


async def test_event_json_carries_the_documented_fields(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings):
        await produce(kafka_bootstrap, topics.input,
                      [frame(v, CAMERA, "normal") for v in normal_frames(TRAIN)])
        [ack] = await produce(kafka_bootstrap, topics.input, [frame(defective_frames(1)[0], CAMERA)])
        records = await read_until(kafka_bootstrap, topics.output, event_ids_cover(set(ids_of([ack]))))
    wanted_id = ids_of([ack])[0]
    [record] = [r for r in records if any(e["event_id"] == wanted_id for e in events_of([r]))]
    event = events_of([record])[0]
    assert record.key == CAMERA.encode()
    assert dict(record.headers)["content-type"] == b"application/json"
    assert event["camera"] == CAMERA
    assert event["source"] == {"topic": topics.input, "partition": ack.partition, "offset": ack.offset}
    assert isinstance(event["score"], float) and isinstance(event["is_anomaly"], bool)
    assert event["image_size"] == [64, 64]
    assert event["label"] is None
    assert {"capture_time", "scored_time", "threshold", "regions", "model"} <= event.keys()
