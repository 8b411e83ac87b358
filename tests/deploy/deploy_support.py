"""Helpers shared by the deployment tests: paths, required tools, the metric contract."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
METRICS_DOC = REPO / "docs" / "metrics.md"

SETUP_HINT = "run scripts/setup.sh (it installs the Debian packages the tests need)"


def require_tool(name: str) -> str:
    """Absolute path of an external tool; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {SETUP_HINT}", pytrace=False)
    return path


def contract_metrics() -> dict[str, str]:
    """{metric name: type} from the table in docs/metrics.md, the metric contract."""
    rows = re.findall(r"^\|\s*`(padimd_[a-z0-9_]+)`\s*\|\s*([a-z]+)", METRICS_DOC.read_text(), re.M)
    if not rows:
        raise AssertionError(f"no metric rows found in {METRICS_DOC}")
    return dict(rows)


def exposed_series_names() -> set[str]:
    """Every series name a query may use for the contract's metrics: counters are
    exposed with _total, histograms as _bucket/_sum/_count (prometheus_client also
    exposes a counter's _created, which no query should need)."""
    names: set[str] = set()
    for name, kind in contract_metrics().items():
        if kind == "counter":
            # The contract already spells counters with their _total suffix.
            names.add(name)
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_identifiers(expr: str) -> set[str]:
    """Identifiers of a PromQL expression outside string literals (metric names,
    recorded series, label names, functions, keywords). Grafana's $variables and
    [$__rate_interval] are removed first so they do not count as names."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", " ", text)
    return set(_IDENT.findall(text))


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; keys may repeat in unit files."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def timespan_s(value: str) -> float:
    """A systemd time span ("35s", "10min", "1min 30s") in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total
