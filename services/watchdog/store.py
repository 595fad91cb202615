"""Alert history storage: PostgreSQL schema `watchdog` (migrations in ./migrations), or memory.

Both stores page newest first by (created_at, id) with opaque page tokens (keyset pagination: a
token names the last alert of the previous page, so inserts between calls never shift a page).
`save()` is an upsert: the alert manager writes an alert when it is raised and again when its
delivery outcome is known.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from services.runtime.database import apply_migrations
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.pagination import BAD_TOKEN, decode_token, encode_token, resolve_page_size
from services.watchdog.models import (
    AlertKind,
    AlertPage,
    AlertRecord,
    DeliveryStatus,
    HealthStatus,
    TargetKind,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "watchdog"
LEGACY_MIGRATIONS_TABLE = "schema_migrations"  # bookkeeping of the runner used before yoyo


class AlertStore(Protocol):
    #: True when the history survives a restart.
    persistent: bool

    async def save(self, record: AlertRecord) -> None:
        """Insert the alert, or update its delivery fields when it exists."""
        ...

    async def list(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        """One page of alerts, newest first, optionally only of one target and/or kind.
        Raises InvalidArgument for a bad size or token."""
        ...

    async def close(self) -> None: ...


# ---- page tokens ----

_TOKEN_KIND = "watchdog-alerts"


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: str


def _filters(target: str, kind: AlertKind | None) -> list[str]:
    return [target, kind.value if kind else ""]


def encode_page_token(last: AlertRecord, target: str, kind: AlertKind | None) -> str:
    return encode_token(_TOKEN_KIND, _filters(target, kind), [last.created_at.isoformat(), last.id])


def decode_page_token(token: str, target: str, kind: AlertKind | None) -> Cursor | None:
    """The cursor in `token` ("" = first page). The token must come from a call with the same filters."""
    key = decode_token(token, _TOKEN_KIND, _filters(target, kind))
    if key is None:
        return None
    try:
        cursor = Cursor(datetime.fromisoformat(key[0]), str(uuid.UUID(key[1])))
    except (ValueError, IndexError, TypeError):
        raise InvalidArgument("page_token", "not a token issued by this list", reason=BAD_TOKEN) from None
    if cursor.created_at.tzinfo is None:
        raise InvalidArgument("page_token", "not a token issued by this list", reason=BAD_TOKEN)
    return cursor


def check_page_size(page_size: int) -> int:
    return resolve_page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _page(rows: Sequence[AlertRecord], size: int, target: str, kind: AlertKind | None) -> AlertPage:
    alerts = list(rows[:size])
    token = encode_page_token(alerts[-1], target, kind) if len(rows) > size else ""
    return AlertPage(alerts=alerts, next_page_token=token)


# ---- memory ----


class MemoryAlertStore:
    """History in memory (no database configured, and tests). Keeps the newest `max_alerts`."""

    persistent = False

    def __init__(self, max_alerts: int = 10_000) -> None:
        self._alerts: dict[str, AlertRecord] = {}
        self._max = max_alerts

    async def save(self, record: AlertRecord) -> None:
        self._alerts[record.id] = record
        if len(self._alerts) > self._max:
            oldest = min(self._alerts.values(), key=lambda a: (a.created_at, a.id))
            del self._alerts[oldest.id]

    async def list(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        size = check_page_size(page_size)
        cursor = decode_page_token(page_token, target, kind)
        ordered = sorted(self._alerts.values(), key=lambda a: (a.created_at, a.id), reverse=True)
        rows = [
            a
            for a in ordered
            if (not target or a.target == target)
            and (kind is None or a.kind is kind)
            and (cursor is None or (a.created_at, a.id) < (cursor.created_at, cursor.id))
        ]
        return _page(rows[: size + 1], size, target, kind)

    async def close(self) -> None:
        return None


# ---- PostgreSQL ----


class Pool(Protocol):
    """What the store needs of a connection pool (a `DatabasePool` fits)."""

    def acquire(self) -> AbstractAsyncContextManager[Any]: ...

    @property
    def url(self) -> str:
        """Where the migrations connect."""
        ...


_COLUMNS = (
    "id, created_at, target, target_kind, kind, status, message, text, error, "
    "delivery, delivery_attempts, delivery_error, delivered_at"
)


async def migrate(pool: Pool, *, limit_seconds: float = 60.0) -> list[str]:
    """Apply the pending migrations of schema `watchdog` (./migrations/*.sql, in name order); returns
    their names. A database migrated by the hand-written runner used before (its versions are in
    `watchdog.schema_migrations`) is recognised: those migrations are marked applied, not run again."""
    return await apply_migrations(
        pool.url, MIGRATIONS_DIR, schema=SCHEMA, legacy_table=LEGACY_MIGRATIONS_TABLE, timeout_s=limit_seconds
    )


class PostgresAlertStore:
    """History in `watchdog.alerts`. Every call gives up after `timeout` seconds (Unavailable)."""

    persistent = True

    def __init__(self, pool: Pool, *, timeout: float = 10.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def save(self, record: AlertRecord) -> None:
        async def run() -> None:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.alerts ({_COLUMNS}) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
                    "ON CONFLICT (id) DO UPDATE SET delivery = EXCLUDED.delivery, "
                    "delivery_attempts = EXCLUDED.delivery_attempts, "
                    "delivery_error = EXCLUDED.delivery_error, delivered_at = EXCLUDED.delivered_at, "
                    "updated_at = now()",
                    uuid.UUID(record.id),
                    record.created_at,
                    record.target,
                    record.target_kind.value if record.target_kind is not None else None,
                    record.kind.value,
                    record.status.value if record.status is not None else None,
                    record.message,
                    record.text,
                    record.error,
                    record.delivery.value,
                    record.delivery_attempts,
                    record.delivery_error,
                    record.delivered_at,
                )

        async with asyncio.timeout(self._timeout):
            await run()

    async def list(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        size = check_page_size(page_size)
        cursor = decode_page_token(page_token, target, kind)

        async def run() -> list[Any]:
            async with self._pool.acquire() as conn:
                rows: list[Any] = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM {SCHEMA}.alerts "
                    "WHERE ($1::text = '' OR target = $1) AND ($2::text = '' OR kind = $2) "
                    "AND ($3::timestamptz IS NULL OR (created_at, id) < ($3::timestamptz, $4::uuid)) "
                    "ORDER BY created_at DESC, id DESC LIMIT $5",
                    target,
                    kind.value if kind else "",
                    cursor.created_at if cursor else None,
                    uuid.UUID(cursor.id) if cursor else None,
                    size + 1,
                )
                return rows

        try:
            async with asyncio.timeout(self._timeout):
                rows = await run()
        except (TimeoutError, OSError) as exc:
            raise Unavailable(
                f"alert history is unavailable: database {type(exc).__name__}", reason="DATABASE_UNAVAILABLE"
            ) from None
        except Exception as exc:
            if _is_connection_error(exc):
                raise Unavailable(
                    f"alert history is unavailable: database {type(exc).__name__}",
                    reason="DATABASE_UNAVAILABLE",
                ) from None
            raise
        return _page([_record(row) for row in rows], size, target, kind)

    async def close(self) -> None:
        return None


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.CannotConnectNowError,
    )


def _record(row: Any) -> AlertRecord:
    return AlertRecord(
        id=str(row["id"]),
        created_at=row["created_at"],
        target=row["target"],
        target_kind=TargetKind(row["target_kind"]) if row["target_kind"] else None,
        kind=AlertKind(row["kind"]),
        status=HealthStatus(row["status"]) if row["status"] else None,
        message=row["message"],
        text=row["text"],
        error=row["error"],
        delivery=DeliveryStatus(row["delivery"]),
        delivery_attempts=row["delivery_attempts"],
        delivery_error=row["delivery_error"],
        delivered_at=row["delivered_at"],
    )
