"""daemon.records: the plain records crossing the edge."""

from __future__ import annotations

import dataclasses

import pytest

from daemon.records import InboundRecord, TopicPartition


def inbound(headers: tuple[tuple[str, bytes], ...]) -> InboundRecord:
    return InboundRecord("cams", 2, 9, b"k", b"v", headers, 0)


def test_header_returns_the_last_repeat() -> None:
    record = inbound((("label", b"normal"), ("x", b"1"), ("label", b"anomalous")))
    assert record.header("label") == b"anomalous"


def test_absent_header_is_none() -> None:
    assert inbound(()).header("label") is None


def test_topic_partition_of_a_record() -> None:
    assert inbound(()).topic_partition == TopicPartition("cams", 2)


def test_records_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        inbound(()).offset = 3  # type: ignore[misc]
