"""Features of the signal scorer at bar t, from bars <= t only.

Per bar: log returns over several windows, realised volatility, the ATR relative to the price and to
its own longer average, RSI(14) (Wilder), the log distance of the close from moving averages. Per
signal: those at its bar t, its side (+1 buy / -1 sell) and the regime probabilities the caller passes
(one row per signal, e.g. the HMM's filtered probabilities at t). Every rolling statistic is trailing
(pandas `rolling`/`ewm` over past rows), so altering bars after t leaves the features at t unchanged.
Warm-up rows are NaN, which LightGBM treats as missing; `min_history` says how many bars remove them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.regime.labels import SIDE_SIGN, atr

RETURN_WINDOWS: tuple[int, ...] = (1, 5, 20, 60)
MA_WINDOWS: tuple[int, ...] = (20, 50, 200)
VOL_WINDOW = 20
ATR_WINDOW = 14
ATR_LONG_WINDOW = 100
RSI_WINDOW = 14


@dataclass(frozen=True, slots=True)
class SignalFeatures:
    """`values` (m, f) float64 in model order with `columns` (f,) names."""

    values: np.ndarray
    columns: tuple[str, ...]

    def frame(self) -> pd.DataFrame:
        """The values as a frame with the column names."""
        return pd.DataFrame(self.values, columns=list(self.columns))


def bar_feature_names(
    return_windows: Sequence[int] = RETURN_WINDOWS, ma_windows: Sequence[int] = MA_WINDOWS
) -> tuple[str, ...]:
    """Names of the per-bar features, in model order."""
    return (
        *(f"return_{w}" for w in return_windows),
        f"realized_vol_{VOL_WINDOW}",
        f"atr_{ATR_WINDOW}_to_close",
        f"atr_{ATR_WINDOW}_to_atr_{ATR_LONG_WINDOW}",
        f"rsi_{RSI_WINDOW}",
        *(f"close_to_ma_{w}" for w in ma_windows),
    )


def feature_names(
    regime_columns: Sequence[str] = (),
    return_windows: Sequence[int] = RETURN_WINDOWS,
    ma_windows: Sequence[int] = MA_WINDOWS,
) -> tuple[str, ...]:
    """Names of the scorer's features in model order: bar features, `side`, the regime columns."""
    return (*bar_feature_names(return_windows, ma_windows), "side", *regime_columns)


def min_history(
    return_windows: Sequence[int] = RETURN_WINDOWS, ma_windows: Sequence[int] = MA_WINDOWS
) -> int:
    """Bars before t needed for every feature at t to be defined (t >= this)."""
    return max(*return_windows, VOL_WINDOW, ATR_WINDOW + ATR_LONG_WINDOW - 2, max(ma_windows) - 1)


def _rsi(close: pd.Series, window: int) -> pd.Series:
    delta = close.diff()
    gain = delta.clip(lower=0.0).ewm(alpha=1.0 / window, adjust=False, min_periods=window).mean()
    loss = (-delta.clip(upper=0.0)).ewm(alpha=1.0 / window, adjust=False, min_periods=window).mean()
    total = gain + loss
    return (100.0 * gain / total.where(total > 0)).fillna(50.0).where(gain.notna())


def bar_features(
    candles: pd.DataFrame,
    return_windows: Sequence[int] = RETURN_WINDOWS,
    ma_windows: Sequence[int] = MA_WINDOWS,
) -> np.ndarray:
    """Per-bar features (n, b) of `candles` (columns high, low, close; oldest first), names from
    `bar_feature_names`; row t uses rows <= t only."""
    close = candles["close"].astype(np.float64).reset_index(drop=True)
    if not np.all(np.isfinite(close)) or (close <= 0).any():
        raise ValueError("close prices must be finite and positive")
    log_close = np.log(close)
    log_ret = log_close.diff()
    atr_short = pd.Series(atr(candles, ATR_WINDOW))
    atr_long = atr_short.rolling(ATR_LONG_WINDOW, min_periods=ATR_LONG_WINDOW).mean()
    columns = [
        *(log_close - log_close.shift(w) for w in return_windows),
        log_ret.rolling(VOL_WINDOW, min_periods=VOL_WINDOW).std(ddof=0),
        atr_short / close,
        atr_short / atr_long,
        _rsi(close, RSI_WINDOW),
        *(log_close - np.log(close.rolling(w, min_periods=w).mean()) for w in ma_windows),
    ]
    return np.column_stack([np.asarray(col, dtype=np.float64) for col in columns])


def signal_features(
    candles: pd.DataFrame,
    t_index: np.ndarray | Sequence[int],
    side: str | Sequence[str] | np.ndarray,
    regime_probabilities: np.ndarray | None = None,
    regime_columns: Sequence[str] = (),
    *,
    return_windows: Sequence[int] = RETURN_WINDOWS,
    ma_windows: Sequence[int] = MA_WINDOWS,
) -> SignalFeatures:
    """Features (m, f) of m signals at bars `t_index` (m,), named by `feature_names(regime_columns)`.

    `side`: "buy"/"sell" for all or one per signal (or +1/-1 values). `regime_probabilities`: (m, k)
    rows per signal (not per bar), with `regime_columns` (k,) names such as
    "regime_bull_probability"; the caller is responsible for them using bars <= t (filtered, not
    smoothed, HMM probabilities).
    """
    t = np.asarray(t_index, dtype=np.int64)
    m = len(t)
    if t.ndim != 1 or (m and (t.min() < 0 or t.max() >= len(candles))):
        raise ValueError(f"t_index must be 1-d positions in [0, {len(candles) - 1}]")
    if isinstance(side, str):
        sign = np.full(m, SIDE_SIGN.get(side, np.nan))
    else:
        raw = np.asarray(side)
        sign = (
            raw.astype(np.float64)
            if raw.dtype.kind in "iuf"
            else np.array([SIDE_SIGN.get(str(s), np.nan) for s in raw])
        )
    if sign.shape != (m,) or not np.all(np.isin(sign, (-1.0, 1.0))):
        raise ValueError("side must be 'buy'/'sell' (or +1/-1), one value or one per signal")
    k = len(regime_columns)
    probs = (
        np.empty((m, 0))
        if regime_probabilities is None
        else np.asarray(regime_probabilities, dtype=np.float64)
    )
    if probs.shape != (m, k):
        raise ValueError(
            f"regime_probabilities must have shape ({m}, {k}) to match regime_columns, got {probs.shape}"
        )
    bars = bar_features(candles, return_windows, ma_windows)[t]
    values = np.column_stack([bars, sign, probs]) if m else np.empty((0, bars.shape[1] + 1 + k))
    return SignalFeatures(
        values=np.ascontiguousarray(values), columns=feature_names(regime_columns, return_windows, ma_windows)
    )
