"""Alert history: keyset pagination (memory and PostgreSQL), migrations (also of a database migrated
before yoyo), persistence, DB outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.runtime.database import DatabasePool
from services.runtime.errors import InvalidArgument, Unavailable
from services.watchdog.models import AlertKind, AlertRecord, DeliveryStatus, HealthStatus, TargetKind
from services.watchdog.service import PostgresHistory, WatchdogDomain
from services.watchdog.store import MIGRATIONS_DIR, MemoryAlertStore, PostgresAlertStore, migrate

from .fake_telegram import FakeTelegram
from .helpers import HealthServer, make_settings, wait_until

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def record(n: int, target: str = "svc", *, same_time: bool = False) -> AlertRecord:
    return AlertRecord(
        id=str(uuid.UUID(int=n + 1)),
        created_at=T0 - timedelta(minutes=1) if same_time else T0 + timedelta(seconds=n),
        target=target,
        target_kind=TargetKind.SERVICE,
        kind=AlertKind.DOWN if n % 3 else AlertKind.RECOVERED,
        status=HealthStatus.UNREACHABLE,
        message=f"alert {n}",
        text=f"<b>alert {n}</b>",
        error="UNAVAILABLE: down",
    )


async def check_paging(store: MemoryAlertStore | PostgresAlertStore) -> None:
    for n in range(7):
        await store.save(record(n, "svc" if n % 2 == 0 else "other"))
    for n in range(7, 10):  # equal timestamps: ordered by id
        await store.save(record(n, same_time=True))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list(page_size=3, page_token=token)
        seen += [a.message for a in page.alerts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 4
    assert seen == [f"alert {n}" for n in (6, 5, 4, 3, 2, 1, 0, 9, 8, 7)]

    first = await store.list(page_size=2, target="svc")
    assert [a.message for a in first.alerts] == ["alert 6", "alert 4"]
    rest = await store.list(page_size=10, page_token=first.next_page_token, target="svc")
    assert [a.message for a in rest.alerts] == ["alert 2", "alert 0", "alert 9", "alert 8", "alert 7"]
    assert rest.next_page_token == ""

    with pytest.raises(InvalidArgument) as bad:
        await store.list(page_token="not-a-token")
    assert bad.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument, match="different filters"):
        await store.list(page_token=first.next_page_token, target="other")
    recovered = await store.list(kind=AlertKind.RECOVERED, page_size=2)  # n = 0, 3, 6, 9
    assert [a.message for a in recovered.alerts] == ["alert 6", "alert 3"]
    more = await store.list(kind=AlertKind.RECOVERED, page_token=recovered.next_page_token)
    assert [a.message for a in more.alerts] == ["alert 0", "alert 9"]
    with pytest.raises(InvalidArgument):
        await store.list(page_token=recovered.next_page_token)
    with pytest.raises(InvalidArgument):
        await store.list(page_size=-1)
    with pytest.raises(InvalidArgument):
        await store.list(page_size=1001)
    assert len((await store.list()).alerts) == 10  # 0 = default size

    # save() is an upsert: the delivery outcome lands on the same alert.
    await store.save(_with_delivery(record(6)))
    newest = (await store.list(page_size=1)).alerts[0]
    assert newest.delivery is DeliveryStatus.SENT and newest.delivery_attempts == 2
    assert newest.delivered_at == T0


def _with_delivery(r: AlertRecord) -> AlertRecord:
    return replace(r, delivery=DeliveryStatus.SENT, delivery_attempts=2, delivered_at=T0)


async def test_memory_store_pages_newest_first() -> None:
    await check_paging(MemoryAlertStore())


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[DatabasePool]:
    pool = DatabasePool(database_url, max_size=4, health_interval_s=0.3, retry_max_s=0.3)
    await pool.open()
    yield pool
    await pool.close()


async def test_postgres_store_migrates_and_pages(pool: DatabasePool) -> None:
    assert await migrate(pool) == ["0001_alerts"]
    assert await migrate(pool) == []  # idempotent
    await check_paging(PostgresAlertStore(pool))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM watchdog.alerts") == 10


async def test_a_database_migrated_by_the_old_hand_written_runner_is_recognised(pool: DatabasePool) -> None:
    """Before yoyo, the watchdog ran each file itself and recorded it in `watchdog.schema_migrations`."""
    async with pool.acquire() as conn, conn.transaction():  # what that runner did, step by step
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS watchdog;"
            "CREATE TABLE IF NOT EXISTS watchdog.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute((MIGRATIONS_DIR / "0001_alerts.sql").read_text(encoding="utf-8"))
        await conn.execute("INSERT INTO watchdog.schema_migrations (version) VALUES ('0001_alerts')")
    old = PostgresAlertStore(pool)
    await old.save(record(1))

    assert await migrate(pool) == []  # recognised: nothing run again, nothing fails
    assert await migrate(pool) == []
    async with pool.acquire() as conn:
        applied = await conn.fetch("SELECT migration_id FROM watchdog._yoyo_migration")
    assert [row["migration_id"] for row in applied] == ["0001_alerts"]
    assert [a.message for a in (await old.list()).alerts] == ["alert 1"]
    await old.save(record(2))
    assert [a.message for a in (await PostgresAlertStore(pool).list()).alerts] == ["alert 2", "alert 1"]


async def test_history_survives_a_restart_of_the_watchdog(
    tmp_path: Path, pool: DatabasePool, health_server: HealthServer, fake_telegram: FakeTelegram
) -> None:
    settings = make_settings(tmp_path, telegram=fake_telegram, interval=0.25)
    targets = [("svc", health_server.address, health_server.service)]
    domain = WatchdogDomain(settings, targets=targets, pool=pool, database_address="test-db", check_gpu=False)
    await domain.start()
    try:
        await wait_until(lambda: domain.monitor.get("database").status is HealthStatus.SERVING)  # type: ignore[union-attr]
        assert domain.status().history_persistent
        await health_server.set(serving=False)
        await fake_telegram.wait_for(2, match="NOT_SERVING")
        await domain.alerts.drain(5)  # type: ignore[union-attr]
        test = await domain.send_test_alert("persist me")
    finally:
        await domain.stop()

    again = WatchdogDomain(settings, targets=targets, pool=pool, check_gpu=False)
    page = await again.list_alerts(page_size=1)
    assert [a.id for a in page.alerts] == [test.id] and page.next_page_token
    rest = await again.list_alerts(page_size=5, page_token=page.next_page_token)
    [down] = rest.alerts
    assert down.kind is AlertKind.DOWN and down.delivery is DeliveryStatus.SENT
    assert (
        down.target == "svc"
        and down.target_kind is TargetKind.SERVICE
        and down.status is HealthStatus.NOT_SERVING
    )
    assert down.delivery_attempts == 2 and down.delivered_at is not None


async def test_database_outage_is_alerted_and_history_catches_up(
    tmp_path: Path, postgres, pool: DatabasePool, fake_telegram: FakeTelegram
) -> None:
    settings = make_settings(tmp_path, telegram=fake_telegram, interval=0.25)
    domain = WatchdogDomain(
        settings, pool=pool, database_address="test-db", check_disk=False, check_gpu=False
    )
    await domain.start()
    try:
        await wait_until(lambda: domain.monitor.get("database").status is HealthStatus.SERVING)  # type: ignore[union-attr]
        postgres.stop()
        try:
            await fake_telegram.wait_for(2, match="database", within=10)
            state = domain.monitor.get("database")
            assert state is not None and state.status is HealthStatus.UNREACHABLE
            await wait_until(lambda: domain.status().unsaved_alerts == 1)
            with pytest.raises(Unavailable):
                await domain.list_alerts()
        finally:
            await asyncio.to_thread(postgres.start)
        await fake_telegram.wait_for(2, match="recovered", within=15)
        await wait_until(lambda: domain.status().unsaved_alerts == 0, within=10)
        await domain.alerts.drain(5)  # type: ignore[union-attr]
        history = (await domain.list_alerts()).alerts
        assert [(a.target, a.kind) for a in history] == [
            ("database", AlertKind.RECOVERED),
            ("database", AlertKind.DOWN),
        ]
        assert history[1].delivery is DeliveryStatus.SENT
    finally:
        await domain.stop()


def test_postgres_history_is_the_default_with_a_pool(tmp_path: Path) -> None:
    class NoPool:
        url = "postgresql://never-used"

        def acquire(self):  # pragma: no cover - never called
            raise AssertionError

    domain = WatchdogDomain(make_settings(tmp_path), pool=NoPool(), check_gpu=False)
    assert isinstance(domain.store, PostgresHistory)
    assert [t.name for t in domain.status().targets] == ["database", "disk"]


async def test_a_record_the_database_refuses_never_blocks_the_ones_behind_it(
    pool: DatabasePool, tmp_path: Path
) -> None:
    """PostgreSQL refuses NUL in text. Such an alert (a NUL could come from a probed service's error
    text) is stored with the character replaced, and the alerts after it are recorded as usual."""
    await migrate(pool)
    domain = WatchdogDomain(
        make_settings(tmp_path), targets=[], store=PostgresAlertStore(pool), check_gpu=False
    )
    await domain.start()
    try:
        assert domain.alerts is not None
        await domain.alerts.send_test("a\x00b")
        await domain.alerts.send_test("after it")
        await domain.alerts.drain(5)
        assert domain.status().unsaved_alerts == 0
        messages = [a.message for a in (await domain.list_alerts()).alerts]
        assert any("after it" in m for m in messages), messages
        assert any("a\ufffdb" in m for m in messages), messages
    finally:
        await domain.stop()
