"""The database going away and coming back; the embedded server shared by several processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from services.data.models import Event, EventType
from services.data.service import DataDomain
from services.runtime.database import DatabasePool
from services.runtime.embedded import ensure_embedded_running
from services.runtime.errors import Unavailable
from tests.conftest import PostgresForTests
from tests.data.conftest import add_symbol

REPO = Path(__file__).resolve().parents[2]


async def _until(predicate: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_unreachable_database_is_unavailable() -> None:
    pool = DatabasePool("postgresql://nobody@127.0.0.1:1/none", retry_max_s=0.1)
    with pytest.raises(Unavailable):
        await pool.open(wait_s=0.5)
    assert not pool.healthy
    with pytest.raises(Unavailable):
        async with pool.acquire():
            pass
    await pool.close()


async def test_outage_flips_health_and_everything_resumes(
    domain: DataDomain, postgres: PostgresForTests
) -> None:
    if postgres.pgdata is None:
        pytest.skip("needs the embedded server")
    transitions: list[bool] = []
    domain.pool.add_health_listener(transitions.append)
    await add_symbol(domain, "BEFORE")

    received: list[Event] = []

    async def watch() -> None:
        async for event in domain.watch_events(types=[EventType.SYMBOL_ADDED]):
            received.append(event)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await add_symbol(domain, "LIVE1")
    await _until(lambda: len(received) == 1)

    # A second pool with the embedded revive hook restarts the server by itself.
    pgdata = postgres.pgdata

    async def revive() -> None:  # what revive_hook() gives a service using the embedded server
        await asyncio.to_thread(ensure_embedded_running, pgdata)

    reviver = DatabasePool(postgres.url, revive=revive, retry_max_s=0.5, health_interval_s=0.2)
    await reviver.open()
    try:
        await asyncio.to_thread(postgres.stop)
        await _until(lambda: not domain.healthy)
        with pytest.raises(Unavailable):
            await domain.get_symbol("BEFORE")
        domain.record_query("/kitrading.data.v1.DataService/GetSymbol", "{}", 1.0, 0, "UNAVAILABLE")

        # Nobody calls postgres.start(): the reviver pool brings the server back.
        assert await domain.pool.wait_healthy(30.0)
    finally:
        await reviver.close()
    assert transitions[:2] == [False, True]

    await add_symbol(domain, "LIVE2")
    await _until(lambda: len(received) == 2)
    assert [e.symbol for e in received] == ["LIVE1", "LIVE2"]
    watcher.cancel()

    logs = await domain.list_query_logs(method="GetSymbol")
    assert [q.code for q in logs.items] == ["UNAVAILABLE"]  # buffered through the outage
    assert (await domain.get_symbol("BEFORE")).symbol == "BEFORE"


_CHILD = """
import sys
from collections.abc import Callable
from pathlib import Path
from services.runtime.embedded import start_embedded_postgres
print(start_embedded_postgres(Path(sys.argv[1])), flush=True)
sys.stdin.readline()
"""


def test_embedded_server_is_shared_by_processes() -> None:
    """Two processes start the same embedded server at once; it stops when the last one exits,
    even when another one was killed without cleaning up."""
    parent = Path(tempfile.mkdtemp(prefix="kitrading-share-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(parent / "postgres")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        urls = {child.stdout.readline().strip() for child in children if child.stdout is not None}
        assert len(urls) == 1
        (url,) = urls
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        children[0].send_signal(signal.SIGKILL)  # dies without unregistering
        children[0].wait(10)
        with psycopg.connect(url) as conn:  # still served for the survivor
            conn.execute("SELECT 1")

        children[1].communicate("\n", timeout=30)  # the last one exits normally: the server stops
        assert children[1].returncode == 0
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        shutil.rmtree(parent, ignore_errors=True)


async def test_a_released_connection_comes_back_clean_in_one_round_trip_less(database_url: str) -> None:
    """The pool's light reset (no `RESET ALL; UNLISTEN *; ...` per release) still undoes a transaction
    a caller left open, and transaction-scoped advisory locks (the event writers') go with it."""
    pool = DatabasePool(database_url, max_size=1)
    await pool.open()
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
            assert conn.is_in_transaction()
        async with pool.acquire() as again:  # max_size 1: the same connection
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT pg_try_advisory_xact_lock(42)")
    finally:
        await pool.close()
