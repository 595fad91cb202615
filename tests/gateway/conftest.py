"""Fixtures: the descriptor set, and a real Envoy in front of real in-process grpc.aio servers.

One Envoy per module (start-up is ~0.5 s, building the bootstrap ~2 s), on free ports:

- `data` -> a fake DataService (ListSymbols, WatchEvents) with health SERVING;
- `watchdog` -> a health-only server that a test stops to see `/watchdog/health` turn 503;
- every other service -> a free port where nothing listens (never started).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health

from bench._mesh import free_port
from gateway.descriptors import DEFAULT_DESCRIPTOR_PATH, Contracts
from gateway.envoy_config import GatewaySettings
from gateway.run import build_config, start_envoy, stop_envoy, write_config
from kitrading.mesh import SERVICES, service

from .fake_data import SERVICE as DATA_SERVICE
from .fake_data import start_server

ROOT = Path(__file__).resolve().parents[2]


def _compile_descriptor_set(out: Path) -> Path:
    """Fallback when `make generate` has not run: protoc over protos/ (vendored imports included)."""
    grpc_tools = importlib.import_module("grpc_tools")
    wkt = Path(str(grpc_tools.__file__)).parent / "_proto"
    protos = ROOT / "protos"
    files = [str(p.relative_to(protos)) for p in sorted((protos / "kitrading").rglob("*.proto"))]
    target = out / "descriptors.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{wkt}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={target}",
            *files,
        ],
        check=True,
        cwd=protos,
    )
    return target


@pytest.fixture(scope="session")
def descriptor_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if DEFAULT_DESCRIPTOR_PATH.exists():
        return DEFAULT_DESCRIPTOR_PATH
    return _compile_descriptor_set(tmp_path_factory.mktemp("descriptors"))


@pytest.fixture(scope="session")
def contracts(descriptor_path: Path) -> Contracts:
    return Contracts.load(descriptor_path)


@dataclass
class Gateway:
    """A running Envoy and the servers behind it."""

    base_url: str
    port: int
    admin_port: int
    settings: GatewaySettings
    process: subprocess.Popen[bytes]
    log: Path
    watchdog_server: grpc.aio.Server
    watchdog_health: health.aio.HealthServicer

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10.0, **kwargs)  # type: ignore[arg-type]


async def _wait_until(url: str, *, status: int = 200, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                if (await client.get(url)).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def gateway_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("envoy") / "envoy.log"
    yield path


@contextlib.asynccontextmanager
async def running_gateway(
    contracts: Contracts, descriptor_path: Path, log_path: Path, **settings: Any
) -> AsyncIterator[Gateway]:
    """Envoy (built from `GatewaySettings(**settings)` on free ports) and the servers behind it."""
    data_server, data_port, _ = await start_server(contracts, [DATA_SERVICE, ""])
    watchdog = service("watchdog")
    watchdog_server, watchdog_port, watchdog_health = await start_server(None, [watchdog.grpc_service])
    ports = {s.name: free_port() for s in SERVICES}
    ports.update(data=data_port, watchdog=watchdog_port)
    values: dict[str, Any] = {"listen_address": "127.0.0.1", "access_log": True, **settings}
    gateway_settings = GatewaySettings(
        port=free_port(), admin_port=free_port(), service_ports=ports, **values
    )
    config = build_config(gateway_settings, descriptor_path=descriptor_path)
    config_path = write_config(log_path.with_name("envoy.yaml"), config)
    with log_path.open("wb") as log:
        process = start_envoy(config_path, concurrency=2, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_until(f"http://127.0.0.1:{gateway_settings.admin_port}/ready")
        base_url = f"http://127.0.0.1:{gateway_settings.port}"
        await _wait_until(f"{base_url}/data/health")
        yield Gateway(
            base_url,
            gateway_settings.port,
            gateway_settings.admin_port,
            gateway_settings,
            process,
            log_path,
            watchdog_server,
            watchdog_health,
        )
    finally:
        stop_envoy(process)
        await data_server.stop(0)
        await watchdog_server.stop(0)


@pytest_asyncio.fixture(scope="module")
async def gateway(contracts: Contracts, descriptor_path: Path, gateway_log: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(contracts, descriptor_path, gateway_log) as running:
        yield running
