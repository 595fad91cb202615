"""Where the database is: settings from the environment, and the URL they resolve to.

Resolution: `KITRADING_DATABASE_URL` wins, else `TIMESCALE_HOST` names an external server, else an
embedded PostgreSQL (`services/runtime/embedded.py`) is started under `$KITRADING_HOME/postgres`.
Passwords never appear in logs or reprs: use `describe()` or `redact_url` for anything printed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from services.runtime.embedded import ensure_embedded_running, start_embedded_postgres

DEFAULT_HOME = Path(".kitrading")
EMBEDDED_DIRNAME = "postgres"


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
        """Read the settings from `env` (default `os.environ`).

        `KITRADING_DATABASE_URL`; `TIMESCALE_HOST`, `TIMESCALE_PORT` (5432), `TIMESCALE_DB` (kitrading),
        `TIMESCALE_USER` (postgres), `TIMESCALE_PASSWORD` or `TIMESCALE_PASSWORD_FILE` (wins);
        `KITRADING_HOME` (./.kitrading); `KITRADING_DATABASE_POOL_MIN` / `_MAX` (1 / 10).
        """
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
