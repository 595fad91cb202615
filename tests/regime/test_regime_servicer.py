"""RegimeService over real gRPC: a real Data service (embedded PostgreSQL, the bundled EURUSD H1 and
GOOG D1 candles) and the regime service on port 0 with small HMM and LightGBM settings, training in
its real worker process. One module-scoped stack; the tests run in file order (first start, served,
errors, killed training, event retrain)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import grpc.aio
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2

from kitrading.common.v1 import job_pb2, market_pb2, training_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from kitrading.regime.v1 import request_response_pb2 as rr
from kitrading.regime.v1 import resources_pb2 as pb
from kitrading.regime.v1 import service_pb2_grpc
from services.data.samples import SAMPLES, load_candles
from services.regime.app import RegimeApp
from services.regime.settings import RegimeSettings
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, details, fails, start_server, utc

pytestmark = pytest.mark.slow

H1, D1 = market_pb2.TIMEFRAME_H1, market_pb2.TIMEFRAME_D1
SUCCEEDED, FAILED = job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED
BUY, SELL = pb.SIGNAL_SIDE_BUY, pb.SIGNAL_SIDE_SELL


@dataclass
class Stack:
    regime: service_pb2_grpc.RegimeServiceStub
    data: data_grpc.DataServiceStub
    app: RegimeApp
    home: Path


async def wait_job(stack: Stack, job_id: str, within: float = 180.0) -> training_pb2.TrainingJob:
    deadline = time.monotonic() + within
    while True:
        job = (await stack.regime.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job
        if job.state in (SUCCEEDED, FAILED, job_pb2.JOB_STATE_CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def stack(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Data with EURUSD (H1) and GOOG (D1) active, TINY (200 H1 bars) and NOMODEL inactive; the
    regime service with small settings, no scheduler, the event monitor on a short debounce."""
    candles = load_candles([s for s in SAMPLES if s.symbol in ("EURUSD", "GOOG")])
    rows = [
        ("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles["EURUSD"][-3000:]),
        ("GOOG", market_pb2.ASSET_CLASS_EQUITY, True, D1, candles["GOOG"]),
        ("TINY", market_pb2.ASSET_CLASS_FX, False, H1, candles["EURUSD"][-200:]),
        ("NOMODEL", market_pb2.ASSET_CLASS_FX, False, H1, candles["EURUSD"][-500:]),
    ]
    async with data_service(postgres, "test_regime", rows) as data:
        home = tmp_path_factory.mktemp("regime-servicer")
        settings = RegimeSettings(
            home=home,
            restarts=1,
            max_iter=30,
            boosting_rounds=20,
            worker_nice=0,
            event_debounce_s=0.3,
            event_max_delay_s=2.0,
        )
        app = RegimeApp(settings, data=data.target, schedule=False)
        server = await start_server(app, "regime")
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Stack(service_pb2_grpc.RegimeServiceStub(channel), data.stub, app, home)
        await server.stop(0)


@pytest.fixture(scope="module")
async def first(stack: Stack) -> list[training_pb2.TrainingJobEvent]:
    """The first-start job, watched from while it runs to its result."""
    status = await stack.regime.GetRegimeStatus(rr.GetRegimeStatusRequest())
    assert status.training_job.job_id
    watch = stack.regime.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=status.training_job.job_id))
    return [message.event async for message in watch]


async def test_first_start_trains_in_the_background_and_says_so(stack: Stack) -> None:
    r = stack.regime
    status = await r.GetRegimeStatus(rr.GetRegimeStatusRequest())
    assert not status.ready and "first start" in status.message and not status.models
    assert status.training_job.trigger == training_pb2.TRAINING_TRIGGER_FIRST_START
    assert [s.symbol for s in status.training_job.symbols] == ["EURUSD", "GOOG"]  # the active ones
    error = await fails(
        r.GetRegime(rr.GetRegimeRequest(symbol="EURUSD")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert details(error)[0] == "MODEL_TRAINING" and status.training_job.job_id in error.details()


async def test_first_training_streams_steps_then_serves(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    kinds = [e.WhichOneof("event") for e in first]
    assert kinds[0] == "snapshot" and kinds[-1] == "result" and "step" in kinds
    result = first[-1].result
    assert result.state == SUCCEEDED, result.error
    assert [(s.symbol, s.state, s.model_version) for s in result.symbols] == [
        ("EURUSD", SUCCEEDED, "v000001"),
        ("GOOG", SUCCEEDED, "v000001"),
    ]
    status = await stack.regime.GetRegimeStatus(rr.GetRegimeStatusRequest())
    assert status.ready and [m.symbol for m in status.models] == ["EURUSD", "GOOG"]
    assert status.models[1].timeframe == D1


async def test_get_regime_is_filtered_with_transitions_and_optional_hindsight(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    state = (await stack.regime.GetRegime(rr.GetRegimeRequest(symbol="EURUSD", lookback=300))).state
    assert state.regime != pb.REGIME_UNSPECIFIED and state.regime == state.probabilities[0].regime
    assert math.isclose(sum(p.probability for p in state.probabilities), 1.0, abs_tol=1e-6)
    assert state.confidence == state.probabilities[0].probability
    assert sum(s.bars for s in state.history) == 300 and state.history[-1].regime == state.regime
    assert utc(state.since_time) == utc(state.history[-1].start_time)
    assert state.model_version == "v000001" and state.timeframe == H1
    assert all(s.volatility >= 0 for s in state.history)
    assert {t.from_regime for t in state.transitions} == {d.regime for d in state.expected_durations}
    for row in state.transitions:
        assert math.isclose(sum(p.probability for p in row.to), 1.0, abs_tol=1e-6)
    assert all(d.expected_bars >= 1 for d in state.expected_durations)
    assert not state.hindsight_history
    hindsight = (
        await stack.regime.GetRegime(
            rr.GetRegimeRequest(symbol="EURUSD", lookback=300, include_hindsight=True)
        )
    ).state.hindsight_history
    assert sum(s.bars for s in hindsight) == 300 and all(s.mean_probability == 1 for s in hindsight)
    daily = (await stack.regime.GetRegime(rr.GetRegimeRequest(symbol="GOOG"))).state
    assert daily.timeframe == D1 and sum(s.bars for s in daily.history) == 500


async def test_score_signals_single_and_batch(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    r = stack.regime
    one = await r.ScoreSignal(rr.ScoreSignalRequest(symbol="EURUSD", side=BUY))
    assert 0 < one.score < 1 and one.regime != pb.REGIME_UNSPECIFIED and 0 < one.regime_probability <= 1
    assert one.features and abs(one.features[0].contribution) >= abs(one.features[-1].contribution)
    assert one.horizon == 24 and one.barriers.unit == pb.BARRIER_UNIT_ATR
    assert (one.barriers.take_profit, one.barriers.stop_loss) == (2.0, 1.0)
    assert utc(one.signal_time) == utc(one.last_candle_time) and one.model_version == "v000001"
    assert math.isfinite(one.expected_return)
    at = timestamp_pb2.Timestamp()
    at.FromDatetime((utc(one.last_candle_time) - pd.Timedelta(hours=30, minutes=20)).to_pydatetime())
    batch = await r.BatchScoreSignals(
        rr.BatchScoreSignalsRequest(
            requests=[
                rr.ScoreSignalRequest(symbol="EURUSD", side=BUY),
                rr.ScoreSignalRequest(symbol="GOOG", side=SELL),
                rr.ScoreSignalRequest(symbol="EURUSD", side=SELL, time=at, horizon=24),
            ]
        )
    )
    got = [(b.symbol, b.side, b.timeframe) for b in batch.responses]
    assert got == [("EURUSD", BUY, H1), ("GOOG", SELL, D1), ("EURUSD", SELL, H1)]
    assert batch.responses[0].score == one.score
    assert (
        utc(batch.responses[2].signal_time)
        <= utc(at)
        < utc(batch.responses[2].signal_time) + pd.Timedelta(hours=1)
    )


async def test_model_card_has_the_walk_forward_figures(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    reply = await stack.regime.GetRegimeModel(rr.GetRegimeModelRequest(symbol="EURUSD"))
    model, scorer = reply.model, reply.scorer
    assert model.n_states in (2, 3, 4) and len(model.states) == model.n_states
    assert [b.n_states for b in model.bic] == [2, 3, 4]
    assert min(model.bic, key=lambda b: b.bic).n_states == model.n_states
    assert model.training_bars == 3000 and utc(model.data_end_time) > utc(model.data_start_time)
    evaluation = scorer.evaluation
    assert evaluation.calibrated.samples > 100 and 0 < evaluation.calibrated.brier_base < 1
    assert [b.strategy for b in evaluation.backtest][1:] and len(evaluation.backtest) == 3
    assert sum(b.count for b in evaluation.reliability) == evaluation.calibrated.samples
    assert evaluation.verdict.startswith("edge" if evaluation.edge else "no edge")
    assert scorer.horizon == 24 and scorer.features and scorer.validation_auc == evaluation.calibrated.auc


async def test_bad_input_names_the_field(stack: Stack, first: list[training_pb2.TrainingJobEvent]) -> None:
    r = stack.regime
    error = await fails(
        r.GetRegime(rr.GetRegimeRequest(symbol="NOMODEL")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert details(error)[0] == "NO_MODEL" and "POST /api/v1/regime/train" in error.details()
    error = await fails(r.GetRegime(rr.GetRegimeRequest(symbol="NOPE")), grpc.StatusCode.NOT_FOUND)
    assert details(error)[0] == "SYMBOL_NOT_FOUND"
    error = await fails(r.GetRegime(rr.GetRegimeRequest(symbol="eur usd")), grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error)[1] == ["symbol"]
    error = await fails(
        r.GetRegime(rr.GetRegimeRequest(symbol="GOOG", timeframe=H1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["timeframe"] and "D1" in error.details()
    cases: list[tuple[rr.ScoreSignalRequest, str]] = [
        (rr.ScoreSignalRequest(symbol="EURUSD"), "side"),
        (rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, horizon=5), "horizon"),
        (rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, horizon=-1), "horizon"),
        (
            rr.ScoreSignalRequest(
                symbol="EURUSD", side=BUY, barriers=pb.Barriers(unit=pb.BARRIER_UNIT_PERCENT, take_profit=1)
            ),
            "barriers.unit",
        ),
        (
            rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, barriers=pb.Barriers(take_profit=-1)),
            "barriers.take_profit",
        ),
        (
            rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, barriers=pb.Barriers(stop_loss=3)),
            "barriers.stop_loss",
        ),
    ]
    for request, field in cases:
        error = await fails(r.ScoreSignal(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert details(error)[1] == [field], (field, error.details())
    error = await fails(
        r.BatchScoreSignals(
            rr.BatchScoreSignalsRequest(
                requests=[
                    rr.ScoreSignalRequest(symbol="EURUSD", side=BUY),
                    rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, horizon=7),
                ]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["requests[1].horizon"]
    await fails(r.BatchScoreSignals(rr.BatchScoreSignalsRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    early = timestamp_pb2.Timestamp(seconds=int(pd.Timestamp("2000-01-01", tz="UTC").timestamp()))
    error = await fails(
        r.ScoreSignal(rr.ScoreSignalRequest(symbol="EURUSD", side=BUY, time=early)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["time"]
    error = await fails(
        r.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["EURUSD"], n_states=7)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["n_states"]
    await fails(r.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["NOPE"])), grpc.StatusCode.NOT_FOUND)
    tiny = await r.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["TINY"]))
    ended = await wait_job(stack, tiny.job.job_id)
    assert ended.symbols[0].state == FAILED and "needs" in ended.symbols[0].error


async def test_a_killed_training_leaves_the_previous_version_serving(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    r = stack.regime
    trainer = stack.app.domain.trainer
    small = trainer.settings
    trainer.settings = replace(small, restarts=30, max_iter=300)  # a training long enough to kill
    try:
        request = rr.TrainRegimeModelsRequest(symbols=["EURUSD"], force=True, background=True)
        reply = await r.TrainRegimeModels(request)
        async for message in r.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=reply.job.job_id)):
            if message.event.WhichOneof("event") == "step":
                pid = stack.app.domain.jobs.worker_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                break
    finally:
        trainer.settings = small
    job = await wait_job(stack, reply.job.job_id)
    assert job.state == FAILED and "exited" in job.symbols[0].error
    state = (await r.GetRegime(rr.GetRegimeRequest(symbol="EURUSD"))).state
    assert state.model_version == "v000001"


async def test_new_candles_retrain_through_the_event_stream(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    r, data = stack.regime, stack.data
    latest = await data.GetLatestCandle(data_rr.GetLatestCandleRequest(symbol="EURUSD", timeframe=H1))
    price, last = latest.candle.close, utc(latest.candle.time)
    deadline = time.monotonic() + 90
    while True:
        last = last + pd.Timedelta(hours=1)
        candle = market_pb2.Candle(open=price, high=price, low=price, close=price, volume=1)
        candle.time.FromDatetime(last.to_pydatetime())
        await data.UpsertCandles(
            data_rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=[candle])
        )
        jobs = (await r.ListTrainingJobs(rr.ListTrainingJobsRequest(symbol="EURUSD"))).jobs
        event_jobs = [j for j in jobs if j.trigger == training_pb2.TRAINING_TRIGGER_MARKET_EVENT]
        if event_jobs:
            break
        assert time.monotonic() < deadline, "no retraining on new candles"
        await asyncio.sleep(0.5)
    job = await wait_job(stack, event_jobs[0].job_id)
    assert [(s.symbol, s.state) for s in job.symbols] == [("EURUSD", SUCCEEDED)]
    state = (await r.GetRegime(rr.GetRegimeRequest(symbol="EURUSD"))).state
    assert state.model_version == job.symbols[0].model_version != "v000001"  # picked up without a restart


async def test_versions_are_listed_and_rolled_back_without_a_restart(
    stack: Stack, first: list[training_pb2.TrainingJobEvent]
) -> None:
    r = stack.regime
    trained = await r.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["GOOG"], force=True))
    job = await wait_job(stack, trained.job.job_id)
    assert job.state == SUCCEEDED, job.error
    newest = job.symbols[0].model_version
    listed = await r.ListRegimeModelVersions(rr.ListRegimeModelVersionsRequest(symbol="GOOG"))
    versions = [(v.model_version, v.active) for v in listed.versions]
    assert versions[0] == (newest, True) and versions[-1] == ("v000001", False)
    v = listed.versions[-1]
    assert v.symbol == "GOOG" and v.timeframe == D1 and v.n_states in (2, 3, 4) and v.training_bars > 0
    assert v.scores.samples > 0 and 0 < v.scores.brier_base < 1 and v.verdict and v.job_id
    paged = await r.ListRegimeModelVersions(rr.ListRegimeModelVersionsRequest(symbol="GOOG", page_size=1))
    assert [x.model_version for x in paged.versions] == [newest] and paged.next_page_token

    rolled = await r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="GOOG"))
    older = listed.versions[1].model_version
    assert rolled.version.model_version == older and rolled.version.active
    state = (await r.GetRegime(rr.GetRegimeRequest(symbol="GOOG"))).state
    assert state.model_version == older  # served at the next call
    card = await r.GetRegimeModel(rr.GetRegimeModelRequest(symbol="GOOG"))
    assert card.model.model_version == older
    forward = await r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="GOOG", version=newest))
    assert forward.version.model_version == newest
    assert (await r.GetRegime(rr.GetRegimeRequest(symbol="GOOG"))).state.model_version == newest

    error = await fails(
        r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="GOOG", version="v000099")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(error)[0] == "MODEL_VERSION_NOT_FOUND"
    error = await fails(
        r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="GOOG", version="latest")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["version"]
    assert not (await r.ListRegimeModelVersions(rr.ListRegimeModelVersionsRequest(symbol="NOMODEL"))).versions
    error = await fails(
        r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="NOMODEL")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert details(error)[0] == "NO_MODEL"
    for call in (
        r.ListRegimeModelVersions(rr.ListRegimeModelVersionsRequest(symbol="NOPE")),
        r.RollbackRegimeModel(rr.RollbackRegimeModelRequest(symbol="NOPE")),
    ):
        error = await fails(call, grpc.StatusCode.NOT_FOUND)
        assert details(error)[0] == "SYMBOL_NOT_FOUND"
    error = await fails(
        r.ListRegimeModelVersions(rr.ListRegimeModelVersionsRequest(symbol="GOOG", page_token="forged")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[0] == "INVALID_PAGE_TOKEN"
