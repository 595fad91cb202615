"""Fixtures of the forecast domain tests: real bundled market data, tiny NHITS settings, and one
forecast domain (with its training worker process) shared by the slow tests of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pytest
from backtesting.test import EURUSD, GOOG

from services.forecast.service import ForecastDomain
from services.forecast.settings import ForecastSettings
from services.training.sources import InMemoryCandleSource, SymbolInfo, candles_from_ohlcv

# Small enough that one training + walk-forward evaluation takes a second or two on one core.
TINY_NHITS = {
    "h": 24,
    "input_size": 72,
    "max_steps": 30,
    "mlp_units": 32,
    "val_check_steps": 10,
    "windows_batch_size": 128,
}

# EURUSD up to Friday 2018-02-02 21:00 UTC (the last bar before the weekend, northern winter).
WEEKEND_CUTOFF = pd.Timestamp("2018-02-02 21:00", tz="UTC")


def tiny_settings(home: Path, **overrides: object) -> ForecastSettings:
    base = ForecastSettings(
        home=home,
        eval_windows=6,
        calibration_windows=60,
        min_train_windows=50,
        worker_idle_s=600,
        keep_versions=3,
        baselines=("AutoETS", "AutoTheta"),
        baseline_input_size=120,
        model_scope="symbol",  # these tests are about per-symbol models; test_forecast_global the other
    ).with_nhits(**TINY_NHITS)
    from dataclasses import replace

    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def eurusd() -> pd.DataFrame:
    """EURUSD hourly candles (5000 bars, 2017-04 to 2018-02, weekend gaps)."""
    return candles_from_ohlcv(EURUSD)


@pytest.fixture(scope="session")
def goog() -> pd.DataFrame:
    """GOOG daily candles (2148 bars, 2004-2013, business days)."""
    return candles_from_ohlcv(GOOG)


def make_source(eurusd: pd.DataFrame, goog: pd.DataFrame) -> InMemoryCandleSource:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", eurusd)
    source.put(SymbolInfo("EURUSD.WK", "FX", timeframe="H1"), "H1", eurusd[eurusd["time"] <= WEEKEND_CUTOFF])
    source.put(SymbolInfo("GOOG", "EQUITY", timeframe="D1"), "D1", goog)
    source.put(SymbolInfo("NOMODEL", "FX", active=False, timeframe="H1"), "H1", eurusd.head(500))
    source.put(SymbolInfo("OLD", "FX", active=False, timeframe="H1"), "H1", eurusd.head(500))
    return source


@pytest.fixture(scope="session")
async def domain(
    tmp_path_factory: pytest.TempPathFactory, eurusd: pd.DataFrame, goog: pd.DataFrame
) -> AsyncIterator[ForecastDomain]:
    """A started forecast domain over the bundled data; its worker stays warm between tests."""
    home = tmp_path_factory.mktemp("kitrading")
    domain = ForecastDomain(tiny_settings(home), make_source(eurusd, goog))
    await domain.start(schedule=False)
    yield domain
    await domain.stop()
