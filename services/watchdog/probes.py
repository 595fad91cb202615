"""Probes: one small class per kind of target, each answering "how is it right now?".

This is the only watchdog module that talks gRPC, and only through the standard health-checking
client (`grpc.health.v1.Health/Check`). A probe never raises for a failed target: it returns a
`ProbeResult` with UNREACHABLE / NOT_SERVING / UNKNOWN and an error text. The monitor adds a hard
timeout around every call, so a probe that hangs cannot stall anything else.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.gpu import read_gpus
from services.runtime.logging import redact
from services.watchdog.models import HealthStatus, ProbeResult, TargetKind


class GrpcTarget(NamedTuple):
    """A gRPC service to watch: display name, `host:port`, and the health service name
    (the fully-qualified protobuf service, e.g. `kitrading.data.v1.DataService`; "" = whole server)."""

    name: str
    address: str
    service: str = ""


class _OneThreadAtATime:
    """Runs a blocking read in a worker thread, never more than one at a time per probe.

    A stuck file system or driver call cannot be cancelled; the monitor's timeout gives up waiting,
    and later checks wait on the same call instead of piling up threads.
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[Any] | None = None

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(asyncio.to_thread(fn))
        return await asyncio.shield(self._pending)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# ---- gRPC health ----

_HEALTH_STATUS = {
    health_pb2.HealthCheckResponse.SERVING: HealthStatus.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING: HealthStatus.NOT_SERVING,
    health_pb2.HealthCheckResponse.UNKNOWN: HealthStatus.UNKNOWN,
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: HealthStatus.UNKNOWN,
}

# The server answered, so it is up, but it cannot tell us the service's health.
_ANSWERED_CODES = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


class GrpcHealthProbe:
    """`Health/Check` over one long-lived channel per target.

    The channel reconnects on its own; its reconnect backoff is capped at `reconnect_max_seconds`
    so a restarted service is seen SERVING again within about one check interval.
    """

    kind = TargetKind.SERVICE

    def __init__(self, name: str, address: str, service: str = "", *, reconnect_max_seconds: float = 5.0):
        self.name = name
        self.address = address
        self.service = service
        self._reconnect_max_ms = max(100, int(reconnect_max_seconds * 1000))
        self._channel: grpc.aio.Channel | None = None
        self._stub: health_pb2_grpc.HealthStub | None = None

    def _get_stub(self) -> health_pb2_grpc.HealthStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.address,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", min(1000, self._reconnect_max_ms)),
                    ("grpc.min_reconnect_backoff_ms", min(1000, self._reconnect_max_ms)),
                    ("grpc.max_reconnect_backoff_ms", self._reconnect_max_ms),
                    ("grpc.enable_retries", 0),
                ],
            )
            self._stub = health_pb2_grpc.HealthStub(self._channel)
        return self._stub

    async def check(self, time_limit: float) -> ProbeResult:
        stub = self._get_stub()
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=time_limit
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            text = redact(f"{code.name}: {exc.details() or ''}".rstrip(": "))
            if code in _ANSWERED_CODES:
                return ProbeResult(HealthStatus.UNKNOWN, error=text, detail="health status not available")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                text = f"no answer within {time_limit:g} s"
            return ProbeResult(HealthStatus.UNREACHABLE, error=text)
        status = _HEALTH_STATUS.get(response.status, HealthStatus.UNKNOWN)
        if response.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            return ProbeResult(status, error=f"health server does not know service {self.service!r}")
        if status is HealthStatus.SERVING:
            return ProbeResult(status)
        return ProbeResult(status, error=f"health status {status.value}")

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


# ---- HTTP (the gateway) ----


def display_url(url: str) -> str:
    """The URL without user info or query (which could hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class HttpProbe:
    """GET a health URL: 2xx is SERVING, any other status NOT_SERVING, no answer UNREACHABLE."""

    kind = TargetKind.GATEWAY

    def __init__(self, name: str, url: str, *, transport: httpx.AsyncBaseTransport | None = None):
        self.name = name
        self.url = url
        self.address = display_url(url)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def check(self, time_limit: float) -> ProbeResult:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
        try:
            response = await self._client.get(self.url, timeout=time_limit)
        except httpx.TimeoutException:
            return ProbeResult(HealthStatus.UNREACHABLE, error=f"no answer within {time_limit:g} s")
        except httpx.HTTPError as exc:
            # httpx messages may contain the URL: show only the exception type and the host.
            return ProbeResult(HealthStatus.UNREACHABLE, error=f"{type(exc).__name__} ({self.address})")
        if 200 <= response.status_code < 300:
            return ProbeResult(HealthStatus.SERVING, detail=f"HTTP {response.status_code}")
        return ProbeResult(
            HealthStatus.NOT_SERVING,
            error=f"HTTP {response.status_code} {response.reason_phrase}".strip(),
            detail=f"HTTP {response.status_code}",
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# ---- PostgreSQL ----


class DatabaseProbe:
    """Runs `SELECT 1` through `ping(time_limit)` (a coroutine function from the owner of the pool)."""

    kind = TargetKind.DATABASE

    def __init__(self, name: str, address: str, ping: Callable[[float], Awaitable[Any]]):
        self.name = name
        self.address = address
        self._ping = ping

    async def check(self, time_limit: float) -> ProbeResult:
        try:
            async with asyncio.timeout(time_limit):
                await self._ping(time_limit)
        except TimeoutError:
            return ProbeResult(HealthStatus.UNREACHABLE, error=f"no answer within {time_limit:g} s")
        except Exception as exc:
            return ProbeResult(HealthStatus.UNREACHABLE, error=_error_text(exc))
        return ProbeResult(HealthStatus.SERVING)

    async def close(self) -> None:
        return None


# ---- Disk ----


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


class DiskProbe:
    """Free space of the file system holding `path` (KITRADING_HOME, or its nearest existing parent)."""

    kind = TargetKind.DISK

    def __init__(self, name: str, path: Path, *, min_free_percent: float, min_free_bytes: int):
        self.name = name
        self.path = path
        self.address = str(path)
        self.min_free_percent = min_free_percent
        self.min_free_bytes = min_free_bytes
        self._thread = _OneThreadAtATime()

    def _usage(self) -> shutil._ntuple_diskusage:
        path = self.path
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path)

    async def check(self, time_limit: float) -> ProbeResult:
        try:
            usage = await self._thread.run(self._usage)
        except OSError as exc:
            return ProbeResult(HealthStatus.UNKNOWN, error=_error_text(exc))
        percent = 100.0 * usage.free / usage.total if usage.total else 0.0
        detail = f"free {_gib(usage.free)} of {_gib(usage.total)} ({percent:.0f}%)"
        if percent < self.min_free_percent or usage.free < self.min_free_bytes:
            limit = f"minimum {self.min_free_percent:g}% and {_gib(self.min_free_bytes)}"
            error = f"low disk space: {detail}; {limit}"
            return ProbeResult(HealthStatus.NOT_SERVING, error=error, detail=detail)
        return ProbeResult(HealthStatus.SERVING, detail=detail)

    async def close(self) -> None:
        return None


# ---- GPU memory ----


class GpuProbe:
    """Free memory on every NVIDIA GPU (`services.runtime.gpu`); NOT_APPLICABLE without pynvml,
    driver or GPU, UNKNOWN when NVML is there but its read failed."""

    kind = TargetKind.GPU

    def __init__(self, name: str = "gpu", *, min_free_percent: float = 5.0):
        self.name = name
        self.address = "nvml"
        self.min_free_percent = min_free_percent
        self._thread = _OneThreadAtATime()

    def _read(self) -> ProbeResult:
        reading = read_gpus()
        if reading.failed:
            return ProbeResult(HealthStatus.UNKNOWN, error=redact(reading.unavailable))
        if not reading.available:
            return ProbeResult(HealthStatus.NOT_APPLICABLE, detail=reading.unavailable)
        parts: list[str] = []
        low: list[str] = []
        for gpu in reading.gpus:
            free = f"free {_gib(gpu.memory_free_bytes)} of {_gib(gpu.memory_total_bytes)}"
            part = f"gpu{gpu.index}: {free} ({gpu.memory_free_percent:.0f}%)"
            parts.append(part)
            if gpu.memory_free_percent < self.min_free_percent:
                low.append(part)
        detail = "; ".join(parts)
        if low:
            return ProbeResult(
                HealthStatus.NOT_SERVING,
                error=f"low GPU memory (minimum {self.min_free_percent:g}% free): " + "; ".join(low),
                detail=detail,
            )
        return ProbeResult(HealthStatus.SERVING, detail=detail)

    async def check(self, time_limit: float) -> ProbeResult:
        result: ProbeResult = await self._thread.run(self._read)
        return result

    async def close(self) -> None:
        return None
