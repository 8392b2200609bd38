"""The container and cluster files: parsed and cross-checked (no engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmc.app import API
from mmc.config import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "kubernetes"
REPLICATED = K8S / "replicated"

# The PostgreSQL store's settings, spelled here until its branch is merged: once
# mmc.config.ENV_NAMES has MMC_DATABASE_URL, every one of them must be there too.
DATABASE_ENV_NAMES = {
    "MMC_DATABASE_URL",
    "MMC_DATABASE_POOL_SIZE",
    "MMC_DATABASE_TIMEOUT",
    "MMC_RECONCILE_INTERVAL",
    "MMC_REPLICA_ID",
}
# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3).
POSTGRES_DEFAULT_CONNECTIONS = 97
# secret.yaml documents the Secret's shape with placeholders; `kubectl apply -k` must never
# apply it over the real one, so no kustomization lists it.
NOT_A_RESOURCE = {"kustomization.yaml", "secret.yaml"}


def _load(name: str, directory: Path = K8S) -> dict[str, Any]:
    doc = yaml.safe_load((directory / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_deployment_probes_ports_and_service_agree() -> None:
    deployment = _load("deployment.yaml")
    service = _load("service.yaml")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}

    assert ports["http"] == int(env["MMC_PORT"]["value"]) == Settings().port
    assert env["MMC_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - inside the pod network
    public = {r.path for routes in API for r in routes if r.method == "GET" and r.public}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", ports["http"])
        assert get["path"] in public, f"{probe} must not need a login"
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


@pytest.mark.parametrize("directory", [K8S, REPLICATED], ids=["single", "replicated"])
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    files = {p.name for p in directory.iterdir() if p.is_file()}
    assert files >= NOT_A_RESOURCE
    assert all(name.endswith(".yaml") for name in files), files
    resources = _load("kustomization.yaml", directory)["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == files - NOT_A_RESOURCE
    for name in files:
        doc = _load(name, directory)
        assert doc["apiVersion"], name
        assert doc["kind"], name
        if name != "kustomization.yaml":
            assert doc["metadata"]["labels"] == {"app.kubernetes.io/name": "mmc"}, name


def test_replicated_variant_runs_several_pods_on_postgresql() -> None:
    deployment = _load("deployment.yaml", REPLICATED)
    spec = deployment["spec"]
    pod = spec["template"]
    container = _container(deployment)
    env = _env(container)
    assert set(env) >= {"MMC_DATABASE_URL", "MMC_SECRET_KEY", "MMC_REPLICA_ID"}

    # Several replicas, rolled one by one with a new pod ready before an old one stops.
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    rolling = spec["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    assert rolling["maxSurge"] >= 1

    # Secrets come from the variant's Secret, never as literal values.
    secret = _load("secret.yaml", REPLICATED)
    assert secret["kind"] == "Secret"
    for name in ("MMC_DATABASE_URL", "MMC_SECRET_KEY", "MMC_ADMIN_PASSWORD"):
        assert "value" not in env[name], f"{name} must come from a Secret"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
        assert ref.get("optional", False) is False, f"{name} must not be optional"
    url_key = env["MMC_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
    assert secret["stringData"][url_key].startswith(("postgresql://", "postgres://"))

    # The pod name tells replicas apart (logs, MQTT client ids).
    assert "value" not in env["MMC_REPLICA_ID"]
    assert env["MMC_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    # Every replica's pool fits a default PostgreSQL, during a rollout too.
    pool = int(env["MMC_DATABASE_POOL_SIZE"]["value"])
    assert (spec["replicas"] + rolling["maxSurge"]) * pool <= POSTGRES_DEFAULT_CONNECTIONS

    # Nothing on a pod's disk: no claim, no data directory.
    kinds = [
        _load(name, REPLICATED)["kind"]
        for name in _load("kustomization.yaml", REPLICATED)["resources"]
    ]
    assert "PersistentVolumeClaim" not in kinds
    assert not [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert "MMC_DATA_DIR" not in env

    # Every MMC_* variable set is one mmc reads.
    if "MMC_DATABASE_URL" in ENV_NAMES:
        assert set(ENV_NAMES) >= DATABASE_ENV_NAMES
    assert set(env) <= set(ENV_NAMES) | DATABASE_ENV_NAMES


def test_replicated_variant_keeps_the_base_pod_shape() -> None:
    base = _load("deployment.yaml")
    replicated = _load("deployment.yaml", REPLICATED)
    base_pod, pod = base["spec"]["template"], replicated["spec"]["template"]
    base_container, container = _container(base), _container(replicated)

    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe] == base_container[probe], probe
    for key in ("image", "ports", "resources", "securityContext"):
        assert container[key] == base_container[key], key
    assert pod["spec"]["securityContext"] == base_pod["spec"]["securityContext"]
    assert pod["metadata"] == base_pod["metadata"]
    assert replicated["spec"]["selector"] == base["spec"]["selector"]
    base_env, env = _env(base_container), _env(container)
    for name in ("MMC_HOST", "MMC_PORT", "MMC_LOG_FORMAT", "MMC_SHUTDOWN_TIMEOUT"):
        assert env[name] == base_env[name], name
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    # The same grace period; it covers the pause before SIGTERM and the shutdown after it.
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace == base_pod["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert grace > float(command[1]) + float(env["MMC_SHUTDOWN_TIMEOUT"]["value"])

    # The same Service, spelled twice because kustomize loads no file outside a variant.
    assert _load("service.yaml", REPLICATED) == _load("service.yaml")


def test_replicated_variant_spreads_pods_and_budgets_disruptions() -> None:
    deployment = _load("deployment.yaml", REPLICATED)
    replicas = deployment["spec"]["replicas"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert _load("service.yaml", REPLICATED)["spec"]["selector"] == labels

    # Preferably one pod per node; a soft rule, so a small cluster still schedules them all.
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    by_node = spread["kubernetes.io/hostname"]
    assert by_node["labelSelector"] == {"matchLabels": labels}
    assert by_node["maxSkew"] == 1
    for constraint in spread.values():
        assert constraint["labelSelector"] == {"matchLabels": labels}
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"

    pdb = _load("pdb.yaml", REPLICATED)
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == {"matchLabels": labels}
    # A drain may take a pod, never all of them.
    if "maxUnavailable" in pdb["spec"]:
        allowed = pdb["spec"]["maxUnavailable"]
    else:
        allowed = replicas - pdb["spec"]["minAvailable"]
    assert 1 <= allowed < replicas


@pytest.mark.parametrize(
    ("directory", "kinds"),
    [
        (K8S, ["Deployment", "PersistentVolumeClaim", "Service"]),
        (REPLICATED, ["Deployment", "PodDisruptionBudget", "Service"]),
    ],
    ids=["single", "replicated"],
)
def test_kustomize_builds(directory: Path, kinds: list[str]) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is required (`make test` installs kubernetes-client)"
    built = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted(d["kind"] for d in docs) == kinds
