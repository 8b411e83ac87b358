"""daemon.http: /metrics, /livez, /readyz over real HTTP on an ephemeral port."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from daemon.http import HttpServer


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with a raw socket: status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def registry_with_counter() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("padimd_test_things", "things", registry=registry).inc(3)
    return registry


async def test_metrics_serves_the_injected_registry() -> None:
    async with HttpServer(registry_with_counter(), ready=lambda: True, host="127.0.0.1",
                          port=0) as server:
        status, headers, body = await get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"padimd_test_things_total 3.0" in body
    assert int(headers["content-length"]) == len(body)


async def test_livez_is_ok_while_the_loop_runs() -> None:
    async with HttpServer(CollectorRegistry(), ready=lambda: False, host="127.0.0.1",
                          port=0) as server:
        status, _, _ = await get(server.port, "/livez")
    assert status == 200


async def test_livez_is_503_when_the_main_loop_has_stalled() -> None:
    state = {"alive": True}
    async with HttpServer(CollectorRegistry(), ready=lambda: True, host="127.0.0.1", port=0,
                          alive=lambda: state["alive"]) as server:
        assert (await get(server.port, "/livez"))[0] == 200
        state["alive"] = False
        assert (await get(server.port, "/livez"))[0] == 503


async def test_readyz_follows_the_ready_callable() -> None:
    state = {"ready": False}
    async with HttpServer(CollectorRegistry(), ready=lambda: state["ready"], host="127.0.0.1",
                          port=0) as server:
        assert (await get(server.port, "/readyz"))[0] == 503
        state["ready"] = True
        assert (await get(server.port, "/readyz"))[0] == 200


async def test_readyz_is_503_when_the_check_raises() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    async with HttpServer(CollectorRegistry(), ready=broken, host="127.0.0.1", port=0) as server:
        assert (await get(server.port, "/readyz"))[0] == 503


async def test_unknown_path_is_404_and_post_is_405() -> None:
    async with HttpServer(CollectorRegistry(), ready=lambda: True, host="127.0.0.1",
                          port=0) as server:
        assert (await get(server.port, "/healthz"))[0] == 404
        assert (await get(server.port, "/metrics", method="POST"))[0] == 405


async def test_head_sends_no_body() -> None:
    async with HttpServer(registry_with_counter(), ready=lambda: True, host="127.0.0.1",
                          port=0) as server:
        status, headers, body = await get(server.port, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_garbage_request_is_400() -> None:
    async with HttpServer(CollectorRegistry(), ready=lambda: True, host="127.0.0.1",
                          port=0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"hello\r\n\r\n")
        response = await reader.read()
        writer.close()
    assert response.startswith(b"HTTP/1.1 400")


async def test_port_is_released_on_exit() -> None:
    async with HttpServer(CollectorRegistry(), ready=lambda: True, host="127.0.0.1",
                          port=0) as server:
        port = server.port
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    raise AssertionError(f"port {port} still accepts connections after stop")
