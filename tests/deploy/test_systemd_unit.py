"""deploy/systemd: the unit verifies cleanly, stays hardened, and agrees with the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.settings import ShutdownSettings, load_settings
from tests.deploy.deploy_support import DEPLOY, parse_unit, require_tool, timespan_s

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "padimd.service"
DROPINS = SYSTEMD / "padimd.service.d"
EXEC_PATH = "/opt/padimd/bin/padimd"
# systemd-analyze security scores 0 (locked down) to 10 (unprotected); --threshold
# takes tenths. 2.0 leaves room only for what padimd needs (network, torch syscalls).
MAX_EXPOSURE_TENTHS = 20


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(key: str) -> str:
    values = service()[key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


@pytest.fixture
def resolvable_unit(tmp_path: Path) -> Path:
    """The unit (and its drop-ins) with ExecStart pointing at an executable that exists
    here: verify checks that the binary is there, and /opt/padimd is the target host's."""
    assert EXEC_PATH in UNIT.read_text()
    target = tmp_path / UNIT.name
    target.write_text(UNIT.read_text().replace(EXEC_PATH, sys.executable))
    shutil.copytree(DROPINS, tmp_path / DROPINS.name)
    return target


def run_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = require_tool("systemd-analyze")
    # SYSTEMD_LOG_COLOR=0: plain text so the assertions below can read the warnings.
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_is_clean(resolvable_unit: Path) -> None:
    result = run_analyze("verify", "--man=no", str(resolvable_unit), cwd=resolvable_unit.parent)
    output = result.stdout + result.stderr
    # verify exits 0 even for unknown keys ("Unknown key ..., ignoring"): any line about
    # our unit or its drop-ins is a failure. Lines about the host's own units are not.
    ours = [line for line in output.splitlines() if "padimd" in line]
    assert result.returncode == 0 and not ours, output


def test_systemd_analyze_verify_catches_a_typo(resolvable_unit: Path) -> None:
    """The clean verify above means something: a misspelt key is reported."""
    resolvable_unit.write_text(resolvable_unit.read_text() + "\n[Service]\nLockPersonalty=yes\n")
    result = run_analyze("verify", "--man=no", str(resolvable_unit), cwd=resolvable_unit.parent)
    assert "LockPersonalty" in result.stdout + result.stderr


def test_hardening_exposure_stays_low(resolvable_unit: Path) -> None:
    result = run_analyze(
        "security", "--offline=yes", f"--threshold={MAX_EXPOSURE_TENTHS}",
        "--no-pager", resolvable_unit.name, cwd=resolvable_unit.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_required_directives() -> None:
    s = service()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "padimd",
        "ConfigurationDirectory": "padimd",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "SystemCallArchitectures": "native",
        "LockPersonality": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "UMask": "0077",
        "KillSignal": "SIGTERM",
        # Deliberately off: torch/oneDNN JIT needs W->X memory (see the unit's comment).
        "MemoryDenyWriteExecute": "no",
    }
    got = {key: s.get(key, ["<unset>"])[-1] for key in expected}
    assert got == expected
    assert timespan_s(one("WatchdogSec")) > 0
    assert s["ExecStart"] == [f"{EXEC_PATH} --config /etc/padimd/config.toml"]
    unit = parse_unit(UNIT.read_text())["Unit"]
    assert "StartLimitBurst" in unit and "StartLimitIntervalSec" in unit


def test_stop_timeout_covers_the_shutdown_grace() -> None:
    grace_s = ShutdownSettings().grace_s
    # SIGKILL must not cut the drain short; 5 s for the interpreter to exit after it.
    assert timespan_s(one("TimeoutStopSec")) >= grace_s + 5


def test_watchdog_outlasts_the_ping_interval() -> None:
    # The daemon pings every WatchdogSec/2 (SystemdNotifier.watchdog_interval_s); a
    # watchdog under 10 s would make one slow event-loop turn fatal.
    assert timespan_s(one("WatchdogSec")) >= 10


def _environment(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in values:
        for assignment in line.split():
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def test_unit_environment_and_env_example_are_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every PADIMD_* name the unit or the env example sets is a real settings key:
    a misspelt one would otherwise be rejected only on the target host."""
    env = _environment(service()["Environment"])
    example = (SYSTEMD / "padimd.env.example").read_text()
    for line in example.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    for key in list(os.environ):
        if key.startswith("PADIMD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("PADIMD_"):
            monkeypatch.setenv(key, value.replace("%S", str(tmp_path)))
    settings = load_settings(None)
    assert settings.snapshots.dir == tmp_path / "padimd" / "snapshots"
    assert settings.kafka.security_protocol == "SASL_SSL"
    # Placeholders only: the example must never carry a real-looking secret.
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "CHANGE-ME"


def test_gpu_dropin_reopens_only_nvidia_devices() -> None:
    dropin = parse_unit((DROPINS / "gpu.conf").read_text())["Service"]
    assert dropin["PrivateDevices"] == ["no"]
    assert dropin["DevicePolicy"] == ["closed"]
    assert dropin["DeviceAllow"] and all("nvidia" in d for d in dropin["DeviceAllow"])
    assert _environment(dropin["Environment"]) == {"PADIMD_MODEL__DEVICE": "cuda"}
