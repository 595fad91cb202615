"""PatternService over real gRPC: a real Data service (embedded PostgreSQL, the bundled EURUSD H1 and
GOOG D1 candles) and the pattern service on port 0, with a tiny TCN configuration so a training job
through the real worker process takes seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest

from kitrading.common.v1 import job_pb2 as common_job
from kitrading.common.v1 import market_pb2
from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import resources_pb2 as pb
from kitrading.pattern.v1 import service_pb2_grpc
from services.data import convert as data_cv
from services.data.samples import SAMPLES, load_candles
from services.pattern.app import PatternApp
from services.pattern.settings import PatternSettings
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, details, fails, start_server, utc

pytestmark = pytest.mark.slow

H1, D1 = market_pb2.TIMEFRAME_H1, market_pb2.TIMEFRAME_D1
#: A TCN that trains in about a second (the worker's start, torch's import, costs more).
TINY: dict[str, Any] = {
    "train_on_start": False,
    "schedule": False,
    "event_retrain": False,
    "use_gpu": False,
    "window": 32,
    "channels": 8,
    "levels": 3,
    "max_steps": 20,
    "batch_size": 32,
    "train_bars": 1500,
    "worker_idle_s": 120.0,
}


@dataclass
class Stack:
    pattern: service_pb2_grpc.PatternServiceStub


@pytest.fixture(scope="module")
async def stack(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    candles = load_candles([s for s in SAMPLES if s.symbol in ("EURUSD", "GOOG")])
    rows = [
        ("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles["EURUSD"]),
        ("GOOG", market_pb2.ASSET_CLASS_EQUITY, True, D1, candles["GOOG"]),
        ("EMPTY", market_pb2.ASSET_CLASS_FX, True, H1, candles["EURUSD"][:2]),
    ]
    async with data_service(postgres, "test_pattern", rows) as data:
        settings = PatternSettings(home=tmp_path_factory.mktemp("pattern"), **TINY)
        server = await start_server(PatternApp(settings, data=data.target), "pattern")
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Stack(service_pb2_grpc.PatternServiceStub(channel))
        await server.stop(0)


async def test_symbol_patterns_with_key_points_engine_and_follow_through(stack: Stack) -> None:
    reply = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", lookback=500)
    )
    d = reply.detection
    assert d.symbol == "EURUSD" and d.timeframe == H1 and d.bars == 500
    assert d.engine == pb.PATTERN_ENGINE_RULES and "rule-based" in d.engine_note
    assert d.patterns, "no pattern in 500 EURUSD bars"
    confidences = [p.confidence for p in d.patterns]
    assert confidences == sorted(confidences, reverse=True) and min(confidences) >= 0.5
    for p in d.patterns:
        assert p.engine == pb.PATTERN_ENGINE_RULES and p.key_points
        assert utc(p.start_time) <= utc(p.key_points[0].time) and utc(p.key_points[-1].time) <= utc(
            p.end_time
        )
        assert utc(d.window_start_time) <= utc(p.end_time) <= utc(d.window_end_time)
        ft = p.follow_through
        assert ft.horizon_bars == 24 and 0 <= ft.base_rate <= 1 and ft.HasField("period_start_time")
    daily = await stack.pattern.DetectSymbolPatterns(rr.DetectSymbolPatternsRequest(symbol="GOOG"))
    assert daily.detection.timeframe == D1  # the symbol's own series


async def test_caller_given_candles_and_their_validation(stack: Stack) -> None:
    bars = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"][-400:]
    candles = [data_cv.candle_out(c) for c in bars]
    reply = await stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=candles, symbol="MINE"))
    assert reply.detection.symbol == "MINE" and reply.detection.bars == 400 and reply.detection.patterns
    assert not reply.detection.patterns[0].HasField("follow_through")
    broken = list(candles)
    broken[17] = market_pb2.Candle(time=candles[17].time, open=1.1, high=1.0, low=1.2, close=1.1, volume=1)
    error = await fails(
        stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=broken)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["candles[17].high"]
    unsorted = list(candles)
    unsorted[30], unsorted[31] = unsorted[31], unsorted[30]
    error = await fails(
        stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=unsorted)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["candles[31].time"]
    repeated = [*candles[:31], candles[30], *candles[32:]]
    error = await fails(
        stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=repeated)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["candles[31].time"]
    error = await fails(
        stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=candles[:5])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["candles"]


async def test_scan_every_active_symbol_types_and_errors(stack: Stack) -> None:
    scan = await stack.pattern.ScanPatterns(rr.ScanPatternsRequest())
    assert [d.symbol for d in scan.detections] == ["EURUSD", "GOOG"]
    assert [(e.symbol, e.code) for e in scan.errors] == [("EMPTY", "FAILED_PRECONDITION")]
    types = await stack.pattern.ListPatternTypes(rr.ListPatternTypesRequest())
    assert len(types.pattern_types) == 13 and types.pattern_types[0].description
    page = await stack.pattern.ListPatternTypes(rr.ListPatternTypesRequest(page_size=5))
    assert len(page.pattern_types) == 5 and page.next_page_token
    await fails(
        stack.pattern.DetectSymbolPatterns(rr.DetectSymbolPatternsRequest(symbol="NOPE")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_before_any_training_the_tcn_falls_back_to_the_rules_and_says_so(stack: Stack) -> None:
    card = await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())
    assert not card.ready and not card.HasField("model") and "no pattern TCN yet" in card.status_message
    reply = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    d = reply.detection
    assert d.engine == pb.PATTERN_ENGINE_RULES and d.model_version == "rules-v1"
    assert "no TCN is published yet" in d.engine_note and "rule-based" in d.engine_note
    assert all(p.engine == pb.PATTERN_ENGINE_RULES for p in d.patterns)
    assert not (await stack.pattern.ListPatternModelVersions(rr.ListPatternModelVersionsRequest())).models
    error = await fails(
        stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no" in (error.details() or ""), error.details()


async def test_bad_training_requests_name_the_field(stack: Stack) -> None:
    error = await fails(
        stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest(max_steps=7)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["max_steps"] and "KITRADING_PATTERN_MAX_STEPS=20" in error.details()
    error = await fails(
        stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest(symbols=["EURUSD", "bad one"])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["symbols[1]"]
    await fails(
        stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest(symbols=["NOPE"])),
        grpc.StatusCode.NOT_FOUND,
    )
    error = await fails(
        stack.pattern.DetectSymbolPatterns(rr.DetectSymbolPatternsRequest(symbol="EURUSD", engine=9)),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["engine"]
    await fails(
        stack.pattern.GetTrainingJob(rr.GetTrainingJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND
    )


async def test_a_training_job_through_the_worker_publishes_a_version_that_serving_picks_up(
    stack: Stack,
) -> None:
    started = await stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest(background=True))
    job_id = started.job.job_id
    events = [
        e.event async for e in stack.pattern.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id))
    ]
    assert events[0].WhichOneof("event") == "snapshot" and events[-1].WhichOneof("event") == "result"
    steps = [e.step.step for e in events if e.WhichOneof("event") == "step"]
    assert steps and steps[-1] == 20 and steps == sorted(steps), "the training steps were not streamed"
    job = (await stack.pattern.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job
    assert job.state == common_job.JOB_STATE_SUCCEEDED, job.error
    assert job.model == "tcn" and job.symbols[0].key == "tcn" and job.symbols[0].model_version == "v000001"
    listed = await stack.pattern.ListTrainingJobs(rr.ListTrainingJobsRequest())
    assert job_id in [j.job_id for j in listed.jobs]

    card = await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())
    assert card.ready and card.model.version == "v000001" and "serving TCN v000001" in card.status_message
    m = card.model
    assert (m.window_bars, m.embargo_bars, m.label_tolerance_bars, m.steps) == (32, 32, 2, 20)
    assert m.device == "cpu" and m.receptive_field_bars == 1 + 2 * 2 * 7
    assert [s.symbol for s in m.series] == ["EURUSD", "GOOG"]  # EMPTY has too few candles
    for s in m.series:
        assert s.bars == 1500 and s.train_windows and s.validation_windows and s.test_windows
    assert [c.pattern_type for c in m.classes] == [
        t.pattern_type
        for t in (await stack.pattern.ListPatternTypes(rr.ListPatternTypesRequest())).pattern_types
    ] or len(m.classes) == 13
    assert m.macro.pattern_type == "macro" and m.macro.support > 0
    for c in m.classes:
        assert c.rules_follow_through.horizon_bars == 24 and 0 <= c.threshold <= 1
        if c.support:
            assert 0 <= c.pr_auc <= 1
    assert "[t - 2, t]" in m.label_definition and "32 bars" in m.split_definition

    tcn = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", lookback=500, engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    d = tcn.detection
    assert d.engine == pb.PATTERN_ENGINE_TCN and d.model_version == "tcn/v000001" and not d.engine_note
    for p in d.patterns:
        assert p.engine == pb.PATTERN_ENGINE_TCN and p.key_points and 0 < p.confidence <= 1
        assert utc(d.window_start_time) <= utc(p.end_time) and p.follow_through.horizon_bars == 24
    both = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", lookback=500, engine=pb.PATTERN_ENGINE_CHOICE_BOTH)
    )
    engines = {p.engine for p in both.detection.patterns}
    assert pb.PATTERN_ENGINE_RULES in engines and both.detection.model_version == "rules-v1+tcn/v000001"
    assert len(both.detection.patterns) >= len(d.patterns)
    rules = await stack.pattern.DetectSymbolPatterns(rr.DetectSymbolPatternsRequest(symbol="EURUSD"))
    assert rules.detection.engine == pb.PATTERN_ENGINE_RULES  # the default is unchanged

    # Not forced and no new candle: skipped. Forced: v000002, served without a restart.
    again = await stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest(force=False))
    assert again.job.state == common_job.JOB_STATE_SUCCEEDED
    assert "no candle newer" in again.job.symbols[0].error
    forced = await stack.pattern.TrainPatternModel(
        rr.TrainPatternModelRequest(force=True, symbols=["EURUSD"])
    )
    assert forced.job.state == common_job.JOB_STATE_SUCCEEDED, forced.job.error
    card = await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())
    assert card.model.version == "v000002" and [s.symbol for s in card.model.series] == ["EURUSD"]
    older = await stack.pattern.GetPatternModel(rr.GetPatternModelRequest(version="v000001"))
    assert len(older.model.series) == 2
    served = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    assert served.detection.model_version == "tcn/v000002"

    # Versions, newest first, with the active one marked; paginated; rollback switches serving.
    listed = await stack.pattern.ListPatternModelVersions(rr.ListPatternModelVersionsRequest())
    assert [(m.version, m.active) for m in listed.models] == [("v000002", True), ("v000001", False)]
    assert listed.models[1].macro.pattern_type == "macro" and len(listed.models[1].series) == 2
    first = await stack.pattern.ListPatternModelVersions(rr.ListPatternModelVersionsRequest(page_size=1))
    rest = await stack.pattern.ListPatternModelVersions(
        rr.ListPatternModelVersionsRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [m.version for m in (*first.models, *rest.models)] == ["v000002", "v000001"]
    assert not rest.next_page_token
    rolled = await stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest())
    assert rolled.model.version == "v000001" and rolled.model.active
    served = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    assert served.detection.model_version == "tcn/v000001"
    card = await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())
    assert card.model.version == "v000001" and card.model.active
    error = await fails(
        stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no version older than v000001" in (error.details() or ""), error.details()
    error = await fails(
        stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest(version="v000009")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "v000009" in (error.details() or ""), error.details()
    error = await fails(
        stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest(version="../v1")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "version" in (error.details() or ""), error.details()
    forward = await stack.pattern.RollbackPatternModel(rr.RollbackPatternModelRequest(version="v000002"))
    assert forward.model.version == "v000002"
    served = await stack.pattern.DetectSymbolPatterns(
        rr.DetectSymbolPatternsRequest(symbol="EURUSD", engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    assert served.detection.model_version == "tcn/v000002"
    # caller-given candles: the TCN reads them too (a window shorter than its own: the rules answer)
    bars = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"][-300:]
    candles = [data_cv.candle_out(c) for c in bars]
    given = await stack.pattern.DetectPatterns(
        rr.DetectPatternsRequest(candles=candles, engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    assert given.detection.engine == pb.PATTERN_ENGINE_TCN
    short = await stack.pattern.DetectPatterns(
        rr.DetectPatternsRequest(candles=candles[:20], engine=pb.PATTERN_ENGINE_CHOICE_TCN)
    )
    assert (
        short.detection.engine == pb.PATTERN_ENGINE_RULES and "32-bar windows" in short.detection.engine_note
    )
