"""sd_notify protocol against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import SystemdNotifier


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"padimd-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def test_path_socket_receives_exact_datagrams(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready() is True
    assert notifier.status("restored 3 cameras") is True
    assert notifier.watchdog() is True
    assert notifier.stopping() is True
    assert notifier.notify("EXTEND_TIMEOUT_USEC=5000000") is True
    got = [sock.recv(4096) for _ in range(5)]
    assert got == [
        b"READY=1",
        b"STATUS=restored 3 cameras",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"EXTEND_TIMEOUT_USEC=5000000",
    ]
    notifier.close()


def test_abstract_socket_receives_exact_datagrams(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    address, sock = abstract_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready() is True
    assert notifier.stopping() is True
    assert [sock.recv(4096), sock.recv(4096)] == [b"READY=1", b"STOPPING=1"]
    notifier.close()


def test_status_cannot_inject_extra_assignments(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    SystemdNotifier({"NOTIFY_SOCKET": address}).status("line one\nREADY=1")
    assert sock.recv(4096) == b"STATUS=line one READY=1"


def test_disabled_without_notify_socket() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


@pytest.mark.parametrize("bad", ["", "@", "relative/path.sock"])
def test_invalid_notify_socket_is_disabled(bad: str) -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": bad}).enabled


def test_send_failure_returns_false_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="daemon.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens.sock" in warnings[0].getMessage()


def test_recovers_once_the_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False
    sock = _receiver(str(path))
    try:
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()
        notifier.close()


def test_watchdog_interval_is_half_the_timeout() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier(env).watchdog_interval_s() == 15.0


def test_watchdog_honours_watchdog_pid() -> None:
    mine = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    other = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(mine).watchdog_interval_s() == 5.0
    assert SystemdNotifier(other).watchdog_interval_s() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_watchdog_off_for_missing_or_bad_usec(value: str) -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": value}).watchdog_interval_s() is None
