"""Compose the mesh for `kitrading up`: database, Envoy gateway, every implemented service.

With no database configured, an embedded PostgreSQL is started first (under
`$KITRADING_HOME/postgres`) and its URL handed to every service through
`KITRADING_DATABASE_URL`. Envoy's config is generated from the service registry and the contract
descriptors into `$KITRADING_HOME/run/envoy.yaml`. Every process logs to
`$KITRADING_HOME/logs/<name>.log`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kitrading import mesh
from services.launcher.supervisor import Child, Supervisor
from services.runtime.config import kitrading_home

log = logging.getLogger("kitrading.launcher")


def selected_services(only: Sequence[str] | None) -> list[mesh.ServiceInfo]:
    if only:
        return [mesh.service(name) for name in only]
    return [s for s in mesh.SERVICES if s.implemented]


def child_env(base: dict[str, str], home: Path) -> dict[str, str]:
    env = dict(base)
    env.setdefault("KITRADING_HOME", str(home))
    env.setdefault("PYTHONUNBUFFERED", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


async def prepare_database(home: Path, env: dict[str, str]) -> None:
    """Point every service at one database: the configured one, or an embedded PostgreSQL."""
    from services.runtime import database

    url = await database.resolve_database_url(env=env, home=home)
    env["KITRADING_DATABASE_URL"] = url


def build_children(
    services: Sequence[mesh.ServiceInfo], home: Path, env: dict[str, str], *, gateway: bool
) -> list[Child]:
    logs = home / "logs"
    children = [
        Child(s.name, [sys.executable, "-m", s.module], child_env(env, home), logs / f"{s.name}.log")
        for s in services
    ]
    if gateway:
        from gateway.run import envoy_command, write_config

        config = write_config(home / "run" / "envoy.yaml", env=env)
        children.append(Child("gateway", envoy_command(config, env=env), child_env(env, home), logs / "gateway.log"))
    return children


async def run_mesh(only: Sequence[str] | None = None, *, gateway: bool = True) -> None:
    home = kitrading_home()
    env = dict(os.environ)
    env["KITRADING_HOME"] = str(home)
    services = selected_services(only)
    await prepare_database(home, env)
    supervisor = Supervisor(build_children(services, home, env, gateway=gateway), state_file=home / "run" / "mesh.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    print_urls(services, gateway=gateway)
    await stop.wait()
    print("\nstopping the mesh...", flush=True)
    await supervisor.stop()
    print("stopped.", flush=True)


def print_urls(services: Sequence[mesh.ServiceInfo], *, gateway: bool) -> None:
    port = mesh.gateway_port()
    lines = ["KI Trading Mesh is starting. Logs: $KITRADING_HOME/logs/<service>.log", ""]
    if gateway:
        lines.append(f"  gateway    http://localhost:{port}/   (HTTP/JSON, gRPC, grpc-web)")
    for s in services:
        lines.append(
            f"  {s.name:<10} grpc localhost:{s.port()}   health /{s.prefix}/health   docs "
            f"http://localhost:{port}/{s.prefix}/docs   metrics :{s.metrics_port()}/metrics"
        )
    lines += ["", "  kitrading status      # health of every service", "  Ctrl-C stops everything", ""]
    print("\n".join(lines), flush=True)
