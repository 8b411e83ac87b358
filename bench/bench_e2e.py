"""End-to-end benchmark of padimd through a real Kafka broker.

    .venv/bin/python bench/bench_e2e.py            # efficientnet_lite0 at 224 px, 1 and 8 cameras
    .venv/bin/python bench/bench_e2e.py --quick    # 128 px, fewer frames: a couple of minutes

For each camera count, padimd runs as a subprocess (`python -m daemon --config ...`, as
deployed) against the broker (`--bootstrap`, `$PADIMD_KAFKA_BOOTSTRAP`, or a fresh one
from scripts/kafka-broker.sh that is stopped afterwards). Each camera first learns
`--warmup` labelled normal frames and scores one frame (so the inverse covariances are
cached), then:

- throughput: `--frames` unlabelled frames per camera are produced at once and the
  time from the first send to the last event received gives sustained frames/s;
- latency: as many frames again, paced at `--load` x that throughput, give p50/p95/p99
  of capture time (set at send) to event received from the output topic;
- memory: the daemon's RSS after the warm-up minus its RSS when ready (no camera yet),
  per camera, beside the bytes of one camera's model state (`PaDiM.state_bytes()`).

The bare library rate is `PaDiM.score` on batches of `--batch` frames in this process,
same backbone, size and embeddings, measured right before and after each scenario: the
table prints the end-to-end rate as a fraction of their mean. Results also go to
bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from padim import PaDiM  # noqa: E402
from padim.synthetic import TEXTURES, normal_crops  # noqa: E402

BROKER_SCRIPT = REPO_ROOT / "scripts" / "kafka-broker.sh"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
JPEG_QUALITY = 90
READY_TIMEOUT_S = 600.0
EVENTS_TIMEOUT_S = 1800.0
TOPIC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    """What one benchmark run measures."""

    size: int
    num_embeddings: int
    warmup: int  # labelled normal frames per camera before measuring
    frames: int  # unlabelled frames per camera, per phase
    batch: int  # daemon scoring.max_batch_size and the bare-rate batch
    load: float  # latency phase send rate as a fraction of the measured throughput
    cameras: tuple[int, ...]


@dataclass
class Result:
    """One camera count's figures."""

    cameras: int
    frames_per_s: float
    ratio_to_bare: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    paced_rate_per_s: float
    rss_per_camera_bytes: float
    bare_before_after: tuple[float, float]


# --- frames -----------------------------------------------------------------------


def encode_jpeg(image: torch.Tensor) -> bytes:
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def camera_frames(camera: int, n: int, size: int, seed: int) -> list[bytes]:
    """`n` JPEG frames of camera `camera` (cameras cycle through the texture photos)."""
    texture = TEXTURES[camera % len(TEXTURES)]
    return [encode_jpeg(img) for img in normal_crops(texture, n, size, seed=seed * 1000 + camera)]


# --- the bare library rate -----------------------------------------------------------


class BareScorer:
    """`PaDiM.score` alone, on batches of `cfg.batch`: the library's rate on this machine.

    Runs on a dedicated thread, as the daemon's model worker calls the library: on a
    loaded machine torch's intra-op threading behaves differently on the main thread,
    and the comparison must not reward or punish the daemon for that. The model is
    built once; `rate()` is measured right before and after each scenario, because a
    shared machine's load can change several-fold within minutes.
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare")
        self.state_bytes = self._worker.submit(self._build).result()

    def _build(self) -> int:
        cfg = self._cfg
        self._model = PaDiM(size=(cfg.size, cfg.size), num_embeddings=cfg.num_embeddings,
                            device="cpu")
        self._model.train_one_batch(normal_crops("brick", max(cfg.warmup, 2), cfg.size, seed=1))
        self._test = normal_crops("brick", cfg.batch, cfg.size, seed=2)
        self._model.score(self._test[:2])  # computes and caches the inverse covariances
        return self._model.state_bytes()

    def rate(self, frames: int) -> float:
        """Frames/s over at least `frames` frames (whole batches, two at least)."""
        return self._worker.submit(self._rate, frames).result()

    def _rate(self, frames: int) -> float:
        rounds = max(2, -(-frames // self._cfg.batch))
        started = time.perf_counter()
        for _ in range(rounds):
            self._model.score(self._test)
        return rounds * self._cfg.batch / (time.perf_counter() - started)

    def close(self) -> None:
        self._worker.shutdown()


# --- broker ---------------------------------------------------------------------------


class Broker:
    """The given bootstrap address, or a fresh local broker that `close()` stops."""

    def __init__(self, bootstrap: str | None) -> None:
        self._dir: Path | None = None
        if bootstrap:
            self.bootstrap = bootstrap
            return
        self._dir = REPO_ROOT / ".kafka" / "bench"
        done = subprocess.run(["bash", str(BROKER_SCRIPT), "start", "--dir", str(self._dir)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench: could not start a Kafka broker:\n{done.stderr}")
        self.bootstrap = done.stdout.strip().splitlines()[-1]

    def close(self) -> None:
        if self._dir is not None:
            subprocess.run(["bash", str(BROKER_SCRIPT), "stop", "--dir", str(self._dir)],
                           capture_output=True, check=False)


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(name, n, 1, topic_configs={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)})
            for name, n in partitions.items()
        ])
    finally:
        await admin.close()


# --- the daemon -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_config(cfg: Config, bootstrap: str, topics: dict[str, str], state: Path,
                  port: int) -> str:
    # Threshold fixed and high: the benchmark measures the pipeline, not calibration,
    # and needs no held-out normal frames before scoring.
    return f"""
[kafka]
bootstrap_servers = "{bootstrap}"
input_topics = ["{topics['input']}"]
output_topic = "{topics['output']}"
dead_letter_topic = "{topics['dead_letter']}"
control_topic = "{topics['control']}"
group_id = "{topics['input']}"
max_message_bytes = 2097152
[model]
backbone = "efficientnet_lite0"
weights = "imagenet"
size = [{cfg.size}, {cfg.size}]
num_embeddings = {cfg.num_embeddings}
device = "cpu"
min_frames_before_scoring = {cfg.warmup}
[threshold]
mode = "fixed"
fixed_value = 1e9
[scoring]
max_batch_size = {cfg.batch}
max_batch_wait_ms = 50
emit_all_frames = true
[snapshots]
dir = "{state / 'snapshots'}"
interval_s = 60.0
[http]
host = "127.0.0.1"
port = {port}
[logging]
level = "WARNING"
"""


class Daemon:
    """`python -m daemon --config FILE` with /readyz polling and RSS readings."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("PADIMD_")}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(config_path)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: padimd exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise SystemExit("bench: padimd was not ready in time")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- one scenario -------------------------------------------------------------------------


class Stream:
    """Producer of camera frames and reader of their events, matched by event id."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                         max_request_size=2 * 1024 * 1024, linger_ms=5)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                         enable_auto_commit=False)
        self.received: dict[str, float] = {}  # event id -> receive time (unix s)
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        await self.producer.start()
        await self.consumer.start()
        tp = KafkaTopicPartition(self._topics["output"], 0)
        self.consumer.assign([tp])
        await self.consumer.seek_to_beginning(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for record in (r for rs in batches.values() for r in rs):
                if dict(record.headers).get("type") == b"event":
                    self.received.setdefault(json.loads(record.value)["event_id"], now)

    async def send(self, camera: int, value: bytes, label: str | None) -> tuple[asyncio.Future, float]:
        capture = time.time()
        headers = [("capture_ts", f"{capture:.6f}".encode())]
        if label:
            headers.append(("label", label.encode()))
        ack = await self.producer.send(self._topics["input"], value, key=f"cam-{camera}".encode(),
                                       partition=camera, headers=headers)
        return ack, capture

    async def ids(self, acks: list[tuple[asyncio.Future, float]]) -> list[tuple[str, float]]:
        out = []
        for ack, capture in acks:
            meta = await ack
            out.append((f"{meta.topic}:{meta.partition}:{meta.offset}", capture))
        return out

    async def wait_events(self, ids: list[str]) -> None:
        deadline = time.monotonic() + EVENTS_TIMEOUT_S
        while not all(i in self.received for i in ids):
            if time.monotonic() > deadline:
                missing = sum(1 for i in ids if i not in self.received)
                raise SystemExit(f"bench: {missing} events missing after {EVENTS_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)


async def run_scenario(cfg: Config, bootstrap: str, cameras: int, bare: BareScorer,
                       work: Path) -> Result:
    tag = uuid.uuid4().hex[:8]
    topics = {"input": f"bench-{tag}-frames", "output": f"bench-{tag}-events",
              "dead_letter": f"bench-{tag}-dead", "control": f"bench-{tag}-control"}
    await create_topics(bootstrap, {topics["input"]: cameras, topics["output"]: 1,
                                    topics["dead_letter"]: 1, topics["control"]: 1})
    print(f"bench: {cameras} camera(s): preparing frames", flush=True)
    warm = [camera_frames(c, cfg.warmup + 1, cfg.size, seed=1) for c in range(cameras)]
    test = [camera_frames(c, cfg.frames, cfg.size, seed=2) for c in range(cameras)]
    port = free_port()
    state = work / f"cams{cameras}"
    state.mkdir()
    config_path = state / "padimd.toml"
    config_path.write_text(daemon_config(cfg, bootstrap, topics, state, port))
    bare_before = await asyncio.to_thread(bare.rate, cfg.frames * cameras)
    daemon = Daemon(config_path, port, state / "padimd.log")
    try:
        daemon.wait_ready()
        rss_ready = daemon.rss_bytes()
        async with Stream(bootstrap, topics) as stream:
            print(f"bench: {cameras} camera(s): warm-up ({cfg.warmup} normal frames each)", flush=True)
            for c in range(cameras):
                for value in warm[c][: cfg.warmup]:
                    await stream.send(c, value, "normal")
            first = [await stream.send(c, warm[c][-1], None) for c in range(cameras)]
            await stream.wait_events([i for i, _ in await stream.ids(first)])
            rss_warm = daemon.rss_bytes()

            print(f"bench: {cameras} camera(s): throughput ({cfg.frames} frames each)", flush=True)
            started = time.time()
            acks = [await stream.send(c, test[c][n], None)
                    for n in range(cfg.frames) for c in range(cameras)]
            sent = await stream.ids(acks)
            await stream.wait_events([i for i, _ in sent])
            fps = len(sent) / (max(stream.received[i] for i, _ in sent) - started)

            rate = cfg.load * fps
            print(f"bench: {cameras} camera(s): latency at {rate:.2f} frames/s", flush=True)
            acks = []
            t0 = time.monotonic()
            for k, (n, c) in enumerate((n, c) for n in range(cfg.frames) for c in range(cameras)):
                await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
                acks.append(await stream.send(c, test[c][n], None))
            paced = await stream.ids(acks)
            await stream.wait_events([i for i, _ in paced])
            latency = np.array([stream.received[i] - capture for i, capture in paced])
    finally:
        daemon.stop()
    bare_after = await asyncio.to_thread(bare.rate, cfg.frames * cameras)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    return Result(cameras=cameras, frames_per_s=fps,
                  ratio_to_bare=fps / ((bare_before + bare_after) / 2),
                  latency_p50_s=float(p50), latency_p95_s=float(p95), latency_p99_s=float(p99),
                  paced_rate_per_s=rate, rss_per_camera_bytes=(rss_warm - rss_ready) / cameras,
                  bare_before_after=(bare_before, bare_after))


# --- report -------------------------------------------------------------------------------


def print_table(cfg: Config, state_bytes: int, results: list[Result]) -> None:
    mib = 1024 * 1024
    print()
    print(f"padimd end-to-end: efficientnet_lite0 (ImageNet) {cfg.size}x{cfg.size}, "
          f"d={cfg.num_embeddings}, batch {cfg.batch}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"model state per camera {state_bytes / mib:.1f} MiB; 'bare' = PaDiM.score alone, "
          "measured right before and after each row")
    header = (f"{'cameras':>7} {'frames/s':>9} {'bare/s':>13} {'x bare':>7} {'paced/s':>8} "
              f"{'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'RSS/cam MiB':>12} {'RSS/state':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        bare = f"{r.bare_before_after[0]:.1f}/{r.bare_before_after[1]:.1f}"
        print(f"{r.cameras:>7} {r.frames_per_s:>9.2f} {bare:>13} {r.ratio_to_bare:>7.2f} "
              f"{r.paced_rate_per_s:>8.2f} {r.latency_p50_s:>6.2f} {r.latency_p95_s:>6.2f} "
              f"{r.latency_p99_s:>6.2f} {r.rss_per_camera_bytes / mib:>12.1f} "
              f"{r.rss_per_camera_bytes / state_bytes:>9.2f}")


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="128 px, d=50, fewer frames (a couple of minutes on 2 cores)")
    parser.add_argument("--bootstrap", default=os.environ.get("PADIMD_KAFKA_BOOTSTRAP"),
                        help="broker host:port (default: start a local one)")
    parser.add_argument("--size", type=int)
    parser.add_argument("--num-embeddings", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--frames", type=int, help="unlabelled frames per camera per phase")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--cameras", default="1,8")
    args = parser.parse_args(argv)
    quick = args.quick
    cfg = Config(
        size=args.size or (128 if quick else 224),
        num_embeddings=args.num_embeddings or (50 if quick else 100),
        warmup=args.warmup or (4 if quick else 8),
        frames=args.frames or (16 if quick else 32),
        batch=args.batch,
        load=args.load,
        cameras=tuple(int(c) for c in args.cameras.split(",")),
    )
    return cfg, args


async def run(cfg: Config, bootstrap: str, bare: BareScorer) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="padimd-bench-") as tmp:
        return [await run_scenario(cfg, bootstrap, n, bare, Path(tmp)) for n in cfg.cameras]


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    print(f"bench: building the bare PaDiM ({cfg.size} px, d={cfg.num_embeddings})", flush=True)
    bare = BareScorer(cfg)
    broker = Broker(args.bootstrap)
    try:
        results = asyncio.run(run(cfg, broker.bootstrap, bare))
    finally:
        broker.close()
        bare.close()
    print_table(cfg, bare.state_bytes, results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"e2e-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({
        "config": asdict(cfg), "state_bytes": bare.state_bytes,
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__},
        "results": [asdict(r) for r in results]}, indent=2))
    print(f"\nbench: results written to {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
