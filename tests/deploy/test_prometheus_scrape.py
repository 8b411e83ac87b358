"""A real Prometheus server (Debian package `prometheus`) scrapes the daemon's real
/metrics endpoint (daemon.http.HttpServer serving daemon.metrics.Metrics) with the
shipped rule files loaded; the test reads the series back through the HTTP API and
checks that every rule evaluates without error and that an alert goes pending."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.http import HttpServer
from daemon.metrics import Metrics
from tests.deploy.deploy_support import DEPLOY, require_tool

pytestmark = pytest.mark.slow

WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, target: str) -> Path:
    """The shipped prometheus.yml and rule files, pointed at `target` and sped up."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    for name in config["rule_files"]:
        (directory / name).write_text((DEPLOY / "prometheus" / name).read_text())
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    async def get(self, path: str, **params: str) -> Any:
        # In a thread: the event loop must keep serving the scrapes meanwhile.
        return await asyncio.to_thread(self._get, path, **params)

    async def wait_for(self, what: str, probe: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await probe()
            except OSError as exc:  # not listening yet
                last = exc
            else:
                if last:
                    return last
            await asyncio.sleep(0.5)
        pytest.fail(f"Prometheus: {what} within {WAIT_S:.0f} s; last answer: {last!r}")


async def test_prometheus_scrapes_the_daemon_metrics(tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    registry = CollectorRegistry()
    metrics = Metrics(registry, backbone="efficientnet_lite0")
    metrics.frames_scored.labels(camera="cam-1").inc(7)
    metrics.anomaly_score.labels(camera="cam-1").observe(3.2)
    metrics.assigned_partitions.set(2)

    async with HttpServer(registry, ready=lambda: True, host="127.0.0.1", port=0) as server:
        target = f"127.0.0.1:{server.port}"
        config = write_config(tmp_path, target)
        web = f"127.0.0.1:{free_port()}"
        log_path = tmp_path / "prometheus.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [prometheus, f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address={web}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        api = PrometheusApi(f"http://{web}")
        try:
            async def scraped() -> list[dict]:
                if proc.poll() is not None:
                    pytest.fail(f"prometheus exited {proc.returncode}:\n{log_path.read_text()}")
                return (await api.get("/api/v1/query",
                                      query='padimd_frames_scored_total{camera="cam-1"}'))["result"]

            (series,) = await api.wait_for("a padimd_ series scraped", scraped)
            assert series["metric"]["job"] == "padimd"
            assert series["metric"]["instance"] == target
            assert float(series["value"][1]) == 7.0

            (up,) = (await api.get("/api/v1/query", query='up{job="padimd"}'))["result"]
            assert up["value"][1] == "1"
            (build,) = (await api.get("/api/v1/query", query="padimd_build_info"))["result"]
            assert build["metric"]["backbone"] == "efficientnet_lite0"
            (count,) = (await api.get("/api/v1/query", query="padimd_anomaly_score_count"))["result"]
            assert float(count["value"][1]) == 1.0

            async def evaluated_rules() -> list[dict]:
                groups = (await api.get("/api/v1/rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r["health"] != "unknown" for r in rules) else []

            rules = await api.wait_for("every rule evaluated", evaluated_rules)
            broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            assert broken == {}
            shipped = sum(len(g["rules"]) for n in ("recording.yml", "alerts.yml")
                          for g in yaml.safe_load((DEPLOY / "prometheus" / n).read_text())["groups"])
            assert len(rules) == shipped

            # Partitions assigned, nothing learned or scored since: the alert goes
            # pending (it fires only after its `for`), from the real daemon's metrics.
            async def no_frames_alert() -> list[dict]:
                alerts = (await api.get("/api/v1/alerts"))["alerts"]
                return [a for a in alerts if a["labels"]["alertname"] == "PadimdNoFramesProcessed"]

            (alert,) = await api.wait_for("PadimdNoFramesProcessed pending", no_frames_alert)
            assert alert["state"] == "pending"
            assert alert["labels"]["instance"] == target
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
