"""Grounding: the fan-out that gathers what the analyst states before it answers. Plain Python.

    grounder = Grounder(settings, MeshSources(settings))     # sources.py: the five gRPC clients
    await grounder.start()
    gathered = await grounder.gather("EURUSD", "Should I buy?")   # timeframe "": H1, else D1
    messages = build_messages(question, grounding_of(gathered))

The five sources are asked at once. Each call may take `timeout_seconds`, and never more than
`deadline_share` of what is left of the caller's deadline (`services.runtime.deadline.remaining`),
so the answer keeps time to be written. A source that fails for any reason (down, not built yet, no
model yet, too slow, a bug) is returned in `Gathered.unavailable` with its status code and message,
and the analysis goes on without it. The one exception: Data's NOT_FOUND for the symbol itself,
which fails the analysis with NotFound. When the candles fell back to D1 (no timeframe asked, no H1
candles), the forecast, regime and patterns are asked again for D1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from services.llm import prompt
from services.llm.figures import (
    Forecast,
    ForecastPoint,
    Passage,
    PatternDetection,
    RegimeState,
    SignalScore,
    SymbolStats,
)
from services.llm.grounding_settings import (
    CANDLES,
    FORECAST,
    PATTERN,
    RAG,
    REGIME,
    SOURCE_SERVICES,
    GroundingSettings,
)
from services.runtime.deadline import remaining
from services.runtime.errors import NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The regime service's signal scores: asked beside REGIME; a failure is logged, not listed (the
#: regime figures say whether the service answered).
SCORE = "score"
#: Sources asked for the symbol's timeframe (asked again for D1 after the candles fell back to it).
TIMEFRAME_SOURCES = (FORECAST, REGIME, PATTERN, SCORE)
#: Words of a question that name a trade direction.
_BUY_WORDS = frozenset({"buy", "long", "buying", "bullish"})
_SELL_WORDS = frozenset({"sell", "short", "selling", "bearish"})
DEFAULT_TIMEFRAME = "H1"
FALLBACK_TIMEFRAME = "D1"
#: The shortest deadline a call gets: a call is never sent with no deadline at all.
MIN_TIMEOUT_SECONDS = 0.001


class SourceError(Exception):
    """A source's call failed: the status code name, the ErrorInfo reason ("" if none) and the message."""

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason


class Sources(Protocol):
    """The calls of the five sources (sources.py over gRPC; a fake in tests).

    `deadline` is how many seconds the call may take (the server is told). A failed call raises
    SourceError.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def symbol_stats(
        self, symbol: str, timeframe: str, *, lookback: int, deadline: float
    ) -> SymbolStats: ...

    async def forecast(self, symbol: str, timeframe: str, *, horizon: int, deadline: float) -> Forecast: ...

    async def regime(self, symbol: str, timeframe: str, *, deadline: float) -> RegimeState: ...

    async def patterns(self, symbol: str, timeframe: str, *, deadline: float) -> PatternDetection: ...

    async def signal_scores(
        self, symbol: str, timeframe: str, sides: tuple[str, ...], *, deadline: float
    ) -> tuple[SignalScore, ...]: ...

    async def passages(
        self, symbol: str, query: str, *, top_k: int, deadline: float
    ) -> tuple[Passage, ...]: ...


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """A source that did not answer: its name, the status code name and the message."""

    source: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Gathered:
    """What the mesh answered for one analysis."""

    symbol: str
    #: The timeframe the figures are for: the requested one, or D1 after the fallback.
    timeframe: str
    stats: SymbolStats | None = None
    forecast: Forecast | None = None
    regime: RegimeState | None = None
    patterns: PatternDetection | None = None
    passages: tuple[Passage, ...] = ()
    #: The regime service's scores of a trade in the asked direction(s).
    scores: tuple[SignalScore, ...] = ()
    #: Sources that failed, in SOURCE_SERVICES order.
    unavailable: tuple[SourceFailure, ...] = ()
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    gather_ms: float = 0.0

    def failed(self, source: str) -> SourceFailure | None:
        return next((u for u in self.unavailable if u.source == source), None)


@dataclass(frozen=True, slots=True)
class Budget:
    """Per-call deadline: `per_call` seconds, never past `until` (monotonic)."""

    per_call: float
    until: float

    def timeout(self) -> float:
        return max(MIN_TIMEOUT_SECONDS, min(self.per_call, self.until - time.monotonic()))


class Grounder:
    """Gathers the grounding of one analysis from `sources` (see the module docstring)."""

    def __init__(self, settings: GroundingSettings, sources: Sources) -> None:
        self.settings = settings
        self.sources = sources

    async def start(self) -> None:
        await self.sources.start()

    async def close(self) -> None:
        await self.sources.close()

    def budget(self) -> Budget:
        """The deadline of every call of one analysis, from the settings and the caller's deadline."""
        per_call = self.settings.timeout_seconds
        left = remaining(math.inf)
        share = per_call if math.isinf(left) else min(per_call, left * self.settings.deadline_share)
        return Budget(per_call=per_call, until=time.monotonic() + share)

    async def gather(self, symbol: str, question: str, timeframe: str = "", direction: str = "") -> Gathered:
        """Every source at once; NotFound when Data does not know the symbol (see the module docstring).

        `timeframe` "" means H1 with a fallback to D1 when the symbol has no H1 candles; an explicit
        timeframe (`H1`, `D1`...) is used as given. `direction` ("buy", "sell") is the trade the
        signal score is for; "" reads it from the question, else both directions are scored.
        """
        sides = trade_sides(question, direction)
        started = time.perf_counter()
        budget = self.budget()
        chosen = timeframe or DEFAULT_TIMEFRAME
        s = self.settings
        tasks: dict[str, asyncio.Task[Any]] = {}
        try:
            tasks[RAG] = _ask(
                RAG, budget, lambda t: self.sources.passages(symbol, question, top_k=s.passages, deadline=t)
            )
            tasks.update(self._timeframe_tasks(symbol, chosen, budget, sides))
            stats = await self._candles(symbol, chosen, budget, fallback=not timeframe)
            used = (stats.timeframe or chosen) if isinstance(stats, SymbolStats) else chosen
            if used != chosen:  # the candles fell back to D1: ask the other sources about D1 too
                await _settle([tasks.pop(name) for name in TIMEFRAME_SOURCES])
                tasks.update(self._timeframe_tasks(symbol, used, budget, sides))
            outcomes: dict[str, object] = {CANDLES: stats}
            for name, task in tasks.items():
                outcomes[name] = await task
        finally:
            await _settle(list(tasks.values()))
        failures: list[SourceFailure] = []
        for name in SOURCE_SERVICES:
            outcome = outcomes[name]
            if isinstance(outcome, SourceFailure):
                log.info("grounding source %s unavailable: %s %s", name, outcome.code, outcome.reason)
                failures.append(outcome)
        passages, scores = outcomes[RAG], outcomes[SCORE]
        if isinstance(scores, SourceFailure):
            log.info("signal scores unavailable: %s %s", scores.code, scores.reason)
        return Gathered(
            symbol=symbol,
            timeframe=used,
            stats=_ok(outcomes[CANDLES], SymbolStats),
            forecast=_ok(outcomes[FORECAST], Forecast),
            regime=_ok(outcomes[REGIME], RegimeState),
            patterns=_ok(outcomes[PATTERN], PatternDetection),
            passages=passages if isinstance(passages, tuple) else (),
            scores=scores if isinstance(scores, tuple) else (),
            unavailable=tuple(failures),
            gather_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _timeframe_tasks(
        self, symbol: str, timeframe: str, budget: Budget, sides: tuple[str, ...]
    ) -> dict[str, asyncio.Task[Any]]:
        horizon = self.settings.forecast_horizon
        src = self.sources
        return {
            SCORE: _ask(SCORE, budget, lambda t: src.signal_scores(symbol, timeframe, sides, deadline=t)),
            FORECAST: _ask(
                FORECAST, budget, lambda t: src.forecast(symbol, timeframe, horizon=horizon, deadline=t)
            ),
            REGIME: _ask(REGIME, budget, lambda t: src.regime(symbol, timeframe, deadline=t)),
            PATTERN: _ask(PATTERN, budget, lambda t: src.patterns(symbol, timeframe, deadline=t)),
        }

    async def _candles(
        self, symbol: str, timeframe: str, budget: Budget, *, fallback: bool
    ) -> SymbolStats | SourceFailure:
        lookback = self.settings.candle_lookback

        def stats(frame: str) -> Callable[[float], Awaitable[SymbolStats]]:
            return lambda t: self.sources.symbol_stats(symbol, frame, lookback=lookback, deadline=t)

        try:
            return await _within(budget, stats(timeframe))
        except SourceError as exc:
            if exc.reason == "SYMBOL_NOT_FOUND" or (
                exc.code == "NOT_FOUND" and exc.reason != "CANDLES_NOT_FOUND"
            ):
                raise NotFound(
                    f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
                ) from None
            if not (exc.reason == "CANDLES_NOT_FOUND" and fallback and timeframe != FALLBACK_TIMEFRAME):
                return SourceFailure(CANDLES, exc.code, exc.message)
        except Exception as exc:  # a bug or a broken channel must not fail the whole analysis
            return _failure(CANDLES, exc)
        return await _attempt(CANDLES, budget, stats(FALLBACK_TIMEFRAME))


# -- gathered figures -> the prompt's Grounding ------------------------------------------------------


def grounding_of(g: Gathered) -> prompt.Grounding:
    """The figures the prompt states; sources that failed are named in `unavailable`."""
    candles = None
    if g.stats is not None:
        s = g.stats
        last = s.last_candle
        candles = prompt.CandleStats(
            last_close=last.close if last is not None else math.nan,
            change_pct=s.change_percent,
            volatility_pct=s.volatility * 100.0,  # Data sends the std of log returns as a fraction
            high=s.high,
            low=s.low,
            bars=s.bars,
            timeframe=s.timeframe,
            last_time=_iso(last.time if last is not None else None),
        )
    forecast = None
    if g.forecast is not None:
        forecast = prompt.Forecast(
            points=tuple(_forecast_point(i + 1, p) for i, p in enumerate(g.forecast.points)),
            model_version=g.forecast.model_version,
        )
    regime = None
    if g.regime is not None and g.regime.regime:
        scores = tuple(prompt.SignalScore(s.side, s.probability, s.edge) for s in g.scores)
        regime = prompt.Regime(
            name=_words(g.regime.regime),
            probability=g.regime.confidence,
            signal_score=scores[0].probability if len(scores) == 1 else None,
            scores=scores,
        )
    patterns: tuple[prompt.PatternHit, ...] = ()
    if g.patterns is not None:
        patterns = tuple(
            prompt.PatternHit(
                name=p.pattern_type.replace("_", " "), confidence=p.confidence, direction=_words(p.direction)
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


def trade_sides(question: str, direction: str = "") -> tuple[str, ...]:
    """The directions to score: the given one, else the one the question names, else both."""
    if direction:
        return (direction,)
    words = set(re.findall(r"[a-z]+", question.lower()))
    buy, sell = bool(words & _BUY_WORDS), bool(words & _SELL_WORDS)
    if buy != sell:
        return ("buy",) if buy else ("sell",)
    return ("buy", "sell")


def _forecast_point(step: int, p: ForecastPoint) -> prompt.ForecastPoint:
    bounds = {i.level: (i.lower, i.upper) for i in p.intervals}
    lo80, hi80 = bounds.get(80, (math.nan, math.nan))
    lo95, hi95 = bounds.get(95, (math.nan, math.nan))
    return prompt.ForecastPoint(
        step=step, value=p.value, lo80=lo80, hi80=hi80, lo95=lo95, hi95=hi95, timestamp=_iso(p.time)
    )


def _words(name: str) -> str:
    """`BULL_TREND` -> `bull trend`."""
    return name.lower().replace("_", " ")


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- one call -----------------------------------------------------------------------------------------


async def _within(budget: Budget, call: Callable[[float], Awaitable[T]]) -> T:
    """`call(seconds)`, also bounded by those seconds here; DEADLINE_EXCEEDED as a SourceError."""
    seconds = budget.timeout()
    try:
        async with asyncio.timeout(seconds):
            return await call(seconds)
    except TimeoutError:
        raise SourceError("DEADLINE_EXCEEDED", f"no answer within {seconds:.3g} s") from None


async def _attempt(source: str, budget: Budget, call: Callable[[float], Awaitable[T]]) -> T | SourceFailure:
    """The call's result, or a SourceFailure for any error (cancellation still propagates)."""
    try:
        return await _within(budget, call)
    except SourceError as exc:
        return SourceFailure(source, exc.code, exc.message)
    except Exception as exc:  # a bug or a broken channel must not fail the whole analysis
        return _failure(source, exc)


def _failure(source: str, exc: Exception) -> SourceFailure:
    log.warning("grounding source %s failed", source, exc_info=exc)
    return SourceFailure(source, "INTERNAL", f"{type(exc).__name__}: {exc}")


def _ask(
    source: str, budget: Budget, call: Callable[[float], Awaitable[T]]
) -> asyncio.Task[T | SourceFailure]:
    """`_attempt` as a task of its own, so every source is asked at once."""
    return asyncio.create_task(_attempt(source, budget, call), name=f"grounding-{source}")


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel and wait for `tasks`, so none is left running or unobserved."""
    for task in tasks:
        if not task.done():
            task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _ok(outcome: object, kind: type[T]) -> T | None:
    return outcome if isinstance(outcome, kind) else None
