"""PostgreSQL storage of the Data domain: migrations and the SQL of every table (schema `data`).

`Repository` methods take an asyncpg connection as first argument, so callers compose several of them
in one transaction (`async with pool.transaction() as conn`). They raise nothing domain-specific
except where noted; the domain layer decides what a missing row means.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from services.data.models import (
    AssetClass,
    Candle,
    CandleColumns,
    CandleSeries,
    Strategy,
    Symbol,
    SyncJob,
    SyncSymbolResult,
    Timeframe,
)
from services.runtime.database import apply_migrations
from services.runtime.jobs import JobState

logger = logging.getLogger(__name__)

SCHEMA = "data"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
UPSERT_CHUNK = 5000  # rows per INSERT statement

# ---------------------------------------------------------------------------------------------------------
# Migrations


async def migrate(url: str) -> list[str]:
    """Apply pending migrations of schema `data` (`services/data/migrations/`); returns the ids applied."""
    applied = await apply_migrations(url, MIGRATIONS_DIR, schema=SCHEMA)
    if applied:
        logger.info("applied migrations %s", ", ".join(applied))
    return applied


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: jsonb <-> Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# ---------------------------------------------------------------------------------------------------------
# Row conversion


def _opt_enum(enum_type: Any, value: str | None) -> Any:
    return None if value is None else enum_type(value)


_SYMBOL_WITH_SERIES = """
SELECT s.*,
  array(SELECT timeframe FROM data.series x WHERE x.symbol = s.symbol ORDER BY timeframe) AS series_tfs,
  array(SELECT count FROM data.series x WHERE x.symbol = s.symbol ORDER BY timeframe) AS series_counts,
  array(SELECT first_time FROM data.series x WHERE x.symbol = s.symbol ORDER BY timeframe) AS series_firsts,
  array(SELECT last_time FROM data.series x WHERE x.symbol = s.symbol ORDER BY timeframe) AS series_lasts
  FROM data.symbols s
 WHERE s.symbol = $1
"""


def symbol_from_row(row: asyncpg.Record, series: Sequence[CandleSeries] = ()) -> Symbol:
    return Symbol(
        symbol=row["symbol"],
        display_name=row["display_name"],
        asset_class=_opt_enum(AssetClass, row["asset_class"]),
        active=row["active"],
        description=row["description"],
        source=row["source"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        series=tuple(series),
    )


def strategy_from_row(row: asyncpg.Record) -> Strategy:
    return Strategy(
        strategy_id=row["strategy_id"],
        display_name=row["display_name"],
        description=row["description"],
        symbols=tuple(row["symbols"]),
        timeframe=_opt_enum(Timeframe, row["timeframe"]),
        parameters=dict(row["parameters"]),
        active=row["active"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def candle_from_row(row: asyncpg.Record) -> Candle:
    return Candle(row["time"], row["open"], row["high"], row["low"], row["close"], row["volume"])


#: One row of `COPY (SELECT time, open, high, low, close, volume ...) TO STDOUT (FORMAT binary)`:
#: a field count, then per field its byte length and its big-endian value (timestamptz: int64
#: microseconds since 2000-01-01; float8). Every column is NOT NULL, so every row has this size.
_COPY_ROW = np.dtype(
    [("fields", ">i2"), ("time_len", ">i4"), ("time", ">i8")]
    + [
        item
        for name in ("open", "high", "low", "close", "volume")
        for item in ((f"{name}_len", ">i4"), (name, ">f8"))
    ]
)
_COPY_LENGTHS = tuple(name for name in _COPY_ROW.names or () if name.endswith("_len"))
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = len(_COPY_SIGNATURE) + 8  # flags (int32) and header extension length (int32, 0)
_PG_EPOCH_MICROS = 946_684_800 * 1_000_000  # 2000-01-01T00:00:00Z in Unix microseconds


_PLAIN_TEXT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def copy_literal(value: object) -> str:
    """A SQL literal for a value of the candle query, from types and texts that cannot carry SQL:
    an int, an aware datetime (ISO 8601, cast to timestamptz) or a plain text (letters, digits,
    `.`, `_`, `-`: every symbol and timeframe the contract allows). Anything else is refused."""
    if isinstance(value, bool):
        raise ValueError("no literal for a bool")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a naive datetime has no literal")
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, str) and _PLAIN_TEXT.fullmatch(value):
        return f"'{value}'"
    raise ValueError(f"no safe literal for {type(value).__name__} {value!r:.40}")


def columns_from_copy(data: bytes) -> CandleColumns:
    """Parse PostgreSQL's binary COPY of candle rows into native numpy arrays, no Python work per bar.

    The layout is checked (signature, no OIDs, six 8-byte fields per row, the trailer), so a
    change of the table's column types fails loudly here instead of returning garbage.
    """
    if data[: len(_COPY_SIGNATURE)] != _COPY_SIGNATURE or data[-2:] != b"\xff\xff":
        raise ValueError("not a complete binary COPY stream")
    flags, extension = np.frombuffer(data, ">i4", 2, len(_COPY_SIGNATURE))
    body = data[_COPY_HEADER:-2]
    if flags != 0 or extension != 0 or len(body) % _COPY_ROW.itemsize:
        raise ValueError("unexpected binary COPY layout (OIDs, a header extension or variable-size fields)")
    rows = np.frombuffer(body, _COPY_ROW)
    lengths = [rows[name] for name in _COPY_LENGTHS]
    if not (np.all(rows["fields"] == 6) and all(np.all(length == 8) for length in lengths)):
        raise ValueError("unexpected binary COPY row (expected six 8-byte fields)")
    return CandleColumns(
        rows["time"].astype(np.int64) + _PG_EPOCH_MICROS,
        rows["open"].astype(np.float64),
        rows["high"].astype(np.float64),
        rows["low"].astype(np.float64),
        rows["close"].astype(np.float64),
        rows["volume"].astype(np.float64),
    )


def job_from_row(row: asyncpg.Record) -> SyncJob:
    results = tuple(
        SyncSymbolResult(r["symbol"], JobState(r["state"]), int(r["candles_upserted"]), r["error"])
        for r in row["results"]
    )
    return SyncJob(
        job_id=row["job_id"],
        state=JobState(row["state"]),
        symbols=tuple(row["symbols"]),
        timeframe=Timeframe(row["timeframe"]),
        full=row["full_sync"],
        candles_upserted=row["candles_upserted"],
        symbols_done=row["symbols_done"],
        symbols_failed=row["symbols_failed"],
        error=row["error"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        results=results,
    )


def _results_json(results: Iterable[SyncSymbolResult]) -> list[dict[str, Any]]:
    return [
        {"symbol": r.symbol, "state": r.state.value, "candles_upserted": r.candles_upserted, "error": r.error}
        for r in results
    ]


# ---------------------------------------------------------------------------------------------------------
# Repository


@dataclass(frozen=True, slots=True)
class SymbolFilter:
    asset_class: AssetClass | None = None
    active_only: bool = False
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class CandleWrite:
    """What an upsert changed: `changed` rows (inserted + updated with new values), of which
    `inserted` are new; `series_last_before` the series' last time before the write."""

    changed: int
    inserted: int
    series_last_before: datetime | None


_SYMBOL_COLUMNS = ("display_name", "asset_class", "active", "description", "source")
_STRATEGY_COLUMNS = ("display_name", "description", "symbols", "timeframe", "parameters", "active")


def _db_value(value: Any) -> Any:
    if isinstance(value, (AssetClass, Timeframe, JobState)):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


class Repository:
    """The SQL of the Data domain. Stateless; every method takes the connection to run on."""

    # -- symbols ----------------------------------------------------------------------------------------

    @staticmethod
    def _symbol_where(flt: SymbolFilter, args: list[Any]) -> str:
        clauses = ["TRUE"]
        if flt.asset_class is not None:
            args.append(flt.asset_class.value)
            clauses.append(f"asset_class = ${len(args)}")
        if flt.active_only:
            clauses.append("active")
        if flt.prefix:
            args.append(flt.prefix)
            clauses.append(f"starts_with(symbol, ${len(args)})")
        return " AND ".join(clauses)

    async def list_symbols(
        self, conn: asyncpg.Connection, flt: SymbolFilter, after: str | None, limit: int
    ) -> tuple[list[Symbol], int]:
        """Up to `limit` symbols ordered by name after `after`, with their series; and the total count."""
        args: list[Any] = []
        where = self._symbol_where(flt, args)
        total = await conn.fetchval(f"SELECT count(*) FROM data.symbols WHERE {where}", *args)
        if after is not None:
            args.append(after)
            where += f" AND symbol > ${len(args)}"
        args.append(limit)
        rows = await conn.fetch(
            f"SELECT * FROM data.symbols WHERE {where} ORDER BY symbol LIMIT ${len(args)}", *args
        )
        series = await self.series_of(conn, [r["symbol"] for r in rows])
        return [symbol_from_row(r, series.get(r["symbol"], ())) for r in rows], int(total)

    async def get_symbol(self, conn: asyncpg.Connection, symbol: str, *, lock: bool = False) -> Symbol | None:
        if lock:
            row = await conn.fetchrow("SELECT * FROM data.symbols WHERE symbol = $1 FOR UPDATE", symbol)
            if row is None:
                return None
            series = await self.series_of(conn, [symbol])
            return symbol_from_row(row, series.get(symbol, ()))
        # One round trip: the symbol with its series as parallel arrays (GetSymbol's whole query).
        row = await conn.fetchrow(_SYMBOL_WITH_SERIES, symbol)
        if row is None:
            return None
        listed = [
            CandleSeries(Timeframe(tf), count, first, last)
            for tf, count, first, last in zip(
                row["series_tfs"],
                row["series_counts"],
                row["series_firsts"],
                row["series_lasts"],
                strict=True,
            )
        ]
        return symbol_from_row(row, listed)

    async def symbol_exists(self, conn: asyncpg.Connection, symbol: str) -> bool:
        return bool(
            await conn.fetchval("SELECT EXISTS (SELECT 1 FROM data.symbols WHERE symbol = $1)", symbol)
        )

    async def existing_symbols(self, conn: asyncpg.Connection, symbols: Sequence[str]) -> set[str]:
        rows = await conn.fetch(
            "SELECT symbol FROM data.symbols WHERE symbol = ANY($1::text[])", list(symbols)
        )
        return {r["symbol"] for r in rows}

    async def active_symbols(self, conn: asyncpg.Connection) -> list[str]:
        rows = await conn.fetch("SELECT symbol FROM data.symbols WHERE active ORDER BY symbol")
        return [r["symbol"] for r in rows]

    async def insert_symbol(self, conn: asyncpg.Connection, symbol: Symbol) -> Symbol | None:
        """Insert `symbol`; None when it already exists."""
        row = await conn.fetchrow(
            """INSERT INTO data.symbols (symbol, display_name, asset_class, active, description, source)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (symbol) DO NOTHING RETURNING *""",
            symbol.symbol,
            symbol.display_name,
            _db_value(symbol.asset_class),
            symbol.active,
            symbol.description,
            symbol.source,
        )
        return None if row is None else symbol_from_row(row)

    async def update_symbol(self, conn: asyncpg.Connection, symbol: Symbol, fields: Sequence[str]) -> bool:
        """Copy `fields` of `symbol` into its row; False when the row does not exist."""
        return await self._update(
            conn,
            table="symbols",
            key_column="symbol",
            key=symbol.symbol,
            obj=symbol,
            fields=fields,
            allowed=_SYMBOL_COLUMNS,
        )

    async def delete_symbol(self, conn: asyncpg.Connection, symbol: str) -> int:
        """Delete the symbol, its candles and coverage; returns the candles deleted."""
        status = await conn.execute("DELETE FROM data.candles WHERE symbol = $1", symbol)
        await conn.execute("DELETE FROM data.series WHERE symbol = $1", symbol)
        await conn.execute("DELETE FROM data.symbols WHERE symbol = $1", symbol)
        return int(status.split()[-1])

    async def series_of(
        self, conn: asyncpg.Connection, symbols: Sequence[str]
    ) -> dict[str, list[CandleSeries]]:
        rows = await conn.fetch(
            "SELECT * FROM data.series WHERE symbol = ANY($1::text[]) ORDER BY symbol, timeframe",
            list(symbols),
        )
        out: dict[str, list[CandleSeries]] = {}
        for r in rows:
            out.setdefault(r["symbol"], []).append(
                CandleSeries(Timeframe(r["timeframe"]), r["count"], r["first_time"], r["last_time"])
            )
        return out

    async def get_series(
        self, conn: asyncpg.Connection, symbol: str, timeframe: Timeframe, *, lock: bool = False
    ) -> CandleSeries | None:
        sql = "SELECT * FROM data.series WHERE symbol = $1 AND timeframe = $2" + (
            " FOR UPDATE" if lock else ""
        )
        r = await conn.fetchrow(sql, symbol, timeframe.value)
        return None if r is None else CandleSeries(timeframe, r["count"], r["first_time"], r["last_time"])

    # -- strategies -------------------------------------------------------------------------------------

    async def list_strategies(
        self, conn: asyncpg.Connection, active_only: bool, after: str | None, limit: int
    ) -> tuple[list[Strategy], int]:
        where = "active" if active_only else "TRUE"
        total = await conn.fetchval(f"SELECT count(*) FROM data.strategies WHERE {where}")
        rows = await conn.fetch(
            f"""SELECT * FROM data.strategies WHERE {where} AND ($1::text IS NULL OR strategy_id > $1)
                ORDER BY strategy_id LIMIT $2""",
            after,
            limit,
        )
        return [strategy_from_row(r) for r in rows], int(total)

    async def get_strategy(self, conn: asyncpg.Connection, strategy_id: str) -> Strategy | None:
        row = await conn.fetchrow("SELECT * FROM data.strategies WHERE strategy_id = $1", strategy_id)
        return None if row is None else strategy_from_row(row)

    async def insert_strategy(self, conn: asyncpg.Connection, s: Strategy) -> Strategy | None:
        """Insert `s`; None when it already exists."""
        row = await conn.fetchrow(
            """INSERT INTO data.strategies
                 (strategy_id, display_name, description, symbols, timeframe, parameters, active)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (strategy_id) DO NOTHING RETURNING *""",
            s.strategy_id,
            s.display_name,
            s.description,
            list(s.symbols),
            _db_value(s.timeframe),
            s.parameters,
            s.active,
        )
        return None if row is None else strategy_from_row(row)

    async def update_strategy(self, conn: asyncpg.Connection, s: Strategy, fields: Sequence[str]) -> bool:
        return await self._update(
            conn,
            table="strategies",
            key_column="strategy_id",
            key=s.strategy_id,
            obj=s,
            fields=fields,
            allowed=_STRATEGY_COLUMNS,
        )

    async def delete_strategy(self, conn: asyncpg.Connection, strategy_id: str) -> bool:
        status = await conn.execute("DELETE FROM data.strategies WHERE strategy_id = $1", strategy_id)
        return status != "DELETE 0"

    @staticmethod
    async def _update(
        conn: asyncpg.Connection,
        *,
        table: str,
        key_column: str,
        key: str,
        obj: Any,
        fields: Sequence[str],
        allowed: Sequence[str],
    ) -> bool:
        assert all(f in allowed for f in fields), fields
        sets = [f"{name} = ${i}" for i, name in enumerate(fields, start=2)]
        sets.append("update_time = now()")
        values = [_db_value(getattr(obj, name)) for name in fields]
        status = await conn.execute(
            f"UPDATE data.{table} SET {', '.join(sets)} WHERE {key_column} = $1", key, *values
        )
        return status != "UPDATE 0"

    # -- candles ----------------------------------------------------------------------------------------

    async def upsert_candles(
        self, conn: asyncpg.Connection, symbol: str, timeframe: Timeframe, candles: Sequence[Candle]
    ) -> CandleWrite:
        """Insert or replace `candles` (distinct times) and update the series coverage.

        Rows whose stored values are identical are left untouched and not counted as changed.
        Call inside a transaction; locks the series row so writers of one series queue up.
        """
        before = await self.get_series(conn, symbol, timeframe, lock=True)
        changed = inserted = 0
        for start in range(0, len(candles), UPSERT_CHUNK):
            chunk = candles[start : start + UPSERT_CHUNK]
            row = await conn.fetchrow(
                """WITH up AS (
                     INSERT INTO data.candles AS c (symbol, timeframe, time, open, high, low, close, volume)
                     SELECT $1, $2, t.* FROM unnest($3::timestamptz[], $4::float8[], $5::float8[],
                                                    $6::float8[], $7::float8[], $8::float8[]) AS t
                     ON CONFLICT (symbol, timeframe, time) DO UPDATE SET
                       open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
                       close = EXCLUDED.close, volume = EXCLUDED.volume
                     WHERE (c.open, c.high, c.low, c.close, c.volume)
                           IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low,
                                             EXCLUDED.close, EXCLUDED.volume)
                     RETURNING (xmax = 0) AS inserted)
                   SELECT count(*) AS changed, count(*) FILTER (WHERE inserted) AS inserted FROM up""",
                symbol,
                timeframe.value,
                [c.time for c in chunk],
                [c.open for c in chunk],
                [c.high for c in chunk],
                [c.low for c in chunk],
                [c.close for c in chunk],
                [c.volume for c in chunk],
            )
            assert row is not None
            changed += row["changed"]
            inserted += row["inserted"]
        await conn.execute(
            """INSERT INTO data.series AS s (symbol, timeframe, count, first_time, last_time)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (symbol, timeframe) DO UPDATE SET
                 count = s.count + EXCLUDED.count,
                 first_time = least(s.first_time, EXCLUDED.first_time),
                 last_time = greatest(s.last_time, EXCLUDED.last_time)""",
            symbol,
            timeframe.value,
            inserted,
            min(c.time for c in candles),
            max(c.time for c in candles),
        )
        return CandleWrite(changed, inserted, None if before is None else before.last_time)

    @staticmethod
    def _candles_query(
        symbol: str,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
        after: datetime | None,
        descending: bool,
        limit: int,
    ) -> tuple[str, list[Any]]:
        args: list[Any] = [symbol, timeframe.value]
        clauses = ["symbol = $1", "timeframe = $2"]
        for op, value in ((">=", start), ("<", end), ("<" if descending else ">", after)):
            if value is not None:
                args.append(value)
                clauses.append(f"time {op} ${len(args)}")
        args.append(limit)
        order = "DESC" if descending else "ASC"
        query = f"""SELECT time, open, high, low, close, volume FROM data.candles
                WHERE {" AND ".join(clauses)} ORDER BY time {order} LIMIT ${len(args)}"""
        return query, args

    async def list_candles(
        self,
        conn: asyncpg.Connection,
        symbol: str,
        timeframe: Timeframe,
        *,
        start: datetime | None,
        end: datetime | None,
        after: datetime | None,
        descending: bool,
        limit: int,
    ) -> list[Candle]:
        """Candles in [start, end), strictly after `after` in the sort direction, at most `limit`."""
        query, args = self._candles_query(symbol, timeframe, start, end, after, descending, limit)
        rows = await conn.fetch(query, *args)
        return [candle_from_row(r) for r in rows]

    async def list_candle_columns(
        self,
        conn: asyncpg.Connection,
        symbol: str,
        timeframe: Timeframe,
        *,
        start: datetime | None,
        end: datetime | None,
        after: datetime | None,
        descending: bool,
        limit: int,
    ) -> CandleColumns:
        """`list_candles` as columns, read with a binary COPY (`columns_from_copy`): no record or
        datetime object per bar on the way. COPY takes no bind parameters, so the values are written
        into the statement as literals (`copy_literal`, which accepts only what cannot carry SQL)
        rather than with asyncpg's `copy_from_query(*args)`, whose quoting costs two more round
        trips to the server per call."""
        query, args = self._candles_query(symbol, timeframe, start, end, after, descending, limit)
        for index in range(len(args), 0, -1):  # $10 before $1
            query = query.replace(f"${index}", copy_literal(args[index - 1]))
        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(bytes(chunk))

        await conn.copy_from_query(query, output=collect, format="binary")
        return columns_from_copy(b"".join(chunks))

    async def last_candles(
        self, conn: asyncpg.Connection, symbol: str, timeframe: Timeframe, n: int
    ) -> list[Candle]:
        """The newest `n` candles, oldest first."""
        rows = await conn.fetch(
            """SELECT time, open, high, low, close, volume FROM data.candles
               WHERE symbol = $1 AND timeframe = $2 ORDER BY time DESC LIMIT $3""",
            symbol,
            timeframe.value,
            n,
        )
        return [candle_from_row(r) for r in reversed(rows)]

    async def closes_before(
        self, conn: asyncpg.Connection, symbol: str, timeframe: Timeframe, before: datetime, n: int
    ) -> list[float]:
        """Closes of the `n` candles right before `before`, oldest first."""
        rows = await conn.fetch(
            """SELECT close FROM data.candles WHERE symbol = $1 AND timeframe = $2 AND time < $3
               ORDER BY time DESC LIMIT $4""",
            symbol,
            timeframe.value,
            before,
            n,
        )
        return [r["close"] for r in reversed(rows)]

    # -- sync jobs --------------------------------------------------------------------------------------

    async def insert_job(self, conn: asyncpg.Connection, job: SyncJob) -> SyncJob:
        row = await conn.fetchrow(
            """INSERT INTO data.sync_jobs (job_id, state, symbols, timeframe, full_sync)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            job.job_id,
            job.state.value,
            list(job.symbols),
            job.timeframe.value,
            job.full,
        )
        assert row is not None
        return job_from_row(row)

    async def save_job(self, conn: asyncpg.Connection, job: SyncJob) -> SyncJob:
        """Write the mutable state of `job` (progress, results, times)."""
        row = await conn.fetchrow(
            """UPDATE data.sync_jobs SET state = $2, candles_upserted = $3, symbols_done = $4,
                 symbols_failed = $5, error = $6, results = $7, start_time = $8, end_time = $9
               WHERE job_id = $1 RETURNING *""",
            job.job_id,
            job.state.value,
            job.candles_upserted,
            job.symbols_done,
            job.symbols_failed,
            job.error,
            _results_json(job.results),
            job.start_time,
            job.end_time,
        )
        assert row is not None
        return job_from_row(row)

    async def get_job(self, conn: asyncpg.Connection, job_id: str) -> SyncJob | None:
        row = await conn.fetchrow("SELECT * FROM data.sync_jobs WHERE job_id = $1", job_id)
        return None if row is None else job_from_row(row)

    async def list_jobs(
        self, conn: asyncpg.Connection, before: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        """Jobs newest first, strictly older than the (create_time, job_id) key `before`."""
        if before is None:
            rows = await conn.fetch(
                "SELECT * FROM data.sync_jobs ORDER BY create_time DESC, job_id DESC LIMIT $1", limit
            )
        else:
            rows = await conn.fetch(
                """SELECT * FROM data.sync_jobs WHERE (create_time, job_id) < ($1, $2)
                   ORDER BY create_time DESC, job_id DESC LIMIT $3""",
                before[0],
                before[1],
                limit,
            )
        return [job_from_row(r) for r in rows]

    async def fail_unfinished_jobs(self, conn: asyncpg.Connection, error: str) -> int:
        """Mark jobs left queued or running (by a process that died) as failed."""
        status = await conn.execute(
            """UPDATE data.sync_jobs SET state = 'FAILED', error = $1, end_time = now()
               WHERE state IN ('QUEUED', 'RUNNING')""",
            error,
        )
        return int(status.split()[-1])
