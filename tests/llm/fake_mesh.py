"""Stand-ins for the Forecast, Regime, Pattern and RAG services the analyst asks for grounding.

    failing = {"regime": grpc.StatusCode.FAILED_PRECONDITION}
    async with FakeMesh(delays={"forecast": 30.0}, failures=failing) as fake:
        GroundingSettings(targets={"forecast": fake.target, ...})

One real grpc.aio server on 127.0.0.1, port 0, serving the four services' contract with canned,
recognisable figures (`FORECAST_VERSION`, `PASSAGE_TEXT`...). `delays` makes a service slow, `failures`
makes it fail with a status code (as a service with "no model yet" does); `calls` counts requests.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from kitrading.common.v1 import market_pb2
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

FORECAST_VERSION = "nhits-test-v7"
PATTERN_TYPE = "double_bottom"
PASSAGE_TITLE = "ECB policy note"
PASSAGE_TEXT = "The ECB kept rates unchanged; markets expect a cut in the autumn."


def closed_port() -> int:
    """A local port with nothing listening on it (a service that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def forecast_for(symbol: str, timeframe: int, horizon: int, last_close: float) -> forecast_pb.Forecast:
    """A forecast drifting up 0.1 % a bar from `last_close`, with widening 80/95 % intervals."""
    points = []
    for step in range(1, horizon + 1):
        value = last_close * (1 + 0.001 * step)
        width = last_close * 0.002 * step**0.5
        point = forecast_pb.ForecastPoint(
            value=value,
            intervals=[
                forecast_pb.PredictionInterval(level=80, lower=value - width, upper=value + width),
                forecast_pb.PredictionInterval(
                    level=95, lower=value - 1.6 * width, upper=value + 1.6 * width
                ),
            ],
        )
        point.time.FromSeconds(1_700_000_000 + step * 3600)
        points.append(point)
    return forecast_pb.Forecast(
        symbol=symbol,
        timeframe=timeframe,  # type: ignore[arg-type]
        horizon=horizon,
        points=points,
        model_version=FORECAST_VERSION,
    )


class FakeMesh:
    def __init__(
        self,
        *,
        delays: Mapping[str, float] | None = None,
        failures: Mapping[str, grpc.StatusCode] | None = None,
        last_close: float = 1.1,
    ) -> None:
        self.delays = dict(delays or {})
        self.failures = dict(failures or {})
        self.last_close = last_close
        self.calls: Counter[str] = Counter()
        self.requests: dict[str, Any] = {}
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        server = grpc.aio.server()
        # Only the RPCs the analyst calls are implemented; the others answer UNIMPLEMENTED.
        forecast_grpc.add_ForecastServiceServicer_to_server(_Forecast(self), server)  # type: ignore[abstract]
        regime_grpc.add_RegimeServiceServicer_to_server(_Regime(self), server)  # type: ignore[abstract]
        pattern_grpc.add_PatternServiceServicer_to_server(_Pattern(self), server)  # type: ignore[abstract]
        rag_grpc.add_RagServiceServicer_to_server(_Rag(self), server)  # type: ignore[abstract]
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def enter(self, service: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Count the call, then delay or fail it as configured."""
        self.calls[service] += 1
        self.requests[service] = request
        delay = self.delays.get(service)
        if delay:
            await asyncio.sleep(delay)
        code = self.failures.get(service)
        if code is not None:
            await context.abort(code, f"{service}: no model yet for {getattr(request, 'symbol', '?')}")


class _Forecast(forecast_grpc.ForecastServiceServicer):
    def __init__(self, mesh: FakeMesh) -> None:
        self.mesh = mesh

    async def GetForecast(
        self, request: forecast_rr.GetForecastRequest, context: grpc.aio.ServicerContext
    ) -> forecast_rr.GetForecastResponse:
        await self.mesh.enter("forecast", request, context)
        forecast = forecast_for(
            request.symbol, request.timeframe, request.horizon or 24, self.mesh.last_close
        )
        return forecast_rr.GetForecastResponse(forecast=forecast)


class _Regime(regime_grpc.RegimeServiceServicer):
    def __init__(self, mesh: FakeMesh) -> None:
        self.mesh = mesh

    async def GetRegime(
        self, request: regime_rr.GetRegimeRequest, context: grpc.aio.ServicerContext
    ) -> regime_rr.GetRegimeResponse:
        await self.mesh.enter("regime", request, context)
        state = regime_pb.RegimeState(
            symbol=request.symbol,
            timeframe=request.timeframe or market_pb2.TIMEFRAME_H1,
            regime=regime_pb.REGIME_BULL_TREND,
            confidence=0.82,
            probabilities=[
                regime_pb.RegimeProbability(regime=regime_pb.REGIME_BULL_TREND, probability=0.82),
                regime_pb.RegimeProbability(regime=regime_pb.REGIME_RANGE, probability=0.18),
            ],
            model_version="hmm-test-v1",
        )
        return regime_rr.GetRegimeResponse(state=state)


class _Pattern(pattern_grpc.PatternServiceServicer):
    def __init__(self, mesh: FakeMesh) -> None:
        self.mesh = mesh

    async def DetectSymbolPatterns(
        self, request: pattern_rr.DetectSymbolPatternsRequest, context: grpc.aio.ServicerContext
    ) -> pattern_rr.DetectSymbolPatternsResponse:
        await self.mesh.enter("pattern", request, context)
        detection = pattern_pb.PatternDetection(
            symbol=request.symbol,
            timeframe=request.timeframe,
            patterns=[
                pattern_pb.DetectedPattern(
                    pattern_type=PATTERN_TYPE, confidence=0.71, direction=pattern_pb.PATTERN_DIRECTION_BULLISH
                )
            ],
            model_version="tcn-test-v2",
            bars=200,
        )
        return pattern_rr.DetectSymbolPatternsResponse(detection=detection)


class _Rag(rag_grpc.RagServiceServicer):
    def __init__(self, mesh: FakeMesh) -> None:
        self.mesh = mesh

    async def QueryKnowledgeBase(
        self, request: rag_rr.QueryKnowledgeBaseRequest, context: grpc.aio.ServicerContext
    ) -> rag_rr.QueryKnowledgeBaseResponse:
        await self.mesh.enter("rag", request, context)
        passage = rag_pb.Passage(
            document_id="doc-1", title=PASSAGE_TITLE, text=PASSAGE_TEXT, score=0.87, symbol=request.symbol
        )
        return rag_rr.QueryKnowledgeBaseResponse(passages=[passage])
