"""The grounding fan-out (plain Python, no gRPC): every source at once, failures and timeouts become
`unavailable`, the caller's deadline is shared, the candles fall back to D1."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from services.llm import figures as fg
from services.llm.grounding import Gathered, Grounder, SourceError, grounding_of, trade_sides
from services.llm.grounding_settings import GroundingSettings
from services.llm.prompt import PromptLimits, build_messages, format_market_data
from services.runtime.deadline import set_deadline
from services.runtime.errors import NotFound

T0 = datetime(2024, 6, 3, 10, tzinfo=UTC)


def stats(timeframe: str) -> fg.SymbolStats:
    candle = fg.Candle(time=T0, open=1.08, high=1.09, low=1.07, close=1.085, volume=10.0)
    return fg.SymbolStats(
        symbol="EURUSD",
        timeframe=timeframe,
        last_candle=candle,
        bars=100,
        change_percent=0.42,
        volatility=0.0015,
        high=1.0912,
        low=1.0801,
        mean_close=1.084,
    )


def forecast(timeframe: str) -> fg.Forecast:
    point = fg.ForecastPoint(
        time=T0,
        value=1.09,
        intervals=(fg.PredictionInterval(80, 1.08, 1.1), fg.PredictionInterval(95, 1.07, 1.11)),
    )
    return fg.Forecast("EURUSD", timeframe, 1, (point,), method="NHITS", model_version="nhits-v7")


@dataclass
class FakeSources:
    """Answers at once unless `delays` (seconds) or `errors` (raised) say otherwise; records the calls."""

    delays: Mapping[str, float] = field(default_factory=dict)
    errors: Mapping[str, Exception] = field(default_factory=dict)
    #: Timeframes that have candles; asking another one raises CANDLES_NOT_FOUND.
    candle_frames: tuple[str, ...] = ("H1", "D1")
    calls: list[tuple[str, str, float]] = field(default_factory=list)
    #: The directions the last signal-score call asked for.
    sides: tuple[str, ...] = ()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def _enter(self, source: str, timeframe: str, deadline: float) -> None:
        self.calls.append((source, timeframe, deadline))
        await asyncio.sleep(self.delays.get(source, 0.0))
        error = self.errors.get(source)
        if error is not None:
            raise error

    async def symbol_stats(
        self, symbol: str, timeframe: str, *, lookback: int, deadline: float
    ) -> fg.SymbolStats:
        await self._enter("candles", timeframe, deadline)
        if symbol == "NOPE":
            raise SourceError("NOT_FOUND", f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND")
        if timeframe not in self.candle_frames:
            raise SourceError("NOT_FOUND", f"no {timeframe} candles", reason="CANDLES_NOT_FOUND")
        return stats(timeframe)

    async def forecast(self, symbol: str, timeframe: str, *, horizon: int, deadline: float) -> fg.Forecast:
        await self._enter("forecast", timeframe, deadline)
        return forecast(timeframe)

    async def regime(self, symbol: str, timeframe: str, *, deadline: float) -> fg.RegimeState:
        await self._enter("regime", timeframe, deadline)
        return fg.RegimeState(symbol, timeframe, "BULL_TREND", 0.82)

    async def signal_scores(
        self, symbol: str, timeframe: str, sides: tuple[str, ...], *, deadline: float
    ) -> tuple[fg.SignalScore, ...]:
        await self._enter("score", timeframe, deadline)
        self.sides = sides
        return tuple(fg.SignalScore(symbol, side, 0.4, 0.001, "BULL_TREND", edge=False) for side in sides)

    async def patterns(self, symbol: str, timeframe: str, *, deadline: float) -> fg.PatternDetection:
        await self._enter("pattern", timeframe, deadline)
        hit = fg.DetectedPattern("double_bottom", 0.71, direction="BULLISH")
        return fg.PatternDetection(symbol, timeframe, (hit,))

    async def passages(
        self, symbol: str, query: str, *, top_k: int, deadline: float
    ) -> tuple[fg.Passage, ...]:
        await self._enter("rag", "", deadline)
        return (fg.Passage("doc-1", 0, "ECB note", "Rates unchanged.", 0.87),)


def grounder(sources: FakeSources, timeout: float = 2.0) -> Grounder:
    return Grounder(GroundingSettings(timeout_seconds=timeout), sources)


async def test_every_source_at_once_and_its_figures() -> None:
    sources = FakeSources(delays={name: 0.2 for name in ("candles", "forecast", "regime", "pattern", "rag")})
    started = time.perf_counter()
    gathered = await grounder(sources).gather("EURUSD", "Buy?")
    assert time.perf_counter() - started < 0.35  # all at once, not one after the other
    assert gathered.timeframe == "H1" and not gathered.unavailable and gathered.gather_ms > 150
    assert gathered.stats == stats("H1") and gathered.forecast == forecast("H1")
    assert gathered.regime is not None and gathered.regime.regime == "BULL_TREND"
    assert [p.title for p in gathered.passages] == ["ECB note"]


async def test_failed_slow_and_broken_sources_are_named_not_raised() -> None:
    sources = FakeSources(
        delays={"rag": 10.0},
        errors={"regime": SourceError("FAILED_PRECONDITION", "no model yet"), "pattern": KeyError("bug")},
    )
    started = time.perf_counter()
    gathered = await grounder(sources, timeout=0.2).gather("EURUSD", "Buy?")
    assert time.perf_counter() - started < 1.0  # bounded by the per-source timeout
    assert [(u.source, u.code) for u in gathered.unavailable] == [
        ("regime", "FAILED_PRECONDITION"),
        ("pattern", "INTERNAL"),
        ("rag", "DEADLINE_EXCEEDED"),
    ]
    assert gathered.unavailable[0].reason == "no model yet"
    assert gathered.regime is None and gathered.patterns is None and gathered.passages == ()
    assert gathered.stats is not None and gathered.forecast is not None


async def test_a_broken_candle_source_is_named_too() -> None:
    gathered = await grounder(FakeSources(errors={"candles": RuntimeError("bug")})).gather("EURUSD", "Buy?")
    assert gathered.failed("candles") is not None and gathered.stats is None
    assert gathered.timeframe == "H1" and gathered.forecast is not None


async def test_the_caller_deadline_is_shared() -> None:
    sources = FakeSources(delays={"forecast": 10.0})
    set_deadline(1.0)  # what the runtime does for an RPC with a 1 s deadline
    try:
        started = time.perf_counter()
        gathered = await grounder(sources, timeout=20.0).gather("EURUSD", "Buy?")
    finally:
        set_deadline(None)
    took = time.perf_counter() - started
    assert 0.4 < took < 0.8  # half of the caller's deadline, the rest is for the answer
    assert [(u.source, u.code) for u in gathered.unavailable] == [("forecast", "DEADLINE_EXCEEDED")]
    assert all(deadline <= 0.5 for _, _, deadline in sources.calls)


async def test_candles_fall_back_to_daily_and_the_others_follow() -> None:
    sources = FakeSources(candle_frames=("D1",))
    gathered = await grounder(sources).gather("GOOG", "Buy?")
    assert gathered.timeframe == "D1" and gathered.stats is not None and not gathered.unavailable
    assert gathered.forecast is not None and gathered.forecast.timeframe == "D1"
    assert gathered.patterns is not None and gathered.patterns.timeframe == "D1"
    asked = [(source, frame) for source, frame, _ in sources.calls]
    assert ("candles", "H1") in asked and ("candles", "D1") in asked and ("regime", "D1") in asked

    explicit = await grounder(FakeSources(candle_frames=("D1",))).gather("GOOG", "Buy?", "H1")
    assert explicit.timeframe == "H1" and explicit.stats is None  # asked for H1: no fallback
    assert [(u.source, u.code) for u in explicit.unavailable] == [("candles", "NOT_FOUND")]


async def test_unknown_symbol_fails_the_analysis() -> None:
    with pytest.raises(NotFound) as err:
        await grounder(FakeSources()).gather("NOPE", "Buy?")
    assert err.value.reason == "SYMBOL_NOT_FOUND"


async def test_grounding_of_states_the_figures_in_the_prompts_terms() -> None:
    gathered = await grounder(FakeSources(errors={"rag": SourceError("UNAVAILABLE", "down")})).gather(
        "EURUSD", "Buy?"
    )
    g = grounding_of(gathered)
    assert g.candles is not None and g.candles.volatility_pct == pytest.approx(0.15)  # a fraction -> %
    assert (g.candles.last_close, g.candles.timeframe, g.candles.last_time) == (
        1.085,
        "H1",
        "2024-06-03T10:00:00Z",
    )
    assert (
        g.forecast is not None
        and g.forecast.points[0].lo95 == 1.07
        and g.forecast.model_version == "nhits-v7"
    )
    assert g.regime is not None and (g.regime.name, g.regime.probability) == ("bull trend", 0.82)
    assert [(p.name, p.direction) for p in g.patterns] == [("double bottom", "bullish")]
    assert g.unavailable == ("rag",) and g.passages == ()
    system = build_messages("Buy?", g, nonce="0" * 16)[0]["content"]
    assert "Market regime: bull trend" in system and "double bottom bullish" in system


def test_grounding_of_without_intervals_or_figures() -> None:
    point = fg.ForecastPoint(time=None, value=1.0)
    g = grounding_of(
        Gathered(
            symbol="EURUSD",
            timeframe="H1",
            forecast=fg.Forecast("EURUSD", "H1", 1, (point,)),
            regime=fg.RegimeState("EURUSD", "H1", "", 0.0),  # the regime service had no state
        )
    )
    assert (
        g.forecast is not None
        and math.isnan(g.forecast.points[0].lo80)
        and g.forecast.points[0].timestamp == ""
    )
    assert g.regime is None and g.candles is None


@pytest.mark.parametrize(
    ("question", "direction", "sides"),
    [
        ("Should I buy EURUSD now?", "", ("buy",)),
        ("Is it time to go short?", "", ("sell",)),
        ("What is the outlook?", "", ("buy", "sell")),
        ("Buy or sell?", "", ("buy", "sell")),
        ("What is the outlook?", "sell", ("sell",)),
    ],
)
def test_the_scored_direction_comes_from_the_request_or_the_question(
    question: str, direction: str, sides: tuple[str, ...]
) -> None:
    assert trade_sides(question, direction) == sides


async def test_the_signal_score_of_the_asked_direction_is_in_the_prompt() -> None:
    sources = FakeSources()
    gathered = await grounder(sources).gather("EURUSD", "Should I buy?")
    assert sources.sides == ("buy",) and [s.side for s in gathered.scores] == ["buy"]
    text = format_market_data(grounding_of(gathered), PromptLimits())
    assert "Market regime: bull trend" in text
    assert "target first: buy 40%; no edge over the base rate" in text


async def test_a_failed_score_keeps_the_regime_and_is_not_listed() -> None:
    sources = FakeSources(errors={"score": SourceError("FAILED_PRECONDITION", "too few bars")})
    gathered = await grounder(sources).gather("EURUSD", "Buy?")
    assert gathered.regime is not None and gathered.scores == () and not gathered.unavailable
