"""Walk-forward split, conformal intervals, metrics, baselines, and the NHITS wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.forecast.evaluation import (
    baseline_forecasts,
    conformal_quantiles,
    interval_bounds,
    interval_scale,
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
    widths = interval_scale(windows_at(y, origins, 96))
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
