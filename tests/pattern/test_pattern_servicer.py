"""PatternService over real gRPC: a real Data service (embedded PostgreSQL, the bundled EURUSD H1 and
GOOG D1 candles) and the pattern service on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

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
        settings = PatternSettings(home=tmp_path_factory.mktemp("pattern"))
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
    # any order is accepted (sorted, as everywhere in the mesh); a repeated time is not
    shuffled = candles[200:] + candles[:200]
    again = await stack.pattern.DetectPatterns(rr.DetectPatternsRequest(candles=shuffled, symbol="MINE"))
    assert again.detection == reply.detection
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
    error = await fails(
        stack.pattern.TrainPatternModel(rr.TrainPatternModelRequest()), grpc.StatusCode.UNIMPLEMENTED
    )
    assert "not built" in error.details()
