"""Probes and the check loop against real gRPC health servers (grpc.aio, port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.watchdog.models import HealthStatus
from services.watchdog.monitor import Monitor
from services.watchdog.probes import DatabaseProbe, DiskProbe, GpuProbe, GrpcHealthProbe, HttpProbe
from tests.runtime.fake_pynvml import GIB, FakeGpu, FakeNvml, NVMLError, NVMLError_DriverNotLoaded, install

from .helpers import HangingProbe, HealthServer, wait_until

INTERVAL = 0.25


async def test_grpc_probe_maps_every_state(health_server: HealthServer) -> None:
    probe = GrpcHealthProbe("svc", health_server.address, health_server.service)
    other = GrpcHealthProbe("other", health_server.address, "kitrading.nope.v1.NopeService")
    try:
        result = await probe.check(1.0)
        assert result.status is HealthStatus.SERVING and result.error is None
        await health_server.set(serving=False)
        result = await probe.check(1.0)
        assert result.status is HealthStatus.NOT_SERVING and result.error == "health status NOT_SERVING"
        result = await other.check(1.0)
        assert result.status is HealthStatus.UNKNOWN and "NOT_FOUND" in (result.error or "")
        await health_server.stop()
        result = await probe.check(1.0)
        assert result.status is HealthStatus.UNREACHABLE and "UNAVAILABLE" in (result.error or "")
    finally:
        await probe.close()
        await other.close()


async def test_dead_service_detected_within_two_intervals_despite_a_hanging_target(
    health_server: HealthServer,
) -> None:
    hanging = HangingProbe()
    probe = GrpcHealthProbe("svc", health_server.address, health_server.service)
    monitor = Monitor([hanging, probe], interval=INTERVAL, timeout=INTERVAL)
    monitor.start()
    try:
        await wait_until(lambda: monitor.get("svc").status is HealthStatus.SERVING)  # type: ignore[union-attr]
        await asyncio.sleep(INTERVAL * 0.7)  # die at an unlucky moment: just after a check
        await health_server.stop()
        elapsed = await wait_until(
            lambda: monitor.get("svc").status is HealthStatus.UNREACHABLE  # type: ignore[union-attr]
        )
        assert elapsed <= 2 * INTERVAL + 0.1
        hung = monitor.get("hanging")
        assert hung is not None and hung.status is HealthStatus.UNREACHABLE
        assert hung.last_error == f"no answer within {INTERVAL:g} s"
        assert hanging.calls >= 2  # cut off and retried every interval, never blocking "svc"
    finally:
        await monitor.stop()


async def test_state_records_latency_since_and_last_error(health_server: HealthServer) -> None:
    probe = GrpcHealthProbe("svc", health_server.address, health_server.service)
    monitor = Monitor([probe], interval=10, timeout=1)
    try:
        [first] = await monitor.check_now()
        assert first.status is HealthStatus.SERVING and first.latency_ms is not None and first.last_check_time
        await health_server.set(serving=False)
        [down] = await monitor.check_now()
        assert down.status is HealthStatus.NOT_SERVING and down.last_change_time == down.last_check_time
        assert down.last_error == "health status NOT_SERVING" and down.consecutive_failures == 1
        [still] = await monitor.check_now()
        assert still.last_change_time == down.last_change_time and still.consecutive_failures == 2
        await health_server.set(serving=True)
        [up] = await monitor.check_now()
        assert up.status is HealthStatus.SERVING and up.last_change_time > down.last_change_time
        assert up.last_error == "health status NOT_SERVING" and up.last_error_at == still.last_check_time
    finally:
        await monitor.stop()


@contextlib.contextmanager
def http_server(status: list[int]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:pw@127.0.0.1:{server.server_address[1]}/health?key=abc"
    finally:
        server.shutdown()
        server.server_close()


async def test_http_probe_for_the_gateway() -> None:
    status = [200]
    with http_server(status) as url:
        probe = HttpProbe("gateway", url)
        assert "pw" not in probe.address and "key" not in probe.address
        try:
            assert (await probe.check(1.0)).status is HealthStatus.SERVING
            status[0] = 503
            result = await probe.check(1.0)
            assert (
                result.status is HealthStatus.NOT_SERVING and result.error == "HTTP 503 Service Unavailable"
            )
        finally:
            await probe.close()
    probe = HttpProbe("gateway", "http://127.0.0.1:9/health")
    try:
        result = await probe.check(1.0)
        assert (
            result.status is HealthStatus.UNREACHABLE
            and result.error == "ConnectError (http://127.0.0.1:9/health)"
        )
    finally:
        await probe.close()


async def test_database_probe_reports_errors_and_timeouts() -> None:
    async def refused(time_limit: float) -> None:
        raise ConnectionRefusedError("connection refused")

    async def stuck(time_limit: float) -> None:
        await asyncio.sleep(10)

    async def fine(time_limit: float) -> int:
        return 1

    assert (await DatabaseProbe("database", "pg", fine).check(0.5)).status is HealthStatus.SERVING
    result = await DatabaseProbe("database", "pg", refused).check(0.5)
    assert (
        result.status is HealthStatus.UNREACHABLE
        and result.error == "ConnectionRefusedError: connection refused"
    )
    started = time.monotonic()
    result = await DatabaseProbe("database", "pg", stuck).check(0.2)
    assert result.status is HealthStatus.UNREACHABLE and time.monotonic() - started < 1


async def test_disk_probe_threshold(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet"  # KITRADING_HOME before first start: the parent's disk counts
    ok = await DiskProbe("disk", missing, min_free_percent=0, min_free_bytes=0).check(1.0)
    assert ok.status is HealthStatus.SERVING and ok.detail.startswith("free ")
    low = await DiskProbe("disk", missing, min_free_percent=100.1, min_free_bytes=0).check(1.0)
    assert low.status is HealthStatus.NOT_SERVING and (low.error or "").startswith("low disk space")


async def test_gpu_probe_without_pynvml_is_not_applicable() -> None:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        result = await GpuProbe().check(1.0)
        assert result.status is HealthStatus.NOT_APPLICABLE and result.error is None
    else:  # pragma: no cover - machines with pynvml
        result = await GpuProbe().check(5.0)
        assert result.status is not HealthStatus.UNREACHABLE


async def test_gpu_probe_threshold_on_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu(), FakeGpu(total=16 * GIB, used=int(15.5 * GIB))]))
    detail = "gpu0: free 60.0 GiB of 80.0 GiB (75%); gpu1: free 0.5 GiB of 16.0 GiB (3%)"
    ok = await GpuProbe(min_free_percent=2.0).check(1.0)
    assert ok.status is HealthStatus.SERVING and ok.error is None and ok.detail == detail
    low = await GpuProbe(min_free_percent=5.0).check(1.0)
    assert low.status is HealthStatus.NOT_SERVING and low.detail == detail
    assert low.error == "low GPU memory (minimum 5% free): gpu1: free 0.5 GiB of 16.0 GiB (3%)"


@pytest.mark.parametrize(
    ("nvml", "detail"),
    [
        (None, "pynvml is not installed"),
        (FakeNvml(init_error=NVMLError_DriverNotLoaded()), "no NVIDIA driver"),
        (FakeNvml([]), "no GPU"),
    ],
)
async def test_gpu_probe_not_applicable_says_why(
    monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml | None, detail: str
) -> None:
    install(monkeypatch, nvml)
    result = await GpuProbe().check(1.0)
    assert result.status is HealthStatus.NOT_APPLICABLE and result.error is None
    assert result.detail.startswith(detail)


async def test_gpu_probe_failed_read_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu()], read_error=NVMLError("Unknown Error")))
    result = await GpuProbe().check(1.0)
    assert result.status is HealthStatus.UNKNOWN and result.status.is_bad
    assert result.error == "NVML read failed (NVMLError: Unknown Error)"
