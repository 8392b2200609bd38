"""The container and cluster files: parsed and cross-checked (no engine runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmc.auth.permissions import PUBLIC_ROUTES
from mmc.config import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "kubernetes"


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((K8S / name).read_text())
    assert isinstance(doc, dict)
    return doc


def test_deployment_probes_ports_and_service_agree() -> None:
    deployment = _load("deployment.yaml")
    service = _load("service.yaml")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}

    assert ports["http"] == int(env["MMC_PORT"]["value"]) == Settings().port
    assert env["MMC_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - inside the pod network
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", ports["http"])
        assert get["path"] in PUBLIC_ROUTES, f"{probe} must not need a login"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    [svc_port] = service["spec"]["ports"]
    assert svc_port["targetPort"] in ("http", ports["http"])
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]

    # Every MMC_* variable set is one mmc reads; secrets come from the Secret.
    assert set(env) <= set(ENV_NAMES)
    secret = _load("secret.yaml")
    for name in ("MMC_ADMIN_PASSWORD", "MMC_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]

    # SQLite on a RWO volume: one replica, never two at once during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    [data] = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert data["mountPath"] == env["MMC_DATA_DIR"]["value"]
    claim = _load("pvc.yaml")["metadata"]["name"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in pod["spec"]["volumes"]
    shutdown = float(env["MMC_SHUTDOWN_TIMEOUT"]["value"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > shutdown
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_dockerfile_matches() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "useradd --system --uid 10001" in text
    assert "USER mmc" in text
    assert "EXPOSE 8088" in text
    assert "/healthz" in text
    assert 'VOLUME ["/data"]' in text
    assert "MMC_DATA_DIR=/data" in text
    kustomization = _load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == ["deployment.yaml", "pvc.yaml", "service.yaml"]
