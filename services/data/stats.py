"""Numerical helpers: candle validation, summary statistics and the market-event rule. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

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
