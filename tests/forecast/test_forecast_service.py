"""The forecast domain end to end on real data: jobs in the worker process, progress events,
forecasts on the trading calendar, hot reload, rollback, cancellation and SIGKILL safety."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from services.forecast.calendar import FX
from services.forecast.evaluation import DEFAULT_SCALE, VolatilityScale
from services.forecast.forecasting import Forecast
from services.forecast.model import NHITSForecaster
from services.forecast.service import ForecastDomain
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import JobEvent, JobEventType, JobState, TrainingJob

from .conftest import TINY_NHITS, WEEKEND_CUTOFF

pytestmark = pytest.mark.slow

MAX_STEPS = TINY_NHITS["max_steps"]


@pytest.fixture(scope="session")
async def first_job(domain: ForecastDomain) -> tuple[TrainingJob, list[JobEvent]]:
    """EURUSD.WK and GOOG trained in one job, with every event a watcher saw from its creation."""
    job = await domain.jobs.train(["EURUSD.WK", "GOOG"], force=True)
    events = [event async for event in domain.jobs.watch(job.job_id)]
    return domain.jobs.get(job.job_id), events


@pytest.fixture(scope="session")
async def all_trained(domain: ForecastDomain, first_job: object) -> TrainingJob:
    """train_all(force=False): EURUSD is new and trains, the two fresh models are skipped."""
    return await domain.jobs.train_all(force=False, background=False)


def assert_nested(forecast: Forecast) -> None:
    point = np.array(forecast.point)
    lo80, hi80 = map(np.array, (forecast.interval(80).lower, forecast.interval(80).upper))
    lo95, hi95 = map(np.array, (forecast.interval(95).lower, forecast.interval(95).upper))
    assert np.all(lo95 <= lo80) and np.all(lo80 <= point) and np.all(point <= hi80) and np.all(hi80 <= hi95)
    assert np.mean(hi95 - lo95) > np.mean(hi80 - lo80) > 0


async def test_training_publishes_a_version_with_metrics_for_nhits_and_baselines(
    domain: ForecastDomain, first_job: tuple[TrainingJob, list[JobEvent]], eurusd: pd.DataFrame
) -> None:
    job, _ = first_job
    assert job.state is JobState.SUCCEEDED, job.error
    assert [(s.key, s.state, s.version) for s in job.items] == [
        ("EURUSD.WK", JobState.SUCCEEDED, "v000001"),
        ("GOOG", JobState.SUCCEEDED, "v000001"),
    ]
    meta = domain.registry.get("EURUSD.WK").metadata
    assert meta["data"]["last_time"] == WEEKEND_CUTOFF.isoformat()
    assert meta["data"]["first_time"] == eurusd["time"].iloc[0].isoformat()
    assert meta["hyperparameters"]["h"] == 24 and meta["training"]["steps"] == MAX_STEPS
    assert {"neuralforecast", "torch", "statsforecast"} <= set(meta["libraries"])
    assert [len(meta["intervals"]["quantiles"][k]) for k in ("80", "95")] == [24, 24]
    models = meta["evaluation"]["models"]
    assert set(models) == {"NHITS", "Naive", "SeasonalNaive", "AutoETS", "AutoTheta"}
    for name, metrics in models.items():
        for key in ("mae", "rmse", "mase", "coverage_80", "coverage_95", "mae_vs_naive"):
            assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (name, key)
    assert models["Naive"]["directional_accuracy"] is None  # predicts no move
    assert 0 <= models["NHITS"]["directional_accuracy"] <= 1
    for name in ("AutoETS", "AutoTheta"):
        assert 0 <= models[name]["dm_p_value_vs_nhits"] <= 1 and models[name]["interval_score_80"] > 0
    # The served intervals are calibrated on every fully observed origin (capped), not 60 only.
    assert meta["intervals"]["windows"] > meta["evaluation"]["calibration_windows"]
    methods = meta["evaluation"]["interval_methods"]
    assert set(methods) == {"expanding", "split_calibration", "expanding_short_volatility"}
    assert methods["expanding"]["coverage_80"] == models["NHITS"]["coverage_80"]
    performance = await domain.performance()
    assert {p.symbol for p in performance} >= {"EURUSD.WK", "GOOG"}
    # The worker is a separate, lower-priority process with a one-thread budget.
    info = domain.jobs.worker_info
    assert info["pid"] != os.getpid() and info["threads"] == 1 and info["accelerator"] == "cpu"
    assert info["nice"] >= os.nice(0) + 1


async def test_progress_events_come_from_real_training_steps(
    first_job: tuple[TrainingJob, list[JobEvent]],
) -> None:
    job, events = first_job
    assert events[0].type is JobEventType.SNAPSHOT and events[0].job.state is JobState.QUEUED
    assert events[-1].type is JobEventType.JOB and events[-1].job.state is JobState.SUCCEEDED
    assert [e.sequence for e in events[1:]] == sorted(e.sequence for e in events[1:])
    for symbol in ("EURUSD.WK", "GOOG"):
        steps = [
            e for e in events if e.type is JobEventType.PROGRESS and e.key == symbol and e.detail == "step"
        ]
        numbers = [e.job.item(symbol).step for e in steps]
        assert numbers[0] == 1 and numbers[-1] == MAX_STEPS and numbers == sorted(numbers), numbers
        losses = [e.job.item(symbol).train_loss for e in steps]
        assert all(isinstance(x, float) and math.isfinite(x) for x in losses) and len(set(losses)) > 1
        assert any(
            e.detail == "validation" and e.job.item(symbol).valid_loss for e in events if e.key == symbol
        )
        phases = [e.job.item(symbol).phase for e in events if e.detail == "phase" and e.key == symbol]
        assert phases == ["training", "evaluating", "publishing", "committing"]
        states = [e.job.item(symbol).state for e in events if e.type is JobEventType.ITEM and e.key == symbol]
        assert states == [JobState.RUNNING, JobState.SUCCEEDED]
    eta = [e.job.eta_seconds for e in events if e.detail == "step"]
    assert all(x is not None and x >= 0 for x in eta)
    assert job.step == job.max_steps == 2 * MAX_STEPS


async def test_late_subscriber_of_a_finished_job_gets_one_snapshot(
    domain: ForecastDomain, first_job: tuple[TrainingJob, list[JobEvent]]
) -> None:
    job, _ = first_job
    events = [event async for event in domain.jobs.watch(job.job_id)]
    assert [(e.type, e.job.state) for e in events] == [(JobEventType.SNAPSHOT, JobState.SUCCEEDED)]
    with pytest.raises(NotFound):
        [e async for e in domain.jobs.watch("nope")]


async def test_forecast_crosses_the_fx_weekend_on_the_trading_calendar(
    domain: ForecastDomain, first_job: object
) -> None:
    forecast = await domain.forecaster.forecast("EURUSD.WK", 24)
    assert forecast.model_version == "v000001" and forecast.horizon == 24 and len(forecast.point) == 24
    assert forecast.last_candle_time == WEEKEND_CUTOFF.to_pydatetime()  # Friday 21:00 UTC, the last bar
    times = pd.DatetimeIndex(forecast.times)
    assert times[0] == pd.Timestamp("2018-02-04 22:00", tz="UTC")  # Sunday 17:00 New York
    assert times[-1] == pd.Timestamp("2018-02-05 21:00", tz="UTC")
    assert not (times.dayofweek == 5).any() and FX.is_open(times, pd.Timedelta(hours=1)).all()
    assert_nested(forecast)
    # The point forecast is a price near the last close (not a return, not scaled units).
    assert abs(forecast.point[0] / forecast.last_close - 1) < 0.02


async def test_forecast_equity_daily_skips_the_weekend(domain: ForecastDomain, first_job: object) -> None:
    forecast = await domain.forecaster.forecast("GOOG", 3)
    assert forecast.last_candle_time == pd.Timestamp("2013-03-01", tz="UTC").to_pydatetime()  # a Friday
    assert [t.date().isoformat() for t in forecast.times] == ["2013-03-04", "2013-03-05", "2013-03-06"]
    assert_nested(forecast)


async def test_served_intervals_use_the_evaluated_volatility_scale(
    domain: ForecastDomain, first_job: object, goog: pd.DataFrame
) -> None:
    """The served half-width is the stored quantile x the version's volatility scale over the
    newest 961 closes (more than the model's input window), the scale its intervals were
    calibrated and evaluated with."""
    meta = domain.registry.get("GOOG").metadata
    scale = VolatilityScale.from_metadata(meta["intervals"])
    assert scale == DEFAULT_SCALE and scale.history > meta["hyperparameters"]["input_size"]
    forecast = await domain.forecast("GOOG", 5, skip_cache=True)
    close = goog["close"].to_numpy(dtype=np.float64)
    width = scale.at(close, np.array([len(close)]))[0]
    size = meta["hyperparameters"]["input_size"]
    short = scale.at(close[-size:], np.array([size]))[0]
    assert abs(width / short - 1) > 1e-3  # the model's input window alone would give another scale
    for level in (80, 95):
        interval = forecast.interval(level)
        half = (np.array(interval.upper) - np.array(interval.lower)) / 2
        expected = np.array(meta["intervals"]["quantiles"][str(level)][:5]) * width
        assert half == pytest.approx(expected, rel=1e-9)


async def test_forecast_input_errors(domain: ForecastDomain, first_job: object) -> None:
    for horizon in (0, 25):
        with pytest.raises(InvalidArgument) as err:
            await domain.forecaster.forecast("EURUSD.WK", horizon)
        assert err.value.violations[0].field == "horizon"
    with pytest.raises(InvalidArgument, match="between 1 and 24"):
        await domain.forecaster.forecast("GOOG", 25)
    with pytest.raises(NotFound):
        await domain.forecaster.forecast("NOPE", 5)
    with pytest.raises(
        FailedPrecondition,
        match=r"no model for NOMODEL yet: train it with POST /api/v1/forecast/NOMODEL/train",
    ):
        await domain.forecaster.forecast("NOMODEL", 5)
    with pytest.raises(InvalidArgument) as err:
        await domain.forecaster.forecast("../x", 5)
    assert err.value.violations[0].field == "symbol"
    with pytest.raises(NotFound):
        await domain.jobs.train(["NOPE"])


async def test_batch_forecast_matches_single_calls_and_is_cached(
    domain: ForecastDomain, first_job: object
) -> None:
    results = await domain.forecaster.forecast_many(["EURUSD.WK", "GOOG", "NOPE"], 12)
    assert isinstance(results[0], Forecast) and isinstance(results[1], Forecast)
    assert isinstance(results[2], NotFound)
    single = await domain.forecaster.forecast("GOOG", 12)
    assert single.point == results[1].point and single.cached
    again = await domain.forecaster.forecast_many(["EURUSD.WK", "GOOG"], 24)
    assert isinstance(again[0], Forecast) and isinstance(again[1], Forecast)
    assert again[0].cached and again[1].cached and again[0].horizon == 24
    assert again[0].point[:12] == results[0].point  # one cached full-horizon forecast serves every horizon


async def test_train_all_skips_fresh_models_and_trains_new_ones(
    domain: ForecastDomain, all_trained: TrainingJob
) -> None:
    job = all_trained
    states = {s.key: s.state for s in job.items}
    # Inactive symbols (NOMODEL, OLD) are not part of train_all.
    assert states == {"EURUSD": JobState.SUCCEEDED, "EURUSD.WK": JobState.SKIPPED, "GOOG": JobState.SKIPPED}
    assert "no newer candles" in job.item("GOOG").message
    assert job.state is JobState.SUCCEEDED and job.max_steps == job.step == MAX_STEPS
    # Newer candles, or an old model, make a symbol due again.
    assert domain.trainer.freshness("GOOG", pd.Timestamp("2013-03-04", tz="UTC")) == ""
    settings = domain.trainer.settings
    domain.trainer.settings = replace(settings, auto_retrain_days=0)
    try:
        assert domain.trainer.freshness("GOOG", None) == ""
        assert set(await domain.trainer.stale_keys()) == {"EURUSD", "EURUSD.WK", "GOOG"}
    finally:
        domain.trainer.settings = settings


async def test_new_version_is_served_without_restart_and_rollback(
    domain: ForecastDomain, all_trained: object
) -> None:
    before = await domain.forecaster.forecast("GOOG", 5)
    job = await domain.jobs.train(["GOOG"], background=False)
    assert job.state is JobState.SUCCEEDED and job.items[0].version == "v000002"
    after = await domain.forecaster.forecast("GOOG", 5)
    assert (before.model_version, after.model_version) == ("v000001", "v000002")
    rolled = await domain.rollback("GOOG")
    assert rolled.version == "v000001"
    assert (await domain.forecaster.forecast("GOOG", 5)).model_version == "v000001"
    assert [(v.version, v.current) for v in await domain.versions("GOOG")] == [
        ("v000001", True),
        ("v000002", False),
    ]
    await domain.rollback("GOOG", "v000002")


async def until(events: object, predicate: object) -> JobEvent:
    async for event in events:  # type: ignore[attr-defined]
        if predicate(event):  # type: ignore[operator]
            return event
    raise AssertionError("the job ended before the expected event")


async def test_sigkill_of_the_worker_mid_training_keeps_the_previous_version(
    domain: ForecastDomain, all_trained: object
) -> None:
    registry = domain.registry
    before = registry.current_version("EURUSD")
    job = await domain.jobs.train(["EURUSD"])
    watch = domain.jobs.watch(job.job_id)
    await until(watch, lambda e: e.detail == "step" and e.job.step >= 3)
    # A subscriber arriving now first gets the current state.
    late = domain.jobs.watch(job.job_id)
    first = await anext(late)
    assert first.type is JobEventType.SNAPSHOT and first.job.state is JobState.RUNNING and first.job.step >= 3
    pid = domain.jobs.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    last = await until(watch, lambda e: e.type is JobEventType.JOB and e.job.state.terminal)
    assert last.job.state is JobState.FAILED and "exited" in last.job.items[0].message
    assert (await until(late, lambda e: e.type is JobEventType.JOB)).job.state is JobState.FAILED
    assert registry.current_version("EURUSD") == before
    assert [v.version for v in registry.list_versions("EURUSD")] == [before]
    forecast = await domain.forecaster.forecast("EURUSD", 24)
    assert forecast.model_version == before


async def test_sigkill_of_the_worker_while_publishing_leaves_a_complete_current_version(
    domain: ForecastDomain, all_trained: object
) -> None:
    """SIGKILL the worker right after it starts writing a new version (it reports the "publishing"
    phase once its staging directory exists). Whatever instant the kill lands, the current version
    stays complete and no partial version is visible; retried until one kill lands mid-write."""
    registry = domain.registry
    folder = registry.key_dir("EURUSD.WK")
    landed_mid_write = False
    for _attempt in range(3):
        before = registry.current_version("EURUSD.WK")
        job = await domain.jobs.train(["EURUSD.WK"])
        watch = domain.jobs.watch(job.job_id)
        await until(watch, lambda e: e.detail == "phase" and e.job.items[0].phase == "publishing")
        pid = domain.jobs.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        staging = [p.name for p in folder.iterdir() if p.name.startswith(".staging-")]
        final = await domain.jobs.wait(job.job_id)
        current = registry.current_version("EURUSD.WK")
        if staging:  # killed while writing: the previous version still serves
            assert final.state is JobState.FAILED and current == before
            landed_mid_write = True
        else:  # the publish won the race: then the new version is complete and current
            assert current in (before, final.items[0].version)
        for version in registry.list_versions("EURUSD.WK"):  # every visible version is whole
            assert NHITSForecaster.load(version.path).config.h == 24
            assert "evaluation" in version.metadata
        # The job manager removed the dead worker's staging directory.
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
        assert (await domain.forecaster.forecast("EURUSD.WK", 24)).model_version == current
        if landed_mid_write:
            break
    assert landed_mid_write


async def test_cancel_running_and_queued_jobs(domain: ForecastDomain, all_trained: object) -> None:
    running = await domain.jobs.train(["GOOG"])
    queued = await domain.jobs.train(["EURUSD.WK"])
    await until(domain.jobs.watch(running.job_id), lambda e: e.detail == "step")
    cancelled_queued = await domain.jobs.cancel(queued.job_id)
    assert (
        cancelled_queued.state is JobState.CANCELLED and cancelled_queued.items[0].state is JobState.CANCELLED
    )
    versions = [v.version for v in domain.registry.list_versions("GOOG")]
    cancelled = await domain.jobs.cancel(running.job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.items[0].state is JobState.CANCELLED
    assert [v.version for v in domain.registry.list_versions("GOOG")] == versions
    assert (await domain.jobs.cancel(running.job_id)).state is JobState.CANCELLED  # idempotent
    assert domain.jobs.active_count() == 0


async def test_list_and_get_jobs(
    domain: ForecastDomain, first_job: tuple[TrainingJob, list[JobEvent]]
) -> None:
    page, token = domain.jobs.list_jobs(page_size=1)
    assert len(page) == 1 and token
    rest, _ = domain.jobs.list_jobs(page_size=100, page_token=token)
    ids = [j.job_id for j in page + rest]
    assert first_job[0].job_id in ids and len(ids) == len(set(ids))
    succeeded, _ = domain.jobs.list_jobs(states=[JobState.SUCCEEDED])
    assert all(j.state is JobState.SUCCEEDED for j in succeeded)
    assert domain.jobs.latest() is not None
    with pytest.raises(NotFound):
        domain.jobs.get("missing")
    with pytest.raises(InvalidArgument):
        domain.jobs.list_jobs(page_token="x")


async def test_system_metrics(domain: ForecastDomain) -> None:
    metrics = domain.system_metrics()
    assert metrics.cpu_count >= 1 and metrics.memory_total_bytes > metrics.memory_used_bytes > 0
    assert metrics.active_training_jobs == domain.jobs.active_count()
    assert metrics.server.pid == os.getpid() and metrics.server.rss_bytes > 0
    assert metrics.gpu_available is False and metrics.gpus == []  # no NVML on this machine
