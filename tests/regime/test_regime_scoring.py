"""The scorer as the trainer builds it: a scoring HMM fitted before the first test fold, features with
its filtered regime probabilities, the walk-forward evaluation, and batch scoring with reasons."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

from services.regime.scoring import REGIME_COLUMNS, ScoringConfig, TrainedScorer, score_signals, train_scorer

CONFIG = ScoringConfig(
    horizon=24,
    take_profit=2.0,
    stop_loss=1.0,
    cost=0.0002,
    folds=5,
    embargo=24,
    boosting_rounds=20,
    signal_step=4,
)
#: The service's default HMM options: on EURUSD's first block they once produced a collapsed state
#: (a singular covariance), which failed the whole training.
HMM = {"n_states": None, "restarts": 4, "max_iter": 100, "vol_window": 24}


def test_the_scorer_trains_on_eurusd_defaults_and_scores_a_batch(
    candles: Callable[[str], pd.DataFrame],
) -> None:
    frame = candles("EURUSD")
    trained, evaluation = train_scorer(frame, symbol="EURUSD", timeframe="H1", config=CONFIG, hmm_options=HMM)
    first_test = pd.Timestamp(evaluation["first_test_time"])
    assert first_test > frame["time"].iloc[0] and evaluation["signals"] > 2000
    assert trained.scorer.feature_names_[-len(REGIME_COLUMNS) :] == list(REGIME_COLUMNS)
    cal = evaluation["scores_calibrated"]
    assert 0.0 <= cal["auc"] <= 1.0 and cal["brier_base"] > 0 and isinstance(evaluation["edge"], bool)
    again = TrainedScorer.from_dict(json.loads(json.dumps(trained.to_dict())))
    n = len(frame)
    batch = score_signals(again, frame, [n - 1, n - 1, n - 100], ["buy", "sell", "buy"])
    single = score_signals(trained, frame, [n - 100], ["buy"])
    assert batch[2].probability == single[0].probability
    assert {s.regime for s in batch} <= {"BULL_TREND", "BEAR_TREND", "RANGE", "HIGH_VOLATILITY"}
    assert [abs(c) for _, _, c in batch[0].features] == sorted(
        (abs(c) for _, _, c in batch[0].features), reverse=True
    )
