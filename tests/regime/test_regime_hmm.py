"""Regime HMM domain: features, the HMM (filtered = forward only), state names, segments.

Fits on the bundled EURUSD H1 and SP500 D1 data with few restarts and iterations (fast, not tuned).
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hmmlearn.hmm import GaussianHMM

from services.regime.features import COLUMNS, Standardizer, min_candles, regime_features
from services.regime.hmm import STATE_RANGE, RegimeHMM
from services.regime.naming import (
    BEAR_TREND,
    BULL_TREND,
    HIGH_VOLATILITY,
    RANGE,
    StateStats,
    match_states,
    name_states,
    regime_probabilities,
    state_stats,
)
from services.regime.segments import segments

SYMBOLS = ("EURUSD", "SP500")


@pytest.fixture(scope="module")
def fitted(candles):
    """{symbol: (features, standardised X, model)}, fitted once per module."""
    out = {}
    for symbol in SYMBOLS:
        feats = regime_features(candles(symbol))
        X = Standardizer().fit_transform(feats.values)
        out[symbol] = (feats, X, RegimeHMM(n_restarts=2, max_iter=50).fit(X))
    return out


def _hmmlearn_copy(model: RegimeHMM) -> GaussianHMM:
    ref = GaussianHMM(n_components=model.n_states_, covariance_type="full")
    ref.startprob_, ref.transmat_ = model.startprob_, model.transmat_
    ref.means_, ref.covars_ = model.means_, model.covars_
    ref.n_features = model.n_features_in_
    return ref


def _permuted(model: RegimeHMM, perm: np.ndarray) -> RegimeHMM:
    """The same fit with its states relabelled: new state i is old state perm[i]."""
    d = model.to_dict()
    d["startprob_"] = model.startprob_[perm].tolist()
    d["transmat_"] = model.transmat_[np.ix_(perm, perm)].tolist()
    d["means_"] = model.means_[perm].tolist()
    d["covars_"] = model.covars_[perm].tolist()
    return RegimeHMM.from_dict(d)


# ---------------------------------------------------------------- features


def test_features_columns_warmup_and_times(candles):
    frame = candles("EURUSD")
    feats = regime_features(frame, vol_window=24)
    assert feats.columns == COLUMNS
    assert feats.values.shape == (len(frame) - 24, 2)
    assert np.all(np.isfinite(feats.values))
    assert list(feats.times) == list(frame["time"].iloc[24:])
    close = frame["close"].to_numpy()
    assert feats.log_return[0] == pytest.approx(np.log(close[24] / close[23]))
    assert feats.volatility[0] == pytest.approx(np.std(np.diff(np.log(close[:25]))))
    assert np.allclose(np.exp(feats.values[:, 1]), feats.volatility)


def test_features_use_past_bars_only(candles):
    frame = candles("SP500")
    full = regime_features(frame)
    for m in (min_candles(), 100, 1000, len(frame) - 1):
        part = regime_features(frame.iloc[:m])
        assert np.array_equal(part.values, full.values[: len(part)])
        assert part.times.equals(full.times[: len(part)])


def test_features_reject_bad_input(candles):
    frame = candles("SP500")
    with pytest.raises(ValueError, match="need at least 25"):
        regime_features(frame.iloc[:24])
    bad = frame.copy()
    bad.loc[10, "close"] = 0.0
    with pytest.raises(ValueError, match="positive"):
        regime_features(bad)


def test_standardizer_fits_training_rows_only_and_round_trips():
    rng = np.random.default_rng(0)
    X = rng.normal([1.0, -3.0], [2.0, 0.5], size=(500, 2))
    train, test = X[:300], X[300:] + 10.0
    scaler = Standardizer().fit(train)
    z = scaler.transform(train)
    assert np.allclose(z.mean(axis=0), 0.0) and np.allclose(z.std(axis=0), 1.0)
    assert scaler.mean_ is not None
    assert np.allclose(scaler.mean_, train.mean(axis=0))  # the shifted test rows play no part
    back = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert np.array_equal(back.transform(test), scaler.transform(test))
    assert np.allclose(scaler.inverse_transform(scaler.transform(test)), test)
    const = Standardizer().fit(np.ones((5, 1)))
    assert const.scale_ is not None and const.scale_.tolist() == [1.0]


# ---------------------------------------------------------------- HMM


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_fit_chooses_state_count_by_bic(fitted, symbol):
    _, X, model = fitted[symbol]
    assert set(model.bic_) == set(STATE_RANGE)
    assert model.n_states_ == min(model.bic_, key=lambda k: model.bic_[k])
    assert np.isfinite(model.log_likelihood_)
    # our forward recursion gives hmmlearn's log-likelihood of the same parameters
    assert model.score(X) == pytest.approx(model.log_likelihood_, rel=1e-9)
    k = model.n_states_
    assert model.transmat_.shape == (k, k) and np.allclose(model.transmat_.sum(axis=1), 1.0)
    assert model.means_.shape == (k, 2) and model.covars_.shape == (k, 2, 2)
    assert np.allclose(model.expected_durations_, 1.0 / (1.0 - np.diag(model.transmat_)))
    assert 1 <= model.n_iter_ <= 50


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_filtered_proba_has_no_look_ahead(fitted, symbol):
    _, X, model = fitted[symbol]
    full = model.filtered_proba(X)
    assert full.shape == (len(X), model.n_states_)
    assert np.allclose(full.sum(axis=1), 1.0)
    for t in (1, 2, 50, 777, len(X) // 2, len(X) - 1):
        assert np.allclose(model.filtered_proba(X[:t]), full[:t], rtol=0, atol=1e-12)
    # changing the future leaves the past untouched
    altered = X.copy()
    altered[1000:] = altered[1000:][::-1]
    assert np.allclose(model.filtered_proba(altered)[:1000], full[:1000], rtol=0, atol=1e-12)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_filtered_and_viterbi_agree_with_hmmlearn(fitted, symbol):
    _, X, model = fitted[symbol]
    ref = _hmmlearn_copy(model)
    filtered = model.filtered_proba(X)
    smoothed = ref.predict_proba(X)
    # at the last bar filtered and smoothed coincide; before it the smoothed ones use the future
    assert np.allclose(filtered[-1], smoothed[-1], atol=1e-8)
    assert not np.allclose(filtered[:-1], smoothed[:-1], atol=1e-3)
    assert np.array_equal(model.viterbi(X), ref.decode(X, algorithm="viterbi")[1])


def test_round_trip_through_json(fitted):
    _, X, model = fitted["EURUSD"]
    back = RegimeHMM.from_dict(json.loads(json.dumps(model.to_dict(), allow_nan=False)))
    assert back.n_states_ == model.n_states_ and back.bic_ == model.bic_
    assert back.converged_ == model.converged_ and back.n_iter_ == model.n_iter_
    assert np.array_equal(back.filtered_proba(X[-500:]), model.filtered_proba(X[-500:]))
    assert np.array_equal(back.viterbi(X), model.viterbi(X))
    bad = model.to_dict()
    bad["means_"] = bad["means_"][:-1]
    with pytest.raises(ValueError, match="means_"):
        RegimeHMM.from_dict(bad)


def test_progress_per_restart_and_fixed_state_count(fitted):
    _, X, _ = fitted["SP500"]
    calls: list[tuple[int, int, float]] = []
    model = RegimeHMM(n_states=2, n_restarts=3, max_iter=20, random_state=7)
    model.fit(X[:1500], on_restart=lambda *a: calls.append(a))
    assert [(d, t) for d, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    bests = [b for _, _, b in calls]
    assert bests == sorted(bests) and bests[-1] == pytest.approx(model.log_likelihood_)
    assert model.n_states_ == 2 and set(model.bic_) == {2}


def test_bad_input_is_rejected(fitted):
    _, X, model = fitted["SP500"]
    with pytest.raises(ValueError, match="features"):
        model.filtered_proba(X[:, :1])
    nan = X[:10].copy()
    nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.filtered_proba(nan)
    with pytest.raises(RuntimeError, match="not fitted"):
        RegimeHMM().filtered_proba(X)
    with pytest.raises(ValueError, match="covariance_type"):
        RegimeHMM(covariance_type="spherical").fit(X)


def test_diag_covariance_fits():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(0, 1, (300, 2)), rng.normal(3, 0.3, (300, 2))])
    model = RegimeHMM(n_states=2, n_restarts=1, max_iter=30, covariance_type="diag").fit(X)
    assert model.covars_.shape == (2, 2, 2)
    assert model.score(X) == pytest.approx(model.log_likelihood_, rel=1e-9)


# ---------------------------------------------------------------- naming


def _s(mean: float, vol: float, bars: int = 1000) -> StateStats:
    return StateStats(mean, vol, bars)


def test_name_rule():
    # k >= 3: a clearly most volatile state is HIGH_VOLATILITY, then by mean
    assert name_states([_s(1e-4, 0.01), _s(-2e-4, 0.011), _s(0.0, 0.03)]) == [
        BULL_TREND,
        BEAR_TREND,
        HIGH_VOLATILITY,
    ]
    # no state clearly more volatile (0.014 < 1.5 x median 0.011): highest/lowest mean, rest RANGE
    assert name_states([_s(0.0, 0.01), _s(3e-4, 0.011), _s(-3e-4, 0.014), _s(1e-5, 0.01)]) == [
        RANGE,
        BULL_TREND,
        BEAR_TREND,
        RANGE,
    ]
    # k == 2, both means within noise: RANGE (calmer) / HIGH_VOLATILITY
    assert name_states([_s(1e-5, 0.02), _s(-1e-5, 0.01)]) == [HIGH_VOLATILITY, RANGE]
    # k == 2, a clear mean: by mean (t = 2e-3 / (0.01 / sqrt(1000)) = 6.3)
    assert name_states([_s(-2e-3, 0.01), _s(1e-5, 0.02)]) == [BEAR_TREND, BULL_TREND]
    assert name_states([_s(0.0, 0.01)]) == [RANGE]
    # a trend name needs its sign: the lowest mean here is positive, so no BEAR_TREND
    assert name_states([_s(1e-4, 0.01), _s(6e-4, 0.005), _s(-2e-4, 0.03)]) == [
        RANGE,
        BULL_TREND,
        HIGH_VOLATILITY,
    ]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_labels_survive_a_permuted_refit(fitted, symbol):
    feats, X, model = fitted[symbol]
    stats = state_stats(model.viterbi(X), feats.log_return, model.n_states_)
    names = name_states(stats)
    previous = [s.with_label(n) for s, n in zip(stats, names, strict=True)]

    perm = np.roll(np.arange(model.n_states_), 1)
    refit = _permuted(model, perm)
    new_stats = state_stats(refit.viterbi(X), feats.log_return, refit.n_states_)
    assert [s.bars for s in new_stats] == [stats[j].bars for j in perm]
    matched = match_states(new_stats, previous)
    assert matched == [names[j] for j in perm]
    # also when the statistics moved a little (a refit on more data)
    rng = np.random.default_rng(3)
    moved = [
        StateStats(s.mean_return + rng.normal(0, 1e-6), s.volatility * (1 + rng.normal(0, 0.02)), s.bars)
        for s in new_stats
    ]
    assert match_states(moved, previous) == [names[j] for j in perm]


def test_match_states_with_other_state_counts():
    previous = [
        _s(1e-4, 0.01).with_label(BULL_TREND),
        _s(-1e-4, 0.01).with_label(BEAR_TREND),
        _s(0.0, 0.03).with_label(HIGH_VOLATILITY),
    ]
    # fewer new states: each takes its nearest distinct previous label
    assert match_states([_s(0.0, 0.031), _s(1.1e-4, 0.0101)], previous) == [HIGH_VOLATILITY, BULL_TREND]
    # more new states: the unmatched one is named by the rule
    four = [_s(1e-4, 0.01), _s(-1e-4, 0.01), _s(0.0, 0.03), _s(0.0, 0.012)]
    assert match_states(four, previous)[:3] == [BULL_TREND, BEAR_TREND, HIGH_VOLATILITY]
    assert match_states(four, []) == name_states(four)
    with pytest.raises(ValueError, match="labels"):
        match_states(four, [_s(0.0, 0.01)])


def test_regime_probabilities_sum_states_of_one_name():
    proba = np.array([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    regimes, out = regime_probabilities(proba, [RANGE, HIGH_VOLATILITY, RANGE])
    assert regimes == [RANGE, HIGH_VOLATILITY]
    assert np.allclose(out, [[0.7, 0.3], [0.9, 0.1]])


# ---------------------------------------------------------------- segments


def test_segments_from_runs():
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(hours=i) for i in range(6)]
    labels = [RANGE, RANGE, BULL_TREND, BULL_TREND, BULL_TREND, RANGE]
    probs = np.array([0.5, 0.7, 0.9, 0.8, 0.7, 0.6])
    returns = np.array([0.0, 0.002, 0.01, 0.02, 0.03, -0.01])
    out = segments(times, labels, probs, returns)
    assert [(s.regime, s.bars) for s in out] == [(RANGE, 2), (BULL_TREND, 3), (RANGE, 1)]
    bull = out[1]
    assert (bull.start_time, bull.end_time) == (times[2], times[4])
    assert bull.mean_probability == pytest.approx(0.8)
    assert bull.mean_return == pytest.approx(0.02)
    assert bull.volatility == pytest.approx(np.std([0.01, 0.02, 0.03]))
    assert out[2].volatility == 0.0
    assert segments([], [], np.array([]), np.array([])) == []
    with pytest.raises(ValueError, match="n rows"):
        segments(times, labels, probs[:-1], returns)


def test_segments_on_real_data(fitted):
    feats, X, model = fitted["EURUSD"]
    stats = state_stats(model.viterbi(X), feats.log_return, model.n_states_)
    names = name_states(stats)
    proba = model.filtered_proba(X)
    state = proba.argmax(axis=1)
    labels = [names[j] for j in state]
    out = segments(feats.times, labels, proba[np.arange(len(X)), state], feats.log_return)
    assert sum(s.bars for s in out) == len(X)
    assert all(a.regime != b.regime for a, b in itertools.pairwise(out))
    assert out[0].start_time == feats.times[0] and out[-1].end_time == feats.times[-1]
    assert all(0.0 < s.mean_probability <= 1.0 for s in out)
    json.dumps([s.to_dict() for s in out])


def test_labels_survive_a_real_refit_on_more_data(fitted):
    """EURUSD: a refit with other seeds on 200 fewer bars permutes the states; matching keeps names."""
    feats, X, model = fitted["EURUSD"]
    stats = state_stats(model.viterbi(X), feats.log_return, model.n_states_)
    names = name_states(stats)
    previous = [s.with_label(n) for s, n in zip(stats, names, strict=True)]
    before = np.array([names[j] for j in model.viterbi(X)])[:-200]

    refit = RegimeHMM(n_states=model.n_states_, n_restarts=2, max_iter=50, random_state=11)
    refit.fit(X[:-200])
    path = refit.viterbi(X[:-200])
    new_stats = state_stats(path, feats.log_return[:-200], refit.n_states_)
    matched = np.array(match_states(new_stats, previous))[path]
    fresh = np.array(name_states(new_stats))[path]
    assert np.mean(matched == before) > 0.85
    assert np.mean(matched == before) > np.mean(fresh == before)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_the_compiled_forward_pass_matches_the_reference_recursion(fitted, symbol):
    _, X, model = fitted[symbol]
    log_alpha, loglik = model._forward(X)
    ref_alpha, ref_loglik = model._forward_loop(X)
    assert np.allclose(log_alpha, ref_alpha, rtol=0, atol=1e-9)
    assert math.isclose(loglik, ref_loglik, rel_tol=1e-9)
