"""Service lifecycle: settings → logs → HTTP → engine → Kafka, one AsyncExitStack.

`padimd --config FILE` calls `run_service`. SIGTERM/SIGINT set a stop flag: the Kafka
edge stops taking records, finishes the batch in hand, snapshots, commits and leaves
the group, all within `shutdown.grace_s`; a second signal exits at once. Tests run the
same service in-process with `Service` / `run_service_async` and their own stop event.

Readiness (/readyz, systemd READY=1) = partitions assigned and their cameras restored,
and the feature extractor loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.engine import Engine
from daemon.http import HttpServer
from daemon.kafka import EdgeConfig, KafkaEdge
from daemon.logs import setup_logging
from daemon.metrics import Metrics
from daemon.sdnotify import SystemdNotifier
from daemon.settings import ConfigError, Settings, load_settings
from daemon.snapshots import SnapshotStore

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
# The watchdog is only fed while the main loop turns. One batch plus a rebalance's
# restore can legitimately hold the loop for a while; beyond this it is wedged.
_LOOP_STALL_S = 120.0
_READY_POLL_S = 0.2


def edge_config(settings: Settings) -> EdgeConfig:
    """The Kafka edge's view of the settings (the one place that maps their names)."""
    k = settings.kafka
    password = k.sasl_password
    return EdgeConfig(
        bootstrap_servers=k.bootstrap_servers,
        input_topics=tuple(k.input_topics),
        group_id=k.group_id,
        control_topic=k.control_topic,
        group_instance_id=k.group_instance_id,
        client_id=k.client_id,
        auto_offset_reset=k.auto_offset_reset,
        max_batch_size=settings.scoring.max_batch_size,
        max_batch_wait_ms=settings.scoring.max_batch_wait_ms,
        checkpoint_interval_s=settings.snapshots.interval_s,
        max_message_bytes=k.max_message_bytes,
        session_timeout_ms=k.session_timeout_ms,
        security_protocol=k.security_protocol,
        sasl_mechanism=k.sasl_mechanism,
        sasl_username=k.sasl_username,
        sasl_password=password.get_secret_value if password is not None else None,
        ssl_cafile=_path_or_none(k.ssl_cafile),
        ssl_certfile=_path_or_none(k.ssl_certfile),
        ssl_keyfile=_path_or_none(k.ssl_keyfile),
    )


def _path_or_none(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _secrets(settings: Settings) -> list[str]:
    password = settings.kafka.sasl_password
    return [password.get_secret_value()] if password is not None else []


class _EdgeMetrics:
    """Binds the edge's reporting callbacks to the service's Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def consumer_lag(self, topic: str, partition: int, lag: int | None) -> None:
        gauge = self._metrics.consumer_lag
        if lag is None:
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))
        else:
            gauge.labels(topic=topic, partition=str(partition)).set(lag)

    def capture_to_event(self, seconds: float) -> None:
        self._metrics.capture_to_event_seconds.observe(seconds)


class Service:
    """The whole running service; `async with Service(settings) as svc: await svc.run(stop)`."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        self.metrics = Metrics(self.registry, backbone=settings.model.backbone)
        self._stack = AsyncExitStack()
        self._engine: Engine | None = None
        self._edge: KafkaEdge | None = None
        self.http: HttpServer | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("service not started")
        return self._engine

    @property
    def edge(self) -> KafkaEdge:
        if self._edge is None:
            raise RuntimeError("service not started")
        return self._edge

    def ready(self) -> bool:
        """Partitions assigned and restored, extractor loaded."""
        return (
            self._edge is not None
            and self._engine is not None
            and self._edge.has_assignment.is_set()
            and self._engine.ready()
        )

    def alive(self) -> bool:
        """The main loop is turning (or has not started yet)."""
        return self._edge is None or time.monotonic() - self._edge.last_heartbeat < _LOOP_STALL_S

    async def __aenter__(self) -> Service:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        s = self.settings
        self.notifier.status("starting")
        # HTTP first, so /livez answers while the backbone loads and the group joins.
        self.http = await self._stack.enter_async_context(
            HttpServer(self.registry, ready=self.ready, host=s.http.host, port=s.http.port, alive=self.alive)
        )
        store = SnapshotStore.from_settings(s.snapshots)
        # Loading the backbone is seconds of CPU; keep the event loop (and /livez) free.
        self._engine = await asyncio.to_thread(Engine, s, self.metrics, store)
        # Closed after the Kafka edge (LIFO): the final release still needs the worker.
        self._stack.callback(self._engine.close)
        self._edge = await self._stack.enter_async_context(
            KafkaEdge(edge_config(s), self._engine, _EdgeMetrics(self.metrics))
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until `stop` is set, then drain within `shutdown.grace_s`; exit code."""
        edge = self.edge
        run_task = asyncio.create_task(edge.run(stop), name="padimd-kafka")
        helpers = [
            asyncio.create_task(self._announce_ready(), name="padimd-ready"),
            asyncio.create_task(self._feed_watchdog(), name="padimd-watchdog"),
        ]
        stop_task = asyncio.create_task(stop.wait(), name="padimd-stop")
        try:
            await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if run_task.done() and not stop.is_set():
                # The loop only returns early by raising (a non-retriable Kafka error).
                exc = run_task.exception()
                log.error("kafka loop stopped unexpectedly", exc_info=exc)
                return EXIT_ERROR
            self.notifier.stopping()
            self.notifier.status("draining")
            grace_s = self.settings.shutdown.grace_s
            started = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(run_task), timeout=grace_s)
            except TimeoutError:
                log.error("drain did not finish within shutdown.grace_s=%.1f s", grace_s)
                run_task.cancel()
                return EXIT_ERROR
            except Exception:
                log.exception("drain failed")
                return EXIT_ERROR
            log.info("drained in %.2f s", time.monotonic() - started)
            return EXIT_OK
        finally:
            for task in (stop_task, *helpers):
                task.cancel()
            await asyncio.gather(stop_task, *helpers, return_exceptions=True)
            if not run_task.done():
                run_task.cancel()
                await asyncio.gather(run_task, return_exceptions=True)

    async def _announce_ready(self) -> None:
        while not self.ready():
            await asyncio.sleep(_READY_POLL_S)
        partitions = len(self.edge.assigned)
        log.info("ready: %d partitions assigned", partitions)
        self.notifier.ready()
        self.notifier.status(f"ready: {partitions} partitions")

    async def _feed_watchdog(self) -> None:
        interval_s = self.notifier.watchdog_interval_s()
        if interval_s is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            # A wedged loop must starve the watchdog so systemd restarts us.
            if self.alive():
                self.notifier.watchdog()


async def run_service_async(
    settings: Settings,
    stop_event: asyncio.Event,
    registry: CollectorRegistry | None = None,
    notifier: SystemdNotifier | None = None,
) -> int:
    """Run the service until `stop_event` is set and it has drained; the exit code."""
    async with Service(settings, registry=registry, notifier=notifier) as service:
        return await service.run(stop_event)


async def _serve_until_signalled(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting immediately", name)
            logging.shutdown()
            os._exit(128 + signum)
        log.info("%s received: finishing the current batch and shutting down", name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return await run_service_async(settings, stop)


def run_service(config_path: str | os.PathLike[str] | None) -> int:
    """`padimd --config FILE`: run until signalled; 0 on a clean drain, 2 on bad config."""
    try:
        settings = load_settings(Path(config_path) if config_path is not None else None)
    except ConfigError as exc:
        print(f"padimd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.logging.level, settings.logging.format, secrets=_secrets(settings))
    for advice in settings.advisories():
        log.warning("configuration: %s", advice)
    try:
        return asyncio.run(_serve_until_signalled(settings))
    except Exception:
        log.exception("padimd failed")
        return EXIT_ERROR
