"""`kitrading status`: each service's gRPC health on its own port, and its health page behind the gateway."""

from __future__ import annotations

import argparse
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import click

from kitrading import mesh
from kitrading.cli.common import add_command, flag, json_flag, option, print_json, print_table, state

#: Deadline of each check, in seconds.
CHECK_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    port: int
    implemented: bool
    #: SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNREACHABLE or the failing status code.
    grpc_health: str
    #: SERVING (2xx), HTTP <code>, UNREACHABLE, or "-" with --no-gateway.
    gateway_health: str
    #: Round trip of the gRPC health check in milliseconds (None when unreachable).
    latency_ms: float | None


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


def grpc_health(host: str, info: mesh.ServiceInfo) -> tuple[str, float | None]:
    from kitrading.client import KitradingError, connect

    started = time.perf_counter()
    # a service's own port is plaintext, even when the gateway serves TLS (KITRADING_TLS_CA)
    with connect(f"{host}:{info.port()}", timeout=CHECK_TIMEOUT, retries=False, tls_ca=False) as client:
        try:
            status = client.health(info.grpc_service)
        except KitradingError as exc:
            if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                return "UNREACHABLE", None
            return exc.code.name, None
    return status.value, (time.perf_counter() - started) * 1000


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


def check(host: str, info: mesh.ServiceInfo, *, gateway: bool) -> ServiceStatus:
    health, latency = grpc_health(host, info)
    return ServiceStatus(
        service=info.name,
        port=info.port(),
        implemented=info.implemented,
        grpc_health=health,
        gateway_health=gateway_health(host, info) if gateway else "-",
        latency_ms=None if latency is None else round(latency, 1),
    )


def run(args: argparse.Namespace) -> int:
    with ThreadPoolExecutor(max_workers=len(mesh.SERVICES)) as pool:
        results = list(
            pool.map(lambda info: check(args.host, info, gateway=not args.no_gateway), mesh.SERVICES)
        )
    if args.json:
        print_json([asdict(r) for r in results])
    else:
        rows = [
            (
                r.service,
                r.port,
                state(r.grpc_health),
                state(r.gateway_health),
                "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms",
            )
            for r in results
        ]
        print_table(("service", "port", "grpc health", "gateway health", "latency"), rows)
    healthy = all(r.grpc_health == "SERVING" for r in results if r.implemented)
    return 0 if healthy else 1
