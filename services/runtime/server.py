"""The server every service runs: `create_server(...)` for tests (port 0) and `serve(...)` for processes.

A service supplies a `ServiceApp` (register its servicer, start/stop its domain, say whether it is
ready); the runtime supplies the rest once: the interceptor (limits, validation, error mapping,
metrics, logs), grpc.health.v1 (NOT_SERVING until ready, while a dependency is down and while
draining), reflection v1 and v1alpha (grpcurl), message size limits, Prometheus `/metrics`,
and SIGTERM/SIGINT draining in-flight calls before a clean exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime import metrics, tracing
from services.runtime.config import ConfigError, RuntimeSettings
from services.runtime.interceptor import Observer, RuntimeInterceptor
from services.runtime.logging import configure_logging

log = logging.getLogger("kitrading.runtime")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
HEALTH_CHECK_PERIOD_S = 0.5
#: Request metadata a server accepts (soft and hard limit): above the gateway's header limit plus
#: what Envoy adds, so a call the gateway lets through is never refused for its headers.
METADATA_BYTES = 192 * 1024
LIVENESS = "liveness"


class ServiceApp(Protocol):
    """What a service gives the runtime (a `services.runtime.app.ServiceAppBase` subclass fills it in).
    Domain code stays behind it, free of gRPC."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer(s) to the server."""

    async def start(self) -> None:
        """Connect storage, load models. Calls are refused with UNAVAILABLE until it returns."""

    async def stop(self) -> None:
        """Release resources after the server stopped taking calls."""

    def is_ready(self) -> bool:
        """False while a dependency is down (the service then reports NOT_SERVING)."""

    @property
    def observers(self) -> Sequence[Observer]:
        """Called after every RPC (e.g. a query log)."""


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful with port 0)."""

    server: grpc.aio.Server
    port: int
    settings: RuntimeSettings
    app: ServiceApp
    health: health_aio.HealthServicer
    interceptor: RuntimeInterceptor | None = None
    started: bool = False
    draining: bool = False
    serving: bool | None = None
    leading: bool | None = None
    _health_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{host}:{self.port}"

    async def _set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", self.settings.service.grpc_service, self.settings.service.name):
            await self.health.set(name, status)
        metrics.SERVICE_HEALTHY.labels(self.settings.service.name).set(1 if serving else 0)
        log.info("health %s", "SERVING" if serving else "NOT_SERVING")

    async def _set_leading(self, leading: bool) -> None:
        """`<grpc service>/leader`: SERVING on the instance that serves and holds the lease, which
        the gateway's health check of the service's leader cluster asks for."""
        if leading == self.leading:
            return
        self.leading = leading
        status = (
            health_pb2.HealthCheckResponse.SERVING if leading else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(self.settings.service.leader_health_name, status)

    async def _watch_health(self) -> None:
        is_leader = getattr(self.app, "is_leader", lambda: True)
        while True:
            try:
                ready = self.app.is_ready()
                leader = bool(is_leader())
            except Exception:
                log.exception("is_ready failed")
                ready = leader = False
            serving = self.started and not self.draining and ready
            await self._set_serving(serving)
            await self._set_leading(serving and leader)
            await asyncio.sleep(HEALTH_CHECK_PERIOD_S)

    async def start_app(self) -> None:
        await self.app.start()
        self.started = True
        await self._set_serving(self.app.is_ready())
        self._health_task = asyncio.create_task(self._watch_health(), name="health")

    async def stop(self, grace: float | None = None, *, delay_s: float = 0.0) -> None:
        """Drain: NOT_SERVING first (so the gateway stops routing), still answering every call for
        `delay_s` (until the gateway's health check has seen it), then finish in-flight calls."""
        self.draining = True
        await self._set_serving(False)
        await self._set_leading(False)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if self.interceptor is not None:
            self.interceptor.draining.set()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.started:
            await self.app.stop()


def _register_reflection_v1() -> None:
    """Reflection v1 is wire-identical to v1alpha: add its descriptor under the v1 name."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for fld in message.field:
            if fld.type_name:
                fld.type_name = fld.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    for svc in proto.service:
        for method in svc.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    pool.AddSerializedFile(proto.SerializeToString())


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    from grpc_reflection.v1alpha import _async as reflection_async

    _register_reflection_v1()
    for name in service_names:  # stubs import only the messages; reflection needs the service too
        importlib.import_module(f"{name.rsplit('.', 1)[0]}.service_pb2")
    names = [
        *service_names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        REFLECTION_V1,
        REFLECTION_V1ALPHA,
    ]
    servicer = reflection_async.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


async def create_server(
    app: ServiceApp, settings: RuntimeSettings, *, start_app: bool = True
) -> RunningServer:
    """Build, bind and start the server, then start the app. Use port 0 in tests."""
    holder: dict[str, RunningServer] = {}
    info = settings.service
    interceptor = RuntimeInterceptor(
        service=info.name,
        domain=f"kitrading.{info.name}",
        max_concurrent_unary=settings.max_concurrent_unary,
        max_concurrent_streams=settings.max_concurrent_streams,
        admission_wait_s=settings.admission_wait_ms / 1000,
        is_started=lambda: holder["server"].started if "server" in holder else False,
        observers=app.observers,
        leader_only=[f"/{info.grpc_service}/{name}" for name in info.leader_methods],
        is_leader=getattr(app, "is_leader", lambda: True),
        leader=getattr(app, "leader", lambda: None),
    )
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
            # as much metadata as the gateway lets through (60 KiB of client headers, the path again
            # as x-envoy-original-path, Envoy's own): gRPC's 16 KiB hard limit answered such a call
            # RESOURCE_EXHAUSTED (a retryable 429) naming internal headers
            ("grpc.max_metadata_size", METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", METADATA_BYTES),
        ],
    )
    app.register(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    add_reflection(server, [info.grpc_service])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port} (port in use?)")
    running = RunningServer(
        server=server, port=port, settings=settings, app=app, health=health, interceptor=interceptor
    )
    holder["server"] = running
    # `liveness` stays SERVING while the process answers at all: a liveness probe must not restart a
    # service that is only waiting for its database (readiness uses "" or the service name).
    await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    await running._set_serving(False)
    await server.start()
    if start_app:
        await running.start_app()
    return running


async def serve(app: ServiceApp, settings: RuntimeSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight calls and return (the process exits 0)."""
    configure_logging(settings.service.name, settings.log_level)
    tracing.configure_tracing(settings.service.name)
    if settings.metrics_port is not None:
        metrics_port = metrics.start_metrics_server(settings.host, settings.metrics_port)
        log.info("metrics on %s:%d/metrics", settings.host, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await create_server(app, settings, start_app=False)
    log.info("listening", extra={"address": f"{settings.host}:{running.port}"})
    starter = asyncio.create_task(running.start_app(), name="start-app")
    stop_waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({starter, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
    if starter in done and starter.exception() is not None:
        log.error("start failed: %s", starter.exception())
        stop_waiter.cancel()
        await running.server.stop(0)
        raise SystemExit(1)
    if starter in done:
        log.info("ready")
        await stop.wait()
    else:
        starter.cancel()
    log.info(
        "draining (NOT_SERVING for %.1fs, then grace %.1fs)", settings.drain_delay_s, settings.grace_seconds
    )
    await running.stop(delay_s=settings.drain_delay_s if starter in done else 0.0)
    log.info("stopped")
    tracing.shutdown_tracing()  # export the last spans


def run_service(app_factory: type[ServiceApp] | object, name: str) -> None:
    """Entry point body of `python -m services.<name>`: settings from env, serve, exit 0."""
    from kitrading.mesh import service as lookup

    try:
        settings = RuntimeSettings.from_env(lookup(name))
        tracing.TracingSettings.from_env()  # a bad OTEL_* value is named here, before serving
        app = app_factory() if callable(app_factory) else app_factory
    except (
        ConfigError,
        ValueError,
        OSError,
    ) as exc:  # settings are read here: name the problem, no traceback
        raise SystemExit(f"configuration error: {exc}") from None
    asyncio.run(serve(app, settings))  # type: ignore[arg-type]
