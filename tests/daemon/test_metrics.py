"""daemon.metrics: every metric of docs/metrics.md exists with its type and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from daemon.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\|\s*`(padimd_[a-z_]+)`\s*\|\s*([a-z ()0-9]+?)\s*\|\s*([^|]*)\|")


def documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the table of docs/metrics.md."""
    found = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            found[name] = (kind.split()[0], {label.strip() for label in labels.split(",")
                                             if label.strip()})
    return found


def test_the_contract_table_is_parsed() -> None:
    assert len(documented()) >= 20


def test_every_documented_metric_is_registered_with_its_type_and_labels() -> None:
    registry = CollectorRegistry()
    Metrics(registry, backbone="efficientnet_lite0", version="1.2.3")
    registered = {}
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - labels need the collector
        for family in collector.describe():
            registered[family.name] = collector
    for name, (kind, labels) in documented().items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in registered, f"{name} is not registered"
        collector = registered[base]
        assert collector._type == kind, name  # noqa: SLF001
        assert set(collector._labelnames) == labels, name  # noqa: SLF001


def test_build_info_is_one_with_version_and_backbone() -> None:
    registry = CollectorRegistry()
    Metrics(registry, backbone="resnet18", version="1.2.3")
    value = registry.get_sample_value("padimd_build_info",
                                      {"version": "1.2.3", "backbone": "resnet18"})
    assert value == 1.0


def test_exposition_parses_and_counters_end_in_total() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, backbone="efficientnet_lite0")
    metrics.frames_consumed.labels(camera="cam-1").inc()
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "padimd_frames_consumed_total 1.0" not in text  # labelled, not bare
    assert 'padimd_frames_consumed_total{camera="cam-1"} 1.0' in text
    assert families["padimd_frames_consumed"].type == "counter"


def test_forget_camera_drops_its_gauges_only() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, backbone="efficientnet_lite0")
    metrics.threshold.labels(camera="cam-1").set(3.0)
    metrics.threshold.labels(camera="cam-2").set(4.0)
    metrics.forget_camera("cam-1")
    metrics.forget_camera("never-seen")
    assert registry.get_sample_value("padimd_threshold", {"camera": "cam-1"}) is None
    assert registry.get_sample_value("padimd_threshold", {"camera": "cam-2"}) == 4.0
