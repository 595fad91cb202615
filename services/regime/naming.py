"""Names of HMM states from their statistics, kept stable across retrains.

Statistics are in original units: the mean log return and the volatility (standard deviation of the
log returns, ddof 0) of the bars assigned to each state (the Viterbi path of the training rows).
Naming rule (`name_states`), with k states:

- k >= 3: the highest-volatility state is HIGH_VOLATILITY when its volatility exceeds
  `HIGH_VOL_RATIO` (1.5) x the median volatility of all k states. Among the remaining states the
  highest mean is BULL_TREND, the lowest BEAR_TREND, any others RANGE.
- k == 2: when both means are within noise (|t| < `NOISE_T` (2), t = mean / (vol / sqrt(bars))),
  the lower-volatility state is RANGE and the other HIGH_VOLATILITY; otherwise the higher mean is
  BULL_TREND and the lower BEAR_TREND.
- k == 1: RANGE.

A trend name also needs its sign: a state picked as BULL_TREND with mean <= 0, or as BEAR_TREND with
mean >= 0, is RANGE instead (on SP500 D1 the calmest states all drift up; none is called bear).

RANGE may name several states; the others name at most one. A retrain keeps the previous version's
names with `match_states` (Hungarian assignment on standardised (mean, vol) distance), so a label does
not flip because the fit permuted the states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

BULL_TREND = "BULL_TREND"
BEAR_TREND = "BEAR_TREND"
RANGE = "RANGE"
HIGH_VOLATILITY = "HIGH_VOLATILITY"
REGIMES: tuple[str, ...] = (BULL_TREND, BEAR_TREND, RANGE, HIGH_VOLATILITY)

HIGH_VOL_RATIO = 1.5
NOISE_T = 2.0


@dataclass(frozen=True, slots=True)
class StateStats:
    """Statistics of one state's bars in original units; `label` is empty until named."""

    mean_return: float
    volatility: float
    bars: int
    label: str = ""

    def with_label(self, label: str) -> StateStats:
        return StateStats(self.mean_return, self.volatility, self.bars, label)

    @property
    def t_stat(self) -> float:
        """mean / standard error; 0 when undefined (fewer than 2 bars or zero volatility)."""
        if self.bars < 2 or self.volatility <= 0:
            return 0.0
        return self.mean_return / (self.volatility / math.sqrt(self.bars))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_return": self.mean_return,
            "volatility": self.volatility,
            "bars": self.bars,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateStats:
        return cls(
            float(data["mean_return"]),
            float(data["volatility"]),
            int(data["bars"]),
            str(data.get("label", "")),
        )


def state_stats(states: np.ndarray, returns: np.ndarray, n_states: int) -> list[StateStats]:
    """Per-state statistics from `states` (n,) int in 0..k-1 and log `returns` (n,).

    A state with no bars gets mean 0 and volatility 0; with one bar, volatility 0.
    """
    states = np.asarray(states)
    returns = np.asarray(returns, dtype=np.float64)
    if states.shape != returns.shape or states.ndim != 1:
        raise ValueError(f"states {states.shape} and returns {returns.shape} must be equal (n,)")
    out = []
    for j in range(n_states):
        r = returns[states == j]
        mean = float(r.mean()) if r.size else 0.0
        vol = float(r.std()) if r.size >= 2 else 0.0
        out.append(StateStats(mean, vol, int(r.size)))
    return out


def name_states(stats: Sequence[StateStats]) -> list[str]:
    """A regime name per state (index = state), by the rule of the module docstring."""
    k = len(stats)
    if k == 0:
        return []
    if k == 1:
        return [RANGE]
    means = np.array([s.mean_return for s in stats])
    vols = np.array([s.volatility for s in stats])
    names = [RANGE] * k
    if k == 2:
        if all(abs(s.t_stat) < NOISE_T for s in stats):
            hi = int(np.argmax(vols))
            names[hi] = HIGH_VOLATILITY
        else:
            names[int(np.argmax(means))] = BULL_TREND
            names[int(np.argmin(means))] = BEAR_TREND
        return _signed(names, means)
    rest = list(range(k))
    hi = int(np.argmax(vols))
    if vols[hi] > HIGH_VOL_RATIO * float(np.median(vols)):
        names[hi] = HIGH_VOLATILITY
        rest.remove(hi)
    by_mean = sorted(rest, key=lambda j: means[j])
    names[by_mean[-1]] = BULL_TREND
    names[by_mean[0]] = BEAR_TREND
    return _signed(names, means)


def _signed(names: list[str], means: np.ndarray) -> list[str]:
    """Trend names whose mean has the wrong sign become RANGE."""
    wrong = {BULL_TREND: lambda m: m <= 0, BEAR_TREND: lambda m: m >= 0}
    return [RANGE if n in wrong and wrong[n](float(m)) else n for n, m in zip(names, means, strict=True)]


def match_states(new_stats: Sequence[StateStats], previous: Sequence[StateStats]) -> list[str]:
    """Names for `new_stats` that keep the labels of `previous` (the last version's named states).

    Each new state is assigned one previous state (Hungarian assignment minimising the Euclidean
    distance of (mean, vol), both standardised over the union of the two sets) and takes its label.
    With more new states than previous ones, the unmatched new states take their `name_states`
    names; with no previous states this is `name_states`.
    """
    fresh = name_states(new_stats)
    if not previous or not new_stats:
        return fresh
    if any(not p.label for p in previous):
        raise ValueError("previous states must carry labels")
    new = np.array([[s.mean_return, s.volatility] for s in new_stats])
    old = np.array([[s.mean_return, s.volatility] for s in previous])
    both = np.vstack([new, old])
    scale = both.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    centre = both.mean(axis=0)
    zn, zo = (new - centre) / scale, (old - centre) / scale
    cost = np.linalg.norm(zn[:, None, :] - zo[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    names = list(fresh)
    for i, j in zip(rows, cols, strict=True):
        names[int(i)] = previous[int(j)].label
    return names


def regime_probabilities(proba: np.ndarray, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Per-state probabilities (n, k) summed into per-regime ones: (regimes, (n, r)).

    `regimes` lists each distinct name once, in the order of `REGIMES`.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(names):
        raise ValueError(f"proba {proba.shape} must be (n, {len(names)})")
    regimes = [r for r in REGIMES if r in names] + sorted(set(names) - set(REGIMES))
    out = np.zeros((proba.shape[0], len(regimes)))
    for j, name in enumerate(names):
        out[:, regimes.index(name)] += proba[:, j]
    return regimes, out
