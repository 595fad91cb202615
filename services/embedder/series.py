"""Time-series embeddings of a candle window: fixed-dimension, scale-free return features.

Method `returns-v1` (48 numbers, no training): the window's log returns are divided by their own
standard deviation, so a quiet and a wild market with the same shape embed alike; the vector is
the shape of the cumulative normalised path (32 points, resampled, / sqrt(bars)), momentum over
1..64 bars, volatility ratios, bar range, close location, autocorrelation, skew, kurtosis and a
volume trend. Only the window's own candles are used: nothing after its last bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.runtime.errors import InvalidArgument

METHOD = "kitrading/returns-v1"
PATH_POINTS = 32
MOMENTUM_BARS = (1, 2, 4, 8, 16, 32, 64)
DIMENSION = PATH_POINTS + len(MOMENTUM_BARS) + 9
MIN_BARS = 8
MAX_BARS = 4096


@dataclass(frozen=True, slots=True)
class SeriesEmbedding:
    """The vector of a window (float32, `DIMENSION`) and the window it describes."""

    vector: np.ndarray
    bars: int
    start_time: pd.Timestamp | None
    end_time: pd.Timestamp | None


def check_window(frame: pd.DataFrame, field: str = "window.candles") -> None:
    """`frame` (candle columns, oldest first) is embeddable: MIN_BARS..MAX_BARS bars, finite positive
    prices, low <= open, close <= high. InvalidArgument names the first bad candle."""
    n = len(frame)
    if not MIN_BARS <= n <= MAX_BARS:
        raise InvalidArgument(field, f"a window has {MIN_BARS}..{MAX_BARS} candles, got {n}")
    prices = frame[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prices).all(axis=1) | (prices <= 0).any(axis=1)
    low, high = prices[:, 2], prices[:, 1]
    bad |= (low > prices[:, [0, 3]].min(axis=1) + 1e-12) | (high < prices[:, [0, 3]].max(axis=1) - 1e-12)
    if bad.any():
        index = int(np.argmax(bad))
        raise InvalidArgument(
            f"{field}[{index}]", "prices must be finite and positive, with low <= open, close <= high"
        )


def _resample(values: np.ndarray, points: int) -> np.ndarray:
    grid = np.linspace(0.0, len(values) - 1, points)
    return np.interp(grid, np.arange(len(values)), values)


def _autocorrelation(x: np.ndarray, lag: int) -> float:
    if len(x) <= lag + 1:
        return 0.0
    a, b = x[:-lag], x[lag:]
    denominator = float(np.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum()))
    return float(((a - a.mean()) * (b - b.mean())).sum() / denominator) if denominator > 0 else 0.0


def features(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """The `returns-v1` vector (DIMENSION,) of one window given as arrays, oldest first (the open is
    not used: it is the previous close up to gaps)."""
    returns = np.diff(np.log(close))
    sigma = float(returns.std())
    z = returns / sigma if sigma > 0 else np.zeros_like(returns)
    n = len(z)
    path = np.concatenate([[0.0], np.cumsum(z)])
    shape = _resample(path, PATH_POINTS) / np.sqrt(n)
    momentum = [z[-min(k, n) :].sum() / np.sqrt(min(k, n)) for k in MOMENTUM_BARS]
    quarter = max(n // 4, 2)
    recent = float(returns[-quarter:].std())
    first, second = float(returns[: n // 2].std()), float(returns[n // 2 :].std())
    vol_recent = np.log(recent / sigma) if sigma > 0 and recent > 0 else 0.0
    vol_halves = np.log(second / first) if first > 0 and second > 0 else 0.0
    bar_range = (high - low) / close
    range_ratio = np.log(float(bar_range.mean()) / sigma) if sigma > 0 and bar_range.mean() > 0 else 0.0
    span = float(high.max() - low.min())
    location = (close[-1] - low.min()) / span - 0.5 if span > 0 else 0.0
    skew = float((z**3).mean()) if sigma > 0 else 0.0
    kurtosis = float((z**4).mean()) - 3.0 if sigma > 0 else 0.0
    volume_mean = float(volume.mean())
    volume_trend = (
        np.log(float(volume[-quarter:].mean()) / volume_mean)
        if volume_mean > 0 and volume[-quarter:].mean() > 0
        else 0.0
    )
    summary = [
        vol_recent,
        vol_halves,
        range_ratio / 4.0,
        location,
        _autocorrelation(z, 1),
        _autocorrelation(z, 2),
        np.tanh(skew / 2.0),
        np.tanh(kurtosis / 10.0),
        np.tanh(volume_trend),
    ]
    return np.concatenate([shape, momentum, summary]).astype(np.float32)


def embed_window(frame: pd.DataFrame, *, normalize: bool = False) -> SeriesEmbedding:
    """The embedding of a checked candle window (`check_window`), optionally of unit length."""
    arrays = [frame[name].to_numpy(dtype=np.float64) for name in ("open", "high", "low", "close", "volume")]
    vector = features(*arrays)
    if normalize:
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
    times = frame.get("time")
    return SeriesEmbedding(
        vector=vector.astype(np.float32),
        bars=len(frame),
        start_time=None if times is None else pd.Timestamp(times.iloc[0]),
        end_time=None if times is None else pd.Timestamp(times.iloc[-1]),
    )
