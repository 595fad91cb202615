"""Domain types of the Data service: plain dataclasses and enums, no protobuf.

Enums mirror the proto enums by name without their prefix (`Timeframe.H1` is `TIMEFRAME_H1`,
`AssetClass.FX` is `ASSET_CLASS_FX`, `EventType.MARKET_EVENT` is `EVENT_TYPE_MARKET_EVENT`); the
`*_UNSPECIFIED` zero values are `None` here. Their `.value` is what the database stores. Job states
are the runtime's `JobState` (`services/runtime/jobs.py`), shared with the training jobs.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np

from services.runtime.jobs import JobState

T = TypeVar("T")

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Timeframe(enum.Enum):
    """Bar size of a candle series (proto `kitrading.common.v1.Timeframe`)."""

    M1 = "M1"
    M5 = "M5"
    M15 = "M15"
    M30 = "M30"
    H1 = "H1"
    H4 = "H4"
    D1 = "D1"
    W1 = "W1"

    @property
    def duration(self) -> timedelta:
        """Length of one bar."""
        return _TIMEFRAME_DURATIONS[self]


_TIMEFRAME_DURATIONS = {
    Timeframe.M1: timedelta(minutes=1),
    Timeframe.M5: timedelta(minutes=5),
    Timeframe.M15: timedelta(minutes=15),
    Timeframe.M30: timedelta(minutes=30),
    Timeframe.H1: timedelta(hours=1),
    Timeframe.H4: timedelta(hours=4),
    Timeframe.D1: timedelta(days=1),
    Timeframe.W1: timedelta(weeks=1),
}


class AssetClass(enum.Enum):
    """Instrument class (proto `kitrading.common.v1.AssetClass`); decides the trading calendar."""

    FX = "FX"
    EQUITY = "EQUITY"
    INDEX = "INDEX"
    CRYPTO = "CRYPTO"
    COMMODITY = "COMMODITY"


class EventType(enum.Enum):
    """What a Data event reports (proto `kitrading.data.v1.EventType`)."""

    CANDLES_INGESTED = "CANDLES_INGESTED"
    SYMBOL_ADDED = "SYMBOL_ADDED"
    SYMBOL_UPDATED = "SYMBOL_UPDATED"
    SYMBOL_REMOVED = "SYMBOL_REMOVED"
    SYNC_FINISHED = "SYNC_FINISHED"
    MARKET_EVENT = "MARKET_EVENT"


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar; `time` is the bar's open time (UTC). Prices in quote currency, volume in units."""

    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True, slots=True)
class CandleColumns:
    """Bars as parallel numpy arrays, entry i of each being bar i, in the order the read asked for;
    the bulk form (no object per bar). `times_unix_micros` (int64): open times, microseconds since
    the Unix epoch (UTC); the rest float64."""

    times_unix_micros: np.ndarray
    opens: np.ndarray
    highs: np.ndarray
    lows: np.ndarray
    closes: np.ndarray
    volumes: np.ndarray

    def __len__(self) -> int:
        return len(self.times_unix_micros)

    def head(self, n: int) -> CandleColumns:
        """The first `n` bars."""
        if n >= len(self):
            return self
        return CandleColumns(
            self.times_unix_micros[:n],
            self.opens[:n],
            self.highs[:n],
            self.lows[:n],
            self.closes[:n],
            self.volumes[:n],
        )

    def time_at(self, index: int) -> datetime:
        """Bar `index`'s open time as an aware UTC datetime (exact to the microsecond)."""
        return UNIX_EPOCH + timedelta(microseconds=int(self.times_unix_micros[index]))


@dataclass(frozen=True, slots=True)
class CandleSeries:
    """Coverage of the stored candles of one symbol and timeframe."""

    timeframe: Timeframe
    count: int
    first_time: datetime
    last_time: datetime


@dataclass(frozen=True, slots=True)
class Symbol:
    """A tradable instrument. `create_time`, `update_time` and `series` are output only."""

    symbol: str
    display_name: str = ""
    asset_class: AssetClass | None = None
    active: bool = True
    description: str = ""
    source: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    series: tuple[CandleSeries, ...] = ()


SYMBOL_MUTABLE_FIELDS = ("display_name", "asset_class", "active", "description", "source")


@dataclass(frozen=True, slots=True)
class Strategy:
    """A named trading-strategy configuration. `parameters` is a JSON object.

    `symbols` are loose references: they are not required to exist (a strategy may be configured
    before its symbols are added).
    """

    strategy_id: str
    display_name: str = ""
    description: str = ""
    symbols: tuple[str, ...] = ()
    timeframe: Timeframe | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    create_time: datetime | None = None
    update_time: datetime | None = None


STRATEGY_MUTABLE_FIELDS = ("display_name", "description", "symbols", "timeframe", "parameters", "active")


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Outcome of an idempotent candle upsert: rows written and the newest time among them."""

    upserted: int
    last_time: datetime | None


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """Summary of the last `bars` candles of a series.

    `change_percent` is close-to-close over the window in percent; `volatility` the sample standard
    deviation of bar log returns (dimensionless, per bar); `recent_candles` the last <= 24, oldest first.
    """

    symbol: str
    timeframe: Timeframe
    last_candle: Candle
    bars: int
    change_percent: float
    volatility: float
    high: float
    low: float
    mean_close: float
    recent_candles: tuple[Candle, ...]


@dataclass(frozen=True, slots=True)
class SyncSymbolResult:
    """Outcome of syncing one symbol within a job."""

    symbol: str
    state: JobState
    candles_upserted: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class SyncJob:
    """One run of the market-data sync from the external API."""

    job_id: str
    state: JobState
    symbols: tuple[str, ...]
    timeframe: Timeframe
    full: bool = False
    candles_upserted: int = 0
    symbols_done: int = 0
    symbols_failed: int = 0
    error: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    results: tuple[SyncSymbolResult, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """State of the sync subsystem: is a source configured, is a job running, the latest job."""

    source_configured: bool
    source_url: str
    running: bool
    latest_job: SyncJob | None


@dataclass(frozen=True, slots=True)
class QueryLog:
    """One recorded Data call. `code` is a gRPC status code name; `duration_ms` in milliseconds."""

    query_log_id: int
    method: str
    parameters: str
    duration_ms: float
    rows: int
    code: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class CandlesIngested:
    """Details of a CANDLES_INGESTED event."""

    count: int
    first_time: datetime
    last_time: datetime


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """Details of a MARKET_EVENT: bar `time` had log return `log_return` = `z_score` rolling sigmas."""

    time: datetime
    log_return: float
    z_score: float
    threshold: float


@dataclass(frozen=True, slots=True)
class SyncFinished:
    """Details of a SYNC_FINISHED event."""

    job_id: str
    state: JobState
    candles_upserted: int


EventDetails = CandlesIngested | MarketEvent | SyncFinished


@dataclass(frozen=True, slots=True)
class Event:
    """One persisted event; `event_id` increases strictly in commit order."""

    event_id: int
    type: EventType
    symbol: str = ""
    timeframe: Timeframe | None = None
    create_time: datetime | None = None
    details: EventDetails | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be written (no id or time yet)."""

    type: EventType
    symbol: str = ""
    timeframe: Timeframe | None = None
    details: EventDetails | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of events, oldest first; pass `last_event_id` as `after_event_id` to continue."""

    events: tuple[Event, ...]
    last_event_id: int


@dataclass(frozen=True, slots=True)
class SampleDataset:
    """One bundled real market-data set and how many candles it holds."""

    symbol: str
    timeframe: Timeframe
    package: str
    candles: int


@dataclass(frozen=True, slots=True)
class ColumnsPage:
    """One page of candles as columns; `next_page_token` is the same token the row form gives."""

    columns: CandleColumns
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; `next_page_token` is empty on the last page. `total_size` -1: not counted."""

    items: tuple[T, ...]
    next_page_token: str = ""
    total_size: int = -1
