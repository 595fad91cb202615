"""PostgreSQL for every service: a pool that survives the database going away, and migrations.

`DatabasePool` wraps an asyncpg pool with a health monitor: it probes the server every few seconds and
after every connection error, flips `healthy` (and calls the health listeners) when the database goes
away or comes back, reconnects on its own with exponential backoff, and keeps LISTEN subscriptions
alive across reconnects. While unhealthy every `acquire()` fails fast with `Unavailable`.

`apply_migrations` is the one migration runner of every service that owns tables (yoyo SQL files,
one schema per service). Where the database is: `services/runtime/database_settings.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from services.runtime.database_settings import redact_url
from services.runtime.errors import Unavailable

logger = logging.getLogger(__name__)

HealthListener = Callable[[bool], None]
NotifyCallback = Callable[[str], None]
ResumeCallback = Callable[[], None]
ConnectionInit = Callable[[asyncpg.Connection], Awaitable[None]]


async def _release_reset(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool. asyncpg's default runs
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release: one more
    round trip per call (a third of a GetSymbol's queries). Pooled connections here hold no session
    state: advisory locks are transaction-scoped (`pg_advisory_xact_lock`), LISTEN has its own
    connection, nobody runs a session-level SET (tested); so only an open transaction is undone."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# ---------------------------------------------------------------------------------------------------------
# Migrations


MIGRATION_LOCK_WAIT_S = 60.0
_CONNECT_TIMEOUT_S = 10


async def apply_migrations(
    url: str,
    directory: Path,
    *,
    schema: str,
    legacy_table: str | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """Apply the pending migrations in `directory` to `schema`; returns the ids applied now.

    Migrations are yoyo SQL files, applied in file-name order (and `-- depends:`), each in its own
    transaction. `schema` is created first and holds yoyo's bookkeeping tables, apart from those of the
    other services in the same database. One migrator per schema at a time: a PostgreSQL advisory lock
    serialises them and, unlike yoyo's own lock row, goes away with a migrator that dies, so a lock row
    left behind by one is cleared under it. `legacy_table`: a table `version text` of the runner used
    before yoyo; migrations it lists are marked applied instead of being run again.

    Raises `Unavailable` when the database cannot be reached, and `TimeoutError` after `timeout_s` (the
    migration's thread then finishes or rolls back on its own; the next call waits for it).
    """
    wait_s = MIGRATION_LOCK_WAIT_S if timeout_s is None else min(timeout_s, MIGRATION_LOCK_WAIT_S)
    work = asyncio.to_thread(_apply_migrations, url, Path(directory), schema, legacy_table, wait_s)
    if timeout_s is None:
        return await work
    async with asyncio.timeout(timeout_s):
        return await work


def _yoyo_url(url: str, schema: str) -> str:
    """`url` as yoyo wants it: the psycopg 3 driver, bookkeeping tables in `schema`."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL (scheme {scheme!r})")
    separator = "&" if "?" in rest else "?"
    return f"postgresql+psycopg://{rest}{separator}connect_timeout={_CONNECT_TIMEOUT_S}&schema={schema}"


def _apply_migrations(
    url: str, directory: Path, schema: str, legacy_table: str | None, wait_s: float
) -> list[str]:
    import psycopg
    from psycopg import sql

    try:
        # This connection holds the advisory lock until the end; a dead migrator's goes with it.
        with psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as lock_conn:
            _advisory_lock(lock_conn, f"{schema}.migrations", wait_s)
            lock_conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            legacy: set[str] = set()
            if legacy_table is not None:
                table = sql.Identifier(schema, legacy_table)
                found = lock_conn.execute("SELECT to_regclass(%s)", [f"{schema}.{legacy_table}"]).fetchone()
                if found is not None and found[0] is not None:
                    rows = lock_conn.execute(sql.SQL("SELECT version FROM {}").format(table)).fetchall()
                    legacy = {str(row[0]) for row in rows}
            return _apply_with_yoyo(_yoyo_url(url, schema), directory, legacy, wait_s)
    except psycopg.OperationalError as exc:
        raise Unavailable(
            f"database unreachable while migrating schema {schema}: {type(exc).__name__}",
            reason="DATABASE_UNAVAILABLE",
        ) from exc


def _advisory_lock(conn: Any, key: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process has been migrating ({key}) for over {wait_s:g} s")
        time.sleep(0.2)


def _apply_with_yoyo(url: str, directory: Path, legacy: set[str], wait_s: float) -> list[str]:
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    try:
        migrations = read_migrations(str(directory))
        backend.break_lock()  # we hold the advisory lock: any lock row is a dead migrator's
        with backend.lock(timeout=wait_s):
            pending = backend.to_apply(migrations)
            adopted = [m for m in pending if m.id in legacy]
            if adopted:
                backend.mark_migrations(adopted)
                pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


# ---------------------------------------------------------------------------------------------------------
# Pool with health


_CONNECTION_LOST_SQLSTATES = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` means the database (or our connection to it) is gone, not a bad query."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _CONNECTION_LOST_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "closed" in text or "closing" in text
    return False


@dataclass(slots=True)
class _Subscription:
    channel: str
    callback: NotifyCallback
    on_resume: ResumeCallback | None


class DatabasePool:
    """An asyncpg pool that tracks database health and reconnects by itself.

    Use `async with pool.acquire() as conn` / `async with pool.transaction() as conn`; both raise
    `Unavailable` when the database is down (and mark the pool unhealthy so the monitor reconnects).
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        health_interval_s: float = 5.0,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 2.0,
        init: ConnectionInit | None = None,
        revive: Callable[[], Awaitable[None]] | None = None,
        name: str = "database",
    ) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._health_interval_s = health_interval_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._init = init
        self._revive = revive
        self._name = name
        self._pool: asyncpg.Pool | None = None
        self._healthy = False
        self._healthy_event = asyncio.Event()
        self._kick = asyncio.Event()
        self._closed = False
        self._monitor: asyncio.Task[None] | None = None
        self._health_listeners: list[HealthListener] = []
        self._subscriptions: list[_Subscription] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DatabasePool({redact_url(self._url)!r}, healthy={self._healthy})"

    @property
    def url(self) -> str:
        """The URL the pool connects to (with any password: print `redact_url(pool.url)`)."""
        return self._url

    # -- life cycle -------------------------------------------------------------------------------------

    async def open(self, *, wait_s: float | None = 30.0) -> None:
        """Create the pool and start the health monitor; wait up to `wait_s` for the first connection.

        Raises `Unavailable` when the database is not reachable within `wait_s` (the monitor keeps
        trying in the background; `wait_s=0` returns at once).
        """
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=0,
            max_size=self._max_size,
            init=self._init_connection,
            timeout=self._connect_timeout_s,
            reset=_release_reset,
        )
        self._monitor = asyncio.create_task(self._run_monitor(), name=f"{self._name}-health")
        if wait_s != 0 and not await self.wait_healthy(wait_s):
            raise Unavailable(f"{self._name} not reachable after {wait_s} s")

    async def close(self) -> None:
        """Stop the monitor, the LISTEN connection and the pool."""
        self._closed = True
        self._kick.set()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._drop_listen_connection()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except Exception:  # connections stuck (database gone mid-query): drop them
                self._pool.terminate()
        self._set_healthy(False)

    # -- health -----------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while the last probe or query reached the database."""
        return self._healthy

    def add_health_listener(self, listener: HealthListener) -> None:
        """Call `listener(healthy)` on every change of `healthy` (from the event loop, must not block)."""
        self._health_listeners.append(listener)

    async def wait_healthy(self, timeout_s: float | None = None) -> bool:
        """Wait until healthy; False if `timeout_s` passed first."""
        if self._healthy:
            return True
        try:
            await asyncio.wait_for(self._healthy_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            self._healthy_event.set()
            logger.info("%s is reachable", self._name)
        else:
            self._healthy_event.clear()
            if not self._closed:
                logger.warning("%s is unreachable; reconnecting in the background", self._name)
        for listener in list(self._health_listeners):
            try:
                listener(healthy)
            except Exception:
                logger.exception("health listener failed")

    def report_connection_lost(self) -> None:
        """Mark the pool unhealthy and make the monitor reconnect now."""
        self._set_healthy(False)
        self._kick.set()

    async def _run_monitor(self) -> None:
        delay = self._retry_initial_s
        while not self._closed:
            if self._healthy:
                await self._sleep_or_kick(self._health_interval_s)
                if self._closed:
                    return
                if not await self._probe(direct=False):
                    self.report_connection_lost()
                    continue
                await self._ensure_listening()
                continue
            if await self._probe(direct=True):
                assert self._pool is not None
                await self._pool.expire_connections()
                self._set_healthy(True)
                delay = self._retry_initial_s
                await self._ensure_listening()
                continue
            await self._try_revive()
            await self._sleep_or_kick(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _sleep_or_kick(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), seconds)
        self._kick.clear()

    async def _probe(self, *, direct: bool) -> bool:
        try:
            if direct:
                conn = await asyncpg.connect(self._url, timeout=self._connect_timeout_s)
                try:
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout_s)
                finally:
                    await conn.close(timeout=1.0)
            else:
                assert self._pool is not None
                async with self._pool.acquire(timeout=self._connect_timeout_s) as pooled:
                    await pooled.fetchval("SELECT 1", timeout=self._connect_timeout_s)
        except Exception as exc:
            if not is_connection_error(exc):
                logger.warning("%s probe failed: %s", self._name, type(exc).__name__)
            return False
        return True

    async def _try_revive(self) -> None:
        if self._revive is None:
            return
        try:
            await self._revive()
        except Exception as exc:
            logger.warning("could not restart %s: %s", self._name, exc)

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        if self._init is not None:
            await self._init(conn)

    # -- queries ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; `Unavailable` when the database is down (before or during use)."""
        if not self._healthy or self._pool is None:
            raise Unavailable(f"{self._name} is unavailable", reason="DATABASE_UNAVAILABLE")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout_s) as conn:
                yield conn
        except Exception as exc:
            if is_connection_error(exc):
                self.report_connection_lost()
                raise Unavailable(f"{self._name} is unavailable", reason="DATABASE_UNAVAILABLE") from exc
            raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction: committed on success, rolled back on error."""
        async with self.acquire() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return str(await conn.execute(query, *args))

    # -- LISTEN -----------------------------------------------------------------------------------------

    async def listen(
        self, channel: str, callback: NotifyCallback, *, on_resume: ResumeCallback | None = None
    ) -> None:
        """Call `callback(payload)` for every NOTIFY on `channel`, across reconnects.

        Notifications sent while the database was unreachable are lost; `on_resume()` is called each
        time the subscription is (re)established so the subscriber can re-read what it missed.
        """
        self._subscriptions.append(_Subscription(channel, callback, on_resume))
        if self._healthy:
            await self._ensure_listening(force=True)

    async def _ensure_listening(self, *, force: bool = False) -> None:
        if not self._subscriptions:
            return
        async with self._listen_lock:
            conn = self._listen_conn
            if conn is not None and not conn.is_closed() and not force:
                return
            await self._drop_listen_connection()
            try:
                conn = await asyncpg.connect(self._url, timeout=self._connect_timeout_s)
                conn.add_termination_listener(self._on_listen_terminated)
                for channel in {s.channel for s in self._subscriptions}:
                    await conn.add_listener(channel, self._dispatch)
            except Exception as exc:
                logger.warning("%s: LISTEN failed (%s); retrying", self._name, type(exc).__name__)
                if is_connection_error(exc):
                    self.report_connection_lost()
                return
            self._listen_conn = conn
        for sub in list(self._subscriptions):
            if sub.on_resume is not None:
                sub.on_resume()

    async def _drop_listen_connection(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=1.0)

    def _on_listen_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._listen_conn and not self._closed:
            self._listen_conn = None
            self.report_connection_lost()

    def _dispatch(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        for sub in list(self._subscriptions):
            if sub.channel == channel:
                try:
                    sub.callback(str(payload))
                except Exception:
                    logger.exception("NOTIFY callback failed")
