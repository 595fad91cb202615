"""What the forecast domain needs from the outside world, as small async protocols.

The servicer adapts the Data service's gRPC client to these (ListSymbols / GetCandles /
WatchEvents); tests and the embedded mode use `InMemoryCandleSource` with the bundled real data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

CANDLE_COLUMNS = ["time", "open", "high", "low", "close", "volume"]


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """A tradable symbol. `asset_class` picks the calendar (FX, EQUITY, INDEX, CRYPTO, COMMODITY);
    `timeframe` is the candle series the model is trained on (None: the service default)."""

    symbol: str
    asset_class: str = "FX"
    active: bool = True
    timeframe: str | None = None


class CandleSource(Protocol):
    """Read access to symbols and candles (the Data service)."""

    async def list_symbols(self) -> Sequence[SymbolInfo]:
        """Every known symbol, active or not."""
        ...

    async def get_symbol(self, symbol: str) -> SymbolInfo | None:
        """One symbol, or None when the Data service does not know it."""
        ...

    async def fetch(self, symbol: str, timeframe: str, *, limit: int | None = None) -> pd.DataFrame:
        """Candles oldest first: columns time (UTC), open, high, low, close, volume; at most the
        newest `limit` rows when `limit` is given."""
        ...


@dataclass(frozen=True, slots=True)
class DataEvent:
    """One entry of the Data service's event stream (WatchEvents). `type` is the EventType name
    without prefix: CANDLES_INGESTED, MARKET_EVENT, SYMBOL_ADDED, ..."""

    event_id: int
    type: str
    symbol: str = ""
    timeframe: str = ""


# after_event_id -> the events after it (persisted ones first, then live ones), forever.
EventStream = Callable[[int], AsyncIterator[DataEvent]]


def candles_from_ohlcv(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise an OHLCV frame (DatetimeIndex, `Open`/`Close`... columns as in
    `backtesting.test.EURUSD`) into the candle contract: time (UTC), open, high, low, close, volume."""
    out = frame.rename(columns=str.lower)
    if "time" not in out.columns:
        out = out.rename_axis("time").reset_index()
    out["time"] = pd.to_datetime(out["time"], utc=True)
    if "volume" not in out.columns:
        out["volume"] = 0.0
    return out[CANDLE_COLUMNS].sort_values("time").reset_index(drop=True)


class InMemoryCandleSource:
    """A CandleSource over DataFrames held in memory (tests, embedded mode)."""

    def __init__(self) -> None:
        self._symbols: dict[str, SymbolInfo] = {}
        self._candles: dict[tuple[str, str], pd.DataFrame] = {}
        self.fetches = 0

    def put(self, info: SymbolInfo, timeframe: str, candles: pd.DataFrame) -> None:
        self._symbols[info.symbol] = info
        self._candles[(info.symbol, timeframe)] = (
            candles_from_ohlcv(candles) if "time" not in candles else candles
        )

    def remove(self, symbol: str) -> None:
        self._symbols.pop(symbol, None)

    async def list_symbols(self) -> Sequence[SymbolInfo]:
        return list(self._symbols.values())

    async def get_symbol(self, symbol: str) -> SymbolInfo | None:
        return self._symbols.get(symbol)

    async def fetch(self, symbol: str, timeframe: str, *, limit: int | None = None) -> pd.DataFrame:
        self.fetches += 1
        frame = self._candles.get((symbol, timeframe))
        if frame is None:
            return pd.DataFrame(columns=CANDLE_COLUMNS)
        return frame.tail(limit).reset_index(drop=True) if limit else frame
