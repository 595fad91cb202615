"""The TimescaleDB path against a real TimescaleDB server (PostgreSQL 16.2 + TimescaleDB 2.19.3, built by
deploy/timescaledb.sh): configured through `TIMESCALE_*`, the Data service makes candles a hypertable,
and every candle operation behaves as on the embedded server. A server that has the extension but
cannot load it keeps a plain table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.data.models import Candle, EventType, Timeframe
from services.data.samples import SAMPLES
from services.data.service import DataDomain
from services.runtime.database_settings import DatabaseSettings
from services.runtime.errors import NotFound
from tests.data.conftest import add_symbol, make_settings
from tests.data.timescale import ROOT, TimescaleServer, remove_timescale, start_timescale

pytestmark = pytest.mark.slow
H1, D1 = Timeframe.H1, Timeframe.D1


@pytest.fixture(scope="module")
def timescale() -> Iterator[TimescaleServer]:
    server = start_timescale()
    yield server
    remove_timescale(server)


async def _sql(url: str, query: str, *args: object) -> Any:
    """The first value of `query`'s first row (None for statements), on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _create_database(server: TimescaleServer, name: str) -> None:
    await _sql(server.url(), f'CREATE DATABASE "{name}"')


async def _dbtool(env: dict[str, str], *args: str) -> None:
    """deploy/dbtool.py (what backup.sh / restore.sh run), which must succeed."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "deploy" / "dbtool.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _timescale_env(server: TimescaleServer, database: str) -> dict[str, str]:
    """How users point the mesh at their TimescaleDB (MISSION.md's variable names)."""
    return {
        "TIMESCALE_HOST": server.host,
        "TIMESCALE_PORT": str(server.port),
        "TIMESCALE_DB": database,
        "TIMESCALE_USER": "postgres",
    }


@pytest.fixture
async def ts_domain(timescale: TimescaleServer) -> AsyncIterator[DataDomain]:
    await _create_database(timescale, "kitrading_ts")
    database = DatabaseSettings.from_env(_timescale_env(timescale, "kitrading_ts"))
    assert not database.embedded and database.host == "127.0.0.1"
    placeholder = make_settings("postgresql://unused")  # its database is replaced at once
    domain = DataDomain.create(replace(placeholder, database=replace(database, pool_max_size=5)))
    await domain.start()
    yield domain
    await domain.close()
    await _sql(timescale.url(), 'DROP DATABASE IF EXISTS "kitrading_ts" WITH (FORCE)')


async def _hypertables(url: str) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT hypertable_schema, hypertable_name, num_chunks FROM timescaledb_information.hypertables"
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


async def test_candles_are_a_hypertable_and_behave_as_on_postgres(
    timescale: TimescaleServer, ts_domain: DataDomain, eurusd: list[Candle]
) -> None:
    url = timescale.url("kitrading_ts")
    version = await _sql(url, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert version == "2.19.3"
    assert await _hypertables(url) == [("data", "candles", 0)]

    # Idempotent upsert, coverage, latest and range pages, over 30-day chunks.
    await add_symbol(ts_domain)
    first = await ts_domain.upsert_candles("EURUSD", H1, eurusd[:3000])
    assert first.upserted == 3000
    assert (await ts_domain.upsert_candles("EURUSD", H1, eurusd[:3000])).upserted == 0
    await ts_domain.upsert_candles("EURUSD", H1, eurusd)
    (_, _, chunks), = await _hypertables(url)  # fmt: skip
    days = (eurusd[-1].time - eurusd[0].time).days
    assert chunks >= days // 30, (chunks, days)
    (series,) = (await ts_domain.get_symbol("EURUSD")).series
    assert (series.count, series.first_time, series.last_time) == (
        len(eurusd),
        eurusd[0].time,
        eurusd[-1].time,
    )
    assert await ts_domain.get_latest_candle("EURUSD", H1) == eurusd[-1]
    start, end = eurusd[100].time, eurusd[1300].time  # spans chunk boundaries
    got: list[Candle] = []
    token = ""
    while True:
        page = await ts_domain.list_candles(
            "EURUSD", H1, start_time=start, end_time=end, page_size=500, page_token=token
        )
        got += page.items
        token = page.next_page_token
        if not token:
            break
    assert got == eurusd[100:1300]
    newest = await ts_domain.list_candles("EURUSD", H1, page_size=3, descending=True)
    assert newest.items == tuple(reversed(eurusd[-3:]))
    stats = await ts_domain.get_symbol_stats("EURUSD", H1, lookback=500)
    assert stats.bars == 500 and stats.last_candle == eurusd[-1]

    # Deleting the symbol removes its candles from every chunk.
    await ts_domain.delete_symbol("EURUSD")
    assert await _sql(url, "SELECT count(*) FROM data.candles") == 0
    with pytest.raises(NotFound):
        await ts_domain.get_latest_candle("EURUSD", H1)


async def test_samples_import_and_restart_keep_the_hypertable(
    timescale: TimescaleServer, ts_domain: DataDomain
) -> None:
    imported = await ts_domain.import_samples()
    assert {(d.symbol, d.timeframe) for d in imported} == {(s.symbol, s.timeframe) for s in SAMPLES}
    total = sum(d.candles for d in imported)
    assert total > 20_000
    ingested = [
        e
        for e in (await ts_domain.list_events(page_size=1000)).events
        if e.type is EventType.CANDLES_INGESTED
    ]
    assert len(ingested) == len(SAMPLES)

    # A second service start on the same database: no migration re-applied, nothing lost or doubled.
    url = timescale.url("kitrading_ts")
    again = DataDomain.create(ts_domain.settings)
    await again.start()
    try:
        assert sum(d.candles for d in await again.import_samples()) == total
        goog = await again.get_latest_candle("GOOG", D1)
        assert goog.time.year >= 2013
    finally:
        await again.close()
    assert await _sql(url, "SELECT count(*) FROM data.candles") == total
    ((schema, name, chunks),) = await _hypertables(url)
    assert (schema, name) == ("data", "candles") and chunks > 1


async def test_extension_present_but_not_preloaded_keeps_a_plain_table(eurusd: list[Candle]) -> None:
    server = start_timescale(preload=False)
    try:
        await _create_database(server, "plain")
        url = server.url("plain")
        domain = DataDomain.create(make_settings(url))
        await domain.start()
        try:
            await add_symbol(domain)
            assert (await domain.upsert_candles("EURUSD", H1, eurusd[:500])).upserted == 500
            assert await domain.get_latest_candle("EURUSD", H1) == eurusd[499]
        finally:
            await domain.close()
        assert await _sql(url, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
        assert (
            await _sql(url, "SELECT relkind::text FROM pg_class WHERE oid = 'data.candles'::regclass") == "r"
        )
    finally:
        remove_timescale(server)


async def test_backup_and_restore_keep_the_hypertable(
    timescale: TimescaleServer, ts_domain: DataDomain, eurusd: list[Candle], tmp_path: Path
) -> None:
    """deploy/dbtool.py (what backup.sh/restore.sh run) with TimescaleDB's pre/post restore."""
    await add_symbol(ts_domain)
    await ts_domain.upsert_candles("EURUSD", H1, eurusd)
    await ts_domain.close()
    env = {**os.environ, **_timescale_env(timescale, "kitrading_ts")}
    env.pop("KITRADING_DATABASE_URL", None)
    dump = str(tmp_path / "kitrading.dump")
    await _dbtool(env, "dump", dump)
    url = timescale.url("kitrading_ts")
    await _sql(url, "DELETE FROM data.candles WHERE time < $1", eurusd[1000].time)
    await _dbtool(env, "restore", dump)
    ((schema, name, chunks),) = await _hypertables(url)
    assert (schema, name) == ("data", "candles") and chunks > 1
    restored = DataDomain.create(ts_domain.settings)
    await restored.start()
    try:
        page = await restored.list_candles("EURUSD", H1, page_size=5000)
        assert page.items == tuple(eurusd[:5000])
        assert await restored.get_latest_candle("EURUSD", H1) == eurusd[-1]
    finally:
        await restored.close()
