"""`ServiceAppBase` on a real server (port 0): hooks, readiness, periodic tasks, the training gauge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import service_pb2_grpc
from services.runtime import app as app_module
from services.runtime import metrics
from services.runtime.app import Periodic, ServiceAppBase, load_settings
from services.runtime.config import ConfigError
from services.runtime.interceptor import Observer, RpcRecord
from services.runtime.server import create_server
from tests.runtime.test_server import FakeDomainServicer, settings


class Plain(ServiceAppBase):
    """A service that does not train: hooks recorded, one periodic task that fails once."""

    def __init__(self) -> None:
        super().__init__("plainsvc", service_pb2_grpc.add_DataServiceServicer_to_server)
        self.servicer = FakeDomainServicer()  # type: ignore[abstract]  # partial on purpose
        self.events: list[str] = []
        self.up = True
        self.ticks = 0
        self.records: list[RpcRecord] = []

    async def on_start(self) -> None:
        self.events.append("start")

    async def on_stop(self) -> None:
        self.events.append("stop")

    def healthy(self) -> bool:
        return self.up

    def periodic(self) -> Sequence[Periodic]:
        return [Periodic("tick", 0.02, self._tick)]

    async def _tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("first tick fails")

    def rpc_observers(self) -> Sequence[Observer]:
        return [self.records.append]


class Training(Plain):
    def __init__(self) -> None:
        super().__init__()
        self.name = "trainsvc"
        self.jobs = 3

    def active_training_jobs(self) -> int:
        return self.jobs


def gauge(service: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("kitrading_training_jobs_active", {"service": service})


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (background tasks change what it reads)."""
    async with asyncio.timeout(5.0):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def test_load_settings_builds_once_and_names_bad_values() -> None:
    calls: list[Mapping[str, str] | None] = []

    def from_env(env: Mapping[str, str] | None) -> str:
        calls.append(env)
        if env and env.get("BAD"):
            raise ValueError("KITRADING_X must be positive, got -1")
        return "built"

    assert load_settings("given", from_env) == "given" and calls == []
    assert load_settings(None, from_env, {"OK": "1"}) == "built" and calls == [{"OK": "1"}]
    with pytest.raises(ConfigError, match="KITRADING_X"):
        load_settings(None, from_env, {"BAD": "1"})

    def config_error(env: Mapping[str, str] | None) -> str:
        raise ConfigError("KITRADING_Y is bad")

    with pytest.raises(ConfigError, match="KITRADING_Y"):
        load_settings(None, config_error)


async def test_plain_app_lifecycle_readiness_and_periodic_tasks(caplog: pytest.LogCaptureFixture) -> None:
    app = Plain()
    assert not app.trains and not app.is_ready()  # not started yet
    assert app.observers == [app.records.append]  # no gauge observer for a service that does not train
    server = await create_server(app, settings())
    try:
        assert app.events == ["start"] and app.is_ready()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
            assert app.records[-1].short_method == "GetSymbol"  # registered and observed
            app.up = False
            assert not app.is_ready()
            health = health_pb2_grpc.HealthStub(channel)
            await until(lambda: server.serving is False)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await until(lambda: app.ticks >= 3)  # the failing first tick did not end the task
        assert "plainsvc tick failed" in caplog.text
    finally:
        await server.stop(0)
    assert app.events == ["start", "stop"] and not app.is_ready()
    ticks = app.ticks
    await asyncio.sleep(0.1)
    assert app.ticks == ticks  # cancelled at stop
    assert gauge("plainsvc") is None


async def test_training_gauge_follows_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "GAUGE_PERIOD_S", 3600.0)  # only start, RPCs and stop update it
    app = Training()
    assert app.trains and len(app.observers) == 2
    server = await create_server(app, settings())
    try:
        assert gauge("trainsvc") == 3  # at start
        app.jobs = 5
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
        await until(lambda: gauge("trainsvc") == 5)  # after the RPC
        app.jobs = 0
    finally:
        await server.stop(0)
    assert gauge("trainsvc") == 0  # after stop


async def test_training_gauge_is_refreshed_periodically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "GAUGE_PERIOD_S", 0.02)
    app = Training()
    app.name = "trainsvc2"
    server = await create_server(app, settings())
    try:
        assert gauge("trainsvc2") == 3
        app.jobs = 9
        await until(lambda: gauge("trainsvc2") == 9)  # without any RPC
    finally:
        await server.stop(0)


def test_every_service_app_is_a_service_app_base() -> None:
    from services.data.app import DataApp
    from services.forecast.app import ForecastApp
    from services.llm.app import LlmApp
    from services.watchdog.app import WatchdogApp

    for cls in (DataApp, ForecastApp, LlmApp, WatchdogApp):
        assert issubclass(cls, ServiceAppBase)
    assert ForecastApp.active_training_jobs is not ServiceAppBase.active_training_jobs
