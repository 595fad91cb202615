"""One NHITS for all symbols of a timeframe: trained once, served to each of its symbols beside
per-symbol versions, evaluated on each series' own windows with no test bar in its training."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.forecast.model import NHITSForecaster
from services.forecast.service import ForecastDomain
from services.forecast.settings import ForecastSettings
from services.forecast.training import (
    SeriesInput,
    TrainTask,
    _split,
    prepare_series,
    train_global,
)
from services.runtime.errors import InvalidArgument
from services.training.jobs import JobState
from services.training.registry import ModelRegistry
from services.training.sources import InMemoryCandleSource, SymbolInfo, candles_from_ohlcv

from .conftest import TINY_NHITS, tiny_settings

pytestmark = pytest.mark.slow

D1 = ("GOOG", "SP500")


@pytest.fixture(scope="module")
def sp500() -> pd.DataFrame:
    from services.data.samples import SAMPLES, load_frame

    spec = next(s for s in SAMPLES if s.symbol == "SP500")
    return candles_from_ohlcv(load_frame(spec)).tail(2500).reset_index(drop=True)


@pytest.fixture(scope="module")
def source(goog: pd.DataFrame, sp500: pd.DataFrame, eurusd: pd.DataFrame) -> InMemoryCandleSource:
    src = InMemoryCandleSource()
    src.put(SymbolInfo("GOOG", "EQUITY", timeframe="D1"), "D1", goog)
    src.put(SymbolInfo("SP500", "INDEX", timeframe="D1"), "D1", sp500)
    src.put(SymbolInfo("GONE", "EQUITY", active=False, timeframe="D1"), "D1", goog.head(800))
    src.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", eurusd)
    return src


def settings(home: Path) -> ForecastSettings:
    # No statsforecast baselines: the tests are about the NHITS scopes, not the baselines.
    return tiny_settings(home, baselines=(), model_scope="symbol")


@pytest.fixture(scope="module")
async def domain(
    tmp_path_factory: pytest.TempPathFactory, source: InMemoryCandleSource
) -> AsyncIterator[ForecastDomain]:
    d = ForecastDomain(settings(tmp_path_factory.mktemp("global")), source)
    await d.start(schedule=False, warmup=False)
    yield d
    await d.stop()


@pytest.fixture(scope="module")
async def global_job(domain: ForecastDomain) -> object:
    return await domain.train_all(force=True, background=False, timeframe="D1", scope="global")


async def test_one_training_serves_every_active_symbol_of_the_timeframe(
    domain: ForecastDomain, global_job: object
) -> None:
    job = domain.jobs.get(global_job.job_id)  # type: ignore[attr-defined]
    assert job.state is JobState.SUCCEEDED, job.error
    assert [(i.key, i.state, i.version) for i in job.items] == [
        ("GOOG", JobState.SUCCEEDED, "v000001"),
        ("SP500", JobState.SUCCEEDED, "v000001"),
    ]
    # One training: the second item took no steps of its own and says whose training it shared.
    assert job.max_steps == TINY_NHITS["max_steps"]
    assert job.items[1].max_steps == 0 and "GOOG" in job.items[1].message
    metas = [domain.registry.get(s).metadata for s in D1]
    assert {m["scope"] for m in metas} == {"global"}
    assert len({m["global"]["model_id"] for m in metas}) == 1
    assert metas[0]["global"]["symbols"] == list(D1)  # the inactive GONE is not a member
    assert metas[0]["training"] == metas[1]["training"]
    # Each series evaluated on its own windows, with its own intervals.
    for meta in metas:
        nhits = meta["evaluation"]["models"]["NHITS"]
        assert len(meta["evaluation"]["nhits_window_mae"]) == meta["evaluation"]["windows"]
        assert np.isclose(np.mean(meta["evaluation"]["nhits_window_mae"]), nhits["mae"])
    assert metas[0]["intervals"]["quantiles"] != metas[1]["intervals"]["quantiles"]
    weights = [(domain.registry.get(s).path / "weights.pt").read_bytes() for s in D1]
    assert weights[0] == weights[1]


async def test_the_global_model_forecasts_each_symbol_on_its_own_scale(
    domain: ForecastDomain, global_job: object, goog: pd.DataFrame, sp500: pd.DataFrame
) -> None:
    forecasts = await domain.forecast_many(list(D1), 5, skip_cache=True)
    for forecast, candles in zip(forecasts, (goog, sp500), strict=True):
        assert not isinstance(forecast, Exception), forecast
        assert forecast.model_version == "v000001"
        last = float(candles["close"].iloc[-1])
        assert np.all(np.abs(np.array(forecast.point) / last - 1) < 0.2)  # GOOG ~800, SP500 ~2500
    loaded = domain.forecaster.models._models
    assert loaded["GOOG"].forecaster is loaded["SP500"].forecaster  # the weights are loaded once
    assert loaded["GOOG"].shared == loaded["SP500"].shared != ""


async def test_per_symbol_and_global_versions_side_by_side(
    domain: ForecastDomain, global_job: object
) -> None:
    job = await domain.train_symbol("GOOG", background=False, scope="symbol")
    assert job.state is JobState.SUCCEEDED, job.error
    assert domain.registry.get("GOOG").metadata["scope"] == "symbol"
    goog, sp = await domain.forecast_many(list(D1), 3)
    assert (goog.model_version, sp.model_version) == ("v000002", "v000001")  # type: ignore[union-attr]
    assert domain.forecaster.models._models["GOOG"].shared == ""
    scopes = {p.symbol: p.scope for p in await domain.performance(active_only=True)}
    assert scopes == {"GOOG": "symbol", "SP500": "global"}

    # Retraining the global model compares it with GOOG's per-symbol one on the same windows.
    again = await domain.train_all(force=True, background=False, timeframe="D1", scope="global")
    assert again.state is JobState.SUCCEEDED, again.error
    nhits = domain.registry.get("GOOG").metadata["evaluation"]["models"]["NHITS"]
    assert nhits["symbol_nhits_version"] == "v000002"
    assert 0.0 <= nhits["dm_p_value_vs_symbol_nhits"] <= 1.0
    assert (
        "dm_p_value_vs_symbol_nhits"
        not in domain.registry.get("SP500").metadata["evaluation"]["models"]["NHITS"]
    )

    # Rollback serves the per-symbol version again; SP500 keeps the global one.
    await domain.rollback("GOOG", "v000002")
    goog, sp = await domain.forecast_many(list(D1), 3)
    assert (goog.model_version, sp.model_version) == ("v000002", "v000002")  # type: ignore[union-attr]
    assert domain.forecaster.models._models["SP500"].shared != ""

    with pytest.raises(InvalidArgument) as err:
        await domain.train_all(scope="galaxy")
    assert err.value.violations[0].field == "scope"


def test_no_bar_of_any_test_period_is_in_the_global_training(
    tmp_path: Path, goog: pd.DataFrame, sp500: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings(tmp_path)
    members = (SeriesInput("GOOG", "EQUITY", goog), SeriesInput("SP500", "INDEX", sp500))
    task = TrainTask(
        job_id="j",
        symbol="GOOG",
        asset_class="EQUITY",
        timeframe="D1",
        candles=goog,
        config=cfg.nhits,
        eval_windows=cfg.eval_windows,
        calibration_windows=cfg.calibration_windows,
        min_train_windows=cfg.min_train_windows,
        scope="global",
        members=members,
    )
    seen: list[tuple[list[np.ndarray], int]] = []

    class Stop(Exception):
        pass

    def spy(
        self: NHITSForecaster, series: list[np.ndarray], *, val_size: int = 0, callbacks: object = ()
    ) -> None:
        seen.append(([np.array(s) for s in series], val_size))
        raise Stop

    monkeypatch.setattr(NHITSForecaster, "fit_many", spy)

    def inputs(task: TrainTask) -> tuple[list[np.ndarray], int]:
        seen.clear()
        with pytest.raises(Stop):
            train_global(task, ModelRegistry(tmp_path / "m"), lambda event: None)
        return seen[0]

    series, val_size = inputs(task)
    for member, trained in zip(members, series, strict=True):
        _, y = prepare_series(member.candles)
        split = _split(task, len(y))
        # The training input is the series' own training bars plus the validation bars, all
        # before the first test origin (the per-symbol model's split of the same series).
        assert len(trained) == split.train_end + val_size <= int(split.test_origins[0])
        assert np.array_equal(trained, y[: len(trained)])
    assert val_size == min(_split(task, len(prepare_series(m.candles)[1])).calibration_len for m in members)

    # A different test period changes no training input.
    def scrambled(candles: pd.DataFrame) -> pd.DataFrame:
        _, y = prepare_series(candles)
        start = int(_split(task, len(y)).test_origins[0])
        out = candles.copy()
        out.loc[out.index[start:], "close"] = out["close"].iloc[start:].to_numpy()[::-1] * 1.5
        return out

    changed = replace(task, members=tuple(replace(m, candles=scrambled(m.candles)) for m in members))
    series2, val2 = inputs(changed)
    assert val2 == val_size
    assert all(np.array_equal(a, b) for a, b in zip(series, series2, strict=True))


def test_model_scope_setting() -> None:
    assert ForecastSettings().model_scope == "symbol"  # chosen by the rule in docs/models.md
    assert ForecastSettings.from_env({"KITRADING_FORECAST_MODEL_SCOPE": "global"}).model_scope == "global"
    from services.runtime.config import ConfigError

    with pytest.raises(ConfigError):
        ForecastSettings.from_env({"KITRADING_FORECAST_MODEL_SCOPE": "galaxy"})
