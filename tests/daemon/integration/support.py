"""Helpers of the Kafka integration tests: a tiny config, frames, producing, reading,
and running padimd in-process (`InProcessService`) or as a subprocess (`DaemonProcess`).

Every test talks to the real broker of the `kafka_bootstrap` fixture; the model is the
smallest that still exercises everything (64x64 frames, random backbone weights, 8
embedding channels), so a frame costs milliseconds on a shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import Service
from daemon.sdnotify import SystemdNotifier
from daemon.settings import Settings
from padim.synthetic import defective_crops, normal_crops

REPO_ROOT = Path(__file__).resolve().parents[3]
FRAME_PX = 64
MIN_FRAMES_BEFORE_SCORING = 4
MIN_NORMAL_SCORES = 2
READY_TIMEOUT_S = 90.0
READ_TIMEOUT_S = 60.0

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Topics:
    """The four topics one padimd instance uses."""

    input: str
    output: str
    dead_letter: str
    control: str


def make_topics(kafka_topics: Callable[..., list[str]], input_partitions: int = 1) -> Topics:
    """Fresh topics from the `kafka_topics` fixture."""
    names = kafka_topics(input_partitions, 1, 1, 1)
    return Topics(*names)


def config(
    bootstrap: str,
    topics: Topics,
    snapshot_dir: Path,
    *,
    group_id: str,
    http_port: int = 0,
    snapshot_interval_s: float = 1.0,
    **sections: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """A tiny-model configuration as plain data (for `Settings(**cfg)` or a TOML file).

    Keyword sections are merged over the defaults, e.g. `scoring={"max_batch_size": 2}`.
    """
    cfg: dict[str, dict[str, Any]] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "input_topics": [topics.input],
            "output_topic": topics.output,
            "dead_letter_topic": topics.dead_letter,
            "control_topic": topics.control,
            "group_id": group_id,
            "client_id": f"padimd-test-{group_id}",
            "max_message_bytes": 1024 * 1024,
            # A dead instance's partitions move after this; keep tests short.
            "session_timeout_ms": 6000,
        },
        "model": {
            "size": [FRAME_PX, FRAME_PX],
            "weights": "none",
            "num_embeddings": 8,
            "device": "cpu",
            "min_frames_before_scoring": MIN_FRAMES_BEFORE_SCORING,
        },
        "threshold": {"min_normal_scores": MIN_NORMAL_SCORES, "window": 50, "quantile": 0.99},
        "scoring": {"max_batch_size": 8, "max_batch_wait_ms": 20, "emit_all_frames": True},
        "snapshots": {"dir": str(snapshot_dir), "interval_s": snapshot_interval_s},
        "http": {"host": "127.0.0.1", "port": http_port},
        "shutdown": {"grace_s": 30.0},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def settings_of(cfg: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Validated settings from `config(...)` data."""
    return Settings(**{name: dict(values) for name, values in cfg.items()})


def to_toml(cfg: Mapping[str, Mapping[str, Any]]) -> str:
    """Serialise `config(...)` data (str, int, float, bool, lists of them) as TOML."""
    lines: list[str] = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- frames ---------------------------------------------------------------------


def _png(image: Any) -> bytes:
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(out, format="PNG")
    return out.getvalue()


@functools.cache
def normal_frames(n: int, seed: int = 0, texture: str = "brick") -> tuple[bytes, ...]:
    """`n` PNG crops (FRAME_PX square) of a real texture photograph."""
    return tuple(_png(img) for img in normal_crops(texture, n, FRAME_PX, seed=seed))


@functools.cache
def defective_frames(n: int, seed: int = 0, texture: str = "brick") -> tuple[bytes, ...]:
    """`n` PNG crops of the same texture, each with a pasted scratch or blob."""
    images, _, _ = defective_crops(texture, n, FRAME_PX, seed=seed, kinds=("scratch", "blob"))
    return tuple(_png(img) for img in images)


def headers(label: str | None = None, capture_ts: float | None = None) -> Headers:
    """Frame headers: capture time (now by default) and an optional label."""
    out = [("capture_ts", f"{time.time() if capture_ts is None else capture_ts:.6f}".encode())]
    if label is not None:
        out.append(("label", label.encode()))
    return out


@dataclass(frozen=True)
class Record:
    """One record to produce."""

    value: bytes | None
    key: bytes | None
    headers: Headers
    partition: int | None = None


def frame(value: bytes, camera: str, label: str | None = None, partition: int | None = None) -> Record:
    """A camera frame record keyed by camera id."""
    return Record(value, camera.encode(), headers(label), partition)


# --- Kafka I/O ------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> list[RecordMetadata]:
    """Produce `records` in order and return their acknowledged metadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, r.value, key=r.key, headers=r.headers,
                                partition=r.partition)
            for r in records
        ]
        return [await ack for ack in acks]
    finally:
        await producer.stop()


async def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout_s: float = READ_TIMEOUT_S,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the beginning until `done(records)`; fail after `timeout_s`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([KafkaTopicPartition(topic, p) for p in sorted(partitions)])
        deadline = time.monotonic() + timeout_s
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: condition not met after {timeout_s:.0f} s; read "
                    f"{len(records)} records: {[_brief(r) for r in records[-5:]]}"
                )
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The offset `group` has committed for one partition (None: nothing yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(KafkaTopicPartition(topic, partition))
    finally:
        await consumer.stop()


def _brief(record: ConsumerRecord[bytes, bytes]) -> str:
    value = record.value or b""
    return value[:120].decode("utf-8", errors="replace")


def events_of(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    """The JSON events among output records (control acks left out)."""
    return [
        json.loads(r.value)
        for r in records
        if r.value is not None and dict(r.headers).get("type") == b"event"
    ]


def event_ids_cover(ids: set[str]) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    """A `read_until` condition: an event was read for every id in `ids`."""
    return lambda records: ids <= {e["event_id"] for e in events_of(records)}


def ids_of(acks: Sequence[RecordMetadata]) -> list[str]:
    """The event ids the daemon gives the frames of these produce acks."""
    return [f"{a.topic}:{a.partition}:{a.offset}" for a in acks]


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 50 ms; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


# --- padimd in-process ----------------------------------------------------------


class InProcessService:
    """A `Service` running in the test's event loop; `exit_code` once stopped."""

    def __init__(self, service: Service, stop: asyncio.Event) -> None:
        self.service = service
        self.stop = stop
        self.exit_code: int | None = None

    def sample(self, name: str, **labels: str) -> float | None:
        """Current value of one metric sample (None when it has none)."""
        return self.service.registry.get_sample_value(name, labels)


@asynccontextmanager
async def running(settings: Settings, ready_timeout_s: float = READY_TIMEOUT_S,
                  wait_ready: bool = True,
                  notifier: SystemdNotifier | None = None) -> AsyncIterator[InProcessService]:
    """Run padimd in-process until the block ends, then stop it as SIGTERM would."""
    stop = asyncio.Event()
    service = Service(settings, registry=CollectorRegistry(),
                      notifier=notifier if notifier is not None else SystemdNotifier(environ={}))
    handle = InProcessService(service, stop)
    async with service:
        task = asyncio.create_task(service.run(stop))
        try:
            if wait_ready:
                await wait_for(lambda: service.ready() or task.done(), ready_timeout_s,
                               "the service to become ready")
                if task.done():
                    raise AssertionError(f"the service exited early with {task.result()}")
            yield handle
        finally:
            stop.set()
            handle.exit_code = await asyncio.wait_for(task, settings.shutdown.grace_s + 10)


# --- padimd as a subprocess -------------------------------------------------------


class DaemonProcess:
    """`python -m daemon --config FILE` with its log in a file; for kill -9 tests."""

    def __init__(self, config_path: Path, http_port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.http_port = http_port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PADIMD_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(self.config_path)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(f"padimd exited with {self._proc.returncode}:\n{self.log()}")
            try:
                if (await asyncio.to_thread(self._get, "/readyz"))[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # HTTP server not up yet
            if time.monotonic() > deadline:
                raise AssertionError(f"padimd not ready after {timeout_s:.0f} s:\n{self.log()}")
            await asyncio.sleep(0.2)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics as {(name, sorted labels): value}."""
        status, text = await asyncio.to_thread(self._get, "/metrics")
        assert status == 200, f"/metrics answered {status}"
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def wait_sample(self, name: str, labels: Mapping[str, str],
                          ok: Callable[[float], bool], timeout_s: float = 60.0) -> float:
        """Scrape /metrics until sample `name{labels}` (0 while absent) satisfies `ok`."""
        key = (name, tuple(sorted(labels.items())))
        deadline = time.monotonic() + timeout_s
        while True:
            value = (await self.metrics()).get(key, 0.0)
            if ok(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{dict(labels)} = {value} after {timeout_s:.0f} s:\n"
                                     f"{self.log()}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no drain, no snapshot, no commit."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        return self._proc.wait(timeout=timeout_s)

    def ensure_stopped(self) -> None:
        """Never leave a daemon behind, whatever the test did."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
