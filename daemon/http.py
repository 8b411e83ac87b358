"""A minimal asyncio HTTP server for Prometheus and Kubernetes probes.

Routes: ``/metrics`` (Prometheus text format from the injected registry), ``/livez``
(200 while ``alive()`` says the main loop turns, else 503), ``/readyz`` (200 when
``ready()`` says so, else 503).
Anything else is 404. Stdlib only: three fixed GET routes do not justify a web framework,
and one request per connection keeps the parser small.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD_BYTES = 8192  # a probe or scraper sends a few hundred bytes
REQUEST_TIMEOUT_S = 5.0  # a stalled client must not hold a connection open

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class HttpServer:
    """Serves /metrics, /livez and /readyz; use as ``async with HttpServer(...) as srv``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        port: int = 9108,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._registry = registry
        self._ready = ready
        # A wedged Kafka loop leaves the event loop answering; liveness must say so too,
        # or Kubernetes never restarts what systemd's watchdog would.
        self._alive = alive
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("HttpServer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(
            self._handle, self._host, self._requested_port, limit=MAX_REQUEST_HEAD_BYTES
        )
        log.info("http server listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body, head_only = await asyncio.wait_for(
                self._respond(reader), REQUEST_TIMEOUT_S
            )
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(header if head_only else header + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError) as exc:
            log.debug("http connection dropped: %s", exc)  # a client problem, not ours
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers are not needed by any route
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain; charset=utf-8", b"bad request\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n", False
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry), head_only
        if path == "/livez":
            if self._alive():
                return 200, "text/plain; charset=utf-8", b"ok\n", head_only
            return 503, "text/plain; charset=utf-8", b"main loop stalled\n", head_only
        if path == "/readyz":
            if self._is_ready():
                return 200, "text/plain; charset=utf-8", b"ready\n", head_only
            return 503, "text/plain; charset=utf-8", b"not ready\n", head_only
        return 404, "text/plain; charset=utf-8", b"not found\n", head_only

    def _is_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:  # a failing readiness check means "not ready", never a 500 loop
            log.exception("readiness check raised")
            return False
