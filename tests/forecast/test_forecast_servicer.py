"""ForecastService over real gRPC: a real Data service (embedded PostgreSQL, the bundled EURUSD H1 and
GOOG D1 candles) and the forecast service on port 0 with tiny NHITS settings, training in its real
worker process. One module-scoped stack; the tests run in file order (untrained, trained, retrained)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pandas as pd
import pytest

from kitrading.cli.commands.forecast import run_forecast, run_train
from kitrading.cli.commands.models import run_rollback, run_versions
from kitrading.cli.main import parse_args
from kitrading.common.v1 import job_pb2, market_pb2, training_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from kitrading.forecast.v1 import request_response_pb2 as rr
from kitrading.forecast.v1 import resources_pb2 as pb
from kitrading.forecast.v1 import service_pb2_grpc
from services.data.samples import SAMPLES, load_candles
from services.forecast.app import ForecastApp
from services.forecast.calendar import EQUITY, FX
from services.runtime import metrics
from tests.cli_helpers import cli, table
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, details, fails, start_server, utc

from .conftest import TINY_NHITS, tiny_settings

pytestmark = pytest.mark.slow

H1, D1 = market_pb2.TIMEFRAME_H1, market_pb2.TIMEFRAME_D1
STEPS = int(TINY_NHITS["max_steps"])
EVAL_WINDOWS = 6
SUCCEEDED, FAILED, CANCELLED, SKIPPED, RUNNING = (
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
    job_pb2.JOB_STATE_SKIPPED,
    job_pb2.JOB_STATE_RUNNING,
)


@dataclass
class Stack:
    target: str
    forecast: service_pb2_grpc.ForecastServiceStub
    data: data_grpc.DataServiceStub
    app: ForecastApp
    home: Path
    eurusd_last: pd.Timestamp
    goog_last: pd.Timestamp


async def wait_job(stack: Stack, job_id: str, within: float = 120.0) -> training_pb2.TrainingJob:
    deadline = time.monotonic() + within
    while True:
        job = (await stack.forecast.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job
        if job.state in (SUCCEEDED, FAILED, CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def stack(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Data with EURUSD (FX, H1), GOOG (EQUITY, D1) and NOMODEL (FX, inactive: never trained) on its
    own database; the forecast service with tiny NHITS settings and no scheduler."""
    candles = load_candles([s for s in SAMPLES if s.symbol in ("EURUSD", "GOOG")])
    rows = [
        ("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles["EURUSD"]),
        ("GOOG", market_pb2.ASSET_CLASS_EQUITY, True, D1, candles["GOOG"]),
        ("NOMODEL", market_pb2.ASSET_CLASS_FX, False, H1, candles["EURUSD"][-500:]),
    ]
    async with data_service(postgres, "test_forecast", rows) as data:
        home = tmp_path_factory.mktemp("forecast-servicer")
        settings = tiny_settings(home, event_debounce_s=0.3, event_max_delay_s=2.0)
        app = ForecastApp(settings, data=data.target, schedule=False)
        server = await start_server(app, "forecast")
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Stack(
                target=server.target,
                forecast=service_pb2_grpc.ForecastServiceStub(channel),
                data=data.stub,
                app=app,
                home=home,
                eurusd_last=pd.Timestamp(candles["EURUSD"][-1].time),
                goog_last=pd.Timestamp(candles["GOOG"][-1].time),
            )
        await server.stop(0)


@dataclass
class Watched:
    job: training_pb2.TrainingJob  # as TrainAll returned it
    events: list[tuple[float, training_pb2.TrainingJobEvent]]
    gauge_while_training: float | None


@pytest.fixture(scope="module")
async def trained(stack: Stack) -> Watched:
    """TrainAll(force, background) of the active symbols (EURUSD, GOOG), watched from the start."""
    reply = await stack.forecast.TrainAll(rr.TrainAllRequest(force=True, background=True))
    events: list[tuple[float, training_pb2.TrainingJobEvent]] = []
    gauge = None
    started = time.perf_counter()
    async for message in stack.forecast.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=reply.job.job_id)):
        events.append((time.perf_counter() - started, message.event))
        if message.event.WhichOneof("event") == "step" and gauge is None:
            gauge = metrics.REGISTRY.get_sample_value(
                "kitrading_training_jobs_active", {"service": "forecast"}
            )
    return Watched(reply.job, events, gauge)


# -- before any model exists ----------------------------------------------------------------------


async def test_errors_before_training(stack: Stack) -> None:
    f = stack.forecast
    error = await fails(
        f.GetForecast(rr.GetForecastRequest(symbol="NOMODEL")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert details(error)[0] == "NO_MODEL"
    assert "no model for NOMODEL yet" in error.details() and "train" in error.details()
    error = await fails(f.GetForecast(rr.GetForecastRequest(symbol="NOPE")), grpc.StatusCode.NOT_FOUND)
    assert details(error)[0] == "SYMBOL_NOT_FOUND" and "NOPE" in error.details()
    error = await fails(
        f.GetForecast(rr.GetForecastRequest(symbol="eur usd")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["symbol"]
    error = await fails(
        f.GetForecast(rr.GetForecastRequest(symbol="EURUSD", horizon=721)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["horizon"]

    await fails(f.TrainSymbol(rr.TrainSymbolRequest(symbol="NOPE")), grpc.StatusCode.NOT_FOUND)
    error = await fails(
        f.TrainSymbol(rr.TrainSymbolRequest(symbol="GOOG", timeframe=H1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["timeframe"] and "D1" in error.details()
    error = await fails(f.TrainAll(rr.TrainAllRequest(max_steps=STEPS + 1)), grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error)[1] == ["max_steps"]
    await fails(f.GetTrainingJob(rr.GetTrainingJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND)
    await fails(f.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in f.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id="nope")):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await fails(f.ListModelVersions(rr.ListModelVersionsRequest(symbol="NOPE")), grpc.StatusCode.NOT_FOUND)
    assert not (await f.ListModelVersions(rr.ListModelVersionsRequest(symbol="NOMODEL"))).versions
    assert not (await f.ListModelPerformance(rr.ListModelPerformanceRequest())).performances
    await fails(
        f.RollbackModelVersion(rr.RollbackModelVersionRequest(symbol="NOMODEL")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await fails(
        f.RollbackModelVersion(rr.RollbackModelVersionRequest(symbol="NOPE")), grpc.StatusCode.NOT_FOUND
    )
    error = await fails(
        f.StartEventMonitor(rr.StartEventMonitorRequest(cooldown_seconds=60)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["cooldown_seconds"]
    progress = await f.GetTrainingProgress(rr.GetTrainingProgressRequest())
    assert not progress.training and not progress.HasField("latest_job")
    assert not progress.schedule.enabled and progress.schedule.interval_days == 7


# -- training, watched live -----------------------------------------------------------------------


async def test_train_all_streams_snapshot_real_steps_and_result(stack: Stack, trained: Watched) -> None:
    job = trained.job
    assert job.trigger == training_pb2.TRAINING_TRIGGER_MANUAL and job.force and job.background
    assert [s.symbol for s in job.symbols] == ["EURUSD", "GOOG"]  # the active ones, not NOMODEL
    events = [e for _, e in trained.events]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "result"
    assert "snapshot" not in kinds[1:] and "result" not in kinds[:-1]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].snapshot.job_id == job.job_id

    result = events[-1].result
    assert result.state == SUCCEEDED, result.error
    assert result.step == result.max_steps == 2 * STEPS
    assert [(s.symbol, s.state, s.model_version) for s in result.symbols] == [
        ("EURUSD", SUCCEEDED, "v000001"),
        ("GOOG", SUCCEEDED, "v000001"),
    ]
    assert result.HasField("end_time") and result.eta_seconds == 0

    for symbol, offset in (("EURUSD", 0), ("GOOG", STEPS)):
        steps = [e.step for e in events if e.WhichOneof("event") == "step" and e.step.symbol == symbol]
        numbers = [s.step for s in steps]
        assert len(steps) >= 2 and numbers[0] >= 1 and numbers[-1] == STEPS, numbers
        assert numbers == sorted(numbers)
        assert all(s.max_steps == STEPS and s.job_max_steps == 2 * STEPS for s in steps)
        assert [s.job_step for s in steps] == [offset + n for n in numbers]
        assert all(s.train_loss > 0 for s in steps)
        assert any(s.HasField("val_loss") and s.val_loss > 0 for s in steps)  # validation ran
        states = [
            e.symbol_transition.state
            for e in events
            if e.WhichOneof("event") == "symbol_transition" and e.symbol_transition.symbol == symbol
        ]
        # EURUSD may have started before the watch did: then the snapshot shows it RUNNING
        seen_running = events[0].snapshot.symbols[0].state == RUNNING if symbol == "EURUSD" else False
        assert states == ([SUCCEEDED] if seen_running else [RUNNING, SUCCEEDED])
    # steps arrive while training runs (not all at the end)
    times = [t for t, e in trained.events if e.WhichOneof("event") == "step"]
    assert times[-1] - times[0] > 0.1
    assert trained.gauge_while_training == 1

    progress = await stack.forecast.GetTrainingProgress(rr.GetTrainingProgressRequest())
    assert not progress.training and not progress.active_jobs
    assert progress.latest_job.job_id == job.job_id and progress.latest_job.state == SUCCEEDED
    listed = await stack.forecast.ListTrainingJobs(rr.ListTrainingJobsRequest(symbol="GOOG"))
    assert [j.job_id for j in listed.jobs] == [job.job_id]
    assert not (await stack.forecast.ListTrainingJobs(rr.ListTrainingJobsRequest(symbol="NOMODEL"))).jobs
    assert metrics.REGISTRY.get_sample_value("kitrading_training_jobs_active", {"service": "forecast"}) == 0
    # A late watcher gets the ended job as its snapshot, then the stream ends.
    late = [
        m.event async for m in stack.forecast.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job.job_id))
    ]
    assert len(late) == 1 and late[0].snapshot.state == SUCCEEDED


# -- forecasts ------------------------------------------------------------------------------------


def assert_intervals(forecast: pb.Forecast) -> None:
    for point in forecast.points:
        assert [i.level for i in point.intervals] == [80, 95]
        i80, i95 = point.intervals
        assert i95.lower <= i80.lower <= point.value <= i80.upper <= i95.upper
        assert i95.upper - i95.lower > i80.upper - i80.lower > 0


async def test_forecast_has_intervals_on_the_trading_calendar(stack: Stack, trained: Watched) -> None:
    f = stack.forecast
    reply = await f.GetForecast(rr.GetForecastRequest(symbol="EURUSD", horizon=24, skip_cache=True))
    fc = reply.forecast
    assert (fc.symbol, fc.timeframe, fc.horizon, fc.method) == ("EURUSD", H1, 24, pb.FORECAST_METHOD_NHITS)
    assert fc.model_version == "v000001" and not fc.cached
    assert utc(fc.last_candle_time) == stack.eurusd_last
    times = pd.DatetimeIndex([utc(p.time) for p in fc.points])
    assert list(times) == list(FX.next_bars(stack.eurusd_last, pd.Timedelta(hours=1), 24))
    assert times[0] > stack.eurusd_last and times.is_monotonic_increasing
    assert_intervals(fc)
    closes = [c.close for c in (await stack.data.ListCandles(
        data_rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=1, descending=True)
    )).candles]  # fmt: skip
    assert abs(fc.points[0].value / closes[0] - 1) < 0.02  # a price forecast, near the last close

    again = (await f.GetForecast(rr.GetForecastRequest(symbol="EURUSD", horizon=12))).forecast
    assert again.cached and again.horizon == 12 and list(again.points) == list(fc.points[:12])

    goog = (await f.GetForecast(rr.GetForecastRequest(symbol="GOOG", horizon=10, timeframe=D1))).forecast
    assert goog.timeframe == D1 and len(goog.points) == 10
    goog_times = pd.DatetimeIndex([utc(p.time) for p in goog.points])
    assert list(goog_times) == list(EQUITY.next_bars(stack.goog_last, pd.Timedelta(days=1), 10))
    assert all(t.dayofweek < 5 for t in goog_times)
    assert_intervals(goog)

    error = await fails(
        f.GetForecast(rr.GetForecastRequest(symbol="EURUSD", horizon=25)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["horizon"] and "24" in error.details()
    error = await fails(
        f.GetForecast(rr.GetForecastRequest(symbol="EURUSD", timeframe=D1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["timeframe"]


async def test_batch_forecast_answers_per_symbol(stack: Stack, trained: Watched) -> None:
    request = rr.BatchGetForecastsRequest(symbols=["GOOG", "NOPE", "EURUSD", "NOMODEL"], horizon=24)
    reply = await stack.forecast.BatchGetForecasts(request)
    assert [x.symbol for x in reply.forecasts] == ["GOOG", "EURUSD"]
    assert {(e.symbol, e.code) for e in reply.errors} == {
        ("NOPE", "NOT_FOUND"),
        ("NOMODEL", "FAILED_PRECONDITION"),
    }
    single = await stack.forecast.GetForecast(
        rr.GetForecastRequest(symbol="EURUSD", horizon=24, skip_cache=True)
    )
    np.testing.assert_allclose(
        [p.value for p in reply.forecasts[1].points], [p.value for p in single.forecast.points], rtol=1e-5
    )
    for fc in reply.forecasts:
        assert len(fc.points) == 24
        assert_intervals(fc)


async def test_candles_are_cached_and_follow_data_events(stack: Stack, trained: Watched) -> None:
    source = stack.app.source
    deadline = time.monotonic() + 10
    while not source.cache_live:
        assert time.monotonic() < deadline, "the candle cache never followed Data's events"
        await asyncio.sleep(0.05)
    # the search found Data's newest event: nothing after it, something at it
    events, after = [], 0
    while True:
        page = await stack.data.ListEvents(data_rr.ListEventsRequest(after_event_id=after, page_size=1000))
        events += page.events
        if not page.events:
            break
        after = page.last_event_id
    assert await source.newest_event_id() == max(e.event_id for e in events)

    request = rr.GetForecastRequest(symbol="EURUSD", skip_cache=True)
    await stack.forecast.GetForecast(request)
    calls, hits = source.calls, source.cache_hits
    for _ in range(5):
        await stack.forecast.GetForecast(request)
    assert source.calls == calls and source.cache_hits == hits + 5  # no Data call for unchanged bars

    # a new candle in Data reaches the next forecasts through the event stream
    latest = await stack.data.GetLatestCandle(data_rr.GetLatestCandleRequest(symbol="EURUSD", timeframe=H1))
    new_time = utc(latest.candle.time) + pd.Timedelta(hours=1)
    candle = market_pb2.Candle(
        open=latest.candle.close,
        high=latest.candle.close,
        low=latest.candle.close,
        close=latest.candle.close,
        volume=1,
    )
    candle.time.FromDatetime(new_time.to_pydatetime())
    await stack.data.UpsertCandles(
        data_rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=[candle])
    )
    started = time.monotonic()
    while True:
        fc = (await stack.forecast.GetForecast(rr.GetForecastRequest(symbol="EURUSD"))).forecast
        if utc(fc.last_candle_time) == new_time:
            break
        assert time.monotonic() - started < 2.0, "the forecast never saw the new candle"
        await asyncio.sleep(0.005)
    assert not fc.cached
    assert utc(fc.points[0].time) == new_time + pd.Timedelta(hours=1)


async def test_performance_table_against_baselines(stack: Stack, trained: Watched) -> None:
    reply = await stack.forecast.ListModelPerformance(rr.ListModelPerformanceRequest())
    assert [(p.symbol, p.model_version) for p in reply.performances] == [
        ("EURUSD", "v000001"),
        ("GOOG", "v000001"),
    ]
    for perf in reply.performances:
        assert perf.horizon == 24 and perf.samples == EVAL_WINDOWS * 24
        assert perf.timeframe == (H1 if perf.symbol == "EURUSD" else D1)
        assert utc(perf.test_start_time) < utc(perf.test_end_time)
        methods = [m.method for m in perf.metrics]
        assert methods == [
            pb.FORECAST_METHOD_NHITS,
            pb.FORECAST_METHOD_NAIVE,
            pb.FORECAST_METHOD_SEASONAL_NAIVE,
            pb.FORECAST_METHOD_AUTO_ETS,
            pb.FORECAST_METHOD_AUTO_THETA,
        ]
        nhits, naive, *_ = perf.metrics
        assert nhits.mae > 0 and nhits.rmse >= nhits.mae and nhits.mase > 0
        assert 0 < nhits.directional_accuracy <= 1
        assert [c.level for c in nhits.interval_coverage] == [80, 95]
        assert all(0 <= c.coverage <= 1 for c in nhits.interval_coverage)
        assert naive.mae > 0 and naive.directional_accuracy == 0  # Naive predicts no direction
        # widths and interval scores beside coverage; significance of each baseline's difference
        assert all(c.width > 0 and c.interval_score >= c.width for c in nhits.interval_coverage)
        assert not nhits.HasField("dm_p_value_vs_nhits")
        for baseline in perf.metrics[1:]:
            assert baseline.HasField("dm_p_value_vs_nhits") and 0 <= baseline.dm_p_value_vs_nhits <= 1
        assert nhits.HasField("directional_p_value") and not naive.HasField("directional_p_value")
    one = await stack.forecast.ListModelPerformance(
        rr.ListModelPerformanceRequest(symbol="GOOG", page_size=1)
    )
    assert [p.symbol for p in one.performances] == ["GOOG"] and not one.next_page_token
    paged = await stack.forecast.ListModelPerformance(rr.ListModelPerformanceRequest(page_size=1))
    assert len(paged.performances) == 1 and paged.next_page_token
    await fails(
        stack.forecast.ListModelPerformance(rr.ListModelPerformanceRequest(symbol="NOPE")),
        grpc.StatusCode.NOT_FOUND,
    )


# -- a second version, a cancelled job, rollback --------------------------------------------------


async def test_versions_rollback_and_cancel(stack: Stack, trained: Watched) -> None:
    f = stack.forecast
    # GOOG's model is fresh and no newer GOOG candle exists: not forced, it is skipped
    # (EURUSD got a new candle in the cache test: it would train)
    skipped = await f.TrainSymbol(rr.TrainSymbolRequest(symbol="GOOG", background=False))
    assert skipped.job.state == SUCCEEDED and skipped.job.symbols[0].state == SKIPPED
    assert "v000001" in skipped.job.symbols[0].error

    first = (await f.TrainSymbol(rr.TrainSymbolRequest(symbol="EURUSD", force=True, background=True))).job
    queued = (await f.TrainSymbol(rr.TrainSymbolRequest(symbol="GOOG", force=True, background=True))).job
    cancelled = (await f.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=queued.job_id))).job
    assert cancelled.state == CANCELLED and cancelled.symbols[0].state == CANCELLED
    retrained = await wait_job(stack, first.job_id)
    assert retrained.state == SUCCEEDED and retrained.symbols[0].model_version == "v000002"

    versions = (await f.ListModelVersions(rr.ListModelVersionsRequest(symbol="EURUSD"))).versions
    assert [(v.version, v.active) for v in versions] == [("v000002", True), ("v000001", False)]
    v2 = versions[0]
    assert v2.job_id == first.job_id and v2.steps == STEPS and v2.horizon == 24 and v2.input_size == 72
    assert v2.size_bytes > 0 and v2.HasField("train_loss") and v2.timeframe == H1
    goog = (await f.ListModelVersions(rr.ListModelVersionsRequest(symbol="GOOG"))).versions
    assert [v.version for v in goog] == ["v000001"]  # the cancelled job published nothing
    fc = (await f.GetForecast(rr.GetForecastRequest(symbol="EURUSD"))).forecast
    assert fc.model_version == "v000002"

    rolled = (await f.RollbackModelVersion(rr.RollbackModelVersionRequest(symbol="EURUSD"))).version
    assert (rolled.version, rolled.active) == ("v000001", True)
    fc = (await f.GetForecast(rr.GetForecastRequest(symbol="EURUSD"))).forecast
    assert fc.model_version == "v000001"  # live at once, no restart
    forward = await f.RollbackModelVersion(rr.RollbackModelVersionRequest(symbol="EURUSD", version="v000002"))
    assert forward.version.version == "v000002"
    await fails(
        f.RollbackModelVersion(rr.RollbackModelVersionRequest(symbol="EURUSD", version="v000009")),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await f.ListTrainingJobs(rr.ListTrainingJobsRequest(state=job_pb2.JOB_STATE_CANCELLED))
    assert [j.job_id for j in listed.jobs] == [queued.job_id]

    # the same through the CLI: `kitrading versions forecast EURUSD`, `kitrading rollback forecast EURUSD`
    status, text = await cli(run_versions, ["--target", stack.target, "versions", "forecast", "EURUSD"])
    rows = table(text, "VERSION")
    assert status == 0 and [r.split()[:2] for r in rows] == [["v000002", "active"], ["v000001", "H1"]]
    status, text = await cli(run_rollback, ["--target", stack.target, "rollback", "forecast", "EURUSD"])
    assert (status, text) == (0, "forecast EURUSD now serves v000001\n")
    argv = ["--target", stack.target, "rollback", "forecast", "EURUSD", "--version", "v000002"]
    assert (await cli(run_rollback, argv)) == (0, "forecast EURUSD now serves v000002\n")


# -- the CLI -------------------------------------------------------------------------------------


async def test_cli_train_follow_and_forecast_plot(stack: Stack, trained: Watched, tmp_path: Path) -> None:
    out = io.StringIO()
    args = parse_args(["--target", stack.target, "train", "GOOG", "--force", "--follow"])
    assert await asyncio.to_thread(run_train, args, out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("job ") and lines[0].endswith(": GOOG"), text
    bars = [line for line in lines if line.startswith("GOOG ") and "%" in line]
    assert bars and f"step {STEPS}/{STEPS}" in bars[-1] and "100%" in bars[-1], text
    assert any(line.startswith("GOOG") and "succeeded" in line and "model v000002" in line for line in lines)
    assert " succeeded in " in lines[-1], text

    out = io.StringIO()
    png = tmp_path / "goog.png"
    args = parse_args(["--target", stack.target, "forecast", "GOOG", "--horizon", "5", "--plot", str(png)])
    assert await asyncio.to_thread(run_forecast, args, out) == 0
    text = out.getvalue()
    assert "GOOG D1 forecast, 5 bars" in text and "model v000002" in text, text
    rows = [line for line in text.splitlines() if line[:2] in ("20", "19")]
    assert len(rows) == 5 and all(row.count("[") == 2 for row in rows), text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "no history" in text  # the target is the forecast service alone: no Data there

    # --json: one document each (the plot's note goes to stderr then)
    job_id = lines[0].split()[1]
    out = io.StringIO()
    args = parse_args(["--target", stack.target, "train", "--job", job_id, "--json"])
    assert await asyncio.to_thread(run_train, args, out) == 0
    job = json.loads(out.getvalue())
    assert job["jobId"] == job_id and job["state"] == "JOB_STATE_SUCCEEDED"
    out = io.StringIO()
    args = parse_args(["--target", stack.target, "forecast", "goog", "--horizon", "5", "--json"])
    assert await asyncio.to_thread(run_forecast, args, out) == 0
    forecast = json.loads(out.getvalue())
    assert (
        forecast["symbol"] == "GOOG"
        and forecast["modelVersion"] == "v000002"
        and len(forecast["points"]) == 5
    )


# -- automation and metrics -----------------------------------------------------------------------


async def test_event_monitor_retrains_on_new_candles(stack: Stack, trained: Watched) -> None:
    f = stack.forecast
    started = (await f.StartEventMonitor(rr.StartEventMonitorRequest())).monitor
    assert started.running and started.HasField("start_time")
    try:
        latest = await stack.data.GetLatestCandle(
            data_rr.GetLatestCandleRequest(symbol="EURUSD", timeframe=H1)
        )
        price = latest.candle.close
        last = utc(latest.candle.time)
        deadline = time.monotonic() + 60
        job_id = ""
        while not job_id:
            # A new EURUSD candle: Data emits CANDLES_INGESTED, the monitor debounces, then retrains.
            last = last + pd.Timedelta(hours=1)
            candle = market_pb2.Candle(open=price, high=price, low=price, close=price, volume=1)
            candle.time.FromDatetime(last.to_pydatetime())
            await stack.data.UpsertCandles(
                data_rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=[candle])
            )
            for _ in range(30):
                status = (await f.GetEventMonitorStatus(rr.GetEventMonitorStatusRequest())).monitor
                if status.last_job_id:
                    job_id = status.last_job_id
                    break
                await asyncio.sleep(0.1)
            assert time.monotonic() < deadline, "the event monitor never retrained"
        assert status.events_seen >= 1 and status.retrains_started == 1
        job = await wait_job(stack, job_id)
        assert job.trigger == training_pb2.TRAINING_TRIGGER_MARKET_EVENT
        assert [(s.symbol, s.state) for s in job.symbols] == [("EURUSD", SUCCEEDED)]
        fc = (await f.GetForecast(rr.GetForecastRequest(symbol="EURUSD"))).forecast
        assert utc(fc.last_candle_time) == last and fc.model_version == job.symbols[0].model_version
    finally:
        stopped = (await f.StopEventMonitor(rr.StopEventMonitorRequest())).monitor
    assert not stopped.running


async def test_system_metrics(stack: Stack) -> None:
    m = (await stack.forecast.GetSystemMetrics(rr.GetSystemMetricsRequest())).metrics
    assert m.cpu_count >= 1 and 0 <= m.cpu_percent <= 100
    assert 0 < m.memory_used_bytes < m.memory_total_bytes and 0 < m.memory_percent < 100
    assert m.process_memory_bytes > 0 and m.active_training_jobs == 0
    assert m.HasField("collect_time")
    assert m.gpu_available == bool(m.gpus)
