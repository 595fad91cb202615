"""Mesh-wide gRPC reflection behind the gateway: `python -m gateway.reflection`.

Each service answers reflection for itself on its own port; behind one gateway port, Envoy cannot
fan a reflection stream out to eight backends. This tiny server knows every contract of the mesh
(it imports every generated `kitrading.*.v1.service_pb2`) and Envoy routes `/grpc.reflection.*`
to it, so `grpcurl -plaintext localhost:3000 list` and `describe` work through the gateway.
Port: `KITRADING_REFLECTION_PORT` (3011), loopback unless `KITRADING_REFLECTION_BIND` says otherwise.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from kitrading.mesh import SERVICES
from services.runtime.server import add_reflection

DEFAULT_PORT = 3011


def reflection_port(env: dict[str, str] | None = None) -> int:
    source = os.environ if env is None else env
    return int(source.get("KITRADING_REFLECTION_PORT") or DEFAULT_PORT)


def contract_services() -> list[str]:
    """Every service of the registry whose generated contract module exists."""
    names = []
    for service in SERVICES:
        try:
            importlib.import_module(f"{service.proto_package}.service_pb2")
        except ModuleNotFoundError:
            continue
        names.append(service.grpc_service)
    return names


async def create_reflection_server(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    add_reflection(server, contract_services())
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def _main() -> None:
    host = os.environ.get("KITRADING_REFLECTION_BIND", "127.0.0.1")
    server, _ = await create_reflection_server(host, reflection_port())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(_main())
