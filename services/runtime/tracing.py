"""Distributed tracing (OpenTelemetry), once for every process of the mesh: off unless configured.

Configured by the standard variables, so an operator's collector settings work unchanged:

- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): export spans over OTLP/gRPC
  (`http://host:4317` plaintext, `https://...` TLS; `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`,
  `_CERTIFICATE`, `_COMPRESSION` as the OpenTelemetry exporter reads them). Only the `grpc`
  protocol is shipped: `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` is refused with a clear error.
- `OTEL_TRACES_EXPORTER`: `otlp` (the default when an endpoint is set), `console`, `none`.
- `OTEL_SDK_DISABLED=true` turns everything off; `OTEL_TRACES_SAMPLER` / `_ARG` pick the sampler
  (default parent-based always-on: a request the gateway sampled is traced end to end).
- `KITRADING_TRACES_FILE=path`: also (or only) append every span as one JSON line to a local file.

Off, nothing of OpenTelemetry is imported and the runtime's only cost is one module-flag test per
call (`ENABLED`). On, the server interceptor opens a SERVER span per RPC (parent taken from the
caller's `traceparent` metadata: the gateway's span, or a client span of another service),
`mesh_channel` adds a client interceptor (a CLIENT span per outgoing call, its context injected as
`traceparent`), the training runner carries the context of the request that queued a job into the
job's spans and its worker process, and every JSON log line and error status names the trace id.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime.config import ConfigError

log = logging.getLogger("kitrading.tracing")

#: True once `configure_tracing` turned tracing on in this process (read per call: keep it a plain bool).
ENABLED = False

_TRACER: Any = None
_PROVIDER: Any = None
_EXPORTERS = ("otlp", "console", "none")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Where spans go, from the standard OpenTelemetry variables (and `KITRADING_TRACES_FILE`)."""

    exporter: str = "none"  # otlp | console | none
    endpoint: str | None = None
    file: Path | None = None
    #: The share of new traces (no sampled parent) that are kept: Envoy's random sampling too.
    sample_ratio: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.exporter != "none" or self.file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingSettings:
        source = os.environ if env is None else env
        if _flag(source.get("OTEL_SDK_DISABLED")):
            return cls()
        endpoint = (
            source.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or source.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or None
        )
        exporter = (source.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")).split(",")[0]
        exporter = exporter.strip().lower()
        if exporter not in _EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {exporter!r}, expected one of {', '.join(_EXPORTERS)}")
        if exporter == "otlp":
            if endpoint is None:
                raise ConfigError(
                    "OTEL_TRACES_EXPORTER=otlp needs OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4317)"
                )
            for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
                protocol = source.get(name)
                if protocol and protocol.strip().lower() != "grpc":
                    raise ConfigError(
                        f"{name}: {protocol!r}, only 'grpc' (OTLP over gRPC, port 4317) is supported"
                    )
        file = source.get("KITRADING_TRACES_FILE") or None
        return cls(
            exporter=exporter,
            endpoint=endpoint if exporter == "otlp" else None,
            file=Path(file) if file else None,
            sample_ratio=_sample_ratio(source),
        )

    def otlp_address(self) -> tuple[str, int, bool]:
        """(host, port, tls) of the OTLP endpoint (Envoy's collector cluster)."""
        if self.endpoint is None:
            raise ValueError("no OTLP endpoint configured")
        text = self.endpoint.strip()
        tls = text.startswith("https://")
        text = text.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            return text, 4317, tls
        return host.strip("[]"), int(port), tls


def _sample_ratio(source: Mapping[str, str]) -> float:
    sampler = (source.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        try:
            ratio = float(source.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG: {source['OTEL_TRACES_SAMPLER_ARG']!r}, expected 0..1"
            ) from None
        return min(1.0, max(0.0, ratio))
    return 1.0


def service_name(service: str, env: Mapping[str, str] | None = None) -> str:
    """The `service.name` of a process: `OTEL_SERVICE_NAME`, else `kitrading-<service>`."""
    source = os.environ if env is None else env
    return source.get("OTEL_SERVICE_NAME") or f"kitrading-{service}"


def configure_tracing(service: str, env: Mapping[str, str] | None = None, *, exporter: Any = None) -> bool:
    """Turn tracing on for this process when the environment says so (or an `exporter` is given,
    e.g. the SDK's InMemorySpanExporter in a test). Returns whether tracing is on."""
    global ENABLED, _TRACER, _PROVIDER
    settings = TracingSettings.from_env(env)
    if exporter is None and not settings.enabled:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown_tracing()
    resource = Resource.create({"service.name": service_name(service, env), "service.namespace": "kitrading"})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if settings.file is not None:
        provider.add_span_processor(BatchSpanProcessor(_file_exporter(settings.file)))
    _PROVIDER = provider
    _TRACER = provider.get_tracer("kitrading")
    ENABLED = True
    log.info(
        "tracing on",
        extra={"exporter": settings.exporter if exporter is None else "custom", "endpoint": settings.endpoint,
               "file": str(settings.file) if settings.file else None},
    )  # fmt: skip
    return True


def _file_exporter(path: Path) -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a", encoding="utf-8", buffering=1)  # one line per span, kept open for the process
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


def flush(timeout_s: float = 2.0) -> None:
    """Export what is buffered (a worker after a task, a process before it exits)."""
    if _PROVIDER is not None:
        _PROVIDER.force_flush(int(timeout_s * 1000))


def shutdown_tracing() -> None:
    """Flush and turn tracing off (process exit, tests)."""
    global ENABLED, _TRACER, _PROVIDER
    provider, _PROVIDER, _TRACER, ENABLED = _PROVIDER, None, None, False
    if provider is not None:
        provider.shutdown()


# ---- spans -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ActiveSpan:
    """A span this process started and made current (`start_*`); end it with `end`."""

    span: Any
    token: object | None

    def end(self, code: str = "OK", message: str = "") -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if code != "OK":
            self.span.set_attribute("rpc.grpc.status_code", code)
            self.span.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))
        self.span.end()
        if self.token is not None:
            with contextlib.suppress(Exception):  # a generator closed in another context
                context.detach(self.token)  # type: ignore[arg-type]

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")


def _carrier(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (metadata or ()) if isinstance(v, str)}


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def start_server_span(method: str, metadata: Sequence[tuple[str, Any]] | None, peer: str = "") -> ActiveSpan:
    """A SERVER span for one incoming RPC, child of the caller's `traceparent`, made current."""
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(_carrier(metadata))
    span = _TRACER.start_span(
        method.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER, attributes=_rpc_attributes(method)
    )
    if peer:
        span.set_attribute("network.peer.address", peer)
    return ActiveSpan(span, context.attach(trace.set_span_in_context(span, parent)))


@contextlib.contextmanager
def span(
    name: str, *, parent: Mapping[str, str] | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """An INTERNAL span around a block (a training job, an item, a worker task); `parent` a carrier
    (`inject()`'s dict) from elsewhere, else the current context. A no-op while tracing is off."""
    if not ENABLED:
        yield None
        return
    from opentelemetry import propagate

    ctx = propagate.extract(dict(parent)) if parent else None
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    # an exception leaving the block is recorded and sets the span's status to ERROR
    with _TRACER.start_as_current_span(name, context=ctx, attributes=attrs) as current:
        yield current


def inject() -> dict[str, str]:
    """The current context as W3C `traceparent` (and `tracestate`/baggage) headers; {} while off."""
    if not ENABLED:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, or None (off, or no span)."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


# ---- client side -------------------------------------------------------------------------------


def client_interceptors() -> list[Any]:
    """The client interceptors of a mesh channel: one that traces, while tracing is on; else none."""
    if not ENABLED:
        return []
    global _INTERCEPTOR_TYPES
    if not _INTERCEPTOR_TYPES:
        _INTERCEPTOR_TYPES = _interceptor_types()
    return [kind() for kind in _INTERCEPTOR_TYPES]


_INTERCEPTOR_TYPES: tuple[type, ...] = ()


def _interceptor_types() -> tuple[type, ...]:
    """Built on first use: this module is imported by logging, which must not import grpc."""
    import grpc

    def start(details: Any) -> tuple[Any, Any]:
        from opentelemetry import propagate, trace

        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        span_ = _TRACER.start_span(
            method.lstrip("/"), kind=trace.SpanKind.CLIENT, attributes=_rpc_attributes(method)
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span_))
        metadata = [*(details.metadata or ()), *carrier.items()]
        new = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return ActiveSpan(span_, None), new

    # One class per kind: a channel files an interceptor under the first kind it is an instance of.
    class UnaryTracing(grpc.aio.UnaryUnaryClientInterceptor):
        """A CLIENT span per unary call, its context sent as `traceparent`."""

        async def intercept_unary_unary(
            self, continuation: Any, client_call_details: Any, request: Any
        ) -> Any:
            active, details = start(client_call_details)
            call = await continuation(details, request)
            try:
                await call  # the call object is returned as is: its metadata stays readable
            except grpc.aio.AioRpcError as exc:
                active.end(exc.code().name, exc.details() or "")
            except BaseException:
                active.end("CANCELLED")
                raise
            else:
                active.end()
            return call

    class StreamTracing(grpc.aio.UnaryStreamClientInterceptor):
        """A CLIENT span per server-streaming call, ended with the stream."""

        async def intercept_unary_stream(
            self, continuation: Any, client_call_details: Any, request: Any
        ) -> Any:
            active, details = start(client_call_details)
            call = await continuation(details, request)

            async def responses() -> Any:  # the span ends with the stream, however it ends
                code, message = "OK", ""
                try:
                    async for item in call:
                        yield item
                except grpc.aio.AioRpcError as exc:
                    code, message = exc.code().name, exc.details() or ""
                    raise
                except BaseException:
                    code = "CANCELLED"
                    raise
                finally:
                    active.end(code, message)

            return responses()

    return UnaryTracing, StreamTracing
