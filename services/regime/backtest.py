"""Honest figures of a signal scorer from its out-of-fold predictions.

Scores: AUC, Brier score and log loss of the OOF probabilities, each against the base-rate
predictor, which for every test sample is the label rate of ITS FOLD'S TRAINING SET (a constant known
at that time; `WalkForward.base_rate`); `skill` = 1 - model / base (> 0 is better than the base rate).
A reliability table over deciles of the predictions. A backtest with costs over the test span of
"take the signals scored above a threshold" against "take every signal" and buy-and-hold.

Trades are equal-notional and independent (overlapping trades are not netted); their returns are the
triple-barrier returns after costs. Equity compounds the trades in entry order; max drawdown is the
largest fall of that equity from its peak, as a fraction. Sharpe per trade = mean / std (ddof 1);
annualised with sqrt(trades per year) over the test span (the factor is reported). Buy-and-hold holds
the instrument from the close of the first test bar to the close of the last bar any test label uses,
paying one round-trip cost; its "trades" are bars (hit rate = share of rising bars) and its
annualisation is sqrt(bars per year).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_EPS = 1e-15


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log(1.0 - q)))


@dataclass(frozen=True, slots=True)
class Scores:
    """OOF scores of the model and of the base-rate predictor over `n` test samples."""

    n: int
    positive_rate: float
    auc: float
    auc_base: float
    brier: float
    brier_base: float
    brier_skill: float
    log_loss: float
    log_loss_base: float
    log_loss_skill: float
    base: str = "training base rate of each fold"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores(y: np.ndarray, p: np.ndarray, base_rate: np.ndarray | float) -> Scores:
    """Scores of predictions `p` (n,) for labels `y` (n,) 0/1 against the constant(s) `base_rate`
    (scalar or (n,) per sample, e.g. each fold's training rate)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    b = np.broadcast_to(np.asarray(base_rate, dtype=np.float64), y.shape)
    if p.shape != y.shape or not np.all(np.isfinite(p)):
        raise ValueError("p must be finite and shaped like y")
    brier, brier_b = _brier(y, p), _brier(y, b)
    ll, ll_b = _log_loss(y, p), _log_loss(y, b)
    return Scores(
        n=len(y),
        positive_rate=float(y.mean()) if len(y) else float("nan"),
        auc=_auc(y, p),
        auc_base=_auc(y, b) if np.ptp(b) > 0 else 0.5,
        brier=brier,
        brier_base=brier_b,
        brier_skill=1.0 - brier / brier_b if brier_b > 0 else float("nan"),
        log_loss=ll,
        log_loss_base=ll_b,
        log_loss_skill=1.0 - ll / ll_b if ll_b > 0 else float("nan"),
        base="constant" if np.ptp(b) == 0 else "training base rate of each fold",
    )


@dataclass(frozen=True, slots=True)
class ReliabilityRow:
    """One bin: predictions in [low, high], their mean, the observed label rate, the count."""

    low: float
    high: float
    mean_predicted: float
    observed_rate: float
    count: int


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[ReliabilityRow]:
    """Reliability table over `n_bins` equal-count bins of `p` (n,) (deciles by default); ties kept
    in one bin, so there may be fewer rows."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if not len(p):
        return []
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    cuts = np.unique(np.searchsorted(ps, np.quantile(ps, np.linspace(0, 1, n_bins + 1)[1:-1]), side="right"))
    rows = []
    for part_p, part_y in zip(np.split(ps, cuts), np.split(ys, cuts), strict=True):
        if len(part_p):
            rows.append(
                ReliabilityRow(
                    low=float(part_p[0]),
                    high=float(part_p[-1]),
                    mean_predicted=float(part_p.mean()),
                    observed_rate=float(part_y.mean()),
                    count=len(part_p),
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class StrategyRow:
    """Backtest of one strategy over the test span."""

    strategy: str
    trades: int
    hit_rate: float
    mean_return: float
    total_return: float
    sharpe_per_trade: float
    annualisation_factor: float
    sharpe_annualised: float
    max_drawdown: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(name: str, r: np.ndarray, factor: float) -> StrategyRow:
    n = len(r)
    std = float(np.std(r, ddof=1)) if n > 1 else float("nan")
    sharpe = float(np.mean(r)) / std if n > 1 and std > 0 else float("nan")
    equity = np.cumprod(1.0 + r) if n else np.ones(0)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:] if n else np.ones(0)
    return StrategyRow(
        strategy=name,
        trades=n,
        hit_rate=float(np.mean(r > 0)) if n else float("nan"),
        mean_return=float(np.mean(r)) if n else float("nan"),
        total_return=float(equity[-1] - 1.0) if n else 0.0,
        sharpe_per_trade=sharpe,
        annualisation_factor=factor,
        sharpe_annualised=sharpe * factor,
        max_drawdown=float(np.max(1.0 - equity / peak)) if n else 0.0,
    )


def backtest(
    p: np.ndarray,
    returns: np.ndarray,
    t_index: np.ndarray,
    t1: np.ndarray,
    close: np.ndarray,
    *,
    threshold: float,
    periods_per_year: float,
    cost: float = 0.0,
) -> list[StrategyRow]:
    """Rows "scored > threshold", "every signal", "buy and hold" over the test samples.

    `p` (m,) OOF probabilities, `returns` (m,) realised returns after costs, `t_index`/`t1` (m,) entry
    and exit bars, of the test samples only; `close` (n,) the instrument's closes; `periods_per_year`
    bars per year (H1 FX about 6,240, D1 equities 252); `cost` the round-trip cost buy-and-hold pays.
    """
    p, r = np.asarray(p, dtype=np.float64), np.asarray(returns, dtype=np.float64)
    t, end = np.asarray(t_index, dtype=np.int64), np.asarray(t1, dtype=np.int64)
    if not (p.shape == r.shape == t.shape == end.shape) or not len(p):
        raise ValueError("p, returns, t_index and t1 must be non-empty (m,) arrays")
    order = np.argsort(t, kind="stable")
    p, r, t = p[order], r[order], t[order]
    first, last = int(t.min()), int(end.max())
    years = max(last - first, 1) / periods_per_year
    taken = p > threshold
    rows = [
        _row(f"scored > {threshold:.3f}", r[taken], float(np.sqrt(taken.sum() / years))),
        _row("every signal", r, float(np.sqrt(len(r) / years))),
    ]
    c = np.asarray(close, dtype=np.float64)[first : last + 1]
    bars = c[1:] / c[:-1] - 1.0
    if len(bars):
        bars = bars.copy()
        bars[0] -= cost  # one round trip over the whole span
    rows.append(_row("buy and hold", bars, float(np.sqrt(periods_per_year))))
    return rows


def breakeven_probability(y: np.ndarray, returns: np.ndarray) -> float:
    """The probability of the target at which a trade's expected return after costs is zero:
    -mean loss / (mean win - mean loss), the means of `returns` (n,) over labels `y` (n,) 1 and 0.
    Pass training samples only (`evaluate` uses the train-only first block). NaN without both."""
    y, r = np.asarray(y), np.asarray(returns, dtype=np.float64)
    if not (np.any(y == 1) and np.any(y == 0)):
        return float("nan")
    win, loss = float(r[y == 1].mean()), float(r[y == 0].mean())
    return -loss / (win - loss) if win > loss else float("nan")


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `evaluate` measures, JSON-able through `to_dict`."""

    scores_raw: Scores
    scores_calibrated: Scores
    reliability: list[ReliabilityRow]
    backtest: list[StrategyRow]
    threshold: float
    edge: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores_raw": self.scores_raw.to_dict(),
            "scores_calibrated": self.scores_calibrated.to_dict(),
            "reliability": [asdict(row) for row in self.reliability],
            "backtest": [row.to_dict() for row in self.backtest],
            "threshold": self.threshold,
            "edge": self.edge,
        }


def evaluate(
    walk_forward: Any,
    y: np.ndarray,
    returns: np.ndarray,
    t_index: np.ndarray,
    t1: np.ndarray,
    close: np.ndarray,
    *,
    threshold: float | None = None,
    periods_per_year: float,
    cost: float = 0.0,
) -> Report:
    """Scores, reliability (of the walk-forward calibrated OOF probabilities) and backtest of a
    `scorer.WalkForward` over its tested samples; arrays (n,) as given to the walk-forward.

    `threshold` None: the break-even probability of the train-only first block (known before any
    test fold), so the threshold does not peek at the test span.

    `edge` is True only when the calibrated OOF probabilities beat the base rate on both Brier score
    and log loss and the AUC exceeds 0.5.
    """
    tested = walk_forward.tested
    if threshold is None:
        threshold = breakeven_probability(np.asarray(y)[~tested], np.asarray(returns)[~tested])
        if not np.isfinite(threshold):
            raise ValueError("no break-even threshold from the first block; pass threshold")
    y, rets = np.asarray(y, dtype=np.float64)[tested], np.asarray(returns, dtype=np.float64)[tested]
    base = walk_forward.base_rate[tested]
    raw, cal = walk_forward.raw[tested], walk_forward.calibrated[tested]
    s_raw, s_cal = scores(y, raw, base), scores(y, cal, base)
    rows = backtest(
        cal, rets, np.asarray(t_index)[tested], np.asarray(t1)[tested], close,
        threshold=threshold, periods_per_year=periods_per_year, cost=cost,
    )  # fmt: skip
    edge = bool(s_cal.brier_skill > 0 and s_cal.log_loss_skill > 0 and s_cal.auc > 0.5)
    return Report(s_raw, s_cal, reliability(y, cal), rows, threshold, edge)
