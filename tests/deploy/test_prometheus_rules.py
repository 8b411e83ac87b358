"""deploy/prometheus: rules and scrape config pass promtool, and every alert is unit-tested
both ways (fires on a synthetic failure, quiet on normal series) in alerts_test.yml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.deploy_support import DEPLOY, require_tool

PROM = DEPLOY / "prometheus"
RULE_FILES = ("recording.yml", "alerts.yml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=PROM, capture_output=True, text=True, timeout=120, check=False,
    )


def load(name: str) -> dict:
    return yaml.safe_load((PROM / name).read_text())


def alert_names() -> list[str]:
    return [r["alert"] for g in load("alerts.yml")["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = load("prometheus.yml")
    assert config["rule_files"] == list(RULE_FILES)
    # PadimdInstanceDown selects up{job="padimd"}.
    assert [job["job_name"] for job in config["scrape_configs"]] == ["padimd"]


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_unit_tests_would_catch_a_broken_rule(tmp_path: Path) -> None:
    """The promtool suite is not vacuous: dropping the 5 % floor of PadimdAnomalyRateHigh
    makes the low-ratio camera fire, and the suite must notice."""
    for name in (*RULE_FILES, "alerts_test.yml"):
        (tmp_path / name).write_text((PROM / name).read_text())
    alerts = tmp_path / "alerts.yml"
    text = alerts.read_text()
    assert "camera:padimd_anomaly_ratio:rate15m > 0.05" in text
    alerts.write_text(text.replace("rate15m > 0.05", "rate15m > 0.001"))
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode != 0
    assert "PadimdAnomalyRateHigh" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load("alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alert_names())
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "tests for alerts that do not exist"


def test_alerts_are_actionable() -> None:
    for group in load("alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
