"""Signal scoring of the regime domain: triple-barrier labels, causal features, the purged,
embargoed walk-forward LightGBM scorer and its honest evaluation, on synthetic bars and the bundled
EURUSD H1 (every 4th bar) and SP500 D1 (every 2nd bar) data."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from services.regime.backtest import backtest, breakeven_probability, evaluate, reliability, scores
from services.regime.labels import HORIZON, STOP_LOSS, TAKE_PROFIT, Barriers, LabelFrame, atr, triple_barrier
from services.regime.scorer import SignalScorer, purged_walk_forward_splits
from services.regime.signals import SignalFeatures, feature_names, min_history, signal_features

Candles = Callable[[str], pd.DataFrame]


class Fitted(NamedTuple):
    frame: pd.DataFrame
    feats: SignalFeatures
    labels: LabelFrame
    scorer: SignalScorer
    steps: list[tuple[int, int]]


def bars(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    """Frame from (open, high, low, close) rows."""
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close"])
    frame["volume"] = 1.0
    return frame


FLAT = (100.0, 100.5, 99.5, 100.0)


def percent(tp: float, sl: float) -> Barriers:
    return Barriers(take_profit=tp, stop_loss=sl, unit="percent")


# --- labels ---------------------------------------------------------------------------------------


def test_buy_target_first_pays_the_target_less_costs() -> None:
    frame = bars([FLAT, (100, 101.2, 99.8, 101), FLAT, FLAT])
    out = triple_barrier(frame, "buy", [0], 3, percent(1.0, 1.0), cost=0.001)
    assert (out.label[0], out.t1[0], out.barrier[0]) == (1, 1, TAKE_PROFIT)
    assert out.ret[0] == pytest.approx(0.01 - 0.001)


def test_sell_mirrors_buy() -> None:
    frame = bars([FLAT, (100, 101.2, 99.8, 101), FLAT, FLAT])
    out = triple_barrier(frame, "sell", [0], 3, percent(1.0, 1.0))
    assert (out.label[0], out.t1[0], out.barrier[0]) == (0, 1, STOP_LOSS)
    assert out.ret[0] == pytest.approx(-0.01)


def test_a_bar_touching_both_barriers_counts_as_the_stop() -> None:
    frame = bars([FLAT, (100, 101.5, 98.5, 100), FLAT])
    out = triple_barrier(frame, "buy", [0], 2, percent(1.0, 1.0))
    assert (out.label[0], out.barrier[0]) == (0, STOP_LOSS)


def test_neither_barrier_exits_at_the_horizon_close() -> None:
    frame = bars([FLAT, FLAT, (100, 100.5, 99.9, 100.4), FLAT])
    out = triple_barrier(frame, "buy", [0], 2, percent(1.0, 1.0), cost=0.0002)
    assert (out.label[0], out.t1[0], out.barrier[0]) == (0, 2, HORIZON)
    assert out.ret[0] == pytest.approx(0.004 - 0.0002)


def test_a_gap_through_the_stop_fills_at_the_open() -> None:
    frame = bars([FLAT, (97, 97.5, 96.5, 97), FLAT])
    out = triple_barrier(frame, "buy", [0], 2, percent(1.0, 1.0))
    assert out.ret[0] == pytest.approx(-0.03)


def test_atr_units_use_the_atr_at_entry_and_only_past_bars() -> None:
    rng = np.random.default_rng(1)
    close = 100 + np.cumsum(rng.normal(0, 0.3, 60))
    frame = bars([(c, c + 0.4, c - 0.4, c) for c in close])
    a = atr(frame, 14)
    assert np.isnan(a[12]) and np.isfinite(a[13])
    changed = frame.copy()
    changed.loc[31:, ["high", "low", "close"]] *= 1.5
    np.testing.assert_array_equal(atr(changed, 14)[:31], a[:31])
    out = triple_barrier(frame, "buy", [20, 30], 5, Barriers(1.0, 1.0))
    assert set(out.barrier) <= {TAKE_PROFIT, STOP_LOSS, HORIZON}
    with pytest.raises(ValueError, match="ATR"):
        triple_barrier(frame, "buy", [5], 5, Barriers(1.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t_index": [3]}, "horizon"),
        ({"horizon": 0}, "horizon"),
        ({"side": "hold"}, "side"),
        ({"cost": -0.1}, "cost"),
    ],
)
def test_bad_label_input_is_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "side": "buy",
        "t_index": [0],
        "horizon": 2,
        "barriers": percent(1, 1),
        "cost": 0.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        triple_barrier(bars([FLAT] * 4), **args)  # type: ignore[arg-type]


def test_barriers_are_checked() -> None:
    with pytest.raises(ValueError, match="stop_loss"):
        Barriers(1.0, 0.0)
    with pytest.raises(ValueError, match="unit"):
        Barriers(1.0, 1.0, unit="pips")  # type: ignore[arg-type]


# --- features -------------------------------------------------------------------------------------


def test_no_feature_at_t_changes_when_later_bars_change(candles: Candles) -> None:
    frame = candles("EURUSD").iloc[:1500].reset_index(drop=True)
    t = np.arange(min_history(), 1500, 7)
    before = signal_features(frame, t, "buy").values
    rng = np.random.default_rng(0)
    for cut in (300, 800, 1200):
        changed = frame.copy()
        noise = rng.uniform(0.9, 1.1, size=(1500 - cut - 1, 1))
        changed.loc[cut + 1 :, ["open", "high", "low", "close"]] *= noise
        after = signal_features(changed, t, "buy").values
        keep = t <= cut
        np.testing.assert_array_equal(after[keep], before[keep])
        assert not np.allclose(after[~keep], before[~keep])
    assert not np.isnan(before).any()  # t >= min_history: no warm-up gaps


def test_feature_names_are_stable_and_carry_the_regime_columns(candles: Candles) -> None:
    frame = candles("EURUSD").iloc[:400].reset_index(drop=True)
    cols = ("regime_bull_probability", "regime_bear_probability")
    probs = np.tile([0.7, 0.3], (3, 1))
    out = signal_features(frame, [250, 260, 270], ["buy", "sell", "buy"], probs, cols)
    assert out.columns == feature_names(cols)
    assert out.columns[:4] == ("return_1", "return_5", "return_20", "return_60")
    assert out.columns[-3:] == ("side", *cols)
    np.testing.assert_array_equal(out.values[:, -3], [1, -1, 1])
    np.testing.assert_array_equal(out.values[:, -2:], probs)
    assert 0 <= out.frame()["rsi_14"].min() <= out.frame()["rsi_14"].max() <= 100
    with pytest.raises(ValueError, match="regime_probabilities"):
        signal_features(frame, [250], "buy", probs, cols)


# --- purged walk-forward --------------------------------------------------------------------------


def test_purging_and_embargo_remove_the_overlapping_samples() -> None:
    rng = np.random.default_rng(3)
    t = np.repeat(np.arange(0, 600, 2), 2)  # two signals per bar
    t1 = t + rng.integers(1, 30, size=len(t))
    embargo = 10
    splits = purged_walk_forward_splits(t, t1, n_folds=4, embargo=embargo)
    assert [s.fold for s in splits] == [1, 2, 3, 4]
    tested = np.concatenate([s.test for s in splits])
    assert len(np.unique(tested)) == len(tested)
    for k, split in enumerate(splits):
        start = t[split.test].min()
        assert t[split.test].max() < (t[splits[k + 1].test].min() if k + 1 < len(splits) else np.inf)
        # no training label reaches the test fold; every sample of a bar in one block
        assert np.all(t1[split.train] < start)
        assert np.all(t[split.train] < start)
        # what was removed is exactly the rest of the expanding window
        removed = np.union1d(split.purged, split.embargoed)
        np.testing.assert_array_equal(np.union1d(split.train, removed), np.flatnonzero(t < start))
        assert not np.intersect1d(split.train, removed).size
        assert np.all(t1[split.purged] >= start) or k > 0
        # embargo and post-fold purge after each earlier test fold
        for earlier in splits[:k]:
            end, last_t = t1[earlier.test].max(), t[earlier.test].max()
            gap = (t[split.train] > last_t) & (t[split.train] <= end + embargo)
            assert not gap.any()
        if k >= 2:  # the bars after fold k-2 first train fold k (fold k-1 is their test)
            assert split.embargoed.size > 0
    assert splits[0].purged.size > 0
    # without an embargo only the overlaps go
    plain = purged_walk_forward_splits(t, t1, n_folds=4, embargo=0)
    assert all(s.embargoed.size == 0 for s in plain)
    assert all(len(p.train) >= len(s.train) for p, s in zip(plain, splits, strict=True))


def _dataset(
    frame: pd.DataFrame, every: int, horizon: int, barriers: Barriers, cost: float
) -> tuple[SignalFeatures, LabelFrame]:
    t = np.arange(min_history(), len(frame) - horizon - 1, every)
    t_all = np.repeat(t, 2)
    sides = np.tile(["buy", "sell"], len(t))
    labels = triple_barrier(frame, sides, t_all, horizon, barriers, cost)
    feats = signal_features(frame, t_all, sides)
    return feats, labels


@pytest.fixture(scope="module")
def eurusd(candles: Candles) -> Fitted:
    frame = candles("EURUSD")
    feats, labels = _dataset(frame, every=4, horizon=24, barriers=Barriers(2.0, 1.0), cost=0.0001)
    steps: list[tuple[int, int]] = []
    scorer = SignalScorer(n_estimators=60).fit(
        feats.values,
        labels.label,
        labels.t,
        labels.t1,
        n_folds=5,
        embargo=24,
        feature_names=list(feats.columns),
        on_iteration=lambda i, n: steps.append((i, n)),
    )
    return Fitted(frame, feats, labels, scorer, steps)


def test_scorer_fits_reports_progress_and_serves(eurusd: Fitted) -> None:
    _frame, feats, _labels, scorer, steps = eurusd
    assert steps[-1] == (60 * 6, 60 * 6)
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    p = scorer.predict_proba(feats.values[:50])
    assert p.shape == (50,) and np.all((p > 0) & (p < 1))
    contrib = scorer.contributions(feats.values[:50])
    assert contrib.shape == (50, len(feats.columns) + 1)
    raw = scorer.predict_raw(feats.values[:50])
    np.testing.assert_allclose(contrib.sum(axis=1), np.log(raw / (1 - raw)), rtol=1e-6, atol=1e-9)
    wf = scorer.walk_forward_
    assert np.isnan(wf.raw[~wf.tested]).all() and np.isfinite(wf.calibrated[wf.tested]).all()
    assert set(np.unique(wf.fold)) == {0, 1, 2, 3, 4, 5}


def test_scorer_round_trips_through_json_and_is_deterministic(eurusd: Fitted) -> None:
    _frame, feats, labels, scorer, _ = eurusd
    state = json.loads(json.dumps(scorer.to_dict()))
    again = SignalScorer.from_dict(state)
    x = feats.values[:200]
    np.testing.assert_array_equal(again.predict_proba(x), scorer.predict_proba(x))
    np.testing.assert_array_equal(again.contributions(x), scorer.contributions(x))
    assert again.feature_names_ == list(feats.columns)
    twin = SignalScorer(n_estimators=60).fit(
        feats.values, labels.label, labels.t, labels.t1, embargo=24, feature_names=list(feats.columns)
    )
    np.testing.assert_array_equal(twin.predict_raw(x), scorer.predict_raw(x))


def test_walk_forward_does_not_look_ahead(eurusd: Fitted) -> None:
    _frame, feats, labels, scorer, _ = eurusd
    wf = scorer.walk_forward_
    later = wf.fold >= 3
    y = labels.label.copy()
    y[later] = 1 - y[later]  # rewrite the future
    x = feats.values.copy()
    x[later] = x[later][::-1]
    other = SignalScorer(n_estimators=60).walk_forward(x, y, labels.t, labels.t1, n_folds=5, embargo=24)
    early = (wf.fold >= 1) & (wf.fold <= 2)
    np.testing.assert_array_equal(other.raw[early], wf.raw[early])
    np.testing.assert_array_equal(other.calibrated[early], wf.calibrated[early])


def test_isotonic_calibration_is_monotone_and_persisted(eurusd: Fitted) -> None:
    _frame, feats, labels, _, _ = eurusd
    scorer = SignalScorer(n_estimators=30, calibration="isotonic").fit(
        feats.values, labels.label, labels.t, labels.t1, embargo=24
    )
    raw = np.sort(scorer.predict_raw(feats.values))
    cal = scorer.calibrator_.transform(raw)
    assert np.all(np.diff(cal) >= 0)
    again = SignalScorer.from_dict(json.loads(json.dumps(scorer.to_dict())))
    np.testing.assert_array_equal(
        again.predict_proba(feats.values[:100]), scorer.predict_proba(feats.values[:100])
    )


# --- evaluation -----------------------------------------------------------------------------------


def test_scores_against_the_base_rate() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0], dtype=float)
    perfect = scores(y, np.where(y > 0, 0.9, 0.1), 0.375)
    assert perfect.auc == 1.0 and perfect.brier_skill > 0 and perfect.log_loss_skill > 0
    assert perfect.base == "constant" and perfect.auc_base == 0.5
    base = scores(y, np.full(8, 0.375), np.full(8, 0.375))
    assert base.brier == base.brier_base and base.brier_skill == 0.0
    rows = reliability(y, np.linspace(0.05, 0.95, 8), n_bins=4)
    assert sum(r.count for r in rows) == 8 and len(rows) == 4
    assert all(r.low <= r.mean_predicted <= r.high for r in rows)


def test_backtest_rows_on_a_toy_series() -> None:
    close = np.array([100, 101, 102, 101, 103, 104, 105, 104, 106, 107], dtype=float)
    p = np.array([0.8, 0.2, 0.7, 0.1])
    r = np.array([0.02, -0.01, 0.01, -0.01])
    rows = backtest(
        p, r, np.array([0, 2, 4, 6]), np.array([2, 4, 6, 9]), close, threshold=0.5, periods_per_year=252
    )
    scored, every, hold = rows
    assert (scored.trades, every.trades, hold.trades) == (2, 4, 9)
    assert scored.hit_rate == 1.0 and scored.mean_return == pytest.approx(0.015)
    assert every.hit_rate == 0.5 and every.max_drawdown == pytest.approx(1 - 1.02 * 0.99 * 1.01 * 0.99 / 1.02)
    assert hold.total_return == pytest.approx(0.07)
    assert hold.annualisation_factor == pytest.approx(np.sqrt(252))


def test_honest_figures_on_eurusd_h1(eurusd: Fitted) -> None:
    frame, _feats, labels, scorer, _ = eurusd
    report = evaluate(
        scorer.walk_forward_, labels.label, labels.ret, labels.t, labels.t1, frame["close"].to_numpy(),
        threshold=0.4, periods_per_year=6240, cost=0.0001,
    )  # fmt: skip
    out = json.loads(json.dumps(report.to_dict()))
    s = out["scores_calibrated"]
    assert s["base"] == "training base rate of each fold"
    assert 0.4 < s["auc"] < 0.65  # weak at best on hourly FX; the numbers say what they say
    assert s["brier_base"] == pytest.approx(out["scores_raw"]["brier_base"])
    assert sum(r["count"] for r in out["reliability"]) == s["n"]
    assert [r["strategy"] for r in out["backtest"]] == ["scored > 0.400", "every signal", "buy and hold"]
    assert report.edge == (s["brier_skill"] > 0 and s["log_loss_skill"] > 0 and s["auc"] > 0.5)


def test_honest_figures_on_sp500_d1(candles: Candles) -> None:
    frame = candles("SP500")
    feats, labels = _dataset(frame, every=2, horizon=10, barriers=Barriers(2.0, 1.0), cost=0.0005)
    scorer = SignalScorer(n_estimators=60).fit(feats.values, labels.label, labels.t, labels.t1, embargo=10)
    report = evaluate(
        scorer.walk_forward_, labels.label, labels.ret, labels.t, labels.t1, frame["close"].to_numpy(),
        periods_per_year=252, cost=0.0005,
    )  # fmt: skip
    every = report.backtest[1]
    tested = scorer.walk_forward_.tested
    assert report.threshold == breakeven_probability(labels.label[~tested], labels.ret[~tested])
    assert every.trades == int(tested.sum())
    assert every.mean_return == pytest.approx(labels.ret[tested].mean())
    assert report.backtest[2].total_return > 0  # the index rose over the span
    assert np.isfinite(report.scores_calibrated.log_loss)


def test_expected_return_and_breakeven(eurusd: Fitted) -> None:
    _frame, feats, labels, _, _ = eurusd
    scorer = SignalScorer(n_estimators=20).fit(
        feats.values, labels.label, labels.t, labels.t1, embargo=24, returns=labels.ret
    )
    x = feats.values[:100]
    p, er = scorer.predict_proba(x), scorer.expected_return(x)
    win, loss = labels.ret[labels.label == 1].mean(), labels.ret[labels.label == 0].mean()
    np.testing.assert_allclose(er, p * win + (1 - p) * loss)
    again = SignalScorer.from_dict(json.loads(json.dumps(scorer.to_dict())))
    np.testing.assert_array_equal(again.expected_return(x), er)
    be = breakeven_probability(labels.label, labels.ret)
    assert be * win + (1 - be) * loss == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(
        SignalScorer.from_dict(json.loads(json.dumps(eurusd.scorer.to_dict()))).expected_return(x)
    ).all()
