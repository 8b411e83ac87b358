"""No dangling names: every PromQL expression under deploy/ (alert and recording rules,
their promtool tests, the PrometheusRule, the Grafana dashboard) only names metrics of
the contract in docs/metrics.md, series recorded by deploy/prometheus/recording.yml, and
Prometheus' own `up`. The dashboard also has to show what operators need."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_support import (
    DEPLOY,
    contract_metrics,
    exposed_series_names,
    promql_identifiers,
)

PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "padimd.json"
PROMETHEUS_OWN = {"up"}


def recorded_names() -> set[str]:
    groups = yaml.safe_load((PROM / "recording.yml").read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"]}


def unknown_names(expr: str) -> set[str]:
    """Names in `expr` that are neither contract series, recorded series nor `up`."""
    known = exposed_series_names() | recorded_names() | PROMETHEUS_OWN
    return {
        name
        for name in promql_identifiers(expr)
        if (name.startswith("padimd_") or ":" in name or name in PROMETHEUS_OWN)
        and name not in known
    }


def _rule_exprs(path: Path) -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"{path.name}:{rule.get('alert') or rule.get('record')}", rule["expr"]


def _promtool_test_exprs() -> Iterator[tuple[str, str]]:
    for case in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        for series in case.get("input_series", []):
            yield f"alerts_test.yml:{case['name']}", series["series"]
        for check in case.get("promql_expr_test", []):
            yield f"alerts_test.yml:{case['name']}", check["expr"]


def _prometheusrule_exprs() -> Iterator[tuple[str, str]]:
    path = DEPLOY / "k8s" / "prometheusrule.yaml"
    doc = yaml.safe_load(path.read_text())
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            yield f"{path.name}:{rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return panels


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield f"padimd.json:{panel['title']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"padimd.json:${variable['name']}", query["query"] if isinstance(query, dict) else query


def all_exprs() -> list[tuple[str, str]]:
    return [
        *_rule_exprs(PROM / "recording.yml"),
        *_rule_exprs(PROM / "alerts.yml"),
        *_promtool_test_exprs(),
        *_prometheusrule_exprs(),
        *_dashboard_exprs(),
    ]


def test_checker_flags_a_misspelt_metric() -> None:
    assert unknown_names('sum(rate(padimd_frames_scored_totl[5m]))') == {"padimd_frames_scored_totl"}
    assert unknown_names('camera:padimd_made_up:rate5m > 1') == {"camera:padimd_made_up:rate5m"}
    # Histograms are only queryable through their _bucket/_sum/_count series.
    assert unknown_names("rate(padimd_inference_seconds[5m])") == {"padimd_inference_seconds"}
    # String literals and Grafana variables are not names.
    assert unknown_names('up{job="padimd_x"} + padimd_threshold{camera=~"$camera"}') == set()


def test_contract_is_parsed() -> None:
    metrics = contract_metrics()
    assert len(metrics) >= 20
    assert metrics["padimd_anomaly_score"] == "histogram"
    assert metrics["padimd_frames_scored_total"] == "counter"


def test_expressions_were_found() -> None:
    sources = {where.split(":")[0] for where, _ in all_exprs()}
    assert sources == {"recording.yml", "alerts.yml", "alerts_test.yml", "prometheusrule.yaml", "padimd.json"}


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=lambda v: v if len(v) < 60 else v[:60])
def test_no_dangling_names(where: str, expr: str) -> None:
    assert unknown_names(expr) == set(), f"{where}: names not in docs/metrics.md"


def test_every_deploy_file_with_padimd_names_is_checked() -> None:
    """A new YAML/JSON file under deploy/ that mentions padimd_ metrics must be added to
    all_exprs(), or its names would escape the check."""
    checked = {PROM / "recording.yml", PROM / "alerts.yml", PROM / "alerts_test.yml",
               DEPLOY / "k8s" / "prometheusrule.yaml", DASHBOARD}
    bases = [re.escape(name.removesuffix("_total")) for name in contract_metrics()]
    mentions = re.compile(r"\b(" + "|".join(bases) + r")")
    mentioning = {
        path for path in DEPLOY.rglob("*")
        if path.suffix in {".yml", ".yaml", ".json"} and mentions.search(path.read_text())
    }
    assert mentioning - checked == set()


# --- the dashboard itself --------------------------------------------------------------

def test_dashboard_is_templated() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["camera"]["type"] == "query"
    assert variables["camera"]["multi"] and variables["camera"]["includeAll"]
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panel_ids_are_unique_and_laid_out() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]


def test_camera_panels_filter_by_the_camera_variable() -> None:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            if re.search(r"padimd_(anomal|frames_|threshold|model_frames|labelled)", expr):
                assert '$camera' in expr, f"{panel['title']}: {expr}"


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("anomaly rate per camera", r"rate\(padimd_anomalies_total"),
        ("score distribution", r"histogram_quantile\([^,]+, sum by \(camera, le\) \(rate\(padimd_anomaly_score_bucket"),
        ("threshold", r"padimd_threshold"),
        ("throughput", r"rate\(padimd_frames_scored_total"),
        ("inference latency percentiles", r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(padimd_inference_seconds_bucket"),
        ("capture-to-event latency", r"padimd_capture_to_event_seconds_bucket"),
        ("consumer lag", r"padimd_consumer_lag"),
        ("frames learned per model", r"padimd_model_frames_learned"),
        ("snapshot age", r"time\(\) - padimd_last_snapshot_timestamp_seconds"),
        ("dead-letter rate", r"rate\(padimd_dead_letter_total"),
    ],
)
def test_dashboard_shows(what: str, pattern: str) -> None:
    exprs = [expr for _, expr in _dashboard_exprs()]
    assert any(re.search(pattern, e) for e in exprs), f"no panel shows {what}"


def test_prose_and_annotations_name_only_real_metrics() -> None:
    """Alert descriptions and docs/deploy.md send operators to metrics: those must exist
    too (a histogram may be named by its base name in prose)."""
    known = exposed_series_names() | set(contract_metrics())
    recorded = re.compile(r"[a-z_]+:padimd_[a-z0-9_]+:[a-z0-9_]+")
    texts = {path: path.read_text() for path in DEPLOY.rglob("*") if path.is_file()}
    texts[DEPLOY.parent / "docs" / "deploy.md"] = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    for path, text in texts.items():
        names = set(re.findall(r"\bpadimd_[a-z0-9_]+", recorded.sub(" ", text)))
        assert names - known == set(), path
