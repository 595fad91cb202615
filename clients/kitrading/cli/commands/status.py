"""`kitrading status`: each service's gRPC health on its own port, and its health page behind the gateway.

Every instance of a replicated service (`kitrading up --replicas forecast=2`) gets its row, found in
the running mesh's state file (`$KITRADING_HOME/run/mesh.json`), with whether it holds the service's
lease (`leader`: it runs the training and the schedules).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from kitrading import mesh
from kitrading.cli.common import add_command, flag, json_flag, option, print_json, print_table, state

#: Deadline of each check, in seconds.
CHECK_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    port: int
    #: The instance (`forecast`, `forecast-2`); the service's name when it runs once.
    instance: str
    implemented: bool
    #: SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNREACHABLE or the failing status code.
    grpc_health: str
    #: SERVING (2xx), HTTP <code>, UNREACHABLE, or "-" with --no-gateway.
    gateway_health: str
    #: Round trip of the gRPC health check in milliseconds (None when unreachable).
    latency_ms: float | None
    #: "yes" on the instance holding the service's lease, "no" on the others, "-" without a lease.
    leader: str = "-"


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "status",
        run,
        help="health of every service (gRPC and through the gateway)",
        description=(
            "Check every service of the registry: grpc.health.v1 Check on its own port and GET "
            "/<prefix>/health through the gateway, 1 s deadline each. Exit status 1 when an "
            "implemented service is not SERVING."
        ),
        params=[
            option("--host", default="localhost", help="host of the services and gateway"),
            flag("--no-gateway", help="skip the gateway health pages"),
            json_flag(),
        ],
    )


def grpc_health(
    host: str, info: mesh.ServiceInfo, port: int | None = None, name: str | None = None
) -> tuple[str, float | None]:
    """Health of `name` (default: the service's own) on `port` (default: the service's)."""
    from kitrading.client import KitradingError, connect

    started = time.perf_counter()
    # a service's own port is plaintext, even when the gateway serves TLS (KITRADING_TLS_CA)
    target = f"{host}:{port or info.port()}"
    with connect(target, timeout=CHECK_TIMEOUT, retries=False, tls_ca=False) as client:
        try:
            status = client.health(name or info.grpc_service)
        except KitradingError as exc:
            if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                return "UNREACHABLE", None
            return exc.code.name, None
    return status.value, (time.perf_counter() - started) * 1000


def running_instances() -> dict[str, list[tuple[str, int]]]:
    """Service -> [(instance, port)] of the mesh `kitrading up` runs (its state file); {} without one."""
    state_file = Path(os.environ.get("KITRADING_HOME") or ".kitrading") / "run" / "mesh.json"
    try:
        state = json.loads(state_file.read_text())
        children = state["children"]
        os.kill(int(state["supervisor_pid"]), 0)  # a launcher that died left its file: not running
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    found: dict[str, list[tuple[str, int]]] = {}
    for name, child in children.items() if isinstance(children, dict) else ():
        service, _, number = name.rpartition("-")
        service = service if number.isdigit() and service in mesh.BY_NAME else name
        if service in mesh.BY_NAME and isinstance(child, dict) and isinstance(child.get("port"), int):
            found.setdefault(service, []).append((name, child["port"]))
    return {service: sorted(items, key=lambda item: item[1]) for service, items in found.items()}


def gateway_health(host: str, info: mesh.ServiceInfo) -> str:
    import httpx  # not at import: it costs the CLI's start a fifth of a second

    from kitrading.client.client import tls_ca_from_env

    ca = tls_ca_from_env()  # the gateway serves TLS (`kitrading up --tls` prints it)
    scheme, verify = ("https", ssl.create_default_context(cafile=str(ca))) if ca else ("http", True)
    url = f"{scheme}://{host}:{mesh.gateway_port()}/{info.prefix}/health"
    try:
        response = httpx.get(url, timeout=CHECK_TIMEOUT, verify=verify)
    except httpx.HTTPError:
        return "UNREACHABLE"
    return "SERVING" if response.is_success else f"HTTP {response.status_code}"


def check(
    host: str, info: mesh.ServiceInfo, *, gateway: bool, instance: tuple[str, int] | None = None
) -> ServiceStatus:
    name, port = instance or (info.name, info.port())
    health, latency = grpc_health(host, info, port)
    leader = "-"
    if info.leader_methods and health == "SERVING":
        leading, _ = grpc_health(host, info, port, info.leader_health_name)
        leader = "yes" if leading == "SERVING" else "no"
    return ServiceStatus(
        service=info.name,
        port=port,
        instance=name,
        implemented=info.implemented,
        grpc_health=health,
        gateway_health=gateway_health(host, info) if gateway else "-",
        latency_ms=None if latency is None else round(latency, 1),
        leader=leader,
    )


def run(args: argparse.Namespace) -> int:
    running = running_instances()
    targets: list[tuple[mesh.ServiceInfo, tuple[str, int] | None]] = []
    for info in mesh.SERVICES:
        found = running.get(info.name)
        if found:
            targets.extend((info, instance) for instance in found)
        else:
            targets.append((info, None))
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(
            pool.map(
                lambda target: check(args.host, target[0], gateway=not args.no_gateway, instance=target[1]),
                targets,
            )
        )
    if args.json:
        print_json([asdict(r) for r in results])
    else:
        rows = [
            (
                r.instance,
                r.port,
                state(r.grpc_health),
                state(r.gateway_health),
                "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms",
                r.leader,
            )
            for r in results
        ]
        print_table(("service", "port", "grpc health", "gateway health", "latency", "leader"), rows)
    healthy = all(r.grpc_health == "SERVING" for r in results if r.implemented)
    return 0 if healthy else 1
