"""Grounding: what the analyst gathers from the mesh before it answers. An outbound gRPC client.

    grounder = Grounder(GroundingSettings.from_env())
    await grounder.start()
    gathered = await grounder.gather("EURUSD", "Should I buy?", timeframe=0)   # 0: H1, else D1
    await grounder.close()

Five sources, fetched at once over gRPC:

| source | service | RPC |
|---|---|---|
| `candles` | data | `GetSymbolStats` (H1 by default; D1 when the symbol has no H1 candles) |
| `forecast` | forecast | `GetForecast` (horizon `forecast_horizon`, with the 80/95 % intervals) |
| `regime` | regime | `GetRegime` |
| `pattern` | pattern | `DetectSymbolPatterns` |
| `rag` | rag | `QueryKnowledgeBase` (the question, passages about the symbol or about no symbol) |

Each call's deadline is `timeout_seconds`, bounded by `deadline_share` of what is left of the
caller's deadline (`services.runtime.deadline.remaining`), so the answer keeps time to be written.
A source that fails for any reason (down, not built yet, no model yet, too slow) is returned in
`Gathered.unavailable` with its status code and message, and the analysis goes on without it. The one
exception: Data's NOT_FOUND for the symbol itself, which fails the analysis with NOT_FOUND.

Addresses come from the service registry: `KITRADING_<NAME>_HOST` (else `KITRADING_SERVICE_HOST`,
else 127.0.0.1) and `KITRADING_<NAME>_PORT` (else the registry's default port).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from kitrading import mesh
from services.runtime.addresses import service_target
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
from services.runtime.config import env_float, env_int, env_str
from services.runtime.deadline import remaining
from services.runtime.errors import NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

CANDLES, FORECAST, REGIME, PATTERN, RAG = "candles", "forecast", "regime", "pattern", "rag"
#: Source name -> the registry name of the service that answers it, in gathering order.
SOURCE_SERVICES: dict[str, str] = {
    CANDLES: "data",
    FORECAST: "forecast",
    REGIME: "regime",
    PATTERN: "pattern",
    RAG: "rag",
}
#: Sources asked for the symbol's timeframe (asked again for D1 after the candles fell back to it).
TIMEFRAME_SOURCES = (FORECAST, REGIME, PATTERN)

Timeframe: TypeAlias = market_pb2.Timeframe.ValueType
DEFAULT_TIMEFRAME = market_pb2.TIMEFRAME_H1
FALLBACK_TIMEFRAME = market_pb2.TIMEFRAME_D1

#: Reconnect quickly to a service that comes back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True, slots=True)
class GroundingSettings:
    """Where the sources live and how long the analyst waits for them (env names in docs/llm.md)."""

    #: `host:port` by registry service name (`data`, `forecast`, `regime`, `pattern`, `rag`).
    targets: Mapping[str, str] = field(default_factory=dict)
    #: Deadline of each source's call, in seconds.
    timeout_seconds: float = 3.0
    #: Share of the caller's remaining deadline that gathering may use; the rest is for the answer.
    deadline_share: float = 0.5
    forecast_horizon: int = 24
    #: Bars summarised by the candle statistics.
    candle_lookback: int = 100
    #: Knowledge-base passages asked for.
    passages: int = 5

    def target(self, service: str) -> str:
        return self.targets.get(service) or service_target(service)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GroundingSettings:
        return cls(
            targets={name: service_target(name, env) for name in SOURCE_SERVICES.values()},
            timeout_seconds=env_float(
                "KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", 3.0, minimum=0.05, maximum=600.0, env=env
            ),
            forecast_horizon=env_int("KITRADING_LLM_FORECAST_HORIZON", 24, minimum=1, maximum=720, env=env),
            candle_lookback=env_int("KITRADING_LLM_CANDLE_LOOKBACK", 100, minimum=2, maximum=10_000, env=env),
            passages=env_int("KITRADING_LLM_PASSAGES", 5, minimum=1, maximum=50, env=env),
        )


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """A source that did not answer: its name, the gRPC status code name and the message."""

    source: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Gathered:
    """What the mesh answered for one analysis (the services' own messages, unconverted)."""

    symbol: str
    #: The timeframe the figures are for (market_pb2.Timeframe): the requested one, or D1 after fallback.
    timeframe: Timeframe
    stats: data_rr.GetSymbolStatsResponse | None = None
    forecast: forecast_pb.Forecast | None = None
    regime: regime_pb.RegimeState | None = None
    patterns: pattern_pb.PatternDetection | None = None
    passages: tuple[rag_pb.Passage, ...] = ()
    #: Sources that failed, in SOURCE_SERVICES order.
    unavailable: tuple[SourceFailure, ...] = ()
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    gather_ms: float = 0.0

    def failed(self, source: str) -> SourceFailure | None:
        return next((u for u in self.unavailable if u.source == source), None)


@dataclass(frozen=True, slots=True)
class _Budget:
    """Per-call deadline: `per_call` seconds, never past `until` (monotonic)."""

    per_call: float
    until: float

    def timeout(self) -> float:
        return max(0.0, min(self.per_call, self.until - time.monotonic()))


class Grounder:
    """Gathers the grounding of one analysis from the mesh (see the module docstring)."""

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
            channel = grpc.aio.insecure_channel(self.settings.target(service), options=list(CHANNEL_OPTIONS))
            self._channels[service] = channel
        return channel

    def _budget(self) -> _Budget:
        per_call = self.settings.timeout_seconds
        left = remaining(math.inf)
        share = per_call if math.isinf(left) else min(per_call, left * self.settings.deadline_share)
        return _Budget(per_call=per_call, until=time.monotonic() + share)

    async def gather(
        self, symbol: str, question: str, timeframe: Timeframe = market_pb2.TIMEFRAME_UNSPECIFIED
    ) -> Gathered:
        """Every source at once; NotFound when Data does not know the symbol (see the module docstring).

        `timeframe` 0 (unset) means H1 with a fallback to D1 when the symbol has no H1 candles;
        an explicit timeframe is used as given.
        """
        started = time.perf_counter()
        budget = self._budget()
        chosen = timeframe or DEFAULT_TIMEFRAME
        tasks: dict[str, asyncio.Task[Any]] = {}
        try:
            tasks[RAG] = _spawn(RAG, self._passages(symbol, question, budget))
            tasks.update(self._timeframe_tasks(symbol, chosen, budget))
            stats = await self._candles(symbol, chosen, budget, fallback=not timeframe)
            used = stats.timeframe if isinstance(stats, data_rr.GetSymbolStatsResponse) else chosen
            if used != chosen:  # the candles fell back to D1: ask the other sources about D1 too
                await _settle([tasks.pop(name) for name in TIMEFRAME_SOURCES], cancel=True)
                tasks.update(self._timeframe_tasks(symbol, used, budget))
            outcomes: dict[str, object] = {CANDLES: stats}
            for name, task in tasks.items():
                outcomes[name] = await task
        finally:
            await _settle(list(tasks.values()), cancel=True)
        failures: list[SourceFailure] = []
        for name in SOURCE_SERVICES:
            outcome = outcomes[name]
            if isinstance(outcome, SourceFailure):
                log.info("grounding source %s unavailable: %s %s", name, outcome.code, outcome.reason)
                failures.append(outcome)
        return Gathered(
            symbol=symbol,
            timeframe=used,
            stats=_ok(outcomes[CANDLES], data_rr.GetSymbolStatsResponse),
            forecast=_ok(outcomes[FORECAST], forecast_pb.Forecast),
            regime=_ok(outcomes[REGIME], regime_pb.RegimeState),
            patterns=_ok(outcomes[PATTERN], pattern_pb.PatternDetection),
            passages=tuple(_ok(outcomes[RAG], tuple) or ()),
            unavailable=tuple(failures),
            gather_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _timeframe_tasks(
        self, symbol: str, timeframe: Timeframe, budget: _Budget
    ) -> dict[str, asyncio.Task[Any]]:
        return {
            FORECAST: _spawn(FORECAST, self._forecast(symbol, timeframe, budget)),
            REGIME: _spawn(REGIME, self._regime(symbol, timeframe, budget)),
            PATTERN: _spawn(PATTERN, self._patterns(symbol, timeframe, budget)),
        }

    # -- one call per source ----------------------------------------------------------------------

    async def _candles(
        self, symbol: str, timeframe: Timeframe, budget: _Budget, *, fallback: bool
    ) -> data_rr.GetSymbolStatsResponse | SourceFailure:
        stub = data_grpc.DataServiceStub(self._channel("data"))

        async def stats(frame: Timeframe) -> data_rr.GetSymbolStatsResponse:
            request = data_rr.GetSymbolStatsRequest(
                symbol=symbol, timeframe=frame, lookback=self.settings.candle_lookback
            )
            response: data_rr.GetSymbolStatsResponse = await stub.GetSymbolStats(
                request, timeout=_positive(budget.timeout())
            )
            return response

        try:
            return await stats(timeframe)
        except grpc.aio.AioRpcError as exc:
            error = error_from_rpc(exc)
            if error.reason == "SYMBOL_NOT_FOUND" or (
                error.code is grpc.StatusCode.NOT_FOUND and error.reason != "CANDLES_NOT_FOUND"
            ):
                raise NotFound(
                    f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
                ) from None
            if not (error.reason == "CANDLES_NOT_FOUND" and fallback and timeframe != FALLBACK_TIMEFRAME):
                return SourceFailure(CANDLES, error.code.name, error.message)
        return await _attempt(CANDLES, lambda: stats(FALLBACK_TIMEFRAME))

    async def _forecast(self, symbol: str, timeframe: Timeframe, budget: _Budget) -> object:
        stub = forecast_grpc.ForecastServiceStub(self._channel("forecast"))
        request = forecast_rr.GetForecastRequest(
            symbol=symbol, timeframe=timeframe, horizon=self.settings.forecast_horizon
        )

        async def call() -> forecast_pb.Forecast:
            response = await stub.GetForecast(request, timeout=_positive(budget.timeout()))
            return response.forecast

        return await _attempt(FORECAST, call)

    async def _regime(self, symbol: str, timeframe: Timeframe, budget: _Budget) -> object:
        stub = regime_grpc.RegimeServiceStub(self._channel("regime"))
        request = regime_rr.GetRegimeRequest(symbol=symbol, timeframe=timeframe)

        async def call() -> regime_pb.RegimeState:
            response = await stub.GetRegime(request, timeout=_positive(budget.timeout()))
            return response.state

        return await _attempt(REGIME, call)

    async def _patterns(self, symbol: str, timeframe: Timeframe, budget: _Budget) -> object:
        stub = pattern_grpc.PatternServiceStub(self._channel("pattern"))
        request = pattern_rr.DetectSymbolPatternsRequest(symbol=symbol, timeframe=timeframe)

        async def call() -> pattern_pb.PatternDetection:
            response = await stub.DetectSymbolPatterns(request, timeout=_positive(budget.timeout()))
            return response.detection

        return await _attempt(PATTERN, call)

    async def _passages(self, symbol: str, question: str, budget: _Budget) -> object:
        stub = rag_grpc.RagServiceStub(self._channel("rag"))
        request = rag_rr.QueryKnowledgeBaseRequest(
            query=question[:2000], top_k=self.settings.passages, symbol=symbol
        )

        async def call() -> tuple[rag_pb.Passage, ...]:
            response = await stub.QueryKnowledgeBase(request, timeout=_positive(budget.timeout()))
            return tuple(response.passages)

        return await _attempt(RAG, call)


async def _attempt(source: str, call: Callable[[], Awaitable[T]]) -> T | SourceFailure:
    """The call's result, or a SourceFailure for any error (cancellation still propagates)."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc(exc)
        return SourceFailure(source, error.code.name, error.message)
    except Exception as exc:  # a bug or a broken channel must not fail the whole analysis
        log.warning("grounding source %s failed", source, exc_info=exc)
        return SourceFailure(source, "INTERNAL", f"{type(exc).__name__}: {exc}")


def _spawn(name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    return asyncio.create_task(coro, name=f"grounding-{name}")


async def _settle(tasks: list[asyncio.Task[Any]], *, cancel: bool) -> None:
    """Cancel (when asked) and wait for `tasks`, so none is left running or unobserved."""
    for task in tasks:
        if cancel and not task.done():
            task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _positive(seconds: float) -> float:
    """gRPC treats a 0 timeout as none at all: the smallest real deadline instead."""
    return max(seconds, 0.001)


def _ok(outcome: object, kind: type[T]) -> T | None:
    return outcome if isinstance(outcome, kind) else None
