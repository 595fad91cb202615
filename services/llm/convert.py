"""Protos <-> LLM domain types: the servicer's vocabulary.

- `grounding_of(gathered)`: the other services' messages -> the prompt's `Grounding` (plain figures).
- `context_of(gathered)`: the same messages -> `AnalysisContext`, so a client shows the figures
  beside the text.
- `AnswerRecorder`: counts and times the streamed tokens -> `AnalysisCompletion`.
- `status_out(status)`: `LlmStatus` -> `GetLlmStatusResponse` (with `gpu_budget_out`).
"""

from __future__ import annotations

import math
import time
from datetime import UTC

from google.protobuf import timestamp_pb2

from kitrading.common.v1 import market_pb2
from kitrading.forecast.v1 import resources_pb2 as forecast_pb
from kitrading.llm.v1 import request_response_pb2 as rr
from kitrading.llm.v1 import resources_pb2 as pb
from kitrading.pattern.v1 import resources_pb2 as pattern_pb
from kitrading.regime.v1 import resources_pb2 as regime_pb
from services.llm import prompt
from services.llm.analyst import LlmStatus
from services.llm.engine import EngineInfo, Token
from services.llm.gpu_budget import GpuUsage
from services.llm.grounding import CANDLES, FORECAST, PATTERN, RAG, REGIME, Gathered

SOURCES: dict[str, pb.ContextSource.ValueType] = {
    CANDLES: pb.CONTEXT_SOURCE_CANDLES,
    FORECAST: pb.CONTEXT_SOURCE_FORECAST,
    REGIME: pb.CONTEXT_SOURCE_REGIME,
    PATTERN: pb.CONTEXT_SOURCE_PATTERNS,
    RAG: pb.CONTEXT_SOURCE_KNOWLEDGE,
}
ENGINES: dict[str, pb.LlmEngine.ValueType] = {
    "embedded": pb.LLM_ENGINE_EMBEDDED,
    "ollama": pb.LLM_ENGINE_OLLAMA,
}
FINISH_REASONS: dict[str, pb.FinishReason.ValueType] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def timeframe_label(value: market_pb2.Timeframe.ValueType) -> str:
    """`TIMEFRAME_H1` (by number) -> `H1`."""
    return market_pb2.Timeframe.Name(value).removeprefix("TIMEFRAME_")


def _iso(value: timestamp_pb2.Timestamp) -> str:
    if value.seconds == 0 and value.nanos == 0:
        return ""
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label(name: str, prefix: str) -> str:
    """`REGIME_BULL_TREND` -> `bull trend`; the UNSPECIFIED value -> ``."""
    if name.endswith("_UNSPECIFIED"):
        return ""
    return name.removeprefix(prefix).lower().replace("_", " ")


# -- gathered figures -> the prompt's Grounding ----------------------------------------------------


def grounding_of(g: Gathered) -> prompt.Grounding:
    """The figures the prompt states; sources that failed are named in `unavailable`."""
    candles = None
    if g.stats is not None:
        s = g.stats
        candles = prompt.CandleStats(
            last_close=s.last_candle.close,
            change_pct=s.change_percent,
            volatility_pct=s.volatility * 100.0,  # Data sends the std of log returns as a fraction
            high=s.high,
            low=s.low,
            bars=s.bars,
            timeframe=timeframe_label(s.timeframe),
            last_time=_iso(s.last_candle.time),
        )
    forecast = None
    if g.forecast is not None:
        forecast = prompt.Forecast(
            points=tuple(_forecast_point(i + 1, p) for i, p in enumerate(g.forecast.points)),
            model_version=g.forecast.model_version,
        )
    regime = None
    if g.regime is not None and g.regime.regime != regime_pb.REGIME_UNSPECIFIED:
        regime = prompt.Regime(
            name=_label(regime_pb.Regime.Name(g.regime.regime), "REGIME_"),
            probability=g.regime.confidence,
        )
    patterns: tuple[prompt.PatternHit, ...] = ()
    if g.patterns is not None:
        patterns = tuple(
            prompt.PatternHit(
                name=p.pattern_type.replace("_", " "),
                confidence=p.confidence,
                direction=_label(pattern_pb.PatternDirection.Name(p.direction), "PATTERN_DIRECTION_"),
            )
            for p in g.patterns.patterns
        )
    passages = tuple(
        prompt.Passage(text=p.text, source=p.title or p.source, score=p.score) for p in g.passages
    )
    return prompt.Grounding(
        symbol=g.symbol,
        candles=candles,
        forecast=forecast,
        regime=regime,
        patterns=patterns,
        passages=passages,
        unavailable=tuple(u.source for u in g.unavailable),
    )


def _forecast_point(step: int, p: forecast_pb.ForecastPoint) -> prompt.ForecastPoint:
    bounds = {i.level: (i.lower, i.upper) for i in p.intervals}
    lo80, hi80 = bounds.get(80, (math.nan, math.nan))
    lo95, hi95 = bounds.get(95, (math.nan, math.nan))
    return prompt.ForecastPoint(
        step=step,
        value=p.value,
        lo80=lo80,
        hi80=hi80,
        lo95=lo95,
        hi95=hi95,
        timestamp=_iso(p.time),
    )


# -- gathered figures -> AnalysisContext -----------------------------------------------------------


def context_of(g: Gathered) -> pb.AnalysisContext:
    context = pb.AnalysisContext(
        symbol=g.symbol,
        timeframe=g.timeframe,
        passages=list(g.passages),
        unavailable=[
            pb.UnavailableSource(source=SOURCES[u.source], code=u.code, reason=u.reason)
            for u in g.unavailable
        ],
        gather_ms=g.gather_ms,
    )
    context.create_time.FromDatetime(g.create_time)
    if g.stats is not None:
        s = g.stats
        context.candle_stats.CopyFrom(
            pb.CandleStats(
                last_candle=s.last_candle,
                bars=s.bars,
                change_percent=s.change_percent,
                volatility=s.volatility,
                high=s.high,
                low=s.low,
                mean_close=s.mean_close,
            )
        )
    if g.forecast is not None:
        context.forecast.CopyFrom(g.forecast)
    if g.regime is not None:
        context.regime.CopyFrom(g.regime)
    if g.patterns is not None:
        context.pattern_detection.CopyFrom(g.patterns)
    return context


# -- tokens -> AnalysisToken / AnalysisCompletion --------------------------------------------------


class AnswerRecorder:
    """Counts and times one answer from the request's arrival (create it first thing in the RPC)."""

    def __init__(self) -> None:
        self.arrival = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        #: Non-empty pieces of text seen so far (the next AnalysisToken's index).
        self.tokens = 0
        self.finish_reason = "stop"
        self.prompt_tokens = 0  # 0: the engine did not say
        self.parts: list[str] = []

    def token(self, token: Token) -> pb.AnalysisToken | None:
        """Record `token`; the AnalysisToken to send, or None when it carries no text."""
        if token.finish_reason:
            self.finish_reason = token.finish_reason
        if token.prompt_tokens is not None:
            self.prompt_tokens = token.prompt_tokens
        if not token.text:
            return None
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.parts.append(token.text)
        self.tokens += 1
        return pb.AnalysisToken(text=token.text, index=self.tokens - 1)

    @property
    def answer(self) -> str:
        return "".join(self.parts)

    def completion(self, engine: EngineInfo) -> pb.AnalysisCompletion:
        end = self.last if self.last is not None else time.perf_counter()
        first = self.first if self.first is not None else end
        decode = end - first
        return pb.AnalysisCompletion(
            finish_reason=FINISH_REASONS.get(self.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.tokens,
            time_to_first_token_ms=(first - self.arrival) * 1000.0,
            tokens_per_second=(self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0,
            total_ms=(end - self.arrival) * 1000.0,
            engine=ENGINES.get(engine.engine, pb.LLM_ENGINE_UNSPECIFIED),
            model=engine.model,
        )


# -- status ----------------------------------------------------------------------------------------


def status_out(status: LlmStatus, *, base_url: str = "") -> rr.GetLlmStatusResponse:
    return rr.GetLlmStatusResponse(
        engine=ENGINES.get(status.engine, pb.LLM_ENGINE_UNSPECIFIED),
        model=status.model,
        loaded=status.loaded,
        queue_depth=status.queue_depth,
        active_requests=status.active,
        max_concurrent=status.max_concurrent,
        recent_tokens_per_second=status.recent_tokens_per_second,
        base_url=base_url,
        detail=status.detail,
        gpu_budget=gpu_budget_out(status.gpu),
    )


def gpu_budget_out(usage: GpuUsage | None) -> pb.GpuBudget | None:
    if usage is None:
        return None
    return pb.GpuBudget(
        fraction=usage.fraction,
        total_bytes=usage.total_bytes,
        budget_bytes=usage.budget_bytes,
        offloaded_layers=usage.layers or 0,
        total_layers=usage.total_layers or 0,
        used_bytes=usage.used_bytes or 0,
        used_measured=usage.used_bytes is not None,
        detail=usage.detail,
    )
