"""Triple-barrier labels of trade signals, and the ATR they are measured in.

A signal enters at the close of bar t. Its target and stop are barriers at a distance from that price
(ATR multiples, using the ATR known at t, or percent of the price), checked on bars t+1..t+horizon with
each bar's high and low; the vertical barrier is the close of bar t+horizon. Label 1 = the target was
touched first; 0 = the stop first, or neither by the horizon. When one bar touches both, the stop is
counted (we cannot know the order inside a bar; this is the conservative reading). Returns are after
the round-trip `cost` (a fraction of the price). `t1` is the bar where the outcome was decided, so a
label covers bars [t, t1]: what purged walk-forward training needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Unit = Literal["atr", "percent"]
Side = Literal["buy", "sell"]

#: Sign of each side's position.
SIDE_SIGN: dict[str, int] = {"buy": 1, "sell": -1}

#: Which barrier decided a label (values of `LabelFrame.barrier`).
TAKE_PROFIT, STOP_LOSS, HORIZON = "take_profit", "stop_loss", "horizon"


@dataclass(frozen=True, slots=True)
class Barriers:
    """Target and stop distances: in ATR(14) multiples at t (`unit="atr"`) or in percent of the entry
    price (`unit="percent"`, 1.0 = 1 %). Both must be positive and finite."""

    take_profit: float
    stop_loss: float
    unit: Unit = "atr"

    def __post_init__(self) -> None:
        for name in ("take_profit", "stop_loss"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.unit not in ("atr", "percent"):
            raise ValueError(f"unit must be 'atr' or 'percent', got {self.unit!r}")


@dataclass(frozen=True, slots=True)
class LabelFrame:
    """Outcomes of m signals, in the order given.

    `t` (m,) entry bar; `side` (m,) +1 buy / -1 sell; `label` (m,) int8; `ret` (m,) float64 realised
    return after costs (at the barrier price or at the horizon close); `t1` (m,) bar where the
    outcome was decided; `barrier` (m,) one of "take_profit", "stop_loss", "horizon".
    """

    t: np.ndarray
    side: np.ndarray
    label: np.ndarray
    ret: np.ndarray
    t1: np.ndarray
    barrier: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @property
    def base_rate(self) -> float:
        """Share of labels 1 (NaN when empty)."""
        return float(self.label.mean()) if len(self) else float("nan")


def atr(candles: pd.DataFrame, window: int = 14) -> np.ndarray:
    """Average true range (n,): the mean of the `window` true ranges ending at bar t (bars <= t only).

    True range = max(high - low, |high - close[t-1]|, |low - close[t-1]|); high - low on the first bar.
    The first `window - 1` values are NaN.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    high = candles["high"].to_numpy(dtype=np.float64)
    low = candles["low"].to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    prev = np.concatenate([[np.nan], close[:-1]])
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))
    return pd.Series(tr).rolling(window, min_periods=window).mean().to_numpy()


def _sides(side: Side | Sequence[str] | np.ndarray, m: int) -> np.ndarray:
    names = np.full(m, side) if isinstance(side, str) else np.asarray(side)
    if names.shape != (m,):
        raise ValueError(
            f"side must be 'buy', 'sell' or one of them per signal ({m}), got shape {names.shape}"
        )
    bad = sorted({str(s) for s in names} - SIDE_SIGN.keys())
    if bad:
        raise ValueError(f"side must be 'buy' or 'sell', got {bad}")
    return np.array([SIDE_SIGN[str(s)] for s in names], dtype=np.int8)


def triple_barrier(
    candles: pd.DataFrame,
    side: Side | Sequence[str] | np.ndarray,
    t_index: np.ndarray | Sequence[int],
    horizon: int,
    barriers: Barriers,
    cost: float = 0.0,
    *,
    atr_window: int = 14,
) -> LabelFrame:
    """Triple-barrier outcome of each signal entering at the close of bar `t_index[i]`.

    `candles` has columns open, high, low, close (oldest first, n rows); `side` is "buy"/"sell" for
    all signals or one per signal; `t_index` (m,) bar positions with t + horizon <= n - 1 (and an ATR
    defined at t when the unit is "atr"); `cost` the round-trip cost as a fraction of the price,
    subtracted from every return.

    Buy: target = entry + d_tp, stop = entry - d_sl; sell mirrored. The target fills at its barrier;
    the stop at its barrier, or at the bar's open when the bar gaps through it. A bar touching both
    counts as the stop (conservative). Neither by t + horizon: label 0, exit at that bar's close.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not (np.isfinite(cost) and cost >= 0):
        raise ValueError(f"cost must be >= 0, got {cost!r}")
    t = np.asarray(t_index, dtype=np.int64)
    if t.ndim != 1:
        raise ValueError("t_index must be one-dimensional")
    n, m = len(candles), len(t)
    if m and (t.min() < 0 or t.max() + horizon > n - 1):
        raise ValueError(f"every t must satisfy 0 <= t and t + horizon ({horizon}) <= {n - 1}")
    sign = _sides(side, m)
    o, h, lo, c = (candles[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close"))
    entry = c[t]
    if barriers.unit == "atr":
        scale = atr(candles, atr_window)[t]
        if np.any(~np.isfinite(scale)):
            raise ValueError(f"ATR({atr_window}) is undefined at some t (needs t >= {atr_window - 1})")
    else:
        scale = entry / 100.0
    d_tp, d_sl = barriers.take_profit * scale, barriers.stop_loss * scale

    ahead = t[:, None] + np.arange(1, horizon + 1)[None, :]  # (m, horizon) bars t+1..t+horizon
    up, down = h[ahead] - entry[:, None], entry[:, None] - lo[ahead]  # favourable moves of a buy / a sell
    buy = sign[:, None] > 0
    favourable = np.where(buy, up, down)
    adverse = np.where(buy, down, up)
    hit_tp = favourable >= d_tp[:, None]
    hit_sl = adverse >= d_sl[:, None]
    never = horizon + 1
    first_tp = np.where(hit_tp.any(axis=1), hit_tp.argmax(axis=1) + 1, never)
    first_sl = np.where(hit_sl.any(axis=1), hit_sl.argmax(axis=1) + 1, never)

    target = first_tp < first_sl  # a tie (same bar) is the stop
    stop = ~target & (first_sl <= horizon)
    offset = np.where(target, first_tp, np.where(stop, first_sl, horizon))
    t1 = t + offset

    gross = sign * (c[t + horizon] / entry - 1.0)
    gap = sign * (o[t1] - entry) / entry  # the stop bar's open, signed
    stop_ret = np.minimum(-d_sl / entry, gap)  # gapping through the stop fills at the open
    gross = np.where(target, d_tp / entry, np.where(stop, stop_ret, gross))
    which = np.where(target, TAKE_PROFIT, np.where(stop, STOP_LOSS, HORIZON))
    return LabelFrame(
        t=t,
        side=sign,
        label=target.astype(np.int8),
        ret=gross - cost,
        t1=t1.astype(np.int64),
        barrier=which,
    )
