"""The Kafka edge: aiokafka consumer and producer around the engine.

Delivery rules (docs/daemon-design.md): offsets are never auto-committed; they are
committed only from `Engine.checkpoint()` / `Engine.release()`, and only after every
outbound message returned by the engine so far has been acknowledged by the broker.
That gives at-least-once delivery of events and dead letters; the engine's snapshots
make sure a replayed normal frame is not learned twice.

Concurrency: a rebalance callback (run by aiokafka's coordinator task) and the control
topic task can interleave with the main loop at any `await`. One lock serialises every
call into the engine together with the delivery of its output, so a partition is never
released in the middle of a batch and commits always follow their acknowledgements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord

from daemon.records import InboundRecord, OutboundMessage, TopicPartition

log = logging.getLogger(__name__)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Room for the record batch framing around one maximal message, so that a message of
# exactly max_message_bytes is still fetched (aiokafka skips larger ones with an error).
_FETCH_OVERHEAD_BYTES = 64 * 1024
_BACKOFF_INITIAL_S = 0.1
_BACKOFF_MAX_S = 5.0
_CONTROL_POLL_MS = 500
_CONTROL_MISSING_WARN_S = 10.0

T = TypeVar("T")


class RebalanceFailed(RuntimeError):
    """The engine could not release or restore partitions during a rebalance."""


class EngineLike(Protocol):
    """The part of `daemon.engine.Engine` the edge calls (see the design doc)."""

    async def assign(self, partitions: Iterable[TopicPartition]) -> None: ...
    async def release(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]: ...
    async def process(self, records: Sequence[InboundRecord]) -> list[OutboundMessage]: ...
    async def handle_control(self, record: InboundRecord) -> list[OutboundMessage]: ...
    async def checkpoint(self) -> dict[TopicPartition, int]: ...


class EdgeMetrics(Protocol):
    """Callbacks the edge reports through; `daemon.app` binds them to `daemon.metrics`."""

    def consumer_lag(self, topic: str, partition: int, lag: int | None) -> None: ...
    def capture_to_event(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Everything the edge needs from the settings, in one place (see `daemon.app`)."""

    bootstrap_servers: str
    input_topics: tuple[str, ...]
    group_id: str
    control_topic: str | None = None
    group_instance_id: str | None = None
    client_id: str = "padimd"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_batch_size: int = 16
    max_batch_wait_ms: int = 100
    checkpoint_interval_s: float = 30.0
    max_message_bytes: int = 10 * 1024 * 1024
    session_timeout_ms: int = 10_000
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    # A callable, not the string, so that the secret never sits in a repr or a log line.
    sasl_password: Callable[[], str] | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


def client_security_kwargs(config: EdgeConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for TLS and SASL (PLAIN or SCRAM) from the config."""
    kwargs: dict[str, Any] = {"security_protocol": config.security_protocol}
    if config.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL_"):
        if config.sasl_mechanism is None or config.sasl_username is None:
            raise ValueError(
                f"security_protocol {config.security_protocol} needs sasl_mechanism "
                "and sasl_username"
            )
        kwargs["sasl_mechanism"] = config.sasl_mechanism
        kwargs["sasl_plain_username"] = config.sasl_username
        kwargs["sasl_plain_password"] = (
            config.sasl_password() if config.sasl_password is not None else None
        )
    return kwargs


def _ssl_context(config: EdgeConfig) -> ssl.SSLContext:
    # create_ssl_context verifies the broker's certificate and hostname by default;
    # without a CA file it uses the system trust store.
    return create_ssl_context(
        cafile=config.ssl_cafile,
        certfile=config.ssl_certfile,
        keyfile=config.ssl_keyfile,
    )


def to_inbound(record: ConsumerRecord[bytes, bytes]) -> InboundRecord:
    """Convert an aiokafka record to the engine's InboundRecord (null header → b"")."""
    headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in record.headers)
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=record.timestamp,
    )


def _is_transient(exc: KafkaError) -> bool:
    # aiokafka's KafkaTimeoutError is not flagged retriable, but it only means the
    # broker did not answer in time (leader election, network blip): worth retrying.
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, edge: KafkaEdge) -> None:
        self._edge = edge

    # aiokafka logs and swallows a listener's exception, and the group carries on: the
    # edge would then silently own partitions it cannot process. Record the failure
    # instead; the main loop raises it and the service exits to be restarted clean.

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        try:
            await self._edge._on_revoked(revoked)
        except Exception as exc:
            self._edge._fail("releasing revoked partitions", exc)

    async def on_partitions_assigned(self, assigned: set[KafkaTopicPartition]) -> None:
        try:
            await self._edge._on_assigned(assigned)
        except Exception as exc:
            self._edge._fail("restoring assigned partitions", exc)


class KafkaEdge:
    """Consume input records, feed the engine in batches, publish, commit.

    Use as `async with KafkaEdge(...) as edge: await edge.run(stop_event)`. `run`
    returns after `stop_event` is set and the final batch has been processed,
    delivered, snapshotted and committed.
    """

    def __init__(
        self,
        config: EdgeConfig,
        engine: EngineLike,
        metrics: EdgeMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._engine = engine
        self._metrics = metrics
        self._clock = clock
        self._lock = asyncio.Lock()
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._consumer: AIOKafkaConsumer | None = None
        self._control: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failure: RebalanceFailed | None = None
        self.has_assignment = asyncio.Event()
        self.control_positioned = asyncio.Event()
        self.last_heartbeat = time.monotonic()

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """Partitions whose records this instance currently processes."""
        return self._assigned

    async def __aenter__(self) -> KafkaEdge:
        try:
            await self.start()
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: stop what did start.
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the producer, join the consumer group, start the control reader."""
        cfg = self._config
        security = client_security_kwargs(cfg)
        fetch_bytes = max(cfg.max_message_bytes + _FETCH_OVERHEAD_BYTES, 1024 * 1024)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=cfg.client_id,
            acks="all",
            enable_idempotence=True,
            max_request_size=cfg.max_message_bytes + _FETCH_OVERHEAD_BYTES,
            **security,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=cfg.client_id,
            group_id=cfg.group_id,
            group_instance_id=cfg.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_partition_fetch_bytes=fetch_bytes,
            fetch_max_bytes=max(fetch_bytes, 50 * 1024 * 1024),
            session_timeout_ms=cfg.session_timeout_ms,
            **security,
        )
        await self._consumer.start()
        self._consumer.subscribe(list(cfg.input_topics), listener=_Listener(self))
        if cfg.control_topic:
            # No group: every instance reads every control command, from the end of
            # the topic at start (old commands were applied or are in the snapshots).
            self._control = AIOKafkaConsumer(
                bootstrap_servers=cfg.bootstrap_servers,
                client_id=f"{cfg.client_id}-control",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                max_partition_fetch_bytes=fetch_bytes,
                **security,
            )
            await self._control.start()
            self._control_task = asyncio.create_task(
                self._control_loop(cfg.control_topic), name="padimd-control"
            )
            self._control_task.add_done_callback(_log_control_exit)
        log.info(
            "kafka edge started: bootstrap=%s topics=%s group=%s",
            cfg.bootstrap_servers,
            ",".join(cfg.input_topics),
            cfg.group_id,
        )

    async def close(self) -> None:
        """Stop the clients (the consumer leaves the group). Idempotent."""
        self._stopping = True
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
            self._control_task = None
        for name in ("_control", "_consumer", "_producer"):
            client = getattr(self, name)
            if client is None:
                continue
            setattr(self, name, None)
            try:
                await client.stop()
            except KafkaError as exc:
                log.warning("stopping %s failed: %s", name.strip("_"), exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Main loop until `stop` is set; then hand back partitions and commit."""
        consumer = self._require(self._consumer)
        cfg = self._config
        next_checkpoint = time.monotonic() + cfg.checkpoint_interval_s
        backoff = _Backoff()
        while not stop.is_set():
            self.last_heartbeat = time.monotonic()
            if self._failure is not None:
                raise self._failure
            try:
                batches = await consumer.getmany(
                    timeout_ms=cfg.max_batch_wait_ms, max_records=cfg.max_batch_size
                )
            except KafkaError as exc:
                if not _is_transient(exc):
                    raise
                await backoff.wait(f"fetch failed: {exc!r}")
                continue
            backoff.reset()
            records = [to_inbound(r) for msgs in batches.values() for r in msgs]
            if records:
                await self._process(records)
            await self._update_lag()
            if time.monotonic() >= next_checkpoint:
                await self.checkpoint()
                next_checkpoint = time.monotonic() + cfg.checkpoint_interval_s
        await self._hand_back()

    async def checkpoint(self) -> None:
        """Snapshot dirty cameras, make sure every output is acked, commit offsets."""
        async with self._lock:
            offsets = await self._engine.checkpoint()
            await self._flush()
            await self._commit(offsets)

    async def _process(self, records: list[InboundRecord]) -> None:
        async with self._lock:
            # A rebalance may have revoked partitions after getmany returned: their
            # records belong to the next owner now (it resumes from our last commit).
            owned = [
                r for r in records if TopicPartition(r.topic, r.partition) in self._assigned
            ]
            if len(owned) < len(records):
                log.debug("dropped %d records of revoked partitions", len(records) - len(owned))
            if owned:
                await self._deliver(await self._engine.process(owned))

    async def _hand_back(self) -> None:
        # aiokafka does not call on_partitions_revoked on stop(): release and commit
        # here so the next owner restores our newest state and resumes after it.
        async with self._lock:
            partitions = self._assigned
            self._assigned = frozenset()
            if not partitions:
                return
            await self._release_locked(partitions)
            log.info("released %d partitions on shutdown", len(partitions))

    async def _release_locked(self, partitions: frozenset[TopicPartition]) -> None:
        """Snapshot and forget ``partitions``, then commit what is durable (lock held)."""
        offsets = await self._engine.release(partitions)
        await self._flush()
        await self._commit(offsets)
        self._forget_lag(partitions)

    # --- rebalance -------------------------------------------------------------

    def _fail(self, what: str, exc: Exception) -> None:
        log.error("%s failed", what, exc_info=exc)
        failure = RebalanceFailed(f"{what} failed: {exc!r}")
        failure.__cause__ = exc
        self._failure = failure

    async def _on_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        partitions = frozenset(TopicPartition(tp.topic, tp.partition) for tp in revoked)
        async with self._lock:
            self._assigned = frozenset()
            self.has_assignment.clear()
            if not partitions:
                return
            await self._release_locked(partitions)
        log.info("partitions revoked: %s", _describe(partitions))

    async def _on_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        partitions = frozenset(TopicPartition(tp.topic, tp.partition) for tp in assigned)
        async with self._lock:
            await self._engine.assign(partitions)
            self._assigned = partitions
            self.has_assignment.set()
        log.info("partitions assigned: %s", _describe(partitions))

    # --- output and commits ------------------------------------------------------

    async def _deliver(self, messages: Sequence[OutboundMessage]) -> None:
        """Send every message and wait for the broker's acknowledgement of each."""
        if not messages:
            return
        producer = self._require(self._producer)
        pending = [(m, await self._send(producer, m)) for m in messages]
        for message, ack in pending:
            try:
                await ack
            except KafkaError as exc:
                if not _is_transient(exc):
                    self._log_undeliverable(message, exc)
                    continue
                # The idempotent producer already retried within its delivery timeout;
                # send again, one at a time, until the broker takes it.
                if not await self._resend(producer, message):
                    continue
            self._observe_latency(message)

    async def _send(
        self, producer: AIOKafkaProducer, message: OutboundMessage
    ) -> asyncio.Future[Any]:
        backoff = _Backoff()
        while True:
            try:
                return await producer.send(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=list(message.headers),
                )
            except KafkaError as exc:
                if not _is_transient(exc):
                    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                    failed.set_exception(exc)
                    return failed
                await backoff.wait(f"send to {message.topic} failed: {exc!r}")

    async def _resend(self, producer: AIOKafkaProducer, message: OutboundMessage) -> bool:
        backoff = _Backoff()
        while True:
            try:
                await (await self._send(producer, message))
                return True
            except KafkaError as exc:
                if not _is_transient(exc):
                    self._log_undeliverable(message, exc)
                    return False
                await backoff.wait(f"delivery to {message.topic} failed: {exc!r}")

    def _log_undeliverable(self, message: OutboundMessage, exc: KafkaError) -> None:
        # Not retriable (e.g. message too large for the topic): retrying forever would
        # stall every camera, so the message is dropped loudly.
        log.error(
            "dropping %s for topic %s (%d bytes): %r",
            message.kind,
            message.topic,
            len(message.value),
            exc,
        )

    def _observe_latency(self, message: OutboundMessage) -> None:
        if message.kind == "event" and message.capture_time_s is not None:
            self._metrics.capture_to_event(max(0.0, self._clock() - message.capture_time_s))

    async def _flush(self) -> None:
        if self._producer is not None:
            await _retry(self._producer.flush, "producer flush")

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self._require(self._consumer)
        current = consumer.assignment()
        commit = {
            KafkaTopicPartition(tp.topic, tp.partition): offset
            for tp, offset in offsets.items()
            if KafkaTopicPartition(tp.topic, tp.partition) in current
        }
        if not commit:
            return
        try:
            await _retry(lambda: consumer.commit(commit), "offset commit")
        except KafkaError as exc:
            # Typically CommitFailedError after a rebalance took the partitions away:
            # the new owner replays from the previous commit and the engine's snapshot
            # offsets keep it from learning a frame twice.
            log.warning("offset commit failed: %r", exc)

    # --- lag -------------------------------------------------------------------

    async def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in self._assigned:
            ktp = KafkaTopicPartition(tp.topic, tp.partition)
            highwater = consumer.highwater(ktp)
            if highwater is None:
                continue
            try:
                position = await consumer.position(ktp)
            except KafkaError as exc:
                # IllegalStateError when a rebalance just took the partition away.
                log.debug("no position for %s: %r", tp, exc)
                continue
            self._metrics.consumer_lag(tp.topic, tp.partition, max(0, highwater - position))

    def _forget_lag(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._metrics.consumer_lag(tp.topic, tp.partition, None)

    # --- control topic ---------------------------------------------------------

    async def _control_loop(self, topic: str) -> None:
        control = self._require(self._control)
        await self._position_control(control, topic)
        backoff = _Backoff()
        while not self._stopping:
            try:
                batches = await control.getmany(timeout_ms=_CONTROL_POLL_MS)
            except KafkaError as exc:
                if not _is_transient(exc):
                    log.error("control topic reader stopped: %r", exc)
                    return
                await backoff.wait(f"control fetch failed: {exc!r}")
                continue
            backoff.reset()
            for msgs in batches.values():
                for record in msgs:
                    async with self._lock:
                        await self._deliver(await self._engine.handle_control(to_inbound(record)))

    async def _position_control(self, control: AIOKafkaConsumer, topic: str) -> None:
        """Wait for the control topic's partitions and pin their positions to the end."""
        # Without a group, subscribe() assigns every partition once metadata lists the
        # topic (also when it is created after we started).
        control.subscribe([topic])
        waited_s = 0.0
        while not self._stopping and not control.assignment():
            if waited_s == _CONTROL_MISSING_WARN_S:
                log.warning("control topic %s not found yet; still waiting", topic)
            await asyncio.sleep(0.1)
            waited_s = round(waited_s + 0.1, 1)
        tps = sorted(control.assignment())
        if not tps:
            return
        await control.seek_to_end(*tps)
        for tp in tps:
            # Resolves the end offset now, so a command sent after this point is never
            # skipped by a late "latest" lookup.
            await control.position(tp)
        self.control_positioned.set()
        log.info("reading control topic %s (%d partitions)", topic, len(tps))

    @staticmethod
    def _require(client: T | None) -> T:
        if client is None:
            raise RuntimeError("KafkaEdge used before start() or after close()")
        return client


class _Backoff:
    """Exponential backoff for transient Kafka errors, logging each wait."""

    def __init__(self) -> None:
        self._delay_s = _BACKOFF_INITIAL_S

    def reset(self) -> None:
        self._delay_s = _BACKOFF_INITIAL_S

    async def wait(self, what: str) -> None:
        log.warning("%s; retrying in %.1f s", what, self._delay_s)
        await asyncio.sleep(self._delay_s)
        self._delay_s = min(self._delay_s * 2, _BACKOFF_MAX_S)


async def _retry(op: Callable[[], Awaitable[T]], what: str) -> T:
    backoff = _Backoff()
    while True:
        try:
            return await op()
        except KafkaError as exc:
            if not _is_transient(exc):
                raise
            await backoff.wait(f"{what} failed: {exc!r}")


def _log_control_exit(task: asyncio.Task[None]) -> None:
    # Commands would silently stop working: say so loudly (the data path keeps going).
    if not task.cancelled() and task.exception() is not None:
        log.error("control topic reader failed", exc_info=task.exception())


def _describe(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)) or "none"
