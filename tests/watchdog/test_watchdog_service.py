"""WatchdogService over real gRPC (runtime + servicer + app + domain), port 0.

It watches a real gRPC health server (flipped to NOT_SERVING, stopped, started again), keeps its
history in the shared embedded PostgreSQL, and alerts through the fake Bot API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from kitrading import mesh
from kitrading.watchdog.v1 import request_response_pb2 as rr
from kitrading.watchdog.v1 import resources_pb2 as pb
from kitrading.watchdog.v1 import service_pb2_grpc
from services.runtime.config import ConfigError, RuntimeSettings
from services.runtime.database_settings import DatabaseSettings
from services.runtime.server import RunningServer, create_server
from services.watchdog import convert as cv
from services.watchdog.app import WatchdogApp, mesh_targets
from services.watchdog.models import (
    AlertKind,
    AlertRecord,
    DeliveryStatus,
    HealthStatus,
    TargetKind,
    TargetState,
)
from services.watchdog.probes import GrpcTarget

from .fake_telegram import FakeTelegram
from .helpers import TOKEN, HealthServer, make_settings

INTERVAL = 0.25
Stub = service_pb2_grpc.WatchdogServiceStub
Factory = Callable[..., Awaitable[Stub]]


@pytest.fixture
async def watchdog(tmp_path: Path, health_server: HealthServer) -> AsyncIterator[Factory]:
    """Starts a Watchdog server on port 0 that watches `health_server` as target "svc"."""
    servers: list[RunningServer] = []
    channels: list[grpc.aio.Channel] = []

    async def factory(*, database_url: str | None, telegram: FakeTelegram | None = None) -> Stub:
        settings = make_settings(tmp_path, telegram=telegram, interval=INTERVAL, cooldown_minutes=0)
        app = WatchdogApp(
            settings,
            targets=[GrpcTarget("svc", health_server.address, health_server.service)],
            database=DatabaseSettings(url=database_url),
            use_database=database_url is not None,
            check_gpu=False,
        )
        runtime = RuntimeSettings.from_env(mesh.service("watchdog"), env={"KITRADING_WATCHDOG_PORT": "0"})
        server = await create_server(app, runtime)
        servers.append(server)
        channel = grpc.aio.insecure_channel(server.target)
        channels.append(channel)
        return Stub(channel)

    yield factory
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def wait_for(predicate: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.05)


def target(status: pb.MeshStatus, name: str) -> pb.Target:
    return next(t for t in status.targets if t.name == name)


async def svc_status(stub: Stub) -> int:
    return target((await stub.GetStatus(rr.GetStatusRequest(), timeout=5)).status, "svc").status


async def next_event(
    stream: Any, predicate: Callable[[rr.WatchStatusResponse], bool], within: float = 10.0
) -> rr.WatchStatusResponse:
    async with asyncio.timeout(within):
        while True:
            event: rr.WatchStatusResponse = await stream.read()
            assert event is not grpc.aio.EOF
            if predicate(event):
                return event


async def all_alerts(stub: Stub, **filters: Any) -> list[pb.Alert]:
    found: list[pb.Alert] = []
    token = ""
    while True:
        page = await stub.ListAlerts(
            rr.ListAlertsRequest(page_size=2, page_token=token, **filters), timeout=5
        )
        found += page.alerts
        token = page.next_page_token
        if not token:
            return found


async def test_status_stream_alerts_and_history(
    watchdog: Factory, health_server: HealthServer, fake_telegram: FakeTelegram, database_url: str
) -> None:
    stub = await watchdog(database_url=database_url, telegram=fake_telegram)
    await wait_for(lambda: _is(svc_status(stub), pb.TARGET_STATUS_SERVING))
    reply = await stub.GetStatus(rr.GetStatusRequest(), timeout=5)
    status = reply.status
    assert status.telegram_enabled
    assert status.check_interval_seconds == 1  # 0.25 s, in whole seconds never 0
    assert status.alert_cooldown_seconds == 0
    assert [t.kind for t in status.targets] == sorted(t.kind for t in status.targets)  # by kind
    assert {t.name: t.kind for t in status.targets} == {
        "svc": pb.TARGET_KIND_SERVICE,
        "database": pb.TARGET_KIND_DATABASE,
        "disk": pb.TARGET_KIND_DISK,
    }
    await wait_for(lambda: _is(_target_status(stub, "database"), pb.TARGET_STATUS_SERVING))
    svc = target(status, "svc")
    assert svc.address == health_server.address and svc.HasField("last_check_time")
    assert TOKEN not in str(reply)

    stream = stub.WatchStatus(rr.WatchStatusRequest())
    first = await next_event(stream, lambda e: True)
    assert first.WhichOneof("event") == "snapshot"
    assert target(first.snapshot, "svc").status == pb.TARGET_STATUS_SERVING

    # NOT_SERVING: a change, a DOWN alert (pending, then sent), a Telegram message.
    await health_server.set(False)
    change = await next_event(stream, lambda e: e.HasField("change") and e.change.target.name == "svc")
    assert change.change.previous_status == pb.TARGET_STATUS_SERVING
    assert change.change.target.status == pb.TARGET_STATUS_NOT_SERVING
    down = await next_event(
        stream, lambda e: e.HasField("alert") and e.alert.delivery_state == pb.DELIVERY_STATE_SENT
    )
    assert down.alert.target == "svc" and down.alert.kind == pb.ALERT_KIND_DOWN
    assert down.alert.severity == pb.ALERT_SEVERITY_CRITICAL
    assert down.alert.target_kind == pb.TARGET_KIND_SERVICE
    assert await fake_telegram.wait_for(2, match="svc")  # one per chat

    # Stopped: UNREACHABLE (still the same outage: no second alert); back: RECOVERED.
    port = health_server.port
    await health_server.stop()
    unreachable = await next_event(stream, lambda e: e.HasField("change") and e.change.target.name == "svc")
    assert unreachable.change.target.status == pb.TARGET_STATUS_UNREACHABLE
    assert unreachable.change.target.last_error
    await health_server.start(port=port)
    recovered = await next_event(
        stream, lambda e: e.HasField("alert") and e.alert.kind == pb.ALERT_KIND_RECOVERED, within=15
    )
    assert recovered.alert.target == "svc" and recovered.alert.severity == pb.ALERT_SEVERITY_INFO

    # Test alert: sent to every chat, on the stream too; the token appears nowhere.
    fake_telegram.clear()
    sent = await stub.SendTestAlert(rr.SendTestAlertRequest(message="hello from the test"), timeout=10)
    assert sent.alert.kind == pb.ALERT_KIND_TEST and sent.alert.target == ""
    assert sent.alert.delivery_state == pb.DELIVERY_STATE_SENT, sent.alert.delivery_error
    assert TOKEN not in str(sent)
    assert len(await fake_telegram.wait_for(2, match="hello from the test")) == 2
    on_stream = await next_event(stream, lambda e: e.HasField("alert") and e.alert.kind == pb.ALERT_KIND_TEST)
    assert on_stream.alert.alert_id == sent.alert.alert_id
    stream.cancel()

    # History: newest first, paged by 2, filters; the same alerts on every page walk.
    await wait_for(lambda: _count(stub, 3))
    history = await all_alerts(stub)
    kinds = [a.kind for a in history]
    assert kinds == [pb.ALERT_KIND_TEST, pb.ALERT_KIND_RECOVERED, pb.ALERT_KIND_DOWN]
    times = [a.create_time.ToDatetime() for a in history]
    assert times == sorted(times, reverse=True)
    assert len({a.alert_id for a in history}) == 3
    downs = await all_alerts(stub, kind=pb.ALERT_KIND_DOWN)
    assert [a.alert_id for a in downs] == [down.alert.alert_id]
    assert [a.kind for a in await all_alerts(stub, target="svc")] == kinds[1:]
    assert all(a.delivery_state == pb.DELIVERY_STATE_SENT for a in history)
    assert TOKEN not in str(history)

    first_page = await stub.ListAlerts(rr.ListAlertsRequest(page_size=1), timeout=5)
    for bad in (
        rr.ListAlertsRequest(page_size=1, page_token="garbage"),
        rr.ListAlertsRequest(page_size=1, page_token=first_page.next_page_token, target="other"),
        rr.ListAlertsRequest(page_size=5000),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListAlerts(bad, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendTestAlert(rr.SendTestAlertRequest(message="x" * 2000), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = stub.WatchStatus(rr.WatchStatusRequest(targets=["nope"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unknown.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_of_one_target(watchdog: Factory, health_server: HealthServer) -> None:
    stub = await watchdog(database_url=None)
    await wait_for(lambda: _is(svc_status(stub), pb.TARGET_STATUS_SERVING))
    stream = stub.WatchStatus(rr.WatchStatusRequest(targets=["svc"]))
    first = await next_event(stream, lambda e: True)
    assert [t.name for t in first.snapshot.targets] == ["svc"]
    await health_server.set(False)
    change = await next_event(stream, lambda e: e.WhichOneof("event") != "alert")
    assert change.change.target.name == "svc"
    assert change.change.target.status == pb.TARGET_STATUS_NOT_SERVING
    stream.cancel()


async def test_without_telegram_alerts_are_recorded(
    watchdog: Factory, health_server: HealthServer, database_url: str
) -> None:
    stub = await watchdog(database_url=database_url, telegram=None)
    status = (await stub.GetStatus(rr.GetStatusRequest(), timeout=5)).status
    assert not status.telegram_enabled
    await wait_for(lambda: _is(svc_status(stub), pb.TARGET_STATUS_SERVING))
    await health_server.set(False)
    recorded = await wait_for(lambda: _alerts_of(stub, pb.ALERT_KIND_DOWN))
    assert recorded[0].target == "svc"
    assert recorded[0].delivery_state == pb.DELIVERY_STATE_TELEGRAM_DISABLED
    sent = await stub.SendTestAlert(rr.SendTestAlertRequest(), timeout=10)
    assert sent.alert.delivery_state == pb.DELIVERY_STATE_TELEGRAM_DISABLED
    assert "TELEGRAM_BOT_TOKEN" in sent.alert.delivery_error  # says why
    history = await all_alerts(stub)
    assert [a.kind for a in history] == [pb.ALERT_KIND_TEST, pb.ALERT_KIND_DOWN]


async def test_registry_targets_from_the_environment() -> None:
    env = {
        "WATCHDOG_SERVICES": "data,llm,watchdog",
        "KITRADING_DATA_HOST": "data.internal",
        "KITRADING_LLM_PORT": "4009",
    }
    assert mesh_targets(env) == [
        GrpcTarget("data", "data.internal:3001", "kitrading.data.v1.DataService"),
        GrpcTarget("llm", "127.0.0.1:4009", "kitrading.llm.v1.LlmService"),
    ]
    implemented = [s.name for s in mesh.SERVICES if s.implemented and s.name != "watchdog"]
    assert [t.name for t in mesh_targets({})] == implemented
    with pytest.raises(ConfigError, match="WATCHDOG_SERVICES"):
        mesh_targets({"WATCHDOG_SERVICES": "data,bogus"})


def test_targets_honour_the_mesh_wide_service_host() -> None:
    env = {
        "WATCHDOG_SERVICES": "data,llm",
        "KITRADING_SERVICE_HOST": "mesh.internal",
        "KITRADING_LLM_HOST": "gpu1",
    }
    assert [t.address for t in mesh_targets(env)] == ["mesh.internal:3001", "gpu1:3009"]
    with pytest.raises(ConfigError, match="KITRADING_DATA_PORT"):
        mesh_targets({"WATCHDOG_SERVICES": "data", "KITRADING_DATA_PORT": "data"})


def test_values_without_a_twin_in_the_contract() -> None:
    now = datetime.now(UTC)
    gpu = TargetState(
        "gpu", TargetKind.GPU, "nvml", HealthStatus.NOT_APPLICABLE, 1.0, now, now, None, None, "no GPU"
    )
    out = cv.target_out(gpu)
    assert out.status == pb.TARGET_STATUS_UNSPECIFIED
    assert out.detail == "not applicable: no GPU"
    partial = AlertRecord(
        id="00000000-0000-0000-0000-000000000001",
        created_at=now,
        target="svc",
        target_kind=TargetKind.SERVICE,
        kind=AlertKind.DOWN,
        status=HealthStatus.UNREACHABLE,
        message="svc is UNREACHABLE",
        text="svc is UNREACHABLE",
        delivery=DeliveryStatus.PARTIAL,
        delivery_error="chat 1002: HTTP 400",
    )
    alert = cv.alert_out(partial)
    assert alert.delivery_state == pb.DELIVERY_STATE_SENT
    assert alert.delivery_error == "chat 1002: HTTP 400"
    assert cv.alert_kind_in(pb.ALERT_KIND_UNSPECIFIED) is None
    assert cv.alert_kind_in(pb.ALERT_KIND_RECOVERED) is AlertKind.RECOVERED


# ---- small async predicates ----


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _target_status(stub: Stub, name: str) -> int:
    return target((await stub.GetStatus(rr.GetStatusRequest(), timeout=5)).status, name).status


async def _count(stub: Stub, n: int) -> bool:
    return len(await all_alerts(stub)) >= n


async def _alerts_of(stub: Stub, kind: int) -> list[pb.Alert]:
    return await all_alerts(stub, kind=kind)
