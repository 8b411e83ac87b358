"""Dockerfile, .dockerignore and deploy/docker-compose.yml, checked statically (these
machines have no Docker engine): structure, hadolint-style rules, and agreement with the
daemon's settings and the rest of deploy/."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

from daemon.settings import Settings, load_settings
from tests.deploy.deploy_support import DEPLOY, REPO

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
IMAGE_CONFIG = DEPLOY / "config.toml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage() -> list[Instruction]:
    return stages(dockerfile())[-1]


def last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def image_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("PADIMD_"):
            monkeypatch.delenv(key)
    return load_settings(IMAGE_CONFIG)


# --- Dockerfile ------------------------------------------------------------------------

def test_parser_joins_continuations() -> None:
    parsed = parse_dockerfile("FROM a AS b\n# c\nRUN x \\\n  # inner\n  && y\nUSER 1\n")
    assert [(i.keyword, i.args) for i in parsed] == [
        ("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1"),
    ]


def test_multi_stage_on_slim_python_311() -> None:
    instructions = dockerfile()
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions
            if i.keyword == "ARG" and "=" in i.args}
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert all(re.fullmatch(r"\$\{PYTHON_IMAGE\} AS \w+", f) for f in froms), froms
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert "COPY --from=build /opt/padimd /opt/padimd" in [
        f"COPY {i.args}" for i in final_stage() if i.keyword == "COPY"
    ]


def test_torch_variant_build_argument() -> None:
    instructions = dockerfile()
    assert any(i.keyword == "ARG" and i.args == "TORCH_VARIANT=cpu" for i in instructions)
    installs = [i.args for i in instructions if i.keyword == "RUN" and "TORCH_VARIANT" in i.args]
    assert len(installs) == 1
    (run,) = installs
    assert "cpu)" in run and "cuda)" in run and "download.pytorch.org/whl/cpu" in run
    # An unknown variant must stop the build rather than silently pick one.
    assert re.search(r"\*\)[^;]*;\s*exit 1", run)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("cpu", "pip install --index-url https://download.pytorch.org/whl/cpu torch>=2.4 torchvision>=0.19"),
     ("cuda", "pip install torch>=2.4 torchvision>=0.19"),
     ("rocm", None)],
)
def test_torch_variant_script_runs(variant: str, expected: str | None) -> None:
    """Run the RUN script itself with `pip` replaced by echo: the chosen index, and a
    failed build for an unknown variant."""
    (run,) = [i.args for i in dockerfile() if i.keyword == "RUN" and "TORCH_VARIANT" in i.args]
    script = "pip() { echo pip \"$@\"; }\n" + run
    result = subprocess.run(
        ["sh", "-c", script], env={"TORCH_VARIANT": variant, "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=30, check=False,
    )
    if expected is None:
        assert result.returncode == 1 and "TORCH_VARIANT must be cpu or cuda" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_runs_as_a_non_root_user_matching_kubernetes() -> None:
    user = last(final_stage(), "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    statefulset = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    pod_sc = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == tuple(int(p) for p in user.split(":"))


def test_entrypoint_and_cmd_are_exec_form() -> None:
    # Exec form: padimd is PID 1 and receives SIGTERM itself (a shell would swallow it).
    stage = final_stage()
    assert json.loads(last(stage, "ENTRYPOINT").args) == ["padimd"]
    assert json.loads(last(stage, "CMD").args) == ["--config", "/etc/padimd/config.toml"]
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert f"{IMAGE_CONFIG.relative_to(REPO)} /etc/padimd/config.toml" in copies


def test_healthcheck_probes_livez_on_the_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = image_settings(monkeypatch)
    health = last(final_stage(), "HEALTHCHECK").args
    assert "/livez" in health
    assert f"'{settings.http.port}'" in health
    assert last(final_stage(), "EXPOSE").args == str(settings.http.port)


def test_snapshot_volume_holds_the_snapshot_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = image_settings(monkeypatch)
    volumes = json.loads(last(final_stage(), "VOLUME").args)
    assert any(settings.snapshots.dir.is_relative_to(v) for v in volumes), volumes


def test_hadolint_style_rules() -> None:
    for ins in dockerfile():
        where = f"Dockerfile:{ins.line}"
        assert ins.keyword != "ADD", f"{where}: use COPY for local files"
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            assert image.startswith("${") or ":" in image and not image.endswith(":latest"), where
        if ins.keyword == "RUN" and "apt-get install" in ins.args:
            assert "--no-install-recommends" in ins.args and "rm -rf /var/lib/apt/lists" in ins.args, where
        if ins.keyword == "RUN" and re.search(r"\bpip install\b", ins.args):
            env = " ".join(i.args for i in dockerfile() if i.keyword == "ENV")
            assert "--no-cache-dir" in ins.args or "PIP_NO_CACHE_DIR=1" in env, where
        if ins.keyword == "WORKDIR":
            assert ins.args.startswith("/"), where
        if ins.keyword in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)", ins.args, re.I), f"{where}: secret in image"


# --- .dockerignore -----------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, line.lstrip("!").rstrip("/")))
    return patterns


def _match(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories;
    `*` stays inside one path segment, `**` spans any number of them."""
    regex = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        if part in ("**", "**/"):
            regex += ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    candidates = [path] + [str(p) for p in PurePosixPath(path).parents if str(p) != "."]
    return any(re.fullmatch(regex, c) for c in candidates)


def in_build_context(path: str) -> bool:
    included = True
    for negate, pattern in dockerignore_patterns():
        if _match(pattern, path):
            included = negate
    return included


def test_dockerignore_matcher() -> None:
    assert _match("*", ".git/config")
    assert _match("daemon", "daemon/app.py")
    assert _match("**/__pycache__", "daemon/__pycache__/app.cpython-311.pyc")
    assert not _match("*.md", "docs/deploy.md")


def test_build_context_has_what_copy_needs() -> None:
    sources: list[str] = []
    for ins in dockerfile():
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            parts = [p for p in shlex.split(ins.args) if not p.startswith("--")]
            sources.extend(parts[:-1])
    assert {"pyproject.toml", "padim", "daemon", "deploy/config.toml"} <= set(sources)
    for source in sources:
        source = source.rstrip("/")
        assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
        assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
        if (REPO / source).is_dir():
            files = [p for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts]
            assert files and all(in_build_context(str(p.relative_to(REPO))) for p in files)


@pytest.mark.parametrize(
    "path",
    [".git/config", ".venv/bin/python", "deploy/k8s/secret.env", "deploy/systemd/padimd.env",
     ".padimd-state/snapshots/x.padim", ".kafka/jars/kafka.jar", "tests/conftest.py",
     "daemon/__pycache__/app.cpython-311.pyc"],
)
def test_build_context_excludes(path: str) -> None:
    assert not in_build_context(path)


# --- docker-compose.yml ------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"kafka", "padimd", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert not service["image"].endswith(":latest") and ":" in service["image"], name


def test_compose_padimd_matches_the_image_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = image_settings(monkeypatch)
    padimd = compose()["services"]["padimd"]
    build = padimd["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["args"]["TORCH_VARIANT"] in {"cpu", "cuda"}
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) if v.count(":") == 2 else v.split(":", 1)
                  for v in padimd["volumes"])
    assert (COMPOSE.parent / "config.toml").resolve() == IMAGE_CONFIG
    assert mounts["./config.toml"] == "/etc/padimd/config.toml"
    assert any(settings.snapshots.dir.is_relative_to(target) for target in mounts.values())
    assert f"{settings.http.port}:{settings.http.port}" in padimd["ports"]
    grace = float(re.fullmatch(r"(\d+)s", padimd["stop_grace_period"]).group(1))
    assert grace >= settings.shutdown.grace_s + 5
    assert padimd["read_only"] is True and padimd["cap_drop"] == ["ALL"]
    # The broker takes frames as large as padimd fetches.
    kafka_env = compose()["services"]["kafka"]["environment"]
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= settings.kafka.max_message_bytes
    host, _, port = padimd["environment"]["PADIMD_KAFKA__BOOTSTRAP_SERVERS"].partition(":")
    assert host == "kafka" and f"PLAINTEXT://kafka:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_padimd_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    image_settings(monkeypatch)  # clears PADIMD_* from the environment
    env = compose()["services"]["padimd"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(IMAGE_CONFIG)
    assert settings.kafka.bootstrap_servers == env["PADIMD_KAFKA__BOOTSTRAP_SERVERS"]
    assert settings.kafka.group_instance_id == env["PADIMD_KAFKA__GROUP_INSTANCE_ID"]


def test_compose_topics_are_the_ones_padimd_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = image_settings(monkeypatch)
    script = "\n".join(compose()["services"]["kafka-init"]["command"])
    created = set(re.findall(r"([a-z-]+):\d+", script.split("for spec in", 1)[1].split(";")[0]))
    k = settings.kafka
    assert created == {*k.input_topics, k.output_topic, k.dead_letter_topic, k.control_topic}


def test_compose_prometheus_and_grafana_use_deploy_files() -> None:
    services = compose()["services"]
    prom_mounts = [v.split(":") for v in services["prometheus"]["volumes"]]
    assert ["./prometheus", "/etc/prometheus", "ro"] in prom_mounts
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, _, port = target.partition(":")
    assert host in services and "9108:9108" in services[host]["ports"] and port == "9108"
    for volume in services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (COMPOSE.parent / source).exists(), source
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "padimd.yml").read_text())["providers"]
    assert "./grafana/padimd.json:" + provider["options"]["path"] + "/padimd.json:ro" in services["grafana"]["volumes"]


def test_compose_commits_no_secrets() -> None:
    text = COMPOSE.read_text()
    for match in re.finditer(r"(?im)^\s*([A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*):\s*(.+)$", text):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", match.group(3).strip()), match.group(0)
