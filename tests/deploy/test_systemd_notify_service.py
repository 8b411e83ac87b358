"""The real `padimd` console script (what padimd.service's ExecStart runs) speaks the
Type=notify protocol to a socket standing in for systemd: STATUS while starting,
READY=1 once it owns its partition, WATCHDOG=1 at half of WATCHDOG_USEC, and
STOPPING=1 then exit 0 on SIGTERM, well within the unit's TimeoutStopSec."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.deploy_support import DEPLOY, SETUP_HINT, parse_unit, timespan_s

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

READY_TIMEOUT_S = 120.0
WATCHDOG_USEC = 1_000_000  # pings every 0.5 s: several within a short wait


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_config(bootstrap: str, topics: list[str], state: Path, port: int) -> str:
    """Smallest model that still runs the whole service (random weights, 64 px)."""
    inp, out, dead, control = (json.dumps(t) for t in topics)
    return f"""
[kafka]
bootstrap_servers = {json.dumps(bootstrap)}
input_topics = [{inp}]
output_topic = {out}
dead_letter_topic = {dead}
control_topic = {control}
group_id = {inp}
session_timeout_ms = 6000

[model]
size = [64, 64]
weights = "none"
num_embeddings = 8
device = "cpu"

[snapshots]
dir = {json.dumps(str(state / "snapshots"))}

[http]
host = "127.0.0.1"
port = {port}
"""


class NotifySocket:
    """The datagram socket systemd would listen on; records every notification."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def _drain(self) -> None:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return

    async def wait_for(self, message: str, timeout_s: float, proc: subprocess.Popen[bytes],
                       log: Path) -> float:
        """Seconds until `message` arrived (it may already have)."""
        started = time.monotonic()
        while message not in self.received:
            await asyncio.to_thread(self._drain)
            if message in self.received:
                break
            if proc.poll() is not None and message not in self.received:
                pytest.fail(f"padimd exited {proc.returncode} before {message!r}; got "
                            f"{self.received}\n{log.read_text(errors='replace')}")
            if time.monotonic() - started > timeout_s:
                pytest.fail(f"no {message!r} within {timeout_s:.0f} s; got {self.received}\n"
                            f"{log.read_text(errors='replace')}")
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


async def test_padimd_speaks_type_notify(kafka_bootstrap: str, kafka_topics, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "padimd"
    if not exe.is_file():
        pytest.fail(f"{exe} missing (the package is not installed): {SETUP_HINT}", pytrace=False)
    topics = kafka_topics(1, 1, 1, 1)
    config = tmp_path / "config.toml"
    config.write_text(tiny_config(kafka_bootstrap, topics, tmp_path, free_port()))
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADIMD_", "NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    log = tmp_path / "padimd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "--config", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        await notify.wait_for("READY=1", READY_TIMEOUT_S, proc, log)
        before_ready = notify.received[: notify.received.index("READY=1")]
        assert any(m.startswith("STATUS=") for m in before_ready), notify.received

        pings_before = notify.received.count("WATCHDOG=1")
        await asyncio.sleep(2.5 * WATCHDOG_USEC / 1e6)
        await asyncio.to_thread(notify._drain)
        assert notify.received.count("WATCHDOG=1") - pings_before >= 2, notify.received

        timeout_stop_s = timespan_s(
            parse_unit((DEPLOY / "systemd" / "padimd.service").read_text())["Service"]["TimeoutStopSec"][0]
        )
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await notify.wait_for("STOPPING=1", timeout_stop_s, proc, log)
        exit_code = await asyncio.to_thread(proc.wait, timeout_stop_s)
        elapsed = time.monotonic() - started
        assert exit_code == 0, log.read_text(errors="replace")
        assert elapsed < timeout_stop_s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        notify.close()
