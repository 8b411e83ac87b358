"""Plain records crossing the boundary between the Kafka edge and the engine.

They carry no aiokafka types, so the engine and its tests never need a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Headers = tuple[tuple[str, bytes], ...]
OutboundKind = Literal["event", "dead_letter", "control_ack"]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One consumed Kafka record, copied out of the client's own types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int  # Kafka record timestamp: the fallback capture time

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition this record was read from."""
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats; the last one wins)."""
        found: bytes | None = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message the edge must produce (and see acknowledged) before committing."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    kind: OutboundKind
    capture_time_s: float | None  # for padimd_capture_to_event_seconds once acked
