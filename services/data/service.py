"""`DataDomain`: the Data service's domain facade, one async method per RPC of `DataService`.

Plain Python: takes and returns the dataclasses of `services.data.models`, raises the errors of
`services.runtime.errors` (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, Unavailable
when the database is down). Field-level rules of the proto (lengths, patterns, page-size maxima) are
checked by the runtime before a call gets here; this layer checks what protos cannot express.

    domain = DataDomain.create(DataSettings.from_env())
    await domain.start()      # database, migrations, event bus, query logs, sync, first sample import
    ...
    await domain.close()
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.data.events import EventBus
from services.data.ingest import CandleIngestor, as_utc
from services.data.models import (
    STRATEGY_MUTABLE_FIELDS,
    SYMBOL_MUTABLE_FIELDS,
    AssetClass,
    Candle,
    ColumnsPage,
    Event,
    EventPage,
    EventType,
    NewEvent,
    Page,
    QueryLog,
    SampleDataset,
    Strategy,
    Symbol,
    SymbolStats,
    SyncJob,
    SyncStatus,
    Timeframe,
    UpsertResult,
)
from services.data.querylog import QueryLogRecorder
from services.data.samples import SampleImporter
from services.data.settings import DataSettings
from services.data.stats import summarize, validate_candle_times
from services.data.storage import Repository, SymbolFilter, init_connection, migrate
from services.data.sync import SyncManager
from services.runtime.database import DatabasePool, is_connection_error
from services.runtime.database_settings import resolve_database_url, revive_hook
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.runtime.pagination import decode_token, encode_token, resolve_page_size

logger = logging.getLogger(__name__)

DEFAULT_LOOKBACK = 100
MAX_LOOKBACK = 10_000


def _mask_fields(mask: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Field names to update: all of `allowed` for an empty mask; `InvalidArgument` for others."""
    if not mask:
        return list(allowed)
    unknown = [name for name in mask if name not in allowed]
    if unknown:
        raise InvalidArgument(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(mask))


def _symbol_not_found(symbol: str) -> NotFound:
    return NotFound(f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol})


class DataDomain:
    """Symbols, strategies, candles, sync, query logs, events and samples of the Data service."""

    def __init__(self, settings: DataSettings) -> None:
        self.settings = settings
        self._pool: DatabasePool | None = None
        self._repo = Repository()
        self._started = False

    @classmethod
    def create(cls, settings: DataSettings | None = None) -> DataDomain:
        """A domain for `settings` (default: from the environment); call `start()` next."""
        return cls(settings or DataSettings.from_env())

    # -- life cycle -------------------------------------------------------------------------------------

    async def start(self, *, wait_db_s: float | None = 60.0) -> None:
        """Connect (starting the embedded database if none is configured), migrate, start the
        background tasks, and import the bundled samples once (first start only, if enabled).

        Waits up to `wait_db_s` for the database, then raises `Unavailable`. The sample import
        (first start only) runs before this returns; a failing import is logged, not raised.
        """
        settings = self.settings
        logger.info("Data domain using %s", settings.database.describe())
        url = await resolve_database_url(settings.database)
        self._pool = DatabasePool(
            url,
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
            init=init_connection,
            revive=revive_hook(settings.database),
            name="data database",
        )
        try:
            await self._pool.open(wait_s=wait_db_s)  # waits for a database that starts after us
            await migrate(url)
        except Exception as exc:
            await self._pool.close()
            if is_connection_error(exc):
                raise Unavailable("data database went away during migrations") from exc
            raise
        self.events = EventBus(self._pool)
        await self.events.start()
        self.query_logs = QueryLogRecorder(
            self._pool,
            flush_s=settings.query_log_flush_s,
            buffer_max=settings.query_log_buffer,
            retention_days=settings.query_log_retention_days,
        )
        self.query_logs.start()
        self.ingestor = CandleIngestor(
            self._pool, self._repo, k=settings.market_event_k, window=settings.market_event_window
        )
        self.sync = SyncManager(self._pool, self._repo, self.ingestor, settings)
        await self.sync.start()
        self.samples = SampleImporter(self._pool, self._repo, self.ingestor)
        self._started = True
        if settings.import_samples_on_start:
            try:
                await self.samples.import_all(only_new=True)
            except Exception:
                logger.exception("bundled sample import failed; continuing without it")

    async def close(self) -> None:
        """Stop background work, flush query logs, close the pool. Idempotent."""
        if not self._started or self._pool is None:
            return
        self._started = False
        await self.sync.close()
        await self.query_logs.close()
        await self._pool.close()

    @property
    def pool(self) -> DatabasePool:
        """The database pool: `healthy`, `add_health_listener`, `wait_healthy` for gRPC health."""
        if self._pool is None:
            raise FailedPrecondition("the Data domain is not started")
        return self._pool

    @property
    def healthy(self) -> bool:
        return self._pool is not None and self._pool.healthy

    # -- symbols ----------------------------------------------------------------------------------------

    async def list_symbols(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        asset_class: AssetClass | None = None,
        active_only: bool = False,
        prefix: str = "",
    ) -> Page[Symbol]:
        """Symbols ordered by name, with their candle coverage; `total_size` counts all matches."""
        limit = resolve_page_size(page_size, 100, 1000)
        flt = SymbolFilter(asset_class, active_only, prefix)
        filters = [None if asset_class is None else asset_class.value, active_only, prefix]
        key = decode_token(page_token, "symbols", filters)
        async with self.pool.acquire() as conn:
            items, total = await self._repo.list_symbols(conn, flt, key[0] if key else None, limit + 1)
        token = encode_token("symbols", filters, [items[limit - 1].symbol]) if len(items) > limit else ""
        return Page(tuple(items[:limit]), token, total)

    async def get_symbol(self, symbol: str) -> Symbol:
        async with self.pool.acquire() as conn:
            found = await self._repo.get_symbol(conn, symbol)
        if found is None:
            raise _symbol_not_found(symbol)
        return found

    async def create_symbol(self, symbol: Symbol) -> Symbol:
        """Add `symbol` (output-only fields ignored); `AlreadyExists` if the name is taken."""
        if not symbol.symbol:
            raise InvalidArgument("symbol.symbol", "must not be empty")
        async with self.pool.transaction() as conn:
            created = await self._repo.insert_symbol(conn, symbol)
            if created is None:
                raise AlreadyExists(f"symbol {symbol.symbol} already exists", reason="SYMBOL_EXISTS")
            await EventBus.write(conn, [NewEvent(EventType.SYMBOL_ADDED, symbol.symbol)])
        return created

    async def update_symbol(self, symbol: Symbol, update_mask: Sequence[str] = ()) -> Symbol:
        """Change the fields of `symbol` named in `update_mask` (empty: every mutable field)."""
        fields = _mask_fields(update_mask, SYMBOL_MUTABLE_FIELDS)
        async with self.pool.transaction() as conn:
            if not await self._repo.update_symbol(conn, symbol, fields):
                raise _symbol_not_found(symbol.symbol)
            updated = await self._repo.get_symbol(conn, symbol.symbol)
            await EventBus.write(conn, [NewEvent(EventType.SYMBOL_UPDATED, symbol.symbol)])
        assert updated is not None
        return updated

    async def delete_symbol(self, symbol: str) -> int:
        """Remove `symbol` with all its candles in one transaction; returns the candles deleted."""
        async with self.pool.transaction() as conn:
            if await self._repo.get_symbol(conn, symbol, lock=True) is None:
                raise _symbol_not_found(symbol)
            deleted = await self._repo.delete_symbol(conn, symbol)
            await EventBus.write(conn, [NewEvent(EventType.SYMBOL_REMOVED, symbol)])
        return deleted

    # -- strategies -------------------------------------------------------------------------------------

    async def list_strategies(
        self, *, page_size: int = 0, page_token: str = "", active_only: bool = False
    ) -> Page[Strategy]:
        limit = resolve_page_size(page_size, 100, 1000)
        key = decode_token(page_token, "strategies", [active_only])
        async with self.pool.acquire() as conn:
            items, total = await self._repo.list_strategies(
                conn, active_only, key[0] if key else None, limit + 1
            )
        token = (
            encode_token("strategies", [active_only], [items[limit - 1].strategy_id])
            if len(items) > limit
            else ""
        )
        return Page(tuple(items[:limit]), token, total)

    async def get_strategy(self, strategy_id: str) -> Strategy:
        async with self.pool.acquire() as conn:
            found = await self._repo.get_strategy(conn, strategy_id)
        if found is None:
            raise NotFound(f"strategy {strategy_id} not found", reason="STRATEGY_NOT_FOUND")
        return found

    async def create_strategy(self, strategy: Strategy) -> Strategy:
        """Add `strategy`; `AlreadyExists` if the id is taken. `parameters` must be a JSON object."""
        if not strategy.strategy_id:
            raise InvalidArgument("strategy.strategy_id", "must not be empty")
        async with self.pool.acquire() as conn:
            created = await self._repo.insert_strategy(conn, strategy)
        if created is None:
            raise AlreadyExists(f"strategy {strategy.strategy_id} already exists", reason="STRATEGY_EXISTS")
        return created

    async def update_strategy(self, strategy: Strategy, update_mask: Sequence[str] = ()) -> Strategy:
        fields = _mask_fields(update_mask, STRATEGY_MUTABLE_FIELDS)
        async with self.pool.transaction() as conn:
            if not await self._repo.update_strategy(conn, strategy, fields):
                raise NotFound(f"strategy {strategy.strategy_id} not found", reason="STRATEGY_NOT_FOUND")
            updated = await self._repo.get_strategy(conn, strategy.strategy_id)
        assert updated is not None
        return updated

    async def delete_strategy(self, strategy_id: str) -> None:
        async with self.pool.acquire() as conn:
            if not await self._repo.delete_strategy(conn, strategy_id):
                raise NotFound(f"strategy {strategy_id} not found", reason="STRATEGY_NOT_FOUND")

    # -- candles ----------------------------------------------------------------------------------------

    async def list_candles(
        self,
        symbol: str,
        timeframe: Timeframe,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        descending: bool = False,
    ) -> Page[Candle]:
        """Candles with start_time <= time < end_time, oldest first (newest first if `descending`)."""
        read = _CandleRead.of(symbol, timeframe, start_time, end_time, page_size, page_token, descending)
        async with self.pool.acquire() as conn:
            rows = await self._repo.list_candles(conn, symbol, timeframe, **read.query())
            if not rows:  # a candle references its symbol, so only an empty page needs the check
                await self._require_symbol(conn, symbol)
        token = read.next_token(rows[read.limit - 1].time) if len(rows) > read.limit else ""
        return Page(tuple(rows[: read.limit]), token)

    async def list_candle_columns(
        self,
        symbol: str,
        timeframe: Timeframe,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        descending: bool = False,
    ) -> ColumnsPage:
        """`list_candles` as parallel lists (the bulk form); the page tokens of both forms are the
        same, so a caller may switch form between pages."""
        read = _CandleRead.of(symbol, timeframe, start_time, end_time, page_size, page_token, descending)
        async with self.pool.acquire() as conn:
            columns = await self._repo.list_candle_columns(conn, symbol, timeframe, **read.query())
            if not len(columns):
                await self._require_symbol(conn, symbol)
        token = read.next_token(columns.time_at(read.limit - 1)) if len(columns) > read.limit else ""
        return ColumnsPage(columns.head(read.limit), token)

    async def get_latest_candle(self, symbol: str, timeframe: Timeframe) -> Candle:
        async with self.pool.acquire() as conn:
            await self._require_symbol(conn, symbol)
            rows = await self._repo.last_candles(conn, symbol, timeframe, 1)
        if not rows:
            raise NotFound(f"no {timeframe.value} candles for {symbol}", reason="CANDLES_NOT_FOUND")
        return rows[0]

    async def upsert_candles(
        self, symbol: str, timeframe: Timeframe, candles: Sequence[Candle]
    ) -> UpsertResult:
        """Insert or replace candles by time, atomically; emits CANDLES_INGESTED and MARKET_EVENTs.

        `InvalidArgument` names the first bad bars (`candles[i].high` ...), including times off the
        timeframe's grid or outside [1970-01-01, now + 5 min] (`candles[i].time`); `NotFound` an
        unknown symbol.
        """
        if not candles:
            raise InvalidArgument("candles", "must contain at least one candle")
        validate_candle_times(candles, timeframe, datetime.now(UTC))
        return await self.ingestor.ingest(symbol, timeframe, candles)

    async def get_symbol_stats(self, symbol: str, timeframe: Timeframe, lookback: int = 0) -> SymbolStats:
        """Statistics of the last `lookback` bars (0: 100, at most 10000)."""
        if not 0 <= lookback <= MAX_LOOKBACK:
            raise InvalidArgument("lookback", f"must be between 0 and {MAX_LOOKBACK}")
        async with self.pool.acquire() as conn:
            await self._require_symbol(conn, symbol)
            candles = await self._repo.last_candles(conn, symbol, timeframe, lookback or DEFAULT_LOOKBACK)
        if not candles:
            raise NotFound(f"no {timeframe.value} candles for {symbol}", reason="CANDLES_NOT_FOUND")
        return summarize(symbol, timeframe, candles)

    async def _require_symbol(self, conn: asyncpg.Connection, symbol: str) -> None:
        if not await self._repo.symbol_exists(conn, symbol):
            raise _symbol_not_found(symbol)

    # -- sync -------------------------------------------------------------------------------------------

    async def start_sync(
        self, symbols: Sequence[str] = (), timeframe: Timeframe | None = None, full: bool = False
    ) -> SyncJob:
        """Start a background sync job (returned QUEUED). `FailedPrecondition` without a source."""
        return await self.sync.start_job(symbols, timeframe, full)

    async def get_sync_status(self) -> SyncStatus:
        return await self.sync.status()

    async def get_sync_job(self, job_id: str) -> SyncJob:
        return await self.sync.get_job(job_id)

    async def list_sync_jobs(self, *, page_size: int = 0, page_token: str = "") -> Page[SyncJob]:
        """Sync jobs newest first."""
        return await self.sync.list_jobs(page_size, page_token)

    async def wait_sync_job(self, job_id: str) -> SyncJob:
        """Wait until a job started by this process has finished (for tests and the CLI)."""
        return await self.sync.wait(job_id)

    # -- query logs -------------------------------------------------------------------------------------

    def record_query(
        self, method: str, parameters_json: str, duration_ms: float, rows: int, code: str
    ) -> None:
        """Record one Data call: buffered, written in the background; never blocks, never raises."""
        if self._started:
            self.query_logs.record(method, parameters_json, duration_ms, rows, code)

    async def list_query_logs(
        self, *, page_size: int = 0, page_token: str = "", method: str = ""
    ) -> Page[QueryLog]:
        """Query logs newest first; `method` filters by full or short method name."""
        return await self.query_logs.list(page_size, page_token, method)

    # -- events -----------------------------------------------------------------------------------------

    async def list_events(
        self,
        *,
        after_event_id: int = 0,
        page_size: int = 0,
        types: Sequence[EventType] = (),
        symbols: Sequence[str] = (),
    ) -> EventPage:
        """Persisted events with id > `after_event_id`, oldest first."""
        if after_event_id < 0:
            raise InvalidArgument("after_event_id", "must be >= 0")
        return await self.events.list_events(
            after_event_id, resolve_page_size(page_size, 100, 1000), types, symbols
        )

    def watch_events(
        self,
        *,
        after_event_id: int = 0,
        types: Sequence[EventType] = (),
        symbols: Sequence[str] = (),
        from_beginning: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """Persisted events after `after_event_id` (or all, `from_beginning`), then live ones, forever.

        `after_event_id` 0 without `from_beginning`: only new events. Survives database reconnects.
        """
        if after_event_id < 0:
            raise InvalidArgument("after_event_id", "must be >= 0")
        return self.events.watch(after_event_id, types, symbols, from_beginning=from_beginning)

    # -- samples ----------------------------------------------------------------------------------------

    async def import_samples(self) -> list[SampleDataset]:
        """Import the bundled real market data (idempotent); returns the data sets present."""
        return await self.samples.import_all()


@dataclass(frozen=True, slots=True)
class _CandleRead:
    """A candle read's checked range, page size and position (shared by the row and column forms)."""

    start: datetime | None
    end: datetime | None
    after: datetime | None
    descending: bool
    limit: int
    filters: list[Any]

    @classmethod
    def of(
        cls,
        symbol: str,
        timeframe: Timeframe,
        start_time: datetime | None,
        end_time: datetime | None,
        page_size: int,
        page_token: str,
        descending: bool,
    ) -> _CandleRead:
        start = None if start_time is None else as_utc(start_time)
        end = None if end_time is None else as_utc(end_time)
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        limit = resolve_page_size(page_size, 1000, 5000)
        filters: list[Any] = [symbol, timeframe.value, str(start), str(end), descending]
        key = decode_token(page_token, "candles", filters)
        after = datetime.fromisoformat(key[0]) if key else None
        return cls(start, end, after, descending, limit, filters)

    def query(self) -> dict[str, Any]:
        """The repository's keyword arguments: one row more than the page, to see if another follows."""
        return {
            "start": self.start,
            "end": self.end,
            "after": self.after,
            "descending": self.descending,
            "limit": self.limit + 1,
        }

    def next_token(self, last: datetime) -> str:
        return encode_token("candles", self.filters, [last.isoformat()])
