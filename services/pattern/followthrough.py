"""What followed each pattern type on held-out bars, next to the unconditional base rate.

For a pattern confirmed at bar t (its `end`), the forward log return over the next `horizon` bars is
log(close[t + horizon] / close[t]). On the held-out period (the last `holdout` share of the bars) and
per type: how often price moved in the pattern's direction (a Wilson 95% interval), the mean
forward return signed by that direction (a Student-t 95% interval) and the count, beside the same
figures for every bar of the period (the base rate). Neutral patterns count an up move as a hit.
The rules detector learns nothing from the data, so "held out" here is the span the TCN's test set
will be, kept the same for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from services.pattern.catalogue import BEARISH, CATALOGUE
from services.pattern.detector import Detection

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class FollowThrough:
    slug: str
    horizon: int
    count: int
    hit_rate: float  # NaN when count is 0
    hit_low: float
    hit_high: float
    mean_return: float  # signed by the pattern's direction
    mean_low: float
    mean_high: float
    base_rate: float  # share of all held-out bars that moved in the pattern's direction
    base_mean_return: float
    period_start: int  # first held-out bar
    period_end: int


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def follow_through(
    frame: pd.DataFrame, detections: Sequence[Detection], *, horizon: int, holdout: float = 0.3
) -> list[FollowThrough]:
    """One row per catalogue type (see the module docstring); `frame` has a close column."""
    return pooled_follow_through([(frame, detections)], horizon=horizon, holdout=holdout)


def pooled_follow_through(
    parts: Sequence[tuple[pd.DataFrame, Sequence[Detection]]], *, horizon: int, holdout: float = 0.3
) -> list[FollowThrough]:
    """`follow_through` over several series at once: each series' held-out period (its own last
    `holdout` share), the signed returns of all of them pooled per type and for the base rate. With
    more than one series `period_start`/`period_end` are 0 (each series has its own period)."""
    periods = []
    for frame, detections in parts:
        close = frame["close"].to_numpy(dtype=np.float64)
        n = len(close)
        start = int(n * (1 - holdout))
        last = n - horizon  # the last bar with a full horizon after it
        fwd = np.full(n, np.nan)
        if last > 0:
            fwd[:last] = np.log(close[horizon:] / close[:last])
        periods.append((fwd, start, last, detections))
    out = []
    for spec in CATALOGUE:
        sign = -1.0 if spec.direction == BEARISH else 1.0
        signed_parts, base_parts = [], []
        for fwd, start, last, detections in periods:
            ends = np.array(
                [d.end for d in detections if d.slug == spec.slug and start <= d.end < last], dtype=np.int64
            )
            signed_parts.append(sign * fwd[ends] if len(ends) else np.array([]))
            base_parts.append(sign * fwd[start:last] if last > start else np.array([]))
        signed = np.concatenate(signed_parts) if signed_parts else np.array([])
        base = np.concatenate(base_parts) if base_parts else np.array([])
        hits = int((signed > 0).sum())
        low, high = wilson(hits, len(signed))
        mean, mean_low, mean_high = _mean_interval(signed)
        single = len(periods) == 1
        start, last = (periods[0][1], periods[0][2]) if single else (0, 1)
        out.append(
            FollowThrough(
                slug=spec.slug,
                horizon=horizon,
                count=len(signed),
                hit_rate=hits / len(signed) if len(signed) else math.nan,
                hit_low=low,
                hit_high=high,
                mean_return=mean,
                mean_low=mean_low,
                mean_high=mean_high,
                base_rate=float((base > 0).mean()) if len(base) else math.nan,
                base_mean_return=float(base.mean()) if len(base) else math.nan,
                period_start=start,
                period_end=max(start, last - 1),
            )
        )
    return out
