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

from services.runtime.config import (
    HOME,
    HOST_PATTERN,
    ConfigError,
    IntVar,
    SecretVar,
    TextVar,
    Var,
    check_fields,
    read_fields,
)
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

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError(
                f"KITRADING_DATABASE_POOL_MIN ({self.pool_min_size}) must not exceed "
                f"KITRADING_DATABASE_POOL_MAX ({self.pool_max_size})"
            )

    @property
    def embedded(self) -> bool:
        """True when neither a URL nor a host is configured: an embedded PostgreSQL is used."""
        return not self.url and not self.host

    @property
    def embedded_pgdata(self) -> Path:
        return (self.home / EMBEDDED_DIRNAME).absolute()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        """Read the settings from `env` (default `os.environ`) through `FIELDS`; a bad value raises
        ConfigError naming the variable (`TIMESCALE_PASSWORD_FILE` wins over the password)."""
        env = os.environ if env is None else env
        values = read_fields(cls(), FIELDS, env)
        values["home"] = Path(values["home"])
        values["password"] = values["password"] or None
        return cls(**values)

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


#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "url": TextVar("KITRADING_DATABASE_URL", "a postgresql:// URL", r"postgres(ql)?://\S+"),
    "host": TextVar("TIMESCALE_HOST", "a host name or address", HOST_PATTERN),
    "port": IntVar("TIMESCALE_PORT", 1, 65535),
    "database": TextVar("TIMESCALE_DB"),
    "user": TextVar("TIMESCALE_USER"),
    "password": SecretVar("TIMESCALE_PASSWORD"),
    "home": HOME,
    "pool_min_size": IntVar("KITRADING_DATABASE_POOL_MIN", 1, 1000),
    "pool_max_size": IntVar("KITRADING_DATABASE_POOL_MAX", 1, 1000),
}
