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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading import mesh
from services.launcher.control import ControlServer, lease_holder, socket_path
from services.launcher.supervisor import Child, Supervisor
from services.runtime.config import IntVar, kitrading_home

#: Envoy worker threads of the gateway.
GATEWAY_CONCURRENCY = IntVar("KITRADING_GATEWAY_CONCURRENCY", 1, 256)

log = logging.getLogger("kitrading.launcher")


def selected_services(only: Sequence[str] | None) -> list[mesh.ServiceInfo]:
    if only:
        return [mesh.service(name) for name in only]
    return [s for s in mesh.SERVICES if s.implemented]


def child_env(base: dict[str, str], home: Path) -> dict[str, str]:
    env = dict(base)
    # One OTEL_SERVICE_NAME for every process would merge their spans: each names itself
    # (`kitrading-<service>`, services.runtime.tracing); compose sets one per container instead.
    env.pop("OTEL_SERVICE_NAME", None)
    env.setdefault("KITRADING_HOME", str(home))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a native crash leaves its traceback in the log
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


async def prepare_database(env: dict[str, str]) -> Path | None:
    """Point every service at one database: the configured one, or an embedded PostgreSQL.

    Returns the embedded server's data directory (which the launcher then keeps running), or None.
    """
    from services.runtime import database_settings

    settings = database_settings.DatabaseSettings.from_env(env)
    env["KITRADING_DATABASE_URL"] = await database_settings.resolve_database_url(settings)
    print(f"database: {settings.describe()}", flush=True)
    return settings.embedded_pgdata if settings.embedded else None


async def keep_database_running(pgdata: Path, period_s: float = 2.0) -> None:
    """Supervise the embedded PostgreSQL: start it again if its postmaster died."""
    from services.runtime import embedded

    while True:
        await asyncio.sleep(period_s)
        try:
            await asyncio.to_thread(embedded.ensure_embedded_running, pgdata)
        except Exception as exc:  # keep supervising; services report NOT_SERVING meanwhile
            log.warning("embedded PostgreSQL could not be restarted: %s", exc)


def instance_name(service: str, index: int) -> str:
    """Instance `index` (0-based) of a service: `forecast`, `forecast-2`, `forecast-3` ..."""
    return service if index == 0 else f"{service}-{index + 1}"


def instances(
    services: Sequence[mesh.ServiceInfo], env: Mapping[str, str]
) -> dict[str, tuple[mesh.ServiceInfo, int]]:
    """Every instance to run, by name: its service and gRPC port (`KITRADING_<NAME>_REPLICAS`)."""
    return {
        instance_name(s.name, k): (s, port)
        for s in services
        for k, (port, _) in enumerate(s.instance_ports(env))
    }


def build_children(
    services: Sequence[mesh.ServiceInfo], home: Path, env: dict[str, str], *, gateway: bool
) -> list[Child]:
    logs = home / "logs"
    children = []
    for s in services:
        for k, (port, metrics_port) in enumerate(s.instance_ports(env)):
            name = instance_name(s.name, k)
            child_environment = child_env(env, home)
            child_environment["KITRADING_INSTANCE"] = name
            if k > 0:  # its own ports; the first keeps the service's (configured or default)
                child_environment[f"KITRADING_{s.name.upper()}_PORT"] = str(port)
                child_environment[f"KITRADING_{s.name.upper()}_METRICS_PORT"] = str(metrics_port)
            children.append(
                Child(
                    name, [sys.executable, "-m", s.module], child_environment, logs / f"{name}.log", port=port
                )
            )
    for child in children:
        if child.name == "watchdog":  # watch what this launcher runs: its services and its gateway
            child.env.setdefault("WATCHDOG_SERVICES", ",".join(s.name for s in services))
            bind = env.get("KITRADING_GATEWAY_BIND", "")
            host = bind if bind and bind not in ("0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            if gateway:  # with TLS, Envoy's admin /ready (the watchdog need not trust the pair)
                url = (
                    gateway_ready_url(env)
                    if gateway_tls(env)
                    else f"http://{host}:{mesh.gateway_port(env)}/gateway/health"
                )
                child.env.setdefault("WATCHDOG_GATEWAY_HEALTH_URL", url)
    if gateway:
        from gateway.run import envoy_binary, write_config

        config = write_config(home / "run" / "envoy.yaml", env=env)
        argv = [
            envoy_binary(),
            "-c",
            str(config),
            "--log-level",
            "warning",
            "--disable-hot-restart",
            "--concurrency",
            str(GATEWAY_CONCURRENCY.read(2, env)),
        ]
        children.append(Child("gateway", argv, child_env(env, home), logs / "gateway.log"))
        children.append(
            Child(
                "reflection",
                [sys.executable, "-m", "gateway.reflection"],
                child_env(env, home),
                logs / "reflection.log",
            )
        )
    return children


async def watch_keys(
    supervisor: Supervisor,
    config_path: Path,
    env: dict[str, str],
    ready: Callable[[], Awaitable[bool]] | None = None,
    *,
    period_s: float = 1.0,
) -> None:
    """Apply a change of the gateway's API keys: when what Envoy checks changes (keys switched on, a
    revocation; not a new key, which the signing secret already covers), rebuild the gateway's
    config and restart the gateway (`Supervisor.restart`, not counted as a crash), so a revoked key
    is refused about `period_s` + a config build (~2 s) + an Envoy start (~0.5 s) later."""
    from gateway.keys import KeyStore
    from gateway.run import write_config

    store = KeyStore.from_env(env)
    seen = store.fingerprint()
    while True:
        await asyncio.sleep(period_s)
        current = store.fingerprint()
        if current == seen:
            continue
        seen = current
        try:
            await asyncio.to_thread(write_config, config_path, env=env)
        except Exception as exc:  # a broken store must not take the running gateway down
            log.warning("API keys changed but the gateway config could not be rebuilt: %s", exc)
            continue
        log.warning("API keys changed: restarting the gateway with the new config")
        try:
            await supervisor.restart("gateway", ready, timeout_s=60)
        except TimeoutError as exc:
            log.warning("the gateway did not come back after the key change: %s", exc)


async def run_mesh(only: Sequence[str] | None = None, *, gateway: bool = True) -> None:
    home = kitrading_home()
    env = dict(os.environ)
    env["KITRADING_HOME"] = str(home)
    services = selected_services(only)
    from services.runtime.config import ConfigError

    try:
        instances(services, env)
    except ValueError as exc:  # a bad KITRADING_<NAME>_REPLICAS: say which before anything runs
        raise ConfigError(str(exc)) from None
    if gateway:  # a refused gateway setting (an open listener) stops the start before anything runs
        from gateway.envoy_config import GatewaySettings

        GatewaySettings.from_env(env)
    pgdata = await prepare_database(env)
    db_keeper = asyncio.create_task(keep_database_running(pgdata)) if pgdata is not None else None
    supervisor = Supervisor(
        build_children(services, home, env, gateway=gateway), state_file=home / "run" / "mesh.json"
    )
    control = ControlServer(
        supervisor, readiness(services, env, gateway=gateway), socket_path(home), lease_holder(home)
    )
    await control.start()
    supervisor.extra_state["control"] = str(control.path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    keys_watcher = None
    if gateway:
        keys_watcher = asyncio.create_task(
            watch_keys(supervisor, home / "run" / "envoy.yaml", env, readiness(services, env)("gateway"))
        )
    print_urls(services, gateway=gateway, env=env)
    await stop.wait()
    print("\nstopping the mesh...", flush=True)
    await control.close()
    if keys_watcher is not None:
        keys_watcher.cancel()
    await supervisor.stop()
    if db_keeper is not None:
        db_keeper.cancel()
    print("stopped.", flush=True)


def readiness(
    services: Sequence[mesh.ServiceInfo], env: Mapping[str, str], *, gateway: bool = False
) -> Callable[[str], Callable[[], Awaitable[bool]] | None]:
    """For `kitrading restart`: a check that child `name` serves again (its gRPC health on its own
    port and, with the gateway running, the gateway's health check of that instance passing, so a
    roll stops the next instance only once the gateway sends calls to this one again; the gateway's
    /gateway/health); None for a child without one."""
    by_name = instances(services, env)

    def for_child(name: str) -> Callable[[], Awaitable[bool]] | None:
        if name in by_name:
            info, port = by_name[name]
            target = f"127.0.0.1:{port}"

            async def serving() -> bool:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    try:
                        reply = await stub.Check(
                            health_pb2.HealthCheckRequest(service=info.grpc_service), timeout=1
                        )
                    except grpc.aio.AioRpcError:
                        return False
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
                return not gateway or await gateway_routes_to(env, info.name, port)

            return serving
        if name == "gateway":
            url = gateway_ready_url(env)

            async def gateway_up() -> bool:
                try:
                    async with httpx.AsyncClient(timeout=1) as client:
                        return (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            return gateway_up
        return None

    return for_child


async def gateway_routes_to(env: Mapping[str, str], cluster: str, port: int) -> bool:
    """Whether the gateway's active health check passes for the endpoint on `port` of `cluster`
    (Envoy's admin `/clusters`: `<cluster>::<host>:<port>::health_flags::healthy`)."""
    url = f"http://127.0.0.1:{env.get('KITRADING_GATEWAY_ADMIN_PORT') or 9901}/clusters"
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            text = (await client.get(url)).text
    except httpx.HTTPError:
        return False
    suffix = f":{port}::health_flags::"
    return any(
        line.startswith(f"{cluster}::") and line.endswith(f"{suffix}healthy") for line in text.splitlines()
    )


def gateway_tls(env: Mapping[str, str]) -> bool:
    """Whether the gateway serves TLS (`KITRADING_GATEWAY_TLS_CERT_FILE`, as `kitrading up --tls` sets)."""
    return bool(env.get("KITRADING_GATEWAY_TLS_CERT_FILE", "").strip())


def gateway_ready_url(env: Mapping[str, str]) -> str:
    """Where the launcher sees the gateway serve again after a restart: `/gateway/health` on its port,
    or, with TLS there (a self-signed pair this process need not trust), Envoy's admin `/ready`
    on loopback."""
    if gateway_tls(env):
        return f"http://127.0.0.1:{env.get('KITRADING_GATEWAY_ADMIN_PORT') or 9901}/ready"
    return f"http://127.0.0.1:{mesh.gateway_port(env)}/gateway/health"


def print_urls(
    services: Sequence[mesh.ServiceInfo], *, gateway: bool, env: Mapping[str, str] | None = None
) -> None:
    source = os.environ if env is None else env
    port = mesh.gateway_port(source)
    base = f"{'https' if gateway_tls(source) else 'http'}://localhost:{port}"
    lines = ["KI Trading Mesh is starting. Logs: $KITRADING_HOME/logs/<service>.log", ""]
    if gateway:
        lines.append(f"  gateway    {base}/   (HTTP/JSON, gRPC, grpc-web)")
    for s in services:
        lines.append(
            f"  {s.name:<10} grpc localhost:{s.port(source)}   health /{s.prefix}/health   docs "
            f"{base}/{s.prefix}/docs   metrics :{s.metrics_port(source)}/metrics"
        )
        for k, (port, metrics_port) in enumerate(s.instance_ports(source)[1:], start=1):
            lines.append(
                f"  {instance_name(s.name, k):<10} grpc localhost:{port}   metrics :{metrics_port}/metrics"
            )
    lines += ["", "  kitrading status      # health of every service", "  Ctrl-C stops everything", ""]
    print("\n".join(lines), flush=True)
