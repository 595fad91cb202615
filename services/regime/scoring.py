"""The regime service's signal scorer: triple-barrier labels, features with filtered regime
probabilities, a purged walk-forward LightGBM, and its honest evaluation on the same data.

No look-ahead anywhere: the regime probabilities fed to the scorer come from a *scoring HMM* fitted
only on the bars before the first walk-forward test fold, and are filtered (forward-only); the
features at bar t use bars <= t; labels overlapping a test fold are purged. The scorer is served
with that same scoring HMM, so serving and evaluation see the same features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from services.regime.backtest import evaluate
from services.regime.labels import Barriers, Unit, triple_barrier
from services.regime.naming import REGIMES
from services.regime.regimes import RegimeModel, filtered, fit_regimes
from services.regime.scorer import SignalScorer, purged_walk_forward_splits
from services.regime.signals import min_history, signal_features

#: The scorer's regime columns, one per regime (0 where the model has no such state).
REGIME_COLUMNS: tuple[str, ...] = tuple(f"regime_{r.lower()}_probability" for r in REGIMES)
#: Bars per year by timeframe, for annualising the backtest's Sharpe ratios.
PERIODS_PER_YEAR = {"M15": 252 * 96, "M30": 252 * 48, "H1": 252 * 24, "H4": 252 * 6, "D1": 252}


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """The trade a scorer is trained for: `horizon` bars, take-profit and stop-loss distances in
    `barrier_unit` ("atr": ATR(14) multiples, "percent": percent of the entry), round-trip `cost`;
    and how: walk-forward `folds`, `embargo` bars, `boosting_rounds`, a signal every `signal_step` bars."""

    horizon: int
    take_profit: float
    stop_loss: float
    cost: float
    folds: int
    embargo: int
    boosting_rounds: int
    signal_step: int
    barrier_unit: str = "atr"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoringConfig:
        data = dict(data)
        for old, new in (("take_profit_atr", "take_profit"), ("stop_loss_atr", "stop_loss")):
            if old in data:  # versions written before barriers had a unit
                data[new] = data.pop(old)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class TrainedScorer:
    """The served scorer: its HMM for regime features, the booster, and what it was trained for."""

    regimes: RegimeModel
    scorer: SignalScorer
    config: ScoringConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "regimes": self.regimes.to_dict(),
            "scorer": self.scorer.to_dict(),
            "config": {k: getattr(self.config, k) for k in ScoringConfig.__slots__},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedScorer:
        return cls(
            RegimeModel.from_dict(data["regimes"]),
            SignalScorer.from_dict(data["scorer"]),
            ScoringConfig.from_dict(data["config"]),
        )


def regime_rows(model: RegimeModel, candles: pd.DataFrame, t_index: np.ndarray) -> np.ndarray:
    """(m, len(REGIME_COLUMNS)) filtered regime probabilities at bars `t_index`."""
    _, regimes, proba = filtered(model, candles)
    rows = np.asarray(t_index) - model.vol_window  # feature row r is bar r + vol_window
    out = np.zeros((len(rows), len(REGIMES)))
    for j, name in enumerate(regimes):
        if name in REGIMES:
            out[:, REGIMES.index(name)] = proba[rows, j]
    return out


def signal_grid(n: int, config: ScoringConfig, vol_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Training signals: a buy and a sell every `signal_step` bars, where every feature is defined
    and the horizon fits in the data. (t_index (m,), sides (m,))."""
    start = max(min_history(), vol_window + 1)
    bars = np.arange(start, n - config.horizon - 1, config.signal_step)
    return np.repeat(bars, 2), np.tile(np.array(["buy", "sell"]), len(bars))


def train_scorer(
    candles: pd.DataFrame,
    *,
    symbol: str,
    timeframe: str,
    config: ScoringConfig,
    hmm_options: dict[str, Any],
    on_iteration: Callable[[int, int], None] | None = None,
) -> tuple[TrainedScorer, dict[str, Any]]:
    """Fit the scoring HMM on the bars before the first test fold, the walk-forward scorer on all
    signals; returns it and its evaluation (scores vs the base rate, reliability, backtest)."""
    t, sides = signal_grid(len(candles), config, int(hmm_options["vol_window"]))
    barriers = Barriers(config.take_profit, config.stop_loss, cast(Unit, config.barrier_unit))
    labels = triple_barrier(candles, sides, t, config.horizon, barriers, config.cost)
    splits = purged_walk_forward_splits(labels.t, labels.t1, n_folds=config.folds, embargo=config.embargo)
    first_test_bar = int(labels.t[splits[0].test].min())
    regimes = fit_regimes(candles.iloc[:first_test_bar], symbol=symbol, **hmm_options)
    feats = signal_features(candles, t, sides, regime_rows(regimes, candles, t), REGIME_COLUMNS)
    scorer = SignalScorer(n_estimators=config.boosting_rounds).fit(
        feats.values,
        labels.label,
        labels.t,
        labels.t1,
        n_folds=config.folds,
        embargo=config.embargo,
        feature_names=list(feats.columns),
        returns=labels.ret,
        on_iteration=on_iteration,
    )
    close = candles["close"].to_numpy(dtype=np.float64)
    report = evaluate(
        scorer.walk_forward_,
        labels.label,
        labels.ret,
        labels.t,
        labels.t1,
        close,
        periods_per_year=PERIODS_PER_YEAR.get(timeframe, 252),
        cost=config.cost,
    )
    evaluation = {
        "method": "purged walk-forward, expanding window, embargo; calibrated out-of-fold; "
        "scoring HMM fitted before the first test fold",
        "signals": len(labels),
        "folds": config.folds,
        "embargo": config.embargo,
        "first_test_time": pd.Timestamp(candles["time"].iloc[first_test_bar]).isoformat(),
        "base_rate": float(labels.base_rate),
        **report.to_dict(),
    }
    return TrainedScorer(regimes, scorer, config), evaluation


@dataclass(frozen=True, slots=True)
class Score:
    """One scored signal: P(target before stop within the horizon, after costs), the expected
    return, the regime the scoring HMM saw at that bar, and the features behind the score."""

    probability: float
    expected_return: float
    regime: str
    regime_probability: float
    features: list[tuple[str, float, float]]  # (name, value, contribution in log-odds), largest first


def score_signals(
    trained: TrainedScorer, candles: pd.DataFrame, t_index: Sequence[int], sides: Sequence[str]
) -> list[Score]:
    """Score many signals at bars `t_index` (each needs `min_history()` bars before it) at once."""
    t = np.asarray(t_index, dtype=np.int64)
    probs = regime_rows(trained.regimes, candles, t)
    feats = signal_features(candles, t, np.asarray(sides), probs, REGIME_COLUMNS)
    p = trained.scorer.predict_proba(feats.values)
    er = trained.scorer.expected_return(feats.values)
    contrib = trained.scorer.contributions(feats.values)[:, :-1]
    out = []
    for i in range(len(t)):
        order = np.argsort(-np.abs(contrib[i]))
        features = [(feats.columns[j], float(feats.values[i, j]), float(contrib[i, j])) for j in order]
        best = int(probs[i].argmax())
        out.append(Score(float(p[i]), float(er[i]), REGIMES[best], float(probs[i, best]), features))
    return out
