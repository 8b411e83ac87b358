"""The sd_notify(3) datagram protocol, spoken directly (no libsystemd binding).

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a filesystem path or,
when it starts with ``@``, a Linux abstract socket name. Each notification is one
datagram of newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STOPPING=1``,
``WATCHDOG=1``, ``STATUS=...``). With ``WatchdogSec=`` systemd also sets
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process it expects pings from).

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op returning False.
Sending never raises into the service: a notification that cannot be delivered must
not take the detector down; the first failure is logged, later ones only at DEBUG so a
broken socket cannot flood the log at watchdog frequency.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

log = logging.getLogger(__name__)

# A send to a full notification queue blocks; bound it so a wedged service manager
# cannot stall the event loop. systemd drains its queue promptly, so this is rarely hit.
_SEND_TIMEOUT_S = 0.5


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        raw = environ.get("NOTIFY_SOCKET", "")
        # A lone "@" or a relative path is not a valid notify address; treat it as
        # absent rather than failing on every send.
        self._address: str | bytes | None
        if raw.startswith("@") and len(raw) > 1:
            # Abstract namespace: the leading NUL byte replaces the "@".
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        else:
            self._address = None
        self._watchdog_usec = _watchdog_usec_for_this_process(environ)
        self._sock: socket.socket | None = None
        self._failure_logged = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when the manager got it."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._sock.settimeout(_SEND_TIMEOUT_S)
            self._sock.sendto(state.encode(), self._address)
        except OSError as exc:
            # Drop the socket so the next call starts clean (e.g. after the manager
            # re-created its socket).
            self._close_socket()
            if not self._failure_logged:
                self._failure_logged = True
                log.warning(
                    "sd_notify to %r failed (%s); further failures are logged at DEBUG",
                    _printable(self._address),
                    exc,
                )
            else:
                log.debug("sd_notify failed again: %s", exc)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        # A newline would start a new assignment (e.g. a forged READY=1); flatten it.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the configured timeout, as systemd
        recommends, or None when the watchdog is off or meant for another process."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec_for_this_process(environ: Mapping[str, str]) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                # The watchdog belongs to another process (e.g. a wrapper that
                # exec'd us via a shell would have the right PID; a forked child
                # would not). Pinging from the wrong PID would be ignored anyway.
                return None
        except ValueError:
            return None
    return usec


def _printable(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address
