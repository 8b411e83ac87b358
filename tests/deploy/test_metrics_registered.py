"""Every metric of docs/metrics.md is registered by daemon.metrics.Metrics with the
documented type and labels, and nothing else is: the alerts and the dashboard rely on
exactly these names."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics
from tests.deploy.deploy_support import METRICS_DOC, contract_metrics


def documented_labels() -> dict[str, set[str]]:
    rows = re.findall(
        r"^\|\s*`(padimd_[a-z0-9_]+)`\s*\|[^|]*\|([^|]*)\|", METRICS_DOC.read_text(), re.M
    )
    return {name: {l.strip() for l in labels.split(",") if l.strip()} for name, labels in rows}


def exposed() -> dict[str, tuple[str, set[str]]]:
    """{contract name: (type, label names)} as a scrape of a fresh Metrics sees it."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, backbone="efficientnet_lite0")
    # Labelled metrics only show samples once a child exists: create one per metric
    # with exactly the documented labels (prometheus_client rejects any other set).
    wanted = documented_labels()
    for collector in vars(metrics).values():
        describe = getattr(collector, "describe", None)
        if describe is None or not hasattr(collector, "labels"):
            continue
        (family,) = describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        if wanted.get(name):
            collector.labels(**{label: "x" for label in wanted[name]})
    result: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):
            # prometheus_client's creation timestamps of counters and histograms, which
            # the text format exposes as untyped companions; not part of the contract.
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: set[str] = set()
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels |= set(sample.labels) - {"le"}
        result[name] = (family.type, labels)
    return result


def test_doc_table_is_parsed() -> None:
    labels = documented_labels()
    assert labels["padimd_consumer_lag"] == {"topic", "partition"}
    assert labels["padimd_dead_letter_total"] == set()
    assert set(labels) == set(contract_metrics())


def test_every_documented_metric_is_registered_as_documented() -> None:
    got = exposed()
    expected = {
        name: (kind, documented_labels()[name]) for name, kind in contract_metrics().items()
    }
    assert got == expected
