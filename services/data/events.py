"""The Data event stream: events persisted in `data.events`, fanned out with LISTEN/NOTIFY.

Ordering: every writer takes one transaction-scoped advisory lock right before inserting its events,
as the last statement of its transaction. Ids are therefore allocated and committed in the same
order, so once a reader has seen id N no event with a smaller id can appear later. That makes
"everything with id > last seen" a complete, duplicate-free resume point.

Fan-out: a trigger sends `pg_notify('kitrading_data_events', {"id", "type", "symbol"})` per row at
commit. Notifications only wake watchers; watchers always read the events themselves from the table
by id (`id > last sent`), so a notification that races with the replay, or is lost while the
database was away, can never cause a gap or a duplicate. After a reconnect every watcher is woken
to re-read, and an idle watcher re-reads every `poll_s` seconds as a last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from services.data.models import (
    CandlesIngested,
    Event,
    EventDetails,
    EventPage,
    EventType,
    MarketEvent,
    NewEvent,
    SyncFinished,
    Timeframe,
)
from services.runtime.database import DatabasePool
from services.runtime.errors import Unavailable
from services.runtime.jobs import JobState

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "kitrading_data_events"
EVENT_LOCK_KEY = 0x6B69_0001  # pg_advisory_xact_lock key serialising event writers
REPLAY_BATCH = 500


# ---------------------------------------------------------------------------------------------------------
# details <-> JSON


def _details_to_json(details: EventDetails | None) -> dict[str, Any] | None:
    if details is None:
        return None
    if isinstance(details, CandlesIngested):
        return {
            "kind": "candles_ingested",
            "count": details.count,
            "first_time": details.first_time.isoformat(),
            "last_time": details.last_time.isoformat(),
        }
    if isinstance(details, MarketEvent):
        return {
            "kind": "market_event",
            "time": details.time.isoformat(),
            "log_return": details.log_return,
            "z_score": details.z_score,
            "threshold": details.threshold,
        }
    return {
        "kind": "sync_finished",
        "job_id": details.job_id,
        "state": details.state.value,
        "candles_upserted": details.candles_upserted,
    }


def _details_from_json(data: dict[str, Any] | None) -> EventDetails | None:
    if not data:
        return None
    kind = data.get("kind")
    if kind == "candles_ingested":
        return CandlesIngested(
            int(data["count"]),
            datetime.fromisoformat(data["first_time"]),
            datetime.fromisoformat(data["last_time"]),
        )
    if kind == "market_event":
        return MarketEvent(
            datetime.fromisoformat(data["time"]),
            float(data["log_return"]),
            float(data["z_score"]),
            float(data["threshold"]),
        )
    if kind == "sync_finished":
        return SyncFinished(data["job_id"], JobState(data["state"]), int(data["candles_upserted"]))
    return None


def _event_from_row(row: asyncpg.Record) -> Event:
    return Event(
        event_id=row["event_id"],
        type=EventType(row["type"]),
        symbol=row["symbol"],
        timeframe=None if row["timeframe"] is None else Timeframe(row["timeframe"]),
        create_time=row["create_time"],
        details=_details_from_json(row["details"]),
    )


# ---------------------------------------------------------------------------------------------------------
# Bus


@dataclass(eq=False, slots=True)
class _Watcher:
    types: frozenset[str]
    symbols: frozenset[str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event_type: str, symbol: str) -> bool:
        return (not self.types or event_type in self.types) and (not self.symbols or symbol in self.symbols)


class EventBus:
    """Writes events inside callers' transactions, lists them, and streams them to watchers."""

    def __init__(self, pool: DatabasePool, *, poll_s: float = 10.0) -> None:
        self._pool = pool
        self._poll_s = poll_s
        self._watchers: set[_Watcher] = set()

    async def start(self) -> None:
        """Subscribe to the NOTIFY channel (kept alive across reconnects by the pool)."""
        await self._pool.listen(CHANNEL, self._on_notify, on_resume=self._wake_all)

    # -- writing ----------------------------------------------------------------------------------------

    @staticmethod
    async def write(conn: asyncpg.Connection, events: Sequence[NewEvent]) -> list[int]:
        """Insert `events` in the caller's transaction; call it as the transaction's last statement.

        Takes the event advisory lock (held until commit) so ids commit in increasing order.
        Returns the new ids.
        """
        if not events:
            return []
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOCK_KEY)
        rows = await conn.fetch(
            """INSERT INTO data.events (type, symbol, timeframe, details)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
               RETURNING event_id""",
            [e.type.value for e in events],
            [e.symbol for e in events],
            [None if e.timeframe is None else e.timeframe.value for e in events],
            [_details_to_json(e.details) for e in events],
        )
        return [r["event_id"] for r in rows]

    # -- reading ----------------------------------------------------------------------------------------

    async def list_events(
        self,
        after_event_id: int,
        limit: int,
        types: Sequence[EventType] = (),
        symbols: Sequence[str] = (),
    ) -> EventPage:
        """Up to `limit` events with id > `after_event_id`, oldest first."""
        async with self._pool.acquire() as conn:
            events = await self._read(conn, after_event_id, limit, types, symbols)
        last = events[-1].event_id if events else after_event_id
        return EventPage(tuple(events), last)

    async def last_event_id(self) -> int:
        """The newest persisted id (0 when there is none)."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM data.events"))

    @staticmethod
    async def _read(
        conn: asyncpg.Connection,
        after: int,
        limit: int,
        types: Sequence[EventType],
        symbols: Sequence[str],
    ) -> list[Event]:
        args: list[Any] = [after, limit]
        clauses = ["event_id > $1"]
        if types:
            args.append([t.value for t in types])
            clauses.append(f"type = ANY(${len(args)}::text[])")
        if symbols:
            args.append(list(symbols))
            clauses.append(f"symbol = ANY(${len(args)}::text[])")
        rows = await conn.fetch(
            f"SELECT * FROM data.events WHERE {' AND '.join(clauses)} ORDER BY event_id LIMIT $2", *args
        )
        return [_event_from_row(r) for r in rows]

    # -- watching ---------------------------------------------------------------------------------------

    async def watch(
        self,
        after_event_id: int = 0,
        types: Sequence[EventType] = (),
        symbols: Sequence[str] = (),
        *,
        from_beginning: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """Persisted events after `after_event_id`, then live ones, forever; no gap, no duplicate.

        `after_event_id` 0 without `from_beginning`: only events committed after the stream starts
        (its first `__anext__`). While the database is away the stream pauses and resumes where it
        left off when it is back.
        """
        watcher = _Watcher(frozenset(t.value for t in types), frozenset(symbols))
        self._watchers.add(watcher)  # before the first read, so no wake-up is missed
        try:
            last = 0 if from_beginning else after_event_id
            if last == 0 and not from_beginning:
                last = await self._retry(self.last_event_id)
            while True:
                watcher.wake.clear()  # cleared before reading: a NOTIFY during the read re-wakes us
                batch = await self._retry(functools.partial(self._read_after, last, types, symbols))
                for event in batch:
                    last = event.event_id
                    yield event
                if len(batch) < REPLAY_BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watcher.wake.wait(), self._poll_s)
        finally:
            self._watchers.discard(watcher)

    async def _read_after(
        self, after: int, types: Sequence[EventType], symbols: Sequence[str]
    ) -> list[Event]:
        async with self._pool.acquire() as conn:
            return await self._read(conn, after, REPLAY_BATCH, types, symbols)

    async def _retry(self, read: Callable[[], Awaitable[T]]) -> T:
        """`await read()`, waiting for the database to come back whenever it is unavailable."""
        while True:
            try:
                return await read()
            except Unavailable:
                await self._pool.wait_healthy(self._poll_s)

    def _on_notify(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            event_type, symbol = str(data["type"]), str(data["symbol"])
        except (ValueError, KeyError, TypeError):
            self._wake_all()
            return
        for watcher in list(self._watchers):
            if watcher.wants(event_type, symbol):
                watcher.wake.set()

    def _wake_all(self) -> None:
        for watcher in list(self._watchers):
            watcher.wake.set()
