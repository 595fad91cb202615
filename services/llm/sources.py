"""The gRPC clients of the five grounding sources; every answer comes back as a dataclass of figures.py.

`MeshSources` is what the fan-out (grounding.py) calls: one channel per service, opened at start, and
a failed call raised as `SourceError` (status code name, ErrorInfo reason, message), so nothing past
this module sees gRPC or protobuf.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
import grpc.aio

from kitrading.client.errors import error_from_rpc
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from kitrading.forecast.v1 import request_response_pb2 as forecast_rr
from kitrading.forecast.v1 import resources_pb2 as forecast_pb
from kitrading.forecast.v1 import service_pb2_grpc as forecast_grpc
from kitrading.pattern.v1 import request_response_pb2 as pattern_rr
from kitrading.pattern.v1 import resources_pb2 as pattern_pb
from kitrading.pattern.v1 import service_pb2_grpc as pattern_grpc
from kitrading.rag.v1 import request_response_pb2 as rag_rr
from kitrading.rag.v1 import resources_pb2 as rag_pb
from kitrading.rag.v1 import service_pb2_grpc as rag_grpc
from kitrading.regime.v1 import request_response_pb2 as regime_rr
from kitrading.regime.v1 import resources_pb2 as regime_pb
from kitrading.regime.v1 import service_pb2_grpc as regime_grpc
from services.llm import figures as fg
from services.llm.convert import (
    DIRECTION,
    METHOD,
    REGIME_ENUM,
    enum_label,
    time_in,
    timeframe_label,
    timeframe_value,
)
from services.llm.grounding import SourceError
from services.llm.grounding_settings import SOURCE_SERVICES, GroundingSettings
from services.runtime.channels import mesh_channel

T = TypeVar("T")

#: Longest knowledge-base query the RAG contract accepts.
MAX_QUERY_CHARS = 2000


class MeshSources:
    """The grounding sources over gRPC, at the settings' targets (the `Sources` of grounding.py)."""

    def __init__(self, settings: GroundingSettings) -> None:
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def start(self) -> None:
        for service in SOURCE_SERVICES.values():
            self._channel(service)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            channel = mesh_channel(self.settings.target(service), retries=False)
            self._channels[service] = channel
        return channel

    async def symbol_stats(
        self, symbol: str, timeframe: str, *, lookback: int, deadline: float
    ) -> fg.SymbolStats:
        stub = data_grpc.DataServiceStub(self._channel("data"))
        request = data_rr.GetSymbolStatsRequest(
            symbol=symbol, timeframe=timeframe_value(timeframe), lookback=lookback
        )
        return stats_in(await _answer(stub.GetSymbolStats(request, timeout=deadline)))

    async def forecast(self, symbol: str, timeframe: str, *, horizon: int, deadline: float) -> fg.Forecast:
        stub = forecast_grpc.ForecastServiceStub(self._channel("forecast"))
        request = forecast_rr.GetForecastRequest(
            symbol=symbol, timeframe=timeframe_value(timeframe), horizon=horizon
        )
        return forecast_in((await _answer(stub.GetForecast(request, timeout=deadline))).forecast)

    async def regime(self, symbol: str, timeframe: str, *, deadline: float) -> fg.RegimeState:
        stub = regime_grpc.RegimeServiceStub(self._channel("regime"))
        request = regime_rr.GetRegimeRequest(symbol=symbol, timeframe=timeframe_value(timeframe))
        return regime_in((await _answer(stub.GetRegime(request, timeout=deadline))).state)

    async def signal_scores(
        self, symbol: str, timeframe: str, sides: tuple[str, ...], *, deadline: float
    ) -> tuple[fg.SignalScore, ...]:
        stub = regime_grpc.RegimeServiceStub(self._channel("regime"))
        request = regime_rr.BatchScoreSignalsRequest(
            requests=[
                regime_rr.ScoreSignalRequest(
                    symbol=symbol, side=SIDES[side], timeframe=timeframe_value(timeframe)
                )
                for side in sides
            ]
        )
        reply = await _answer(stub.BatchScoreSignals(request, timeout=deadline))
        return tuple(score_in(r) for r in reply.responses)

    async def patterns(self, symbol: str, timeframe: str, *, deadline: float) -> fg.PatternDetection:
        stub = pattern_grpc.PatternServiceStub(self._channel("pattern"))
        request = pattern_rr.DetectSymbolPatternsRequest(symbol=symbol, timeframe=timeframe_value(timeframe))
        return patterns_in((await _answer(stub.DetectSymbolPatterns(request, timeout=deadline))).detection)

    async def passages(
        self, symbol: str, query: str, *, top_k: int, deadline: float
    ) -> tuple[fg.Passage, ...]:
        stub = rag_grpc.RagServiceStub(self._channel("rag"))
        request = rag_rr.QueryKnowledgeBaseRequest(query=query[:MAX_QUERY_CHARS], top_k=top_k, symbol=symbol)
        response = await _answer(stub.QueryKnowledgeBase(request, timeout=deadline))
        return tuple(passage_in(p) for p in response.passages)


async def _answer(call: Awaitable[T]) -> T:
    """The call's response; its failure as a SourceError."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc(exc)
        raise SourceError(error.code.name, error.message, reason=error.reason) from None


# -- the services' messages -> figures ---------------------------------------------------------------


def candle_in(c: market_pb2.Candle) -> fg.Candle:
    return fg.Candle(
        time=time_in(c.time), open=c.open, high=c.high, low=c.low, close=c.close, volume=c.volume
    )


def stats_in(s: data_rr.GetSymbolStatsResponse) -> fg.SymbolStats:
    return fg.SymbolStats(
        symbol=s.symbol,
        timeframe=timeframe_label(s.timeframe),
        last_candle=candle_in(s.last_candle) if s.HasField("last_candle") else None,
        bars=s.bars,
        change_percent=s.change_percent,
        volatility=s.volatility,
        high=s.high,
        low=s.low,
        mean_close=s.mean_close,
    )


def forecast_in(f: forecast_pb.Forecast) -> fg.Forecast:
    return fg.Forecast(
        symbol=f.symbol,
        timeframe=timeframe_label(f.timeframe),
        horizon=f.horizon,
        points=tuple(
            fg.ForecastPoint(
                time=time_in(p.time),
                value=p.value,
                intervals=tuple(
                    fg.PredictionInterval(level=i.level, lower=i.lower, upper=i.upper) for i in p.intervals
                ),
            )
            for p in f.points
        ),
        method=enum_label(METHOD, f.method),
        model_version=f.model_version,
        last_candle_time=time_in(f.last_candle_time),
        cached=f.cached,
        create_time=time_in(f.create_time),
    )


SIDES = {"buy": regime_pb.SIGNAL_SIDE_BUY, "sell": regime_pb.SIGNAL_SIDE_SELL}
#: Features of a score kept for the grounding (largest contributions).
TOP_FEATURES = 3


def score_in(r: regime_rr.ScoreSignalResponse) -> fg.SignalScore:
    return fg.SignalScore(
        symbol=r.symbol,
        side="buy" if r.side == regime_pb.SIGNAL_SIDE_BUY else "sell",
        probability=r.score,
        expected_return=r.expected_return,
        regime=enum_label(REGIME_ENUM, r.regime),
        edge=r.edge,
        model_version=r.model_version,
        horizon=r.horizon,
        features=tuple((f.name, f.contribution) for f in r.features[:TOP_FEATURES]),
    )


def regime_in(r: regime_pb.RegimeState) -> fg.RegimeState:
    return fg.RegimeState(
        symbol=r.symbol,
        timeframe=timeframe_label(r.timeframe),
        regime=enum_label(REGIME_ENUM, r.regime),
        confidence=r.confidence,
        probabilities=tuple(
            fg.RegimeProbability(regime=enum_label(REGIME_ENUM, p.regime), probability=p.probability)
            for p in r.probabilities
        ),
        since_time=time_in(r.since_time),
        history=tuple(
            fg.RegimeSegment(
                regime=enum_label(REGIME_ENUM, h.regime),
                start_time=time_in(h.start_time),
                end_time=time_in(h.end_time),
                bars=h.bars,
                mean_probability=h.mean_probability,
            )
            for h in r.history
        ),
        model_version=r.model_version,
        last_candle_time=time_in(r.last_candle_time),
    )


def patterns_in(d: pattern_pb.PatternDetection) -> fg.PatternDetection:
    return fg.PatternDetection(
        symbol=d.symbol,
        timeframe=timeframe_label(d.timeframe),
        patterns=tuple(
            fg.DetectedPattern(
                pattern_type=p.pattern_type,
                confidence=p.confidence,
                start_time=time_in(p.start_time),
                end_time=time_in(p.end_time),
                direction=enum_label(DIRECTION, p.direction),
            )
            for p in d.patterns
        ),
        model_version=d.model_version,
        bars=d.bars,
        window_start_time=time_in(d.window_start_time),
        window_end_time=time_in(d.window_end_time),
    )


def passage_in(p: rag_pb.Passage) -> fg.Passage:
    return fg.Passage(
        document_id=p.document_id,
        chunk_index=p.chunk_index,
        title=p.title,
        text=p.text,
        score=p.score,
        source=p.source,
        symbol=p.symbol,
        tags=tuple(p.tags),
        publish_time=time_in(p.publish_time),
    )
