"""Candle ingestion: validate, upsert, update coverage and emit events, all in one transaction.

Used by `UpsertCandles`, the external sync and the sample import, so every path that writes candles
applies the same checks and the same market-event rule.

Market-event rule: after an upsert, the bars of the batch that are newer than the series' last stored
bar before the write ("newly ingested") are checked. A bar fires a MARKET_EVENT when its close-to-close
log return exceeds `k` standard deviations of the `window` log returns right before it (the stored
history is read from the database). Re-sending or correcting older bars never fires, so idempotent
re-upserts emit no duplicate market events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import numpy as np

from services.data.events import EventBus
from services.data.models import (
    Candle,
    CandlesIngested,
    EventType,
    MarketEvent,
    NewEvent,
    Timeframe,
    UpsertResult,
)
from services.data.stats import detect_market_events, validate_candles
from services.data.storage import Repository
from services.runtime.database import DatabasePool
from services.runtime.errors import NotFound


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (naive values are taken to be UTC already)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_candles(candles: Sequence[Candle]) -> list[Candle]:
    """Candles with UTC times, sorted by time (input order may be arbitrary)."""
    fixed = [
        c if c.time.tzinfo is UTC else Candle(as_utc(c.time), c.open, c.high, c.low, c.close, c.volume)
        for c in candles
    ]
    return sorted(fixed, key=lambda c: c.time)


class CandleIngestor:
    """Writes candles of one series atomically, with CANDLES_INGESTED and MARKET_EVENT events."""

    def __init__(self, pool: DatabasePool, repo: Repository, *, k: float, window: int) -> None:
        self._pool = pool
        self._repo = repo
        self._k = k
        self._window = window

    async def ingest(
        self,
        symbol: str,
        timeframe: Timeframe,
        candles: Sequence[Candle],
        *,
        detect_market_events: bool = True,
        field: str = "candles",
    ) -> UpsertResult:
        """Validate and upsert `candles`; `NotFound` for an unknown symbol, `InvalidArgument` for bad bars.

        `upserted` counts rows inserted or changed; unchanged re-sent rows are not counted and emit
        no CANDLES_INGESTED event.
        """
        validate_candles(candles, field)
        ordered = normalize_candles(candles)
        if not ordered:
            return UpsertResult(0, None)
        async with self._pool.transaction() as conn:
            changed = await self.ingest_in(conn, symbol, timeframe, ordered, detect=detect_market_events)
        return UpsertResult(changed, ordered[-1].time)

    async def ingest_in(
        self,
        conn: asyncpg.Connection,
        symbol: str,
        timeframe: Timeframe,
        ordered: Sequence[Candle],
        *,
        detect: bool,
        extra_events: Sequence[NewEvent] = (),
    ) -> int:
        """Body of `ingest` inside the caller's transaction (`ordered`: validated, UTC, sorted, non-empty).

        `extra_events` are written together with the candle events. Returns the rows changed.
        """
        if not await self._repo.symbol_exists(conn, symbol):
            raise NotFound(f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND")
        write = await self._repo.upsert_candles(conn, symbol, timeframe, ordered)
        events = list(extra_events)
        if write.changed:
            details = CandlesIngested(write.changed, ordered[0].time, ordered[-1].time)
            events.append(NewEvent(EventType.CANDLES_INGESTED, symbol, timeframe, details))
        if detect and write.inserted:
            for market in await self._market_events(
                conn, symbol, timeframe, ordered, write.series_last_before
            ):
                events.append(NewEvent(EventType.MARKET_EVENT, symbol, timeframe, market))
        await EventBus.write(conn, events)
        return write.changed

    async def _market_events(
        self,
        conn: asyncpg.Connection,
        symbol: str,
        timeframe: Timeframe,
        ordered: Sequence[Candle],
        last_before: datetime | None,
    ) -> list[MarketEvent]:
        new = [c for c in ordered if last_before is None or c.time > last_before]
        if not new:
            return []
        history = await self._repo.closes_before(conn, symbol, timeframe, new[0].time, self._window + 1)
        return detect_market_events(
            np.asarray(history, dtype=np.float64),
            [c.time for c in new],
            np.fromiter((c.close for c in new), dtype=np.float64, count=len(new)),
            k=self._k,
            window=self._window,
        )
