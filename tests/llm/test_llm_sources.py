"""The source clients over real gRPC (fake services), and protos -> figures -> protos losing nothing."""

from __future__ import annotations

import grpc
import pytest
from fake_mesh import FORECAST_VERSION, PASSAGE_TEXT, PATTERN_TYPE, FakeMesh, forecast_for
from google.protobuf.timestamp_pb2 import Timestamp

from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.forecast.v1 import resources_pb2 as forecast_pb
from kitrading.pattern.v1 import resources_pb2 as pattern_pb
from kitrading.rag.v1 import resources_pb2 as rag_pb
from kitrading.regime.v1 import resources_pb2 as regime_pb
from services.llm import convert as cv
from services.llm import sources as src
from services.llm.grounding import Gathered, SourceError
from services.llm.grounding_settings import GroundingSettings

H1 = market_pb2.TIMEFRAME_H1


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def regime_state() -> regime_pb.RegimeState:
    return regime_pb.RegimeState(
        symbol="EURUSD",
        timeframe=H1,
        regime=regime_pb.REGIME_HIGH_VOLATILITY,
        confidence=0.6,
        probabilities=[
            regime_pb.RegimeProbability(regime=regime_pb.REGIME_HIGH_VOLATILITY, probability=0.6),
            regime_pb.RegimeProbability(regime=regime_pb.REGIME_RANGE, probability=0.4),
        ],
        since_time=ts(1_700_000_000),
        history=[
            regime_pb.RegimeSegment(
                regime=regime_pb.REGIME_RANGE,
                start_time=ts(1_699_000_000),
                end_time=ts(1_700_000_000),
                bars=40,
                mean_probability=0.7,
            )
        ],
        model_version="hmm-v3",
        last_candle_time=ts(1_700_003_600),
    )


def pattern_detection() -> pattern_pb.PatternDetection:
    return pattern_pb.PatternDetection(
        symbol="EURUSD",
        timeframe=H1,
        patterns=[
            pattern_pb.DetectedPattern(
                pattern_type="head_and_shoulders",
                confidence=0.66,
                start_time=ts(1_699_900_000),
                end_time=ts(1_700_000_000),
                direction=pattern_pb.PATTERN_DIRECTION_BEARISH,
            )
        ],
        model_version="tcn-v2",
        bars=200,
        window_start_time=ts(1_699_000_000),
        window_end_time=ts(1_700_000_000),
    )


def passage() -> rag_pb.Passage:
    return rag_pb.Passage(
        document_id="doc-9",
        chunk_index=3,
        title="Note",
        text="Rates unchanged.",
        score=0.9,
        source="ecb.europa.eu",
        symbol="EURUSD",
        tags=["macro", "ecb"],
        publish_time=ts(1_690_000_000),
    )


def symbol_stats() -> data_rr.GetSymbolStatsResponse:
    last = market_pb2.Candle(time=ts(1_700_000_000), open=1.1, high=1.2, low=1.0, close=1.15, volume=99.5)
    return data_rr.GetSymbolStatsResponse(
        symbol="EURUSD",
        timeframe=H1,
        last_candle=last,
        bars=100,
        change_percent=0.4,
        volatility=0.002,
        high=1.2,
        low=1.0,
        mean_close=1.1,
    )


def test_messages_round_trip_through_the_figures() -> None:
    forecast = forecast_for("EURUSD", H1, 24, 1.1)
    forecast.method = forecast_pb.FORECAST_METHOD_NHITS
    forecast.cached = True
    forecast.create_time.FromSeconds(1_700_000_100)
    forecast.last_candle_time.FromSeconds(1_700_000_000)
    assert cv.forecast_out(src.forecast_in(forecast)) == forecast
    assert cv.regime_out(src.regime_in(regime_state())) == regime_state()
    assert cv.patterns_out(src.patterns_in(pattern_detection())) == pattern_detection()
    assert cv.passage_out(src.passage_in(passage())) == passage()
    stats = src.stats_in(symbol_stats())
    assert stats.timeframe == "H1" and stats.last_candle is not None
    assert cv.candle_out(stats.last_candle) == symbol_stats().last_candle

    context = cv.context_of(
        Gathered(
            symbol="EURUSD",
            timeframe="H1",
            stats=stats,
            forecast=src.forecast_in(forecast),
            regime=src.regime_in(regime_state()),
            patterns=src.patterns_in(pattern_detection()),
            passages=(src.passage_in(passage()),),
        )
    )
    assert context.timeframe == H1 and context.candle_stats.last_candle == symbol_stats().last_candle
    assert (context.candle_stats.mean_close, context.candle_stats.volatility) == (1.1, 0.002)
    assert context.forecast == forecast and context.regime == regime_state()
    assert context.pattern_detection == pattern_detection() and list(context.passages) == [passage()]


def test_figures_spell_enums_by_name_and_unset_as_empty() -> None:
    state = src.regime_in(regime_state())
    assert (state.regime, state.probabilities[1].regime, state.history[0].regime) == (
        "HIGH_VOLATILITY",
        "RANGE",
        "RANGE",
    )
    assert src.patterns_in(pattern_detection()).patterns[0].direction == "BEARISH"
    empty = src.regime_in(regime_pb.RegimeState(symbol="EURUSD"))
    assert (empty.regime, empty.timeframe, empty.since_time) == ("", "", None)
    assert cv.regime_out(empty) == regime_pb.RegimeState(symbol="EURUSD")
    assert cv.timeframe_label(market_pb2.TIMEFRAME_D1) == "D1" and cv.timeframe_label(0) == ""
    assert cv.enum_label(cv.REGIME_ENUM, 99) == ""  # a value newer than this build: unset
    with pytest.raises(ValueError, match="Timeframe"):
        cv.timeframe_value("H7")


async def test_mesh_sources_answer_figures_and_raise_source_errors() -> None:
    async with FakeMesh(failures={"regime": grpc.StatusCode.FAILED_PRECONDITION}) as fake:
        targets = {name: fake.target for name in ("data", "forecast", "regime", "pattern", "rag")}
        sources = src.MeshSources(GroundingSettings(targets=targets))
        await sources.start()
        try:
            forecast = await sources.forecast("EURUSD", "D1", horizon=6, deadline=5.0)
            assert forecast.model_version == FORECAST_VERSION and len(forecast.points) == 6
            assert fake.requests["forecast"].timeframe == market_pb2.TIMEFRAME_D1
            patterns = await sources.patterns("EURUSD", "H1", deadline=5.0)
            assert patterns.patterns[0].pattern_type == PATTERN_TYPE
            passages = await sources.passages("EURUSD", "q" * 3000, top_k=3, deadline=5.0)
            assert [p.text for p in passages] == [PASSAGE_TEXT]
            assert len(fake.requests["rag"].query) == 2000 and fake.requests["rag"].top_k == 3
            with pytest.raises(SourceError) as failed:
                await sources.regime("EURUSD", "H1", deadline=5.0)
            assert failed.value.code == "FAILED_PRECONDITION" and "no model yet" in failed.value.message
            with pytest.raises(SourceError) as missing:
                await sources.symbol_stats("EURUSD", "H1", lookback=100, deadline=5.0)
            assert missing.value.code == "UNIMPLEMENTED"  # the fake mesh serves no Data service
        finally:
            await sources.close()
