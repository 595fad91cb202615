"""The pattern domain in one object: the one door its servicer uses.

domain = PatternDomain(PatternSettings.from_env(), source)
result = await domain.detect_symbol("EURUSD", lookback=200)   # rules engine, with follow-through
result = await domain.detect_candles(frame)                  # caller-given candles, validated

The TCN of issue 12 is not built: every answer names the rules engine and says so. Follow-through
figures are computed once per series state (its bar count and last bar) and reused.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from services.pattern.catalogue import CATALOGUE, PatternSpec
from services.pattern.detector import Detection, detect
from services.pattern.followthrough import FollowThrough, follow_through
from services.pattern.settings import PatternSettings
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.training.sources import CandleSource

DEFAULT_LOOKBACK = 200
DEFAULT_MIN_CONFIDENCE = 0.5
ENGINE_NOTE = "the TCN is not trained in this version: the rule-based detector answered"


@dataclass(frozen=True, slots=True)
class Found:
    detection: Detection
    start_time: datetime
    end_time: datetime
    point_times: tuple[datetime, ...]
    follow: FollowThrough | None
    #: Open times of the first and last bar of the follow-through's held-out period.
    follow_period: tuple[datetime, datetime] | None = None


@dataclass(frozen=True, slots=True)
class Result:
    symbol: str
    timeframe: str
    patterns: list[Found]  # most confident first
    bars: int
    window_start: datetime | None
    window_end: datetime | None
    engine: str = "rules"
    note: str = ENGINE_NOTE


@dataclass(frozen=True, slots=True)
class ScanError:
    symbol: str
    code: str
    message: str


class PatternDomain:
    def __init__(self, settings: PatternSettings, source: CandleSource) -> None:
        self.settings = settings
        self.source = source
        self._follow: dict[tuple[str, str], tuple[tuple[int, object], dict[str, FollowThrough]]] = {}

    def pattern_types(self) -> tuple[PatternSpec, ...]:
        return CATALOGUE

    async def _timeframe(self, symbol: str, timeframe: str) -> str:
        info = await self.source.get_symbol(symbol)
        if info is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        return timeframe or info.timeframe or self.settings.timeframe

    async def detect_symbol(
        self, symbol: str, *, timeframe: str = "", lookback: int = 0, min_confidence: float = 0.0
    ) -> Result:
        """Patterns confirmed in the symbol's newest `lookback` bars, with their follow-through."""
        frame_name = await self._timeframe(symbol, timeframe)
        candles = await self.source.fetch(symbol, frame_name, limit=self.settings.history_bars)
        lookback = lookback or DEFAULT_LOOKBACK
        if len(candles) < 3:
            raise FailedPrecondition(
                f"{symbol} has {len(candles)} {frame_name} candles; detection needs at least 3",
                reason="NOT_ENOUGH_CANDLES",
            )
        detections = await asyncio.to_thread(detect, candles)
        follow = await self._follow_through(symbol, frame_name, candles, detections)
        first = max(0, len(candles) - lookback)
        recent = [d for d in detections if d.end >= first]
        return _result(symbol, frame_name, candles, recent, first, min_confidence, follow)

    async def _follow_through(
        self, symbol: str, timeframe: str, candles: pd.DataFrame, detections: list[Detection]
    ) -> dict[str, FollowThrough]:
        key = (symbol, timeframe)
        state = (len(candles), candles["time"].iloc[-1])
        cached = self._follow.get(key)
        if cached is not None and cached[0] == state:
            return cached[1]
        rows = await asyncio.to_thread(
            follow_through,
            candles,
            detections,
            horizon=self.settings.follow_horizon,
            holdout=self.settings.holdout,
        )
        table = {r.slug: r for r in rows}
        self._follow[key] = (state, table)
        return table

    async def detect_candles(
        self, candles: pd.DataFrame, *, symbol: str = "", timeframe: str = "H1", min_confidence: float = 0.0
    ) -> Result:
        """Patterns in caller-given candles (columns time, open, high, low, close, volume), validated
        first: INVALID_ARGUMENT names `candles[i].<field>`."""
        check_candles(candles)
        detections = await asyncio.to_thread(detect, candles)
        return _result(symbol, timeframe, candles, detections, 0, min_confidence, {})

    async def scan(
        self, *, timeframe: str = "", lookback: int = 0, min_confidence: float = 0.0
    ) -> tuple[list[Result], list[ScanError]]:
        """Every active symbol in one pass; a symbol that fails is named with its error."""
        results, errors = [], []
        for info in await self.source.list_symbols():
            if not info.active:
                continue
            try:
                results.append(
                    await self.detect_symbol(
                        info.symbol, timeframe=timeframe, lookback=lookback, min_confidence=min_confidence
                    )
                )
            except DomainError as exc:
                errors.append(ScanError(info.symbol, exc.code, str(exc)))
        return results, errors


def check_candles(candles: pd.DataFrame) -> None:
    """INVALID_ARGUMENT naming the first bad candle: non-finite prices, high < low, a price outside
    [low, high], times not strictly increasing."""
    prices = candles[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prices)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidArgument(
            f"candles[{i}].{('open', 'high', 'low', 'close')[j]}", "must be a finite number"
        )
    high, low = prices[:, 1], prices[:, 2]
    for name, values in (("high", high < low), ("open", (prices[:, 0] > high) | (prices[:, 0] < low)),
                         ("close", (prices[:, 3] > high) | (prices[:, 3] < low))):  # fmt: skip
        if values.any():
            i = int(np.flatnonzero(values)[0])
            raise InvalidArgument(f"candles[{i}].{name}", "must lie within [low, high] (and high >= low)")
    times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
    order = np.flatnonzero(np.diff(times.asi8) <= 0)
    if len(order):
        raise InvalidArgument(f"candles[{int(order[0]) + 1}].time", "times must be strictly increasing")


def _result(
    symbol: str,
    timeframe: str,
    candles: pd.DataFrame,
    detections: Sequence[Detection],
    first: int,
    min_confidence: float,
    follow: dict[str, FollowThrough],
) -> Result:
    times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
    floor = min_confidence or DEFAULT_MIN_CONFIDENCE
    found = [
        Found(
            d,
            times[d.start].to_pydatetime(),
            times[d.end].to_pydatetime(),
            tuple(times[p.index].to_pydatetime() for p in d.points),
            follow.get(d.slug),
            _period(times, follow.get(d.slug)),
        )
        for d in detections
        if d.confidence >= floor and not math.isnan(d.confidence)
    ]
    found.sort(key=lambda f: (-f.detection.confidence, -f.detection.end))
    return Result(
        symbol,
        timeframe,
        found,
        len(candles) - first,
        times[first].to_pydatetime() if len(times) else None,
        times[-1].to_pydatetime() if len(times) else None,
    )


def _period(times: pd.DatetimeIndex, follow: FollowThrough | None) -> tuple[datetime, datetime] | None:
    if follow is None or not len(times):
        return None
    last = len(times) - 1
    return times[min(follow.period_start, last)].to_pydatetime(), times[
        min(follow.period_end, last)
    ].to_pydatetime()
