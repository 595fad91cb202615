"""Protos <-> LLM domain types: the servicer's and the source clients' vocabulary.

- `enum_label` / `enum_value`, `time_in` / `time_out`: how the figures' dataclasses (figures.py) spell
  enum values (their names without the prefix) and times (aware datetimes, None when unset).
- `context_of(gathered)`: the gathered figures -> `AnalysisContext`, so a client shows the figures
  beside the text (the other services' messages as they sent them).
- `AnswerRecorder`: counts and times the streamed tokens -> `AnalysisCompletion`.
- `status_out(status)`: `LlmStatus` -> `GetLlmStatusResponse` (with `gpu_budget_out`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor

from kitrading.common.v1 import market_pb2
from kitrading.forecast.v1 import resources_pb2 as forecast_pb
from kitrading.llm.v1 import request_response_pb2 as rr
from kitrading.llm.v1 import resources_pb2 as pb
from kitrading.pattern.v1 import resources_pb2 as pattern_pb
from kitrading.rag.v1 import resources_pb2 as rag_pb
from kitrading.regime.v1 import request_response_pb2 as regime_rr
from kitrading.regime.v1 import resources_pb2 as regime_pb
from services.llm import figures as fg
from services.llm.analyst import LlmStatus
from services.llm.engine import EngineInfo, Token
from services.llm.gpu_budget import GpuUsage
from services.llm.grounding import Gathered
from services.llm.grounding_settings import CANDLES, FORECAST, PATTERN, RAG, REGIME

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
TIMEFRAME = market_pb2.Timeframe.DESCRIPTOR
REGIME_ENUM = regime_pb.Regime.DESCRIPTOR
DIRECTION = pattern_pb.PatternDirection.DESCRIPTOR
METHOD = forecast_pb.ForecastMethod.DESCRIPTOR


# -- enum values and times ---------------------------------------------------------------------------


def _prefix(enum: EnumDescriptor) -> str:
    """`REGIME_` for `Regime`: its zero value is `REGIME_UNSPECIFIED`."""
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_label(enum: EnumDescriptor, value: int) -> str:
    """`REGIME_BULL_TREND` (by number) -> `BULL_TREND`; the zero value, or a number unknown here, -> ""."""
    item = enum.values_by_number.get(value) if value else None
    return "" if item is None else item.name.removeprefix(_prefix(enum))


def enum_value(enum: EnumDescriptor, label: str) -> int:
    """The inverse of `enum_label`; ValueError for a label the enum does not have."""
    if not label:
        return 0
    item = enum.values_by_name.get(_prefix(enum) + label)
    if item is None:
        raise ValueError(f"{enum.name} has no value {label!r}")
    return int(item.number)


def timeframe_label(value: int) -> str:
    """`TIMEFRAME_H1` (by number) -> `H1`; unset -> ""."""
    return enum_label(TIMEFRAME, value)


def timeframe_value(label: str) -> market_pb2.Timeframe.ValueType:
    return market_pb2.Timeframe.ValueType(enum_value(TIMEFRAME, label))


def time_in(value: timestamp_pb2.Timestamp) -> datetime | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToDatetime(tzinfo=UTC)


def time_out(value: datetime | None, target: timestamp_pb2.Timestamp) -> None:
    """Set `target` to `value`; None leaves it unset."""
    if value is not None:
        target.FromDatetime(value)


# -- gathered figures -> AnalysisContext -------------------------------------------------------------


def context_of(g: Gathered) -> pb.AnalysisContext:
    context = pb.AnalysisContext(
        symbol=g.symbol,
        timeframe=timeframe_value(g.timeframe),
        passages=[passage_out(p) for p in g.passages],
        unavailable=[
            pb.UnavailableSource(source=SOURCES[u.source], code=u.code, reason=u.reason)
            for u in g.unavailable
        ],
        gather_ms=g.gather_ms,
    )
    context.create_time.FromDatetime(g.create_time)
    if g.stats is not None:
        s = g.stats
        stats = pb.CandleStats(
            bars=s.bars,
            change_percent=s.change_percent,
            volatility=s.volatility,
            high=s.high,
            low=s.low,
            mean_close=s.mean_close,
        )
        if s.last_candle is not None:
            stats.last_candle.CopyFrom(candle_out(s.last_candle))
        context.candle_stats.CopyFrom(stats)
    if g.forecast is not None:
        context.forecast.CopyFrom(forecast_out(g.forecast))
    if g.regime is not None:
        context.regime.CopyFrom(regime_out(g.regime))
    context.signal_scores.extend(score_out(sc) for sc in g.scores)
    if g.patterns is not None:
        context.pattern_detection.CopyFrom(patterns_out(g.patterns))
    return context


def candle_out(c: fg.Candle) -> market_pb2.Candle:
    out = market_pb2.Candle(open=c.open, high=c.high, low=c.low, close=c.close, volume=c.volume)
    time_out(c.time, out.time)
    return out


def forecast_out(f: fg.Forecast) -> forecast_pb.Forecast:
    out = forecast_pb.Forecast(
        symbol=f.symbol,
        timeframe=timeframe_value(f.timeframe),
        horizon=f.horizon,
        method=forecast_pb.ForecastMethod.ValueType(enum_value(METHOD, f.method)),
        model_version=f.model_version,
        cached=f.cached,
    )
    for p in f.points:
        point = out.points.add(value=p.value)
        time_out(p.time, point.time)
        point.intervals.extend(
            forecast_pb.PredictionInterval(level=i.level, lower=i.lower, upper=i.upper) for i in p.intervals
        )
    time_out(f.last_candle_time, out.last_candle_time)
    time_out(f.create_time, out.create_time)
    return out


def regime_out(r: fg.RegimeState) -> regime_pb.RegimeState:
    out = regime_pb.RegimeState(
        symbol=r.symbol,
        timeframe=timeframe_value(r.timeframe),
        regime=_regime(r.regime),
        confidence=r.confidence,
        probabilities=[
            regime_pb.RegimeProbability(regime=_regime(p.regime), probability=p.probability)
            for p in r.probabilities
        ],
        model_version=r.model_version,
    )
    for h in r.history:
        segment = out.history.add(regime=_regime(h.regime), bars=h.bars, mean_probability=h.mean_probability)
        time_out(h.start_time, segment.start_time)
        time_out(h.end_time, segment.end_time)
    time_out(r.since_time, out.since_time)
    time_out(r.last_candle_time, out.last_candle_time)
    return out


def direction_label(value: int) -> str:
    """A request's trade direction as "buy" / "sell", "" when unset."""
    if value == regime_pb.SIGNAL_SIDE_BUY:
        return "buy"
    return "sell" if value == regime_pb.SIGNAL_SIDE_SELL else ""


def score_out(sc: fg.SignalScore) -> regime_rr.ScoreSignalResponse:
    return regime_rr.ScoreSignalResponse(
        symbol=sc.symbol,
        side=regime_pb.SIGNAL_SIDE_BUY if sc.side == "buy" else regime_pb.SIGNAL_SIDE_SELL,
        score=sc.probability,
        expected_return=sc.expected_return,
        regime=_regime(sc.regime),
        edge=sc.edge,
        model_version=sc.model_version,
        horizon=sc.horizon,
        features=[regime_pb.ScoreFeature(name=n, contribution=c) for n, c in sc.features],
    )


def _regime(label: str) -> regime_pb.Regime.ValueType:
    return regime_pb.Regime.ValueType(enum_value(REGIME_ENUM, label))


def patterns_out(d: fg.PatternDetection) -> pattern_pb.PatternDetection:
    out = pattern_pb.PatternDetection(
        symbol=d.symbol, timeframe=timeframe_value(d.timeframe), model_version=d.model_version, bars=d.bars
    )
    for p in d.patterns:
        hit = out.patterns.add(
            pattern_type=p.pattern_type,
            confidence=p.confidence,
            direction=pattern_pb.PatternDirection.ValueType(enum_value(DIRECTION, p.direction)),
        )
        time_out(p.start_time, hit.start_time)
        time_out(p.end_time, hit.end_time)
    time_out(d.window_start_time, out.window_start_time)
    time_out(d.window_end_time, out.window_end_time)
    return out


def passage_out(p: fg.Passage) -> rag_pb.Passage:
    out = rag_pb.Passage(
        document_id=p.document_id,
        chunk_index=p.chunk_index,
        title=p.title,
        text=p.text,
        score=p.score,
        source=p.source,
        symbol=p.symbol,
        tags=list(p.tags),
    )
    time_out(p.publish_time, out.publish_time)
    return out


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
