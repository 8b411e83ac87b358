"""Bad input goes to the dead-letter topic with its original bytes and why; the
service keeps running."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.integration.support import (
    Record,
    config,
    event_ids_cover,
    frame,
    headers,
    ids_of,
    make_topics,
    normal_frames,
    produce,
    read_until,
    running,
    settings_of,
)

pytestmark = pytest.mark.kafka

GARBAGE = b"\x00\xffthis is not an image\x13\x37" * 3


def _dead_letters_for(acks):
    offsets = {a.offset for a in acks}
    return lambda records: offsets <= {
        int(dict(r.headers)["source_offset"]) for r in records if "source_offset" in dict(r.headers)
    }


async def test_undecodable_bytes_are_dead_lettered_with_the_original_value(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    async with running(settings) as svc:
        acks = await produce(kafka_bootstrap, topics.input,
                             [Record(GARBAGE, b"cam-x", headers("normal"))])
        [dead] = await read_until(kafka_bootstrap, topics.dead_letter, _dead_letters_for(acks))
        dead_letter_count = svc.sample("padimd_dead_letter_total")
    got = dict(dead.headers)
    assert dead.value == GARBAGE
    assert dead.key == b"cam-x"
    assert got["error_reason"] == b"undecodable"
    assert got["source_topic"] == topics.input.encode()
    assert got["label"] == b"normal"  # the original headers travel along
    assert dead_letter_count == 1


async def test_record_without_key_is_dead_lettered_as_missing_key(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    value = normal_frames(1)[0]
    async with running(settings):
        acks = await produce(kafka_bootstrap, topics.input, [Record(value, None, headers())])
        [dead] = await read_until(kafka_bootstrap, topics.dead_letter, _dead_letters_for(acks))
    assert dead.value == value
    assert dict(dead.headers)["error_reason"] == b"missing_key"


async def test_frames_after_bad_records_are_still_processed(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input,
                                  model={"min_frames_before_scoring": 2},
                                  threshold={"min_normal_scores": 1}))
    async with running(settings) as svc:
        await produce(kafka_bootstrap, topics.input, [
            Record(GARBAGE, b"cam-x", headers()),
            Record(None, b"cam-x", headers()),  # a tombstone: no value at all
            Record(b"", None, headers()),
            *[frame(v, "cam-x", "normal") for v in normal_frames(3)],
        ])
        [ack] = await produce(kafka_bootstrap, topics.input, [frame(normal_frames(1, seed=5)[0], "cam-x")])
        await read_until(kafka_bootstrap, topics.output, event_ids_cover(set(ids_of([ack]))))
        assert svc.sample("padimd_dead_letter_total") == 3
        assert svc.sample("padimd_frames_learned_total", camera="cam-x") == 3
