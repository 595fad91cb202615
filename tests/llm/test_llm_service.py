"""LlmService over real gRPC: a real Data service (embedded PostgreSQL, real candles), the real SmolLM2
model (or the fake Ollama), grounding over gRPC with the other services down, slow or faked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pytest
from fake_mesh import FORECAST_VERSION, PASSAGE_TEXT, PATTERN_TYPE, FakeMesh, closed_port
from fake_ollama import FakeOllama, split_tokens
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading.cli.main import main as cli_main
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import resources_pb2 as data_pb
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from kitrading.llm.v1 import request_response_pb2 as rr
from kitrading.llm.v1 import resources_pb2 as pb
from kitrading.llm.v1 import service_pb2_grpc
from services.data import convert as data_cv
from services.data.app import DataApp
from services.data.samples import SAMPLES, load_candles
from services.llm.app import LlmApp
from services.llm.embedded import LlamaCppEngine
from services.llm.engine import ChatMessage, EngineInfo, Token
from services.llm.grounding import Grounder
from services.llm.grounding_settings import GroundingSettings
from services.llm.settings import LlmSettings, OllamaSettings
from services.llm.sources import MeshSources
from services.runtime.errors import NotFound
from tests.conftest import PostgresForTests
from tests.data.conftest import make_settings
from tests.grpc_helpers import details, start_server

H1, D1 = market_pb2.TIMEFRAME_H1, market_pb2.TIMEFRAME_D1
BARS = 150  # real candles stored per symbol
QUESTION = "Should I buy or sell?"
LONG_QUESTION = "List the numbers from 1 to 200, one per line, then explain the trend."
MISSING = {
    pb.CONTEXT_SOURCE_FORECAST,
    pb.CONTEXT_SOURCE_REGIME,
    pb.CONTEXT_SOURCE_PATTERNS,
    pb.CONTEXT_SOURCE_KNOWLEDGE,
}


class SharedEngine:
    """The session's embedded engine (tests/llm/conftest.py): an app's stop() must not close it."""

    def __init__(self, inner: LlamaCppEngine) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        pass

    def info(self) -> EngineInfo:
        return self.inner.info()

    async def refresh(self) -> EngineInfo:
        return await self.inner.refresh()

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
    ) -> AsyncGenerator[Token, None]:
        return self.inner.stream(messages, max_tokens=max_tokens, temperature=temperature, stop=stop)


@dataclass
class Stack:
    data: data_grpc.DataServiceStub
    data_target: str
    llm: service_pb2_grpc.LlmServiceStub
    llm_target: str
    app: LlmApp
    engine: LlamaCppEngine
    channels: list[grpc.aio.Channel]


def grounding_to(data_target: str, others: str | None = None, **targets: str) -> GroundingSettings:
    """Data at `data_target`; forecast/regime/pattern/rag at `others` (default: a port nobody serves)."""
    down = others or f"127.0.0.1:{closed_port()}"
    base = {"data": data_target, "forecast": down, "regime": down, "pattern": down, "rag": down}
    return GroundingSettings(targets={**base, **targets}, timeout_seconds=2.0)


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
async def data_target(postgres: PostgresForTests) -> AsyncIterator[str]:
    """A real Data service on its own database with the last BARS real candles of EURUSD (H1), GOOG (D1)."""
    name = f"test_llm_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres.url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    server = await start_server(DataApp(make_settings(postgres.database_url(name))), "data")
    candles = load_candles([s for s in SAMPLES if s.symbol in ("EURUSD", "GOOG")])
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = data_grpc.DataServiceStub(channel)
        for symbol, timeframe in (("EURUSD", H1), ("GOOG", D1)):
            await stub.CreateSymbol(
                data_rr.CreateSymbolRequest(symbol=data_pb.Symbol(symbol=symbol, active=True))
            )
            await stub.UpsertCandles(
                data_rr.UpsertCandlesRequest(
                    symbol=symbol,
                    timeframe=timeframe,
                    candles=[data_cv.candle_out(c) for c in candles[symbol][-BARS:]],
                )
            )
    yield server.target
    await server.stop(0)
    conn = await asyncpg.connect(postgres.url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture(scope="module")
async def stack(data_target: str, embedded_engine: LlamaCppEngine) -> AsyncIterator[Stack]:
    """The LLM service with the real SmolLM2 engine: one answer at a time, one waiting; Data only."""
    settings = LlmSettings(max_concurrent=1, max_queued=1, max_tokens=24, temperature=0.0)
    app = LlmApp(settings, grounding_to(data_target), engine=SharedEngine(embedded_engine))
    server = await start_server(app, "llm")
    data_channel = grpc.aio.insecure_channel(data_target)
    llm_channel = grpc.aio.insecure_channel(server.target)
    yield Stack(
        data=data_grpc.DataServiceStub(data_channel),
        data_target=data_target,
        llm=service_pb2_grpc.LlmServiceStub(llm_channel),
        llm_target=server.target,
        app=app,
        engine=embedded_engine,
        channels=[data_channel, llm_channel],
    )
    for channel in (data_channel, llm_channel):
        await channel.close()
    await server.stop(0)


async def test_stream_context_first_then_tokens_then_completion(stack: Stack) -> None:
    call = stack.llm.AnalyzeStream(rr.AnalyzeStreamRequest(symbol="EURUSD", question=QUESTION))
    messages: list[rr.AnalyzeStreamResponse] = []
    generating: list[int] = []  # llama.cpp generations running when each message arrived
    async for message in call:
        messages.append(message)
        generating.append(stack.engine.running)
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "context" and kinds[-1] == "completion"
    assert set(kinds[1:-1]) == {"token"} and len(kinds) > 3

    context = messages[0].context
    stats = await stack.data.GetSymbolStats(data_rr.GetSymbolStatsRequest(symbol="EURUSD", timeframe=H1))
    assert (context.symbol, context.timeframe) == ("EURUSD", H1)
    assert context.candle_stats.last_candle == stats.last_candle  # the real figures from Data
    assert context.candle_stats.bars == 100 and context.candle_stats.change_percent == stats.change_percent
    assert context.candle_stats.volatility == stats.volatility and context.candle_stats.high == stats.high
    assert {u.source for u in context.unavailable} == MISSING  # named, not fatal
    assert all(u.code == "UNAVAILABLE" and u.reason for u in context.unavailable)
    assert not context.HasField("forecast") and not context.passages and context.gather_ms > 0

    tokens = [m.token for m in messages[1:-1]]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert generating[1] == 1  # the first token arrived while the model was still generating
    completion = messages[-1].completion
    assert completion.completion_tokens == len(tokens) <= 24
    assert completion.prompt_tokens > 100  # the grounded prompt, as llama.cpp evaluated it
    assert completion.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert (completion.engine, completion.model) == (pb.LLM_ENGINE_EMBEDDED, "SmolLM2-135M-Instruct")
    assert 0 < completion.time_to_first_token_ms <= completion.total_ms
    assert completion.tokens_per_second > 0


async def test_unary_analyze_falls_back_to_daily_candles(stack: Stack) -> None:
    response = await stack.llm.Analyze(rr.AnalyzeRequest(symbol="GOOG", question=QUESTION, max_tokens=12))
    assert response.context.timeframe == D1  # GOOG has no H1 candles
    assert response.context.candle_stats.bars == 100
    assert response.answer.strip() and 0 < response.completion.completion_tokens <= 12
    status = await stack.llm.GetLlmStatus(rr.GetLlmStatusRequest())
    assert (status.engine, status.model, status.loaded) == (
        pb.LLM_ENGINE_EMBEDDED,
        "SmolLM2-135M-Instruct",
        True,
    )
    assert (status.max_concurrent, status.queue_depth, status.active_requests) == (1, 0, 0)
    assert status.recent_tokens_per_second > 0 and status.base_url == ""
    async with grpc.aio.insecure_channel(stack.llm_target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kitrading.llm.v1.LlmService")
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_bad_requests(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stack.llm.Analyze(rr.AnalyzeRequest(symbol="NOPE", question=QUESTION))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(unknown.value)[0] == "SYMBOL_NOT_FOUND"
    stream = stack.llm.AnalyzeStream(rr.AnalyzeStreamRequest(symbol="NOPE", question=QUESTION))
    with pytest.raises(grpc.aio.AioRpcError) as unknown_stream:
        await stream.read()
    assert unknown_stream.value.code() == grpc.StatusCode.NOT_FOUND
    for symbol, question, field in (
        ("EURUSD", "", "question"),  # the contract's rule
        ("EURUSD", "x" * 2001, "question"),
        ("EURUSD", "<|im_start|> <|im_end|>", "question"),  # empty once neutralised: the analyst's check
        ("eurusd", QUESTION, "symbol"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stack.llm.Analyze(rr.AnalyzeRequest(symbol=symbol, question=question))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(bad.value)[1] == [field]
        bad_stream = stack.llm.AnalyzeStream(rr.AnalyzeStreamRequest(symbol=symbol, question=question))
        with pytest.raises(grpc.aio.AioRpcError) as bad_read:
            await bad_stream.read()
        assert bad_read.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_frees_the_slot_and_overflow_is_resource_exhausted(stack: Stack) -> None:
    async def status() -> rr.GetLlmStatusResponse:
        return await stack.llm.GetLlmStatus(rr.GetLlmStatusRequest())

    first = stack.llm.AnalyzeStream(
        rr.AnalyzeStreamRequest(symbol="EURUSD", question=LONG_QUESTION, max_tokens=400)
    )
    assert (await first.read()).WhichOneof("event") == "context"
    assert (await first.read()).WhichOneof("event") == "token"  # holds the only slot
    second = stack.llm.AnalyzeStream(
        rr.AnalyzeStreamRequest(symbol="EURUSD", question=QUESTION, max_tokens=8)
    )
    assert (await second.read()).WhichOneof("event") == "context"  # gathered, now waiting for the slot

    async def second_waits() -> bool:
        return (await status()).queue_depth == 1

    await wait_for(second_waits)
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stack.llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(full.value)[0] == "LLM_QUEUE_FULL" and time.perf_counter() - started < 1.0
    third = stack.llm.AnalyzeStream(rr.AnalyzeStreamRequest(symbol="EURUSD", question=QUESTION))
    with pytest.raises(grpc.aio.AioRpcError) as full_stream:
        await third.read()  # refused before any message: HTTP 429 through the gateway
    assert full_stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    first.cancel()  # the client hangs up mid-answer: generation stops, the waiting answer runs
    rest = []
    while (message := await second.read()) is not grpc.aio.EOF:
        rest.append(message)
    assert rest[-1].WhichOneof("event") == "completion" and rest[-1].completion.completion_tokens > 0

    async def idle() -> bool:
        s = await status()
        return (s.queue_depth, s.active_requests) == (0, 0) and stack.engine.running == 0

    await wait_for(idle)
    after = await stack.llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION, max_tokens=4))
    assert after.completion.completion_tokens > 0


@pytest.fixture
def slow_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(reply=" ".join(f"w{i}" for i in range(200)), token_delay=0.01) as fake:
        yield fake


async def test_ollama_engine_with_every_source(data_target: str, slow_ollama: FakeOllama) -> None:
    settings = LlmSettings(ollama=OllamaSettings(base_url=slow_ollama.url), max_concurrent=1, max_queued=0)
    async with AsyncExitStack() as stack, FakeMesh() as fake:
        server = await start_server(LlmApp(settings, grounding_to(data_target, fake.target)), "llm")
        stack.push_async_callback(server.stop, 0)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
        llm = service_pb2_grpc.LlmServiceStub(channel)

        response = await llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION, max_tokens=5))
        assert response.answer == "".join(split_tokens(slow_ollama.reply)[:5])
        assert response.completion.finish_reason == pb.FINISH_REASON_LENGTH
        assert response.completion.prompt_tokens == 26  # the fake's prompt_eval_count
        assert (
            response.completion.engine == pb.LLM_ENGINE_OLLAMA and response.completion.model == "llama3.1:70b"
        )
        context = response.context
        assert not context.unavailable
        assert context.forecast.model_version == FORECAST_VERSION and len(context.forecast.points) == 24
        assert context.regime.confidence == pytest.approx(0.82)
        assert context.pattern_detection.patterns[0].pattern_type == PATTERN_TYPE
        assert [p.text for p in context.passages] == [PASSAGE_TEXT]
        assert fake.requests["forecast"].horizon == 24 and fake.requests["rag"].query == QUESTION

        # The prompt states the gathered figures; the question stays out of the system message.
        system, user = slow_ollama.requests[-1]["messages"]
        last = context.candle_stats.last_candle.close
        assert f"last close {last:.6g}" in system["content"]
        assert FORECAST_VERSION in system["content"] and "bull trend" in system["content"]
        assert "double bottom" in system["content"] and PASSAGE_TEXT in system["content"]
        assert QUESTION not in system["content"] and QUESTION in user["content"]

        status = await llm.GetLlmStatus(rr.GetLlmStatusRequest())
        assert (status.engine, status.base_url, status.loaded) == (
            pb.LLM_ENGINE_OLLAMA,
            slow_ollama.url,
            True,
        )

        # One answer at a time and none waiting: a second is refused at once; hanging up frees the slot.
        first = llm.AnalyzeStream(rr.AnalyzeStreamRequest(symbol="EURUSD", question=QUESTION, max_tokens=200))
        await first.read()
        await first.read()
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        assert await asyncio.to_thread(slow_ollama.wait_idle, 5.0)
        assert slow_ollama.disconnected == 1

        async def idle() -> bool:
            s = await llm.GetLlmStatus(rr.GetLlmStatusRequest())
            return (s.queue_depth, s.active_requests) == (0, 0)

        await wait_for(idle)
        again = await llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION, max_tokens=3))
        assert again.completion.completion_tokens == 3


async def test_sources_down_slow_or_without_model_are_named(
    data_target: str, fake_ollama: FakeOllama
) -> None:
    settings = LlmSettings(ollama=OllamaSettings(base_url=fake_ollama.url))
    slow_and_failing = FakeMesh(
        delays={"forecast": 30.0}, failures={"regime": grpc.StatusCode.FAILED_PRECONDITION}
    )
    async with AsyncExitStack() as stack, slow_and_failing as fake:
        grounding = grounding_to(
            data_target, fake.target, pattern=f"127.0.0.1:{closed_port()}", rag=data_target
        )
        grounding = GroundingSettings(targets=grounding.targets, timeout_seconds=20.0)
        server = await start_server(LlmApp(settings, grounding), "llm")
        stack.push_async_callback(server.stop, 0)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
        llm = service_pb2_grpc.LlmServiceStub(channel)
        started = time.perf_counter()
        # A 3 s deadline: gathering may use half of it, so the slow forecast is dropped and the answer comes.
        response = await llm.Analyze(rr.AnalyzeRequest(symbol="EURUSD", question=QUESTION), timeout=3.0)
        assert time.perf_counter() - started < 3.0 and response.answer == fake_ollama.reply
        codes = {u.source: u.code for u in response.context.unavailable}
        assert codes == {
            pb.CONTEXT_SOURCE_FORECAST: "DEADLINE_EXCEEDED",  # too slow
            pb.CONTEXT_SOURCE_REGIME: "FAILED_PRECONDITION",  # no model yet
            pb.CONTEXT_SOURCE_PATTERNS: "UNAVAILABLE",  # down
            pb.CONTEXT_SOURCE_KNOWLEDGE: "UNIMPLEMENTED",  # a server without that service
        }
        assert 1000 < response.context.gather_ms < 2500
        assert response.context.candle_stats.bars == 100
        system = fake_ollama.requests[-1]["messages"][0]["content"]
        assert "Unavailable" in system and "forecast, regime, pattern, rag" in system


def mesh_grounder(settings: GroundingSettings) -> Grounder:
    return Grounder(settings, MeshSources(settings))


async def test_grounder_timeframes_and_unknown_symbol(data_target: str) -> None:
    grounder = mesh_grounder(grounding_to(data_target))
    await grounder.start()
    try:
        explicit = await grounder.gather("GOOG", QUESTION, "H1")  # explicit: no fallback
        assert explicit.stats is None and explicit.timeframe == "H1"
        failed = explicit.failed("candles")
        assert failed is not None and failed.code == "NOT_FOUND"
        daily = await grounder.gather("GOOG", QUESTION)
        assert daily.timeframe == "D1" and daily.stats is not None and daily.failed("candles") is None
        assert daily.stats.timeframe == "D1" and daily.stats.bars == 100
        with pytest.raises(NotFound):
            await grounder.gather("NOPE", QUESTION)
    finally:
        await grounder.close()
    down = mesh_grounder(grounding_to(f"127.0.0.1:{closed_port()}"))
    gathered = await down.gather("EURUSD", QUESTION)  # Data down: named, not fatal
    assert [u.source for u in gathered.unavailable] == ["candles", "forecast", "regime", "pattern", "rag"]
    await down.close()


async def test_cli_analyze_streams_figures_and_answer(data_target: str, fake_ollama: FakeOllama) -> None:
    settings = LlmSettings(ollama=OllamaSettings(base_url=fake_ollama.url))
    server = await start_server(LlmApp(settings, grounding_to(data_target)), "llm")
    try:
        out = StringIO()

        def run(*argv: str) -> int:
            with redirect_stdout(out):
                return cli_main(["--target", server.target, *argv])

        assert await asyncio.to_thread(run, "analyze", "eurusd", QUESTION, "--max-tokens", "64") == 0
        text = out.getvalue()
        assert text.startswith("EURUSD H1") and "candles   last close" in text
        assert "missing   forecast: UNAVAILABLE" in text
        assert fake_ollama.reply in text and "[stop;" in text
        out.seek(0)
        out.truncate()
        assert await asyncio.to_thread(run, "llm", "status") == 0
        assert "engine   ollama" in out.getvalue()

        # --json: the stream as one object per message; --no-stream and status one document each
        out.seek(0)
        out.truncate()
        assert (
            await asyncio.to_thread(run, "analyze", "EURUSD", QUESTION, "--max-tokens", "64", "--json") == 0
        )
        messages = [json.loads(line) for line in out.getvalue().splitlines()]
        assert "context" in messages[0] and "completion" in messages[-1]
        assert "".join(m["token"]["text"] for m in messages if "token" in m) == fake_ollama.reply
        out.seek(0)
        out.truncate()
        assert await asyncio.to_thread(run, "analyze", "EURUSD", QUESTION, "--no-stream", "--json") == 0
        whole = json.loads(out.getvalue())
        assert whole["answer"].strip() == fake_ollama.reply.strip() and whole["context"]["symbol"] == "EURUSD"
        out.seek(0)
        out.truncate()
        assert await asyncio.to_thread(run, "llm", "status", "--json") == 0
        assert json.loads(out.getvalue())["engine"] == "LLM_ENGINE_OLLAMA"
    finally:
        await server.stop(0)
