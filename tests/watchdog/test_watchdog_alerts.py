"""WatchdogDomain end to end: real gRPC health servers, the fake Bot API, the alert policy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runtime.errors import InvalidArgument
from services.watchdog.models import (
    AlertEvent,
    AlertKind,
    AlertRecord,
    ChangeEvent,
    DeliveryStatus,
    HealthStatus,
    SnapshotEvent,
    TargetKind,
    WatchEvent,
)
from services.watchdog.service import WatchdogDomain, registry_targets
from services.watchdog.store import MemoryAlertStore

from .fake_telegram import FakeTelegram
from .helpers import CHATS, TOKEN, FlakyStore, HealthServer, make_settings, wait_until

INTERVAL = 0.25


@pytest.fixture
async def make_domain(tmp_path: Path) -> AsyncIterator:
    domains: list[WatchdogDomain] = []

    async def factory(*targets: HealthServer, store=None, **options) -> WatchdogDomain:
        settings = make_settings(tmp_path, interval=INTERVAL, **options)
        domain = WatchdogDomain(
            settings,
            targets=[("svc" if i == 0 else f"svc{i}", s.address, s.service) for i, s in enumerate(targets)],
            store=store or MemoryAlertStore(),
            check_gpu=False,
        )
        domains.append(domain)
        await domain.start()
        return domain

    yield factory
    for domain in domains:
        await domain.stop()


async def alerts(domain: WatchdogDomain) -> list[AlertRecord]:
    assert domain.alerts is not None
    await domain.alerts.drain(5)
    return (await domain.list_alerts(page_size=100)).alerts


async def wait_alerts(domain: WatchdogDomain, count: int, within: float = 5.0) -> list[AlertRecord]:
    found: list[AlertRecord] = []

    async def poll() -> None:
        nonlocal found
        while True:
            found = (await domain.list_alerts(page_size=100)).alerts
            if len(found) >= count:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), within)
    return found


async def serving(domain: WatchdogDomain, name: str = "svc") -> None:
    await wait_until(lambda: domain.monitor.get(name).status is HealthStatus.SERVING)  # type: ignore[union-attr]


async def test_not_serving_alert_then_recovery_message(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram)
    await serving(domain)
    await health_server.set(serving=False)
    down, _ = await fake_telegram.wait_for(2, match="NOT_SERVING")
    assert down.body["parse_mode"] == "HTML"
    assert "<b>svc</b> is <b>NOT_SERVING</b>" in down.text and health_server.address in down.text
    assert {c.chat_id for c in fake_telegram.delivered} == set(CHATS)

    await health_server.set(serving=True)
    recovered = await fake_telegram.wait_for(2, match="recovered")
    assert "<b>svc</b> recovered: <b>SERVING</b>" in recovered[0].text
    assert "Was NOT_SERVING for" in recovered[0].text

    history = await alerts(domain)
    assert [(a.kind, a.delivery, a.delivery_attempts) for a in history] == [
        (AlertKind.RECOVERED, DeliveryStatus.SENT, 2),
        (AlertKind.DOWN, DeliveryStatus.SENT, 2),
    ]
    assert history[1].error == "health status NOT_SERVING" and history[1].status is HealthStatus.NOT_SERVING
    assert history[0].delivered_at is not None


async def test_death_alerts_within_two_intervals(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram)
    await serving(domain)
    await asyncio.sleep(INTERVAL * 0.6)
    died = time.monotonic()
    await health_server.stop()
    await fake_telegram.wait_for(2, match="UNREACHABLE")
    assert time.monotonic() - died <= 2 * INTERVAL + 0.3  # detection + delivery to two chats
    [alert] = await alerts(domain)
    assert alert.kind is AlertKind.DOWN and alert.status is HealthStatus.UNREACHABLE
    assert alert.delivery is DeliveryStatus.SENT and alert.target_kind is TargetKind.SERVICE
    assert "UNAVAILABLE" in (alert.error or "")
    status = domain.status()
    assert status.overall is HealthStatus.UNREACHABLE
    assert status.counts[HealthStatus.UNREACHABLE.value] == 1

    # It comes back on the same port: a recovery message.
    await health_server.start(port=health_server.port)
    await fake_telegram.wait_for(2, match="recovered", within=8)


async def test_one_alert_per_outage_even_when_it_gets_worse(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram)
    await serving(domain)
    await health_server.set(serving=False)
    await fake_telegram.wait_for(2, match="NOT_SERVING")
    await health_server.stop()
    await wait_until(lambda: domain.monitor.get("svc").status is HealthStatus.UNREACHABLE)
    await asyncio.sleep(2 * INTERVAL)  # still down: nothing more
    assert [(a.kind, a.status) for a in await alerts(domain)] == [(AlertKind.DOWN, HealthStatus.NOT_SERVING)]
    await health_server.start(port=health_server.port)
    recovered, _ = await fake_telegram.wait_for(2, match="recovered", within=8)
    assert "Was UNREACHABLE for" in recovered.text


async def test_cooldown_suppresses_repeats_and_their_recoveries(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram, cooldown_minutes=15)
    await serving(domain)
    for _ in range(2):  # flap twice
        await health_server.set(serving=False)
        await wait_until(lambda: domain.alerts.open_outages.get("svc") is AlertKind.DOWN)
        await health_server.set(serving=True)
        await wait_until(lambda: "svc" not in domain.alerts.open_outages)
    history = await alerts(domain)
    assert [(a.kind, a.delivery) for a in history] == [
        (AlertKind.RECOVERED, DeliveryStatus.SUPPRESSED_COOLDOWN),
        (AlertKind.DOWN, DeliveryStatus.SUPPRESSED_COOLDOWN),
        (AlertKind.RECOVERED, DeliveryStatus.SENT),
        (AlertKind.DOWN, DeliveryStatus.SENT),
    ]
    assert "cooldown" in (history[1].delivery_error or "")
    assert len(fake_telegram.delivered) == 4  # two messages, two chats


async def test_zero_cooldown_sends_every_alert(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram, cooldown_minutes=0)
    await serving(domain)
    for _ in range(2):
        await health_server.set(serving=False)
        await wait_until(lambda: "svc" in domain.alerts.open_outages)
        await health_server.set(serving=True)
        await wait_until(lambda: "svc" not in domain.alerts.open_outages)
    assert {a.delivery for a in await alerts(domain)} == {DeliveryStatus.SENT}
    assert len(fake_telegram.delivered) == 8


async def test_delivery_retries_and_outcome_are_recorded(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram, max_attempts=3)
    await serving(domain)
    fake_telegram.fail_next(1, status=500)
    fake_telegram.rate_limit_next(1, retry_after=0.2)
    await health_server.set(serving=False)
    [alert] = await wait_alerts(domain, 1)
    await domain.alerts.drain(5)
    [alert] = await alerts(domain)
    assert alert.delivery is DeliveryStatus.SENT and alert.delivery_attempts == 4

    fake_telegram.fail_next(100, status=500)  # Telegram down: the alert records the failure
    await health_server.set(serving=True)
    await wait_until(lambda: "svc" not in domain.alerts.open_outages)
    recovery = (await alerts(domain))[0]
    assert recovery.kind is AlertKind.RECOVERED and recovery.delivery is DeliveryStatus.FAILED
    assert recovery.delivery_attempts == 6 and recovery.delivered_at is None
    assert (
        recovery.delivery_error
        == "chat 1001: HTTP 500: Internal Server Error; chat 1002: HTTP 500: Internal Server Error"
    )


async def test_test_alert_is_sent_escaped_and_recorded(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram)
    record = await domain.send_test_alert("hello <team> & co")
    assert record.kind is AlertKind.TEST and record.target == "" and record.target_kind is None
    assert record.delivery is DeliveryStatus.SENT and record.delivery_attempts == 2
    assert all("hello &lt;team&gt; &amp; co" in c.text for c in fake_telegram.delivered)
    assert (await alerts(domain))[0].id == record.id
    with pytest.raises(InvalidArgument):
        await domain.send_test_alert("x" * 1025)


async def test_telegram_off_still_records_alerts(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server)  # no token
    status = domain.status()
    assert not status.telegram.enabled and "TELEGRAM_BOT_TOKEN" in status.telegram.reason
    await serving(domain)
    await health_server.set(serving=False)
    [alert] = await wait_alerts(domain, 1)
    assert alert.delivery is DeliveryStatus.TELEGRAM_DISABLED and "Telegram is off" in (
        alert.delivery_error or ""
    )
    test = await domain.send_test_alert()
    assert test.delivery is DeliveryStatus.TELEGRAM_DISABLED
    assert fake_telegram.calls == []


async def test_startup_grace_for_services_still_starting(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    starting = HealthServer()
    await starting.start()
    await starting.stop()  # its port: nothing listens yet
    domain = await make_domain(health_server, starting, telegram=fake_telegram, grace=30)
    await serving(domain)
    await wait_until(lambda: domain.monitor.get("svc1").status is HealthStatus.UNREACHABLE)
    await health_server.stop()  # svc was SERVING: alerts at once despite the grace window
    await fake_telegram.wait_for(2, match="UNREACHABLE")
    await asyncio.sleep(2 * INTERVAL)
    assert [a.target for a in await alerts(domain)] == ["svc"]


async def test_alerts_go_out_while_the_history_database_is_down(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    store = FlakyStore()
    store.down = True
    domain = await make_domain(health_server, telegram=fake_telegram, store=store)
    await serving(domain)
    await health_server.set(serving=False)
    await fake_telegram.wait_for(2, match="NOT_SERVING")
    await wait_until(lambda: domain.status().unsaved_alerts == 1)
    with pytest.raises(ConnectionRefusedError):
        await domain.list_alerts()
    store.down = False  # the database is back: the kept alert is written with its outcome
    await wait_until(lambda: domain.status().unsaved_alerts == 0)
    [alert] = await alerts(domain)
    assert alert.kind is AlertKind.DOWN and alert.delivery is DeliveryStatus.SENT


async def test_token_absent_from_logs_records_and_answers(
    health_server: HealthServer, fake_telegram: FakeTelegram, caplog: pytest.LogCaptureFixture, make_domain
) -> None:
    caplog.set_level(logging.DEBUG)
    domain = await make_domain(health_server, telegram=fake_telegram, max_attempts=2)
    await serving(domain)
    fake_telegram.fail_next(3, status=500)
    await health_server.set(serving=False)
    await fake_telegram.wait_for(1, match="NOT_SERVING")
    await domain.send_test_alert(f"token is {TOKEN}")  # even when someone pastes it
    fake_telegram.tokens = {"other"}  # revoked token: 401 answers
    await domain.send_test_alert("after revocation")
    history = await alerts(domain)
    assert len(history) == 3 and history[0].delivery is DeliveryStatus.FAILED
    texts = [caplog.text, repr(domain), repr(domain.status()), repr(domain.settings)]
    texts += [repr(a) for a in history]
    for text in texts:
        assert TOKEN not in text
        assert TOKEN.split(":")[1] not in text
    assert "HTTP Request: POST" in caplog.text  # httpx did log the calls, redacted


async def test_watch_streams_snapshot_then_changes_and_alerts(
    health_server: HealthServer, fake_telegram: FakeTelegram, make_domain
) -> None:
    domain = await make_domain(health_server, telegram=fake_telegram)
    await serving(domain)
    events: list[WatchEvent] = []

    async def consume() -> None:
        async with contextlib.aclosing(domain.watch(targets=["svc"])) as stream:
            async for event in stream:
                events.append(event)

    consumer = asyncio.create_task(consume())
    await wait_until(lambda: len(events) == 1)
    await health_server.set(serving=False)
    await wait_until(lambda: len(events) == 4)  # change, alert (PENDING), alert (SENT)
    await domain.stop()
    await asyncio.wait_for(consumer, 2)  # stop() ends the stream

    snapshot, change, raised, delivered = events
    assert isinstance(snapshot, SnapshotEvent)
    assert [t.name for t in snapshot.status.targets] == ["svc"]
    assert snapshot.status.targets[0].status is HealthStatus.SERVING
    assert isinstance(change, ChangeEvent)
    assert (change.previous, change.state.status) == (HealthStatus.SERVING, HealthStatus.NOT_SERVING)
    assert isinstance(raised, AlertEvent) and raised.alert.delivery is DeliveryStatus.PENDING
    assert isinstance(delivered, AlertEvent) and delivered.alert.id == raised.alert.id
    assert delivered.alert.delivery is DeliveryStatus.SENT

    with pytest.raises(InvalidArgument):
        await anext(domain.watch(targets=["nope"]))


async def test_status_snapshot_is_sorted_and_complete(
    tmp_path: Path, health_server: HealthServer, fake_telegram: FakeTelegram
) -> None:
    settings = make_settings(tmp_path, telegram=fake_telegram)
    domain = WatchdogDomain(
        settings,
        targets=[("zeta", health_server.address, health_server.service), ("alpha", "127.0.0.1:9", "x.v1.X")],
    )
    status = await domain.check_now()
    assert [(t.name, t.kind) for t in status.targets] == [
        ("alpha", TargetKind.SERVICE),
        ("zeta", TargetKind.SERVICE),
        ("disk", TargetKind.DISK),
        ("gpu", TargetKind.GPU),
    ]
    assert status.overall is HealthStatus.UNREACHABLE and status.check_time is not None
    assert status.telegram.enabled and status.telegram.chat_count == 2
    assert status.telegram.api_host == fake_telegram.base_url and not status.history_persistent
    await domain.stop()


def test_registry_targets_follow_the_mesh_registry() -> None:
    from kitrading.mesh import SERVICES

    targets = registry_targets(
        SERVICES, env={"KITRADING_FORECAST_HOST": "forecast", "KITRADING_DATA_PORT": "4001"}
    )
    by_name = {t.name: t for t in targets}
    assert "watchdog" not in by_name
    assert by_name["data"] == ("data", "127.0.0.1:4001", "kitrading.data.v1.DataService")
    assert by_name["forecast"].address == "forecast:3002"
    assert registry_targets(SERVICES, host="10.0.0.5")[0].address.startswith("10.0.0.5:")


def _supervisor_state(home: Path, restarts: dict[str, tuple[int, int, int | None]]) -> None:
    """`kitrading up`'s state file: child -> (crash restarts, planned restarts, last exit)."""
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    children = {
        name: {"pid": 1000 + i, "restarts": crashes, "planned_restarts": planned, "last_exit": last_exit}
        for i, (name, (crashes, planned, last_exit)) in enumerate(restarts.items())
    }
    (run / "mesh.tmp").write_text(json.dumps({"supervisor_pid": 1, "children": children}))
    (run / "mesh.tmp").replace(run / "mesh.json")


async def test_a_crash_restart_faster_than_a_check_is_alerted(make_domain, tmp_path: Path) -> None:
    """The supervisor restarts a killed service in ~0.3 s, so the checks may never see it down: the
    watchdog reads the supervisor's crash counts and alerts each restart (once per cooldown), not the
    ones from before it started, and not a restart that was asked for (`kitrading restart`)."""
    server = HealthServer()
    await server.start()
    try:
        _supervisor_state(tmp_path, {"svc": (2, 0, None), "gateway": (0, 0, None)})  # before the start
        domain = await make_domain(server, cooldown_minutes=15.0)
        await serving(domain)
        await asyncio.sleep(INTERVAL * 2)  # the baseline read
        _supervisor_state(tmp_path, {"svc": (3, 0, -9), "gateway": (0, 1, 0)})  # a kill -9; a planned one
        found = await wait_alerts(domain, 1)
        assert [(a.kind, a.target) for a in found] == [(AlertKind.RESTARTED, "svc")]
        assert "svc crashed (killed by signal 9) and was restarted (crash restart 3)" in found[0].message
        assert found[0].delivery is DeliveryStatus.TELEGRAM_DISABLED
        assert domain.monitor.get("svc").status is HealthStatus.SERVING
        _supervisor_state(tmp_path, {"svc": (4, 0, 1), "gateway": (0, 1, 0)})  # again, within the cooldown
        found = await wait_alerts(domain, 2)
        assert found[0].kind is AlertKind.RESTARTED and "exit code 1" in found[0].message
        assert found[0].delivery is DeliveryStatus.SUPPRESSED_COOLDOWN  # recorded, not sent again
        await asyncio.sleep(INTERVAL * 2)
        assert len(await alerts(domain)) == 2
    finally:
        await server.stop()


async def test_without_a_supervisor_state_file_nothing_is_watched(make_domain, tmp_path: Path) -> None:
    server = HealthServer()
    await server.start()
    try:
        domain = await make_domain(server)
        await serving(domain)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "mesh.json").write_text("not json")  # unreadable: ignored, no crash
        await asyncio.sleep(INTERVAL * 3)
        assert await alerts(domain) == []
        assert domain._restarts_task is not None and not domain._restarts_task.done()
    finally:
        await server.stop()
