"""The demo's camera fleet: streams texture frames through a running padimd and reads back.

    python -m daemon.demo topics --config config.example.toml
    python -m daemon.demo wait-ready --url http://127.0.0.1:9108/readyz --pid PID
    python -m daemon.demo run --config config.example.toml [--train N] [--test N]

`run` plays one camera per texture photograph (brick, grass, gravel from scikit-image,
see `padim.synthetic`): first normal frames labelled `normal` (the daemon learns them
and calibrates each camera's threshold), then unlabelled test frames, half normal and
half with a pasted defect (scratch, blob). Like a fixed camera watching one surface, all
frames are random crops of the same whole photograph (different seeds for training and
test frames). It reads the daemon's events back, matches
them to what it sent by event id (`topic:partition:offset`) and prints each decision
and a summary. The names of the topics come from the same settings the daemon reads
(file + `PADIMD_*` environment), so both sides always agree.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from PIL import Image

from daemon.settings import ConfigError, Settings, load_settings
from padim.synthetic import defective_crops, normal_crops

CAMERAS: dict[str, str] = {"cam-brick": "brick", "cam-grass": "grass", "cam-gravel": "gravel"}
DEFECTS: tuple[str, ...] = ("scratch", "blob")
FRAME_PX = 224
JPEG_QUALITY = 92
INPUT_PARTITIONS = 3
EXIT_FAILED = 1


@dataclass(frozen=True, slots=True)
class SentFrame:
    """What the demo knows about one test frame it sent (the ground truth)."""

    camera: str
    truth: str  # "normal" or a defect kind
    sent_at_s: float


def encode_jpeg(image: torch.Tensor) -> bytes:
    """float (3, H, W) RGB in [0, 1] → JPEG bytes, as a camera would send them."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def frame_headers(label: str | None, capture_ts: float) -> list[tuple[str, bytes]]:
    """Record headers of one frame: capture time, content type, optional label."""
    headers = [("capture_ts", f"{capture_ts:.6f}".encode()), ("content-type", b"image/jpeg")]
    if label is not None:
        headers.append(("label", label.encode()))
    return headers


def event_id(topic: str, partition: int, offset: int) -> str:
    """The id the daemon gives the event of a frame (docs/daemon-design.md)."""
    return f"{topic}:{partition}:{offset}"


async def create_topics(settings: Settings, partitions: int = INPUT_PARTITIONS) -> list[str]:
    """Create the input, output, dead-letter and control topics; existing ones are kept."""
    k = settings.kafka
    wanted = [NewTopic(t, partitions, 1) for t in k.input_topics]
    singles = (k.output_topic, k.dead_letter_topic, k.control_topic)
    wanted += [NewTopic(t, 1, 1) for t in singles if t]
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [t for t in wanted if t.name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another run created them between list and create
        return [t.name for t in new]
    finally:
        await admin.close()


def wait_ready(url: str, pid: int | None, timeout_s: float) -> bool:
    """Poll `url` until it answers 200; False on timeout or when `pid` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            print(f"demo: padimd (pid {pid}) exited before it was ready", file=sys.stderr)
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening or not ready yet (503 raises HTTPError, a URLError)
        time.sleep(0.5)
    print(f"demo: {url} not ready after {timeout_s:.0f} s", file=sys.stderr)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by the shell) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Fleet:
    """The demo's cameras: a producer of frames and a reader of the daemon's events."""

    def __init__(self, settings: Settings, train: int, test: int, seed: int) -> None:
        self._settings = settings
        self._train = train
        self._test = test
        self._seed = seed
        self._topic = settings.kafka.input_topics[0]
        self.sent: dict[str, SentFrame] = {}

    async def run(self, timeout_s: float) -> int:
        k = self._settings.kafka
        producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, acks="all")
        events = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, group_id=None,
                                  enable_auto_commit=False)
        await producer.start()
        await events.start()
        try:
            # Pin the event reader to the end of the output topic *before* sending, so
            # every event of this run is read and none of an earlier run.
            out_tp = KafkaTopicPartition(k.output_topic, 0)
            events.assign([out_tp])
            await events.seek_to_end(out_tp)
            await events.position(out_tp)
            await self._send_training(producer)
            await self._send_tests(producer)
            received = await self._read_events(events, timeout_s)
        finally:
            await events.stop()
            await producer.stop()
        return self._summarise(received)

    async def _send_training(self, producer: AIOKafkaProducer) -> None:
        print(f"demo: sending {self._train} normal frames (label=normal) per camera "
              f"for {', '.join(CAMERAS)}")
        frames = {
            camera: normal_crops(tex, self._train, FRAME_PX, seed=self._seed + i, region="all")
            for i, (camera, tex) in enumerate(CAMERAS.items())
        }
        # Round-robin across cameras, as interleaved live streams would arrive.
        for n in range(self._train):
            for camera in CAMERAS:
                await producer.send(self._topic, encode_jpeg(frames[camera][n]),
                                    key=camera.encode(),
                                    headers=frame_headers("normal", time.time()))
        await producer.flush()

    async def _send_tests(self, producer: AIOKafkaProducer) -> None:
        n_defect = self._test // 2
        n_normal = self._test - n_defect
        print(f"demo: sending {self._test} unlabelled test frames per camera "
              f"({n_normal} normal, {n_defect} with a {'/'.join(DEFECTS)} defect)")
        plan: list[tuple[str, str, torch.Tensor]] = []
        for i, (camera, tex) in enumerate(CAMERAS.items()):
            normals = normal_crops(tex, n_normal, FRAME_PX, seed=self._seed + 100 + i,
                                   region="all")
            defects, _, kinds = defective_crops(tex, n_defect, FRAME_PX,
                                                seed=self._seed + 200 + i, kinds=DEFECTS,
                                                region="all")
            plan += [(camera, "normal", img) for img in normals]
            plan += [(camera, kind, img) for img, kind in zip(defects, kinds, strict=True)]
        random.Random(self._seed).shuffle(plan)
        acks = []
        for camera, truth, image in plan:
            sent_at = time.time()
            ack = await producer.send(self._topic, encode_jpeg(image), key=camera.encode(),
                                      headers=frame_headers(None, sent_at))
            acks.append((ack, SentFrame(camera, truth, sent_at)))
        for ack, frame in acks:
            meta = await ack
            self.sent[event_id(meta.topic, meta.partition, meta.offset)] = frame

    async def _read_events(self, events: AIOKafkaConsumer, timeout_s: float) -> dict[str, dict]:
        print(f"demo: waiting for the events of {len(self.sent)} test frames")
        print(f"{'camera':<11} {'truth':<8} {'score':>8} {'threshold':>9}  "
              f"{'anomaly':<7} regions")
        received: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(received) < len(self.sent) and time.monotonic() < deadline:
            batches = await events.getmany(timeout_ms=500)
            for record in (r for rs in batches.values() for r in rs):
                event = _parse_event(record.value)
                if event is None or event.get("event_id") not in self.sent:
                    continue  # control acks, or events of frames we did not send
                if event["event_id"] not in received:
                    received[event["event_id"]] = event
                    _print_event(event, self.sent[event["event_id"]])
        return received

    def _summarise(self, received: dict[str, dict]) -> int:
        def flagged(ids: list[str]) -> int:
            return sum(1 for i in ids if received.get(i, {}).get("is_anomaly") is True)

        def of(camera: str | None, defective: bool) -> list[str]:
            return [i for i, f in self.sent.items()
                    if (f.truth != "normal") == defective and camera in (None, f.camera)]

        missing = len(self.sent) - len(received)
        print()
        print(f"summary: defects detected {flagged(of(None, True))}/{len(of(None, True))}, "
              f"normals flagged {flagged(of(None, False))}/{len(of(None, False))}, "
              f"events missing {missing}/{len(self.sent)}")
        for camera in CAMERAS:
            defects, normals = of(camera, True), of(camera, False)
            print(f"  {camera:<11} defects {flagged(defects)}/{len(defects)}"
                  f"  false alarms {flagged(normals)}/{len(normals)}")
        return 0 if missing == 0 else EXIT_FAILED


def _parse_event(value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        event = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return event if isinstance(event, dict) else None


def _print_event(event: dict, frame: SentFrame) -> None:
    regions = [r.get("box") for r in event.get("regions") or [] if isinstance(r, dict)]
    boxes = " ".join(f"[{b[0]},{b[1]}-{b[2]},{b[3]}]" for b in regions[:3] if b and len(b) == 4)
    more = f" +{len(regions) - 3}" if len(regions) > 3 else ""
    threshold = event.get("threshold")
    shown_threshold = f"{threshold:9.2f}" if isinstance(threshold, (int, float)) else f"{'-':>9}"
    score = event.get("score")
    shown_score = f"{score:8.2f}" if isinstance(score, (int, float)) else f"{'-':>8}"
    print(f"{event.get('camera', '?'):<11} {frame.truth:<8} {shown_score} {shown_threshold}  "
          f"{'YES' if event.get('is_anomaly') else 'no':<7} {boxes}{more}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m daemon.demo",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    topics = commands.add_parser("topics", help="create the topics of the config")
    topics.add_argument("--config", required=True)
    ready = commands.add_parser("wait-ready", help="wait for padimd's /readyz")
    ready.add_argument("--url", required=True)
    ready.add_argument("--pid", type=int)
    ready.add_argument("--timeout", type=float, default=300.0)
    run = commands.add_parser("run", help="stream the cameras and print the events")
    run.add_argument("--config", required=True)
    run.add_argument("--train", type=int, default=60, help="normal frames per camera")
    run.add_argument("--test", type=int, default=10, help="test frames per camera")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--timeout", type=float, default=600.0,
                     help="seconds to wait for all events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m daemon.demo`; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "wait-ready":
        return 0 if wait_ready(args.url, args.pid, args.timeout) else EXIT_FAILED
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"demo: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "topics":
        created = asyncio.run(create_topics(settings))
        print(f"demo: topics ready ({', '.join(created) if created else 'all existed'})")
        return 0
    fleet = Fleet(settings, train=args.train, test=args.test, seed=args.seed)
    return asyncio.run(fleet.run(args.timeout))


if __name__ == "__main__":
    sys.exit(main())
