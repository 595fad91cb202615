"""Features of the regime HMM, computed from candles, and their standardisation.

Every feature at bar t uses bars <= t only (log return from close[t-1] to close[t]; realised volatility
over the `vol_window` returns ending at t), so nothing computed here looks ahead. The warm-up rows
(NaN) are dropped; the times of the remaining rows are kept. `Standardizer` is fitted on training rows
only and stored with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Floor of the realised volatility before its log (flat price stretches give 0).
VOL_FLOOR = 1e-12

COLUMNS: tuple[str, ...] = ("log_return", "log_volatility")


@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """Feature rows of one symbol, oldest first.

    `values` (n, f) float64 with `columns`; `times` (n,) UTC bar times; `log_return` and `volatility`
    (n,) in original units (per bar, not annualised), for naming states and describing segments.
    """

    times: pd.DatetimeIndex
    values: np.ndarray
    columns: tuple[str, ...]
    log_return: np.ndarray
    volatility: np.ndarray

    def __len__(self) -> int:
        return len(self.times)

    def tail(self, n: int) -> FeatureFrame:
        """The last `n` rows."""
        n = max(0, min(n, len(self)))
        start = len(self) - n
        return self.slice(start, len(self))

    def slice(self, start: int, stop: int) -> FeatureFrame:
        """Rows start..stop-1 (positions)."""
        return FeatureFrame(
            times=self.times[start:stop],
            values=self.values[start:stop],
            columns=self.columns,
            log_return=self.log_return[start:stop],
            volatility=self.volatility[start:stop],
        )


def min_candles(vol_window: int = 24) -> int:
    """Candles needed for one feature row: one for the first return, `vol_window` returns."""
    return vol_window + 1


def regime_features(candles: pd.DataFrame, *, vol_window: int = 24) -> FeatureFrame:
    """Features of `candles` (columns time, close at least; oldest first).

    Columns: `log_return` = log(close[t] / close[t-1]); `log_volatility` = log of the standard
    deviation (ddof 0) of the `vol_window` log returns ending at t, floored at `VOL_FLOOR`. The first
    `vol_window` rows (warm-up) are dropped. Raises ValueError on too few rows or non-positive closes.
    """
    if vol_window < 2:
        raise ValueError(f"vol_window must be >= 2, got {vol_window}")
    if len(candles) < min_candles(vol_window):
        raise ValueError(f"{len(candles)} candles, need at least {min_candles(vol_window)}")
    close = candles["close"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise ValueError("close prices must be finite and positive")
    times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
    if not times.is_monotonic_increasing:
        raise ValueError("candles must be sorted by time, oldest first")

    log_close = np.log(close)
    ret = np.full(len(close), np.nan)
    ret[1:] = np.diff(log_close)
    vol = pd.Series(ret).rolling(vol_window, min_periods=vol_window).std(ddof=0).to_numpy()
    keep = np.isfinite(ret) & np.isfinite(vol)
    ret, vol = ret[keep], vol[keep]
    values = np.column_stack([ret, np.log(np.maximum(vol, VOL_FLOOR))])
    return FeatureFrame(
        times=times[keep],
        values=np.ascontiguousarray(values),
        columns=COLUMNS,
        log_return=ret,
        volatility=vol,
    )


class Standardizer:
    """Per-column standardisation, (x - mean_) / scale_, with statistics of the training rows only.

    `scale_` is the standard deviation (ddof 0); a constant column gets scale 1.
    """

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> Standardizer:
        """Fit on X (n, f), n >= 1."""
        X = _check_2d(X)
        std = X.std(axis=0)
        self.mean_ = X.mean(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(n, f) -> (n, f) standardised."""
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError("Standardizer is not fitted")
        X = _check_2d(X)
        if X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} columns, fitted on {self.mean_.shape[0]}")
        return (X - self.mean_) / self.scale_

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """(n, f) standardised -> (n, f) original units."""
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError("Standardizer is not fitted")
        return _check_2d(Z) * self.scale_ + self.mean_

    def to_dict(self) -> dict[str, Any]:
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError("Standardizer is not fitted")
        return {"mean": [float(v) for v in self.mean_], "scale": [float(v) for v in self.scale_]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        out = cls()
        out.mean_ = np.asarray(data["mean"], dtype=np.float64)
        out.scale_ = np.asarray(data["scale"], dtype=np.float64)
        if out.mean_.shape != out.scale_.shape or out.mean_.ndim != 1:
            raise ValueError("mean and scale must be equal-length lists")
        return out


def _check_2d(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"expected a (n, f) array with n >= 1, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return X
