"""Causal zig-zag pivots: swing highs and lows, each known only from the bar that confirms it.

A swing high at bar i is confirmed at the first later bar t whose low is `threshold` ATRs below it
(a swing low: whose high is that far above it). Pivots alternate H, L, H... A detection built on
pivots confirmed by bar t uses no bar after t: the detector reports t as the pattern's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int = 14) -> np.ndarray:
    """(n,) average true range: the mean of the last `window` true ranges (bars <= t); the first
    bars average what exists."""
    prev = np.concatenate([[close[0]], close[:-1]])
    tr = np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))
    csum = np.cumsum(tr)
    out = np.empty_like(tr)
    n = np.arange(1, len(tr) + 1)
    out[:window] = csum[:window] / n[:window]
    out[window:] = (csum[window:] - csum[:-window]) / window
    return out


@dataclass(frozen=True, slots=True)
class Pivot:
    index: int  # bar of the extreme
    price: float
    kind: str  # "H" or "L"
    confirmed: int  # bar that confirmed it (> index)


def zigzag(high: np.ndarray, low: np.ndarray, close: np.ndarray, *, threshold: float = 2.0) -> list[Pivot]:
    """Pivots of the series, oldest first (see the module docstring); ATR(14) at the confirming bar."""
    n = len(close)
    if n < 3:
        return []
    scale = atr(high, low, close)
    pivots: list[Pivot] = []
    up = close[min(n - 1, 1)] >= close[0]
    ext_i, ext_p = (0, float(high[0])) if up else (0, float(low[0]))
    for t in range(1, n):
        move = threshold * scale[t]
        if up:
            if high[t] > ext_p:
                ext_i, ext_p = t, float(high[t])
            elif ext_p - low[t] >= move:
                pivots.append(Pivot(ext_i, ext_p, "H", t))
                up, ext_i, ext_p = False, t, float(low[t])
        elif low[t] < ext_p:
            ext_i, ext_p = t, float(low[t])
        elif high[t] - ext_p >= move:
            pivots.append(Pivot(ext_i, ext_p, "L", t))
            up, ext_i, ext_p = True, t, float(high[t])
    return pivots
