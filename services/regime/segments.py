"""Regime segments: runs of equal per-bar labels, with their mean return and volatility.

Whether a segment is hindsight depends on its labels: from the Viterbi path it is (the path uses the
future), from the argmax of the filtered probabilities it is not. The caller says which it passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True, slots=True)
class Segment:
    """Bars `start_time`..`end_time` (both inclusive, bar open times) labelled `regime`.

    `mean_probability`: mean of the per-bar probabilities given; `mean_return`, `volatility`: mean
    and standard deviation (ddof 0; 0 for one bar) of the bars' log returns, per bar.
    """

    regime: str
    start_time: datetime
    end_time: datetime
    bars: int
    mean_probability: float
    mean_return: float
    volatility: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "regime": self.regime,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
            "bars": self.bars,
            "mean_probability": self.mean_probability,
            "mean_return": self.mean_return,
            "volatility": self.volatility,
        }


def segments(
    times: Sequence[datetime] | pd.DatetimeIndex,
    labels: Sequence[str],
    probs: np.ndarray,
    returns: np.ndarray,
) -> list[Segment]:
    """Segments, oldest first, from `times` (n,), `labels` (n,), `probs` (n,) (each bar's
    probability of its label) and log `returns` (n,)."""
    n = len(labels)
    probs = np.asarray(probs, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    if len(times) != n or probs.shape != (n,) or returns.shape != (n,):
        raise ValueError(
            f"times ({len(times)}), labels ({n}), probs {probs.shape}, returns {returns.shape} "
            "must all have n rows"
        )
    stamps = pd.DatetimeIndex(times) if not isinstance(times, pd.DatetimeIndex) else times
    out: list[Segment] = []
    start = 0
    for t in range(1, n + 1):
        if t < n and labels[t] == labels[start]:
            continue
        r = returns[start:t]
        out.append(
            Segment(
                regime=str(labels[start]),
                start_time=stamps[start].to_pydatetime(),
                end_time=stamps[t - 1].to_pydatetime(),
                bars=t - start,
                mean_probability=float(probs[start:t].mean()),
                mean_return=float(r.mean()),
                volatility=float(r.std()) if r.size > 1 else 0.0,
            )
        )
        start = t
    return out
