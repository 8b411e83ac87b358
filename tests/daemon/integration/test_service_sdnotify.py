"""systemd notifications from the running service, over a real notify socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import SystemdNotifier
from tests.daemon.integration.support import config, make_topics, running, settings_of, wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_ready_is_announced_once_ready_and_stopping_on_stop(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path, notify_socket: socket.socket
) -> None:
    topics = make_topics(kafka_topics)
    settings = settings_of(config(kafka_bootstrap, topics, tmp_path / "snap", group_id=topics.input))
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": notify_socket.getsockname(),
                                        "WATCHDOG_USEC": "200000",
                                        "WATCHDOG_PID": str(os.getpid())})
    seen: list[str] = []

    def ready_and_pinged() -> bool:
        seen.extend(_received(notify_socket))
        return any("READY=1" in m for m in seen) and any("WATCHDOG=1" in m for m in seen)

    async with running(settings, notifier=notifier):
        await wait_for(ready_and_pinged, 30, "READY=1 and a watchdog ping")
    seen.extend(_received(notify_socket))
    ready_at = next(i for i, m in enumerate(seen) if "READY=1" in m)
    stopping_at = next(i for i, m in enumerate(seen) if "STOPPING=1" in m)
    assert ready_at < stopping_at
