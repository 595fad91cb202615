"""Is a difference between two forecasters more than noise? Tests on the walk-forward windows.

- `diebold_mariano`: equal predictive accuracy of two forecasts from their loss series, with the
  Harvey-Leybourne-Newbold (1997) small-sample correction and Student-t p-values (the test windows
  are few: tens, not thousands).
- `pesaran_timmermann`: does a forecast's predicted direction agree with the realised one more often
  than independence of the two would give (Pesaran and Timmermann 1992)?
- `interval_score`: the interval (Winkler) score of central intervals: width plus 2/alpha times
  each miss; lower is better, and a wide band that covers everything is not rewarded.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, *, h: int = 1) -> tuple[float, float]:
    """(statistic, two-sided p-value) of H0: E[loss_a - loss_b] = 0, from losses (n,) of the same
    targets; `h` is the forecast horizon the losses' autocorrelation can span (h - 1 lags of the
    long-run variance). A positive statistic: A loses more. p = 1 when the differences are all equal
    (no evidence either way); NaN for fewer than 2 pairs."""
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    mean = float(d.mean())
    centred = d - mean
    lags = max(0, min(h - 1, n - 1))
    variance = float(centred @ centred) / n
    for k in range(1, lags + 1):
        variance += 2.0 * float(centred[k:] @ centred[:-k]) / n
    if variance <= 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    dm = mean / math.sqrt(variance / n)
    correction = math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n) if n + 1 - 2 * h > 0 else 1.0
    statistic = dm * correction
    return statistic, float(2.0 * stats.t.sf(abs(statistic), df=n - 1))


def pesaran_timmermann(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(statistic, one-sided p-value) of H0: the predicted signs (n,) are independent of the actual
    signs (n,) (both +1 / -1). Small p: the direction is predicted better than chance. NaN when a
    side never varies (the test is undefined) or n < 2."""
    up_hat = np.asarray(predicted) > 0
    up = np.asarray(actual) > 0
    n = len(up)
    if n < 2:
        return math.nan, math.nan
    hit = float(np.mean(up_hat == up))
    p_y, p_x = float(up.mean()), float(up_hat.mean())
    p_star = p_y * p_x + (1 - p_y) * (1 - p_x)
    var_hit = p_star * (1 - p_star) / n
    var_star = (
        (2 * p_y - 1) ** 2 * p_x * (1 - p_x) / n
        + (2 * p_x - 1) ** 2 * p_y * (1 - p_y) / n
        + 4 * p_y * p_x * (1 - p_y) * (1 - p_x) / n**2
    )
    spread = var_hit - var_star
    if spread <= 0.0:
        return math.nan, math.nan
    statistic = (hit - p_star) / math.sqrt(spread)
    return statistic, float(stats.norm.sf(statistic))


def interval_score(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: int) -> float:
    """Mean interval score of central `level`% intervals (same shapes); lower is better."""
    alpha = 1.0 - level / 100.0
    y, lo, hi = (np.asarray(a, dtype=np.float64) for a in (actual, lower, upper))
    penalty = (2.0 / alpha) * (np.clip(lo - y, 0.0, None) + np.clip(y - hi, 0.0, None))
    return float(np.mean(hi - lo + penalty))
