"""Walk-forward split, conformal intervals, metrics, baselines, and the NHITS wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.forecast.evaluation import (
    DEFAULT_SCALE,
    SHORT_SCALE,
    VolatilityScale,
    baseline_forecasts,
    conformal_quantiles,
    evaluate,
    expanding_quantiles,
    interval_bounds,
    make_split,
    score,
    targets_at,
    windows_at,
)
from services.forecast.model import NHITSConfig, NHITSForecaster, StackedNHITS, quiet_lightning
from services.forecast.settings import ForecastSettings


def test_split_keeps_train_calibration_and_test_apart() -> None:
    split = make_split(5000, 24, 168, windows=20, step=0, calibration=200, min_train=200)
    assert split.step == 24
    assert split.test_origins[-1] + 24 == 5000  # the last window ends at the last bar
    assert np.all(np.diff(split.test_origins) == 24)
    last_calibration_target = split.calibration_origins[-1] + 24 - 1
    assert split.calibration_origins[0] == split.train_end
    assert last_calibration_target == split.test_origins[0] - 1  # no overlap, no gap
    short = make_split(900, 24, 168, windows=20, step=0, calibration=200, min_train=200)
    assert short.train_end >= 168 + 24 + 200 and len(short.test_origins) >= 2
    with pytest.raises(ValueError, match="too short"):
        make_split(300, 24, 168, windows=20, step=0, calibration=200, min_train=200)


def test_volatility_scale_blends_a_short_and_a_long_window() -> None:
    """The scale by hand: last price x sqrt(w var(last 48 returns) + (1 - w) var(last 960)), from
    bars before the origin only; fewer returns where the series is shorter; the short window alone
    for versions stored before the blend."""
    rng = np.random.default_rng(7)
    y = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 3000)))
    r = np.diff(np.log(y))
    origins = np.array([2, 49, 200, 961, 2500, 3000])
    got = DEFAULT_SCALE.at(y, origins)
    for o, value in zip(origins, got, strict=True):
        last = r[: o - 1]  # the returns ending at bar o - 1
        var = 0.75 * np.var(last[-48:]) + 0.25 * np.var(last[-960:])
        assert value == pytest.approx(y[o - 1] * max(np.sqrt(var), 1e-6), rel=1e-9), o
    # Nothing at or after the origin is read.
    changed = y.copy()
    changed[2500:] *= 3
    assert DEFAULT_SCALE.at(changed, np.array([2500]))[0] == got[4]
    # The short window alone is the scale of the versions before the blend: std of the last 48.
    assert SHORT_SCALE.at(y, np.array([200]))[0] == pytest.approx(y[199] * np.std(r[151:199]), rel=1e-9)
    assert (DEFAULT_SCALE.history, SHORT_SCALE.history) == (961, 49)
    assert VolatilityScale.from_metadata(DEFAULT_SCALE.to_metadata()) == DEFAULT_SCALE
    assert VolatilityScale.from_metadata({"volatility_lookback": 48}) == SHORT_SCALE
    assert DEFAULT_SCALE.at(np.full(100, 5.0), np.array([100]))[0] == pytest.approx(5e-6)  # floored


def test_conformal_intervals_adapt_to_a_volatility_change() -> None:
    """Calibrated in a calm period, tested in a three times more volatile one: scores normalised
    by the window's volatility keep their coverage, plain price-relative scores lose it."""
    rng = np.random.default_rng(0)
    sigma = np.where(np.arange(8000) < 4000, 0.005, 0.015)
    y = 100 * np.exp(np.cumsum(rng.normal(0, sigma)))
    h = 12
    origins = np.arange(200, 8000 - h)
    actual, last = targets_at(y, origins, h), y[origins - 1]
    predicted = np.repeat(last[:, None], h, axis=1)  # naive forecasts
    widths = SHORT_SCALE.at(y, origins)
    cal, test = origins < 3500, origins > 4200
    q = conformal_quantiles(actual[cal], predicted[cal], widths[cal])
    assert np.all(q[95] >= q[80]) and q[80][-1] > q[80][0]  # nested, widening with the horizon
    bounds = interval_bounds(predicted[test], widths[test], q)
    metrics = score(actual[test], predicted[test], last[test], bounds, scale=1.0)
    assert metrics["coverage_80"] == pytest.approx(0.80, abs=0.06)
    assert metrics["coverage_95"] == pytest.approx(0.95, abs=0.04)
    assert metrics["directional_accuracy"] is None  # naive never predicts a move
    plain = conformal_quantiles(actual[cal], predicted[cal], last[cal])
    plain_metrics = score(
        actual[test], predicted[test], last[test], interval_bounds(predicted[test], last[test], plain), 1.0
    )
    assert plain_metrics["coverage_80"] is not None and plain_metrics["coverage_80"] < 0.5


def test_score_metrics_by_hand() -> None:
    actual = np.array([[2.0, 4.0]])
    predicted = np.array([[1.0, 5.0]])
    last = np.array([3.0])
    bounds = {80: (predicted - 1.5, predicted + 1.5)}
    m = score(actual, predicted, last, bounds, scale=2.0)
    assert m["mae"] == 1.0 and m["rmse"] == 1.0 and m["mase"] == 0.5
    assert m["directional_accuracy"] == 1.0  # down/down and up/up
    assert m["coverage_80"] == 1.0 and m["width_80"] == 3.0


def test_statsforecast_baselines_use_the_same_windows(eurusd: pd.DataFrame) -> None:
    y = eurusd["close"].to_numpy()[:2000]
    split = make_split(len(y), 24, 72, windows=5, step=0, calibration=60, min_train=50)
    base = baseline_forecasts(y, split, season_length=24)
    naive, naive_bounds = base["Naive"]
    last = y[split.test_origins - 1]
    np.testing.assert_allclose(naive, np.repeat(last[:, None], 24, axis=1))
    seasonal, _ = base["SeasonalNaive"]
    np.testing.assert_allclose(seasonal[:, 0], y[split.test_origins - 24])
    lo80, hi80 = naive_bounds[80]
    lo95, hi95 = naive_bounds[95]
    assert np.all(lo95 <= lo80) and np.all(hi80 <= hi95)
    assert windows_at(y, split.test_origins, 72).shape == (5, 72)


def test_nhits_direct_forward_equals_neuralforecast_predict(eurusd: pd.DataFrame, tmp_path: Path) -> None:
    """The serving path (module forward + per-window scaler) must match neuralforecast's predict."""
    from neuralforecast import NeuralForecast

    y = eurusd["close"].to_numpy()[:1500]
    config = NHITSConfig(h=12, input_size=48, max_steps=5, mlp_units=16)
    wrapper = NHITSForecaster(config)
    with quiet_lightning():
        nf = NeuralForecast(models=[wrapper._build(trainer=True)], freq=1)
        nf.fit(df=pd.DataFrame({"unique_id": "y", "ds": np.arange(len(y)), "y": y}))
        expected = nf.predict()["NHITS"].to_numpy()
    wrapper.model_ = nf.models[0].eval()
    np.testing.assert_allclose(wrapper.predict(y), expected, rtol=1e-6)
    # Saved as a plain state dict + JSON hyperparameters, reloaded without pickle.
    wrapper.save(tmp_path)
    np.testing.assert_allclose(NHITSForecaster.load(tmp_path).predict(y), expected, rtol=1e-6)


def test_nhits_fit_reports_steps_and_losses(eurusd: pd.DataFrame) -> None:
    y = eurusd["close"].to_numpy()[:1200]
    model = NHITSForecaster(NHITSConfig(h=12, input_size=48, max_steps=8, mlp_units=16, val_check_steps=4))
    model.fit(y, val_size=100)
    assert model.fit_.steps == 8 and model.n_train_ == 1100
    assert model.fit_.train_loss is not None and model.fit_.valid_loss is not None
    assert model.predict_windows(windows_at(y, np.array([500, 900]), 48)).shape == (2, 12)
    with pytest.raises(ValueError, match="shape"):
        model.predict_windows(np.zeros((1, 10)))


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "KITRADING_HOME": str(tmp_path),
        "NHITS_AUTO_RETRAIN_DAYS": "3.5",
        "NHITS_USE_GPU": "false",
        "KITRADING_FORECAST_GPU_MEMORY_FRACTION": "0.25",
        "KITRADING_FORECAST_KEEP_VERSIONS": "4",
        "KITRADING_FORECAST_EVENT_TYPES": "market_event",
        "NHITS_MAX_STEPS": "50",
    }
    s = ForecastSettings.from_env(env)
    assert s.models_dir == tmp_path / "models" / "forecast"
    assert (s.auto_retrain_days, s.use_gpu, s.gpu_memory_fraction, s.keep_versions) == (3.5, False, 0.25, 4)
    assert s.event_types == ("MARKET_EVENT",) and s.nhits.max_steps == 50
    assert ForecastSettings.from_env({}).home == Path(".kitrading")
    with pytest.raises(ValueError, match="NHITS_USE_GPU"):
        ForecastSettings.from_env({"NHITS_USE_GPU": "maybe"})


def test_stacked_models_predict_like_each_model_alone() -> None:
    """The batch path (vmap over stacked weights) equals one forward per model."""
    import torch

    config = NHITSConfig(h=6, input_size=32, mlp_units=16)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = NHITSForecaster(config)
        with quiet_lightning():
            model.model_ = model._build(trainer=False).eval()
        models.append(model)
    rng = np.random.default_rng(1)
    windows = 100 + np.cumsum(rng.normal(size=(3, 32)), axis=1)
    expected = np.stack([m.predict_windows(w[None])[0] for m, w in zip(models, windows, strict=True)])
    np.testing.assert_allclose(StackedNHITS(models).predict(windows), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one configuration"):
        StackedNHITS([models[0], NHITSForecaster(NHITSConfig(h=3, input_size=32))])


def test_expanding_quantiles_use_only_origins_observed_before_the_forecast() -> None:
    """The calibration set of a forecast from bar `at` is every origin whose h targets all lie
    before `at` (the `window` newest of them), ranked as split conformal ranks them."""
    h, origins = 4, np.arange(10, 110)
    scores = np.tile(origins[:, None].astype(float), (1, h))  # an origin's score is its index
    q = expanding_quantiles(scores, origins, at=60, h=h, window=1000, levels=(80,))
    used = origins[origins + h - 1 < 60]
    assert used.max() == 56  # origin 56's last target is bar 59
    np.testing.assert_array_equal(
        q[80], conformal_quantiles(used[:, None] * np.ones(h), 0 * used[:, None], np.ones(len(used)))[80]
    )
    capped = expanding_quantiles(scores, origins, at=60, h=h, window=10, levels=(95,))
    assert capped[95][0] == 56  # the 10 newest: origins 47..56
    assert expanding_quantiles(scores, origins, at=60, h=h, window=10, levels=(80,))[80][0] == 55
    with pytest.raises(ValueError, match="no calibration origin"):
        expanding_quantiles(scores, origins, at=12, h=h, window=10)


def test_evaluate_scores_expanding_intervals_and_extra_baselines() -> None:
    """A real walk-forward evaluation on a random walk whose volatility doubles in the test segment:
    a naive 'model' is scored against Naive (identical forecasts: DM p = 1), AutoETS and AutoTheta
    on the same windows, with out-of-sample intervals under both calibrations."""
    rng = np.random.default_rng(3)
    n = 2400
    sigma = np.where(np.arange(n) < 1900, 0.004, 0.008)
    y = 100 * np.exp(np.cumsum(rng.normal(0, sigma)))
    split = make_split(n, 12, 48, windows=12, step=0, calibration=60, min_train=50)

    def naive(windows: np.ndarray) -> np.ndarray:
        return np.repeat(windows[:, -1:], 12, axis=1)

    result = evaluate(
        y,
        split,
        naive,
        season_length=1,
        interval_windows=1000,
        baselines=("AutoETS", "AutoTheta"),
        baseline_input_size=100,
    )
    m = result.metrics
    assert set(m) == {"NHITS", "Naive", "SeasonalNaive", "AutoETS", "AutoTheta"}
    assert m["NHITS"]["mae"] == pytest.approx(m["Naive"]["mae"])
    assert m["Naive"]["dm_p_value_vs_nhits"] == 1.0
    for name in ("AutoETS", "AutoTheta"):
        p, w80, w95 = (float(m[name][k] or "nan") for k in ("dm_p_value_vs_nhits", "width_80", "width_95"))
        assert 0 <= p <= 1 and w95 > w80 > 0
    expanding = result.interval_methods["expanding"]
    assert expanding["coverage_80"] == m["NHITS"]["coverage_80"]
    assert 0.6 <= expanding["coverage_80"] <= 0.97 and expanding["coverage_95"] >= expanding["coverage_80"]
    assert set(result.interval_methods) == {"expanding", "split_calibration", "expanding_short_volatility"}
    for method in result.interval_methods.values():
        assert set(method) == set(expanding)
    assert result.interval_methods["expanding_short_volatility"] != expanding
    assert result.scale == DEFAULT_SCALE
    assert result.serving_windows == 1000 and result.calibration_windows == 60
    assert np.all(result.serving_quantiles[95] >= result.serving_quantiles[80])
    with pytest.raises(ValueError, match="unknown baselines"):
        baseline_forecasts(y, split, season_length=1, extra=("Prophet",))


def test_baseline_settings_from_env() -> None:
    s = ForecastSettings.from_env(
        {"KITRADING_FORECAST_BASELINES": "autoarima, AutoETS", "KITRADING_FORECAST_INTERVAL_WINDOWS": "300"}
    )
    assert s.baselines == ("AutoARIMA", "AutoETS") and s.interval_windows == 300
    assert ForecastSettings().baselines == ("AutoETS", "AutoTheta")
    with pytest.raises(ValueError, match="KITRADING_FORECAST_BASELINES"):
        ForecastSettings.from_env({"KITRADING_FORECAST_BASELINES": "Prophet"})


def test_interval_study_scores_candidates_on_history_and_test() -> None:
    """The study behind the served volatility scale (docs/models.md), on a random walk with naive
    forecasts: one row per candidate, the served one marked, coverage near nominal."""
    from services.forecast.interval_study import SeriesForecasts, figures, history_origins, study

    rng = np.random.default_rng(11)
    y = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 3000)))
    h = 12
    origins = np.arange(100, 3000 - h + 1)
    predicted = np.repeat(y[origins - 1][:, None], h, axis=1)
    test = 3000 - h - h * np.arange(20)[::-1]
    series = SeriesForecasts("RW", y, origins, predicted, test, h)
    hist = history_origins(series)
    assert hist[0] >= origins[0] + 500 and hist[-1] + h <= test[0]  # before the test windows
    cover = figures(series, DEFAULT_SCALE, hist)
    assert cover[80][0] == pytest.approx(0.80, abs=0.05) and cover[95][0] == pytest.approx(0.95, abs=0.04)
    table = study([series], (SHORT_SCALE, DEFAULT_SCALE)).splitlines()
    assert len(table) == 4 and table[2].startswith("| 48-bar | ") and "1.000 / 1.000" in table[2]
    assert table[3].startswith("| **0.75 x 48 + 0.25 x 960 (served)** |")
