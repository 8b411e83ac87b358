"""deploy/k8s: the kustomize base is complete and agrees with the daemon and the alerts.

kubectl/kustomize is not installable from Debian's archive, so the references kustomize
would resolve (resources, generators, name references) are checked here directly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.http import HttpServer
from daemon.settings import Settings, load_settings
from tests.deploy.deploy_support import DEPLOY, REPO

K8S = DEPLOY / "k8s"


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> dict[str, dict]:
    """{kind: manifest} of the base's resources (one object of each kind)."""
    docs: dict[str, dict] = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']} objects"
            docs[doc["kind"]] = doc
    return docs


def pod_spec() -> dict:
    return resources()["StatefulSet"]["spec"]["template"]["spec"]


def container() -> dict:
    (only,) = pod_spec()["containers"]
    return only


def k8s_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("PADIMD_"):
            monkeypatch.delenv(key)
    return load_settings(K8S / "config.toml")


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(files) >= 10
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_kustomization_references_exist() -> None:
    k = kustomization()
    for name in k["resources"]:
        assert (K8S / name).is_file(), name
    for gen in k["configMapGenerator"]:
        for name in gen["files"]:
            assert (K8S / name).is_file(), name
    assert {kind for kind in resources()} == {
        "Service", "StatefulSet", "PersistentVolumeClaim", "PodDisruptionBudget",
        "ServiceMonitor", "PrometheusRule",
    }


def test_secret_env_is_generated_from_an_uncommitted_file() -> None:
    (gen,) = kustomization()["secretGenerator"]
    assert gen["envs"] == ["secret.env"]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S / "secret.env")], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/secret.env must be ignored by git"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(K8S / "secret.env")],
        cwd=REPO, capture_output=True, check=False,
    )
    assert tracked.returncode != 0, "deploy/k8s/secret.env is committed"
    assert (K8S / "secret.env.example").is_file()


def test_secret_example_holds_valid_keys_and_placeholders_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k8s_settings(monkeypatch)  # clears PADIMD_* from the environment
    for line in (K8S / "secret.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("PADIMD_KAFKA__"), key
            monkeypatch.setenv(key, value)
    settings = load_settings(K8S / "config.toml")
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "CHANGE-ME"


def test_generated_names_are_referenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """kustomize renames generated objects (hash suffix) and rewrites references to
    them only where the reference uses the generator's name."""
    k = kustomization()
    (config_gen,) = k["configMapGenerator"]
    (secret_gen,) = k["secretGenerator"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_gen["name"]
    assert [e["secretRef"]["name"] for e in container()["envFrom"]] == [secret_gen["name"]]
    pvc = resources()["PersistentVolumeClaim"]
    assert volumes["snapshots"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {img["name"] for img in k["images"]} == {container()["image"]}


def test_config_and_snapshot_mounts_match_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = k8s_settings(monkeypatch)
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    assert container()["args"] == ["--config", mounts["config"]["mountPath"] + "/config.toml"]
    assert mounts["config"]["readOnly"] is True
    snapshots_mount = Path(mounts["snapshots"]["mountPath"])
    assert settings.snapshots.dir.is_relative_to(snapshots_mount)


def test_static_membership_id_is_the_pod_name() -> None:
    env = {e["name"]: e for e in container()["env"]}
    field = env["PADIMD_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.name"
    assert resources()["StatefulSet"]["spec"]["podManagementPolicy"] == "Parallel"


def test_container_env_names_are_settings_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt PADIMD_* name would only be rejected when the pod starts."""
    k8s_settings(monkeypatch)  # clears PADIMD_* from the environment
    names = [e["name"] for e in container()["env"]]
    assert names and all(n.startswith("PADIMD_") for n in names)
    for name in names:
        monkeypatch.setenv(name, "padimd-0")  # what the fieldRef yields in pod padimd-0
    settings = load_settings(K8S / "config.toml")
    assert settings.kafka.group_instance_id == "padimd-0"
    assert settings.kafka.client_id == "padimd-0"


def test_ports_match_the_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = k8s_settings(monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"metrics": settings.http.port}
    service = resources()["Service"]
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == "metrics" and svc_port["name"] == "metrics"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container()[probe]["httpGet"]["port"] == "metrics", probe
    assert container()["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container()["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"


async def test_probe_paths_are_served_by_the_daemon() -> None:
    """The probe paths are the daemon's real routes: /livez 200; /readyz follows ready()."""
    ready = False
    async with HttpServer(CollectorRegistry(), ready=lambda: ready, host="127.0.0.1", port=0) as srv:

        async def status(path: str) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return int(line.split()[1])

        paths = {container()[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
        assert paths == {"/livez", "/readyz"}
        assert await status("/livez") == 200
        assert await status("/readyz") == 503
        ready = True
        assert await status("/readyz") == 200


def test_grace_period_covers_the_shutdown_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = k8s_settings(monkeypatch)
    assert pod_spec()["terminationGracePeriodSeconds"] >= settings.shutdown.grace_s + 5


def test_security_context() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert pod_spec()["automountServiceAccountToken"] is False


def test_resources_are_bounded() -> None:
    res = container()["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert set(res["limits"]) >= {"memory"}


def test_selectors_match_the_pods() -> None:
    docs = resources()
    pod_labels = docs["StatefulSet"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(docs["StatefulSet"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(docs["Service"]["spec"]["selector"], pod_labels)
    assert selects(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(docs["ServiceMonitor"]["spec"]["selector"]["matchLabels"],
                   docs["Service"]["metadata"]["labels"])
    assert docs["StatefulSet"]["spec"]["serviceName"] == docs["Service"]["metadata"]["name"]


def test_scrape_job_is_what_the_alerts_expect() -> None:
    """The Operator names the job after the Service; PadimdInstanceDown uses job="padimd"."""
    docs = resources()
    assert docs["Service"]["metadata"]["name"] == "padimd"
    (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert endpoint["interval"] == prom["global"]["scrape_interval"]


def test_prometheusrule_carries_the_same_rules_as_the_rule_files() -> None:
    rule = resources()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = []
    for name in ("recording.yml", "alerts.yml"):
        expected.extend(yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"])
    assert rule["spec"]["groups"] == expected, (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/k8s/render_prometheusrule.py"
    )


def test_prometheusrule_is_exactly_what_the_renderer_writes() -> None:
    result = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys; m = runpy.run_path(sys.argv[1]); print(m['render'](), end='')",
         str(K8S / "render_prometheusrule.py")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert result.stdout == (K8S / "prometheusrule.yaml").read_text()
