"""PostgreSQL for every service: where the database is, and a pool that survives it going away.

Resolution (`DatabaseSettings.from_env` then `resolve_database_url`):

1. `KITRADING_DATABASE_URL` (a `postgresql://` URL) wins;
2. else `TIMESCALE_HOST` (+ `TIMESCALE_PORT` 5432, `TIMESCALE_DB` kitrading, `TIMESCALE_USER` postgres,
   `TIMESCALE_PASSWORD` or `TIMESCALE_PASSWORD_FILE`) names an external server;
3. else an embedded PostgreSQL (package `pgserver`) is started under `$KITRADING_HOME/postgres`
   (`KITRADING_HOME` defaults to `./.kitrading`). Several processes may share it: the first one
   initialises and starts it, later ones attach to the running server, and the last process to exit
   stops it. Handles of processes that died without exiting cleanly are pruned on attach and exit.

`DatabasePool` wraps an asyncpg pool with a health monitor: it probes the server every few seconds and
after every connection error, flips `healthy` (and calls the health listeners) when the database goes
away or comes back, reconnects on its own with exponential backoff, and keeps LISTEN subscriptions
alive across reconnects. While unhealthy every `acquire()` fails fast with `Unavailable`.

Passwords never appear in logs or reprs: use `redact_url` for anything printed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from services.runtime.errors import Unavailable

logger = logging.getLogger(__name__)

DEFAULT_HOME = Path(".kitrading")
EMBEDDED_DIRNAME = "postgres"

HealthListener = Callable[[bool], None]
NotifyCallback = Callable[[str], None]
ResumeCallback = Callable[[], None]
ConnectionInit = Callable[[asyncpg.Connection], Awaitable[None]]


# ---------------------------------------------------------------------------------------------------------
# Settings and resolution


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where the database is. Built from the environment by `from_env`; `password` never printed."""

    url: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int = 5432
    database: str = "kitrading"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    home: Path = DEFAULT_HOME
    pool_min_size: int = 1
    pool_max_size: int = 10

    @property
    def embedded(self) -> bool:
        """True when neither a URL nor a host is configured: an embedded PostgreSQL is used."""
        return not self.url and not self.host

    @property
    def embedded_pgdata(self) -> Path:
        return (self.home / EMBEDDED_DIRNAME).absolute()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        """Read the settings from `env` (default `os.environ`); see the module docstring for names."""
        env = os.environ if env is None else env
        password = env.get("TIMESCALE_PASSWORD") or None
        password_file = env.get("TIMESCALE_PASSWORD_FILE")
        if password_file:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        return cls(
            url=env.get("KITRADING_DATABASE_URL") or None,
            host=env.get("TIMESCALE_HOST") or None,
            port=int(env.get("TIMESCALE_PORT") or 5432),
            database=env.get("TIMESCALE_DB") or "kitrading",
            user=env.get("TIMESCALE_USER") or "postgres",
            password=password,
            home=Path(env.get("KITRADING_HOME") or DEFAULT_HOME),
            pool_min_size=int(env.get("KITRADING_DATABASE_POOL_MIN") or 1),
            pool_max_size=int(env.get("KITRADING_DATABASE_POOL_MAX") or 10),
        )

    def describe(self) -> str:
        """Where the database is, safe to log."""
        if self.url:
            return redact_url(self.url)
        if self.host:
            return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"
        return f"embedded PostgreSQL in {self.embedded_pgdata}"


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


async def resolve_database_url(settings: DatabaseSettings) -> str:
    """The URL to connect to; starts (or attaches to) the embedded server when none is configured."""
    if settings.url:
        return settings.url
    if settings.host:
        auth = quote(settings.user, safe="")
        if settings.password:
            auth += ":" + quote(settings.password, safe="")
        return f"postgresql://{auth}@{settings.host}:{settings.port}/{quote(settings.database, safe='')}"
    return await asyncio.to_thread(start_embedded_postgres, settings.embedded_pgdata)


def revive_hook(settings: DatabaseSettings) -> Callable[[], Awaitable[None]] | None:
    """For an embedded server: a coroutine function that restarts it if it died; else None."""
    if not settings.embedded:
        return None
    pgdata = settings.embedded_pgdata

    async def revive() -> None:
        await asyncio.to_thread(ensure_embedded_running, pgdata)

    return revive


# ---------------------------------------------------------------------------------------------------------
# Embedded PostgreSQL (pgserver)


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless for us.
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that no longer exist from pgserver's handle list (caller holds the lock).

    pgserver stops the server when the last registered process exits; a process killed with SIGKILL
    never unregisters, which would otherwise keep the server running after everyone is gone.
    """
    import psutil

    path = pgdata / ".handle_pids.json"
    if not path.exists():
        return
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (ValueError, TypeError):
        pids = []
    alive = [p for p in pids if psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def start_embedded_postgres(pgdata: Path, *, cleanup_mode: str | None = "stop") -> str:
    """Start (or attach to) the embedded server in `pgdata`; returns its URL (unix socket, no password).

    Safe to call from several processes at once: pgserver serialises initdb and start with an
    inter-process file lock. Blocking (seconds on first start): call it in a thread.
    """
    pgserver = _pgserver()
    pgdata = pgdata.expanduser().absolute()
    # Create the directory ourselves: pgserver's own mkdir(exist_ok=False) races between processes.
    pgdata.mkdir(parents=True, exist_ok=True)
    with pgserver.PostgresServer._lock:
        _prune_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)

    def prune_at_exit() -> None:  # runs before pgserver's own exit hook (atexit is LIFO)
        with pgserver.PostgresServer._lock:
            _prune_dead_handles(pgdata)

    atexit.register(prune_at_exit)
    logger.info("embedded PostgreSQL ready in %s", pgdata)
    return str(server.get_uri())


def ensure_embedded_running(pgdata: Path) -> None:
    """Restart the embedded server in `pgdata` if its postmaster is gone. Blocking."""
    pgserver = _pgserver()
    server = pgserver.get_server(pgdata.expanduser().absolute())
    with pgserver.PostgresServer._lock:
        server.ensure_postgres_running()


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
