"""Bench helpers: a real Data service process and a real Envoy on free ports, torn down after."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.envoy_config import GatewaySettings
from gateway.run import start_envoy, stop_envoy, wait_until_ready, write_config
from services.runtime.embedded import start_embedded_postgres


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, service: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{service} at {target} not SERVING after {timeout_s}s")


@dataclass
class BenchMesh:
    home: Path
    data_target: str
    gateway_port: int
    gateway_url: str
    #: Process ids of the gateway's Envoy and the Data service (for CPU accounting).
    envoy_pid: int = 0
    data_pid: int = 0
    #: The embedded PostgreSQL the Data service uses (for floors measured on the database alone).
    database_url: str = ""


@contextlib.contextmanager
def data_and_gateway(
    import_samples: bool = False, extra_env: dict[str, str] | None = None
) -> Iterator[BenchMesh]:
    with tempfile.TemporaryDirectory(prefix="kitrading-bench-") as tmp:
        home = Path(tmp)
        db_url = start_embedded_postgres(home / "postgres", cleanup_mode="delete")
        data_port, gw_port, admin_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update(
            KITRADING_HOME=str(home),
            KITRADING_DATABASE_URL=db_url,
            KITRADING_DATA_PORT=str(data_port),
            KITRADING_METRICS="false",
            KITRADING_DATA_IMPORT_SAMPLES="true" if import_samples else "false",
            KITRADING_LOG_LEVEL="WARNING",
        )
        env.update(extra_env or {})
        data = subprocess.Popen([sys.executable, "-m", "services.data"], env=env, stderr=subprocess.DEVNULL)
        envoy = None
        try:
            wait_serving(f"127.0.0.1:{data_port}", "kitrading.data.v1.DataService")
            settings = GatewaySettings.from_env(
                env, port=gw_port, admin_port=admin_port, listen_address="127.0.0.1"
            )
            config = write_config(home / "envoy.yaml", settings=settings, env=env)
            envoy = start_envoy(config, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, concurrency=1)
            wait_until_ready(admin_port=admin_port, process=envoy)
            deadline = time.monotonic() + 30
            while httpx.get(f"http://127.0.0.1:{gw_port}/data/health").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway never saw data healthy")
                time.sleep(0.2)
            yield BenchMesh(
                home,
                f"127.0.0.1:{data_port}",
                gw_port,
                f"http://127.0.0.1:{gw_port}",
                envoy_pid=envoy.pid,
                data_pid=data.pid,
                database_url=db_url,
            )
        finally:
            if envoy is not None:
                stop_envoy(envoy)
            data.terminate()
            data.wait(30)
