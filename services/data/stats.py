"""Numerical helpers: candle validation, summary statistics and the market-event rule. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from services.data.models import Candle, MarketEvent, SymbolStats, Timeframe
from services.runtime.errors import FieldViolation, InvalidArgument

RECENT_CANDLES = 24


def candle_violations(candle: Candle, prefix: str) -> list[FieldViolation]:
    """Why `candle` is not a valid bar (empty when it is); fields are named `{prefix}.high` etc.

    Rules: prices finite and > 0, volume finite and >= 0, high >= max(open, close, low),
    low <= min(open, close).
    """
    out: list[FieldViolation] = []
    for name in ("open", "high", "low", "close"):
        value = getattr(candle, name)
        if not math.isfinite(value) or value <= 0:
            out.append(FieldViolation(f"{prefix}.{name}", "must be a finite price > 0"))
    if not math.isfinite(candle.volume) or candle.volume < 0:
        out.append(FieldViolation(f"{prefix}.volume", "must be finite and >= 0"))
    if out:
        return out
    if candle.high < max(candle.open, candle.close, candle.low):
        out.append(FieldViolation(f"{prefix}.high", "must be >= open, close and low"))
    if candle.low > min(candle.open, candle.close):
        out.append(FieldViolation(f"{prefix}.low", "must be <= open and close"))
    return out


def validate_candles(candles: Sequence[Candle], field: str = "candles", limit: int = 20) -> None:
    """Raise `InvalidArgument` naming `candles[i].<field>` for bad bars or repeated times.

    At most `limit` violations are reported.
    """
    violations: list[FieldViolation] = []
    seen: set[datetime] = set()
    for i, candle in enumerate(candles):
        prefix = f"{field}[{i}]"
        violations.extend(candle_violations(candle, prefix))
        time = candle.time if candle.time.tzinfo else candle.time.replace(tzinfo=UTC)
        if time in seen:
            violations.append(FieldViolation(f"{prefix}.time", "repeats an earlier candle's time"))
        seen.add(time)
        if len(violations) >= limit:
            break
    if violations:
        raise InvalidArgument.of(violations[:limit], reason="INVALID_CANDLE")


EARLIEST_CANDLE_TIME = datetime(1970, 1, 1, tzinfo=UTC)
"""Upserted candles open at or after this instant (UTC)."""
FUTURE_TOLERANCE = timedelta(minutes=5)
"""Clock skew allowed beyond now: a bar opening later than now plus this is rejected."""


def on_grid(time: datetime, timeframe: Timeframe) -> bool:
    """Whether `time` opens a bar of `timeframe`: a multiple of its length since the Unix epoch (UTC);
    W1 bars open at 00:00 UTC on any weekday (providers differ between Sunday and Monday)."""
    seconds = (as_aware(time) - EARLIEST_CANDLE_TIME) // timedelta(microseconds=1)
    unit = timedelta(days=1) if timeframe is Timeframe.W1 else timeframe.duration
    return seconds % (unit // timedelta(microseconds=1)) == 0


def validate_candle_times(
    candles: Sequence[Candle],
    timeframe: Timeframe,
    now: datetime,
    field: str = "candles",
    limit: int = 20,
) -> None:
    """Raise `InvalidArgument` naming `candles[i].time` for a time off the timeframe's grid, before
    `EARLIEST_CANDLE_TIME` or after `now + FUTURE_TOLERANCE`."""
    latest = as_aware(now) + FUTURE_TOLERANCE
    violations: list[FieldViolation] = []
    for i, candle in enumerate(candles):
        time = as_aware(candle.time)
        if time < EARLIEST_CANDLE_TIME:
            problem = f"must not be before {EARLIEST_CANDLE_TIME.isoformat()}"
        elif time > latest:
            problem = f"must not be later than now plus {int(FUTURE_TOLERANCE.total_seconds())} s"
        elif not on_grid(time, timeframe):
            problem = f"{time.isoformat()} is not on the {timeframe.value} grid"
        else:
            continue
        violations.append(FieldViolation(f"{field}[{i}].time", problem))
        if len(violations) >= limit:
            break
    if violations:
        raise InvalidArgument.of(violations, reason="INVALID_CANDLE_TIME")


def as_aware(time: datetime) -> datetime:
    """Naive datetimes are UTC."""
    return time if time.tzinfo else time.replace(tzinfo=UTC)


def log_returns(closes: np.ndarray) -> np.ndarray:
    """Bar log returns, shape (n-1,), of closes with shape (n,)."""
    closes = np.asarray(closes, dtype=np.float64)
    if closes.size < 2:
        return np.empty(0, dtype=np.float64)
    return np.diff(np.log(closes))


def summarize(symbol: str, timeframe: Timeframe, candles: Sequence[Candle]) -> SymbolStats:
    """Statistics of `candles` (oldest first, at least one)."""
    closes = np.fromiter((c.close for c in candles), dtype=np.float64, count=len(candles))
    returns = log_returns(closes)
    return SymbolStats(
        symbol=symbol,
        timeframe=timeframe,
        last_candle=candles[-1],
        bars=len(candles),
        change_percent=float((closes[-1] / closes[0] - 1.0) * 100.0),
        volatility=float(returns.std(ddof=1)) if returns.size >= 2 else 0.0,
        high=max(c.high for c in candles),
        low=min(c.low for c in candles),
        mean_close=float(closes.mean()),
        recent_candles=tuple(candles[-RECENT_CANDLES:]),
    )


def detect_market_events(
    history_closes: np.ndarray,
    new_times: Sequence[datetime],
    new_closes: np.ndarray,
    *,
    k: float,
    window: int,
) -> list[MarketEvent]:
    """Bars among the new ones whose log return exceeds `k` rolling standard deviations.

    `history_closes` (shape (h,)) are the stored closes right before the first new bar, oldest first;
    `new_times`/`new_closes` (shape (m,)) the newly ingested bars, oldest first. A new bar's return r
    fires when |r| > k * s, where s is the sample standard deviation (ddof=1) of the `window` returns
    just before it; bars with fewer than `window` previous returns, or s == 0, never fire.
    """
    closes = np.concatenate([np.asarray(history_closes, np.float64), np.asarray(new_closes, np.float64)])
    returns = log_returns(closes)
    first_new = len(history_closes) - 1  # index in `returns` of the first new bar's return
    events: list[MarketEvent] = []
    for j in range(max(first_new, window), returns.size):
        sigma = float(returns[j - window : j].std(ddof=1))
        if sigma <= 0 or not math.isfinite(sigma):
            continue
        z = float(returns[j]) / sigma
        if abs(z) > k:
            time = new_times[j - first_new]
            events.append(MarketEvent(time=time, log_return=float(returns[j]), z_score=z, threshold=k))
    return events
