"""The Ollama engine against a local fake server speaking Ollama's HTTP protocol."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import aclosing

import ollama
import pytest
from fake_ollama import FakeOllama, split_tokens

from services.llm.analyst import Analyst
from services.llm.engine import ChatMessage
from services.llm.ollama_engine import OllamaEngine
from services.llm.prompt import Grounding
from services.llm.settings import LlmSettings, OllamaSettings
from services.runtime.errors import FailedPrecondition, ResourceExhausted, Unavailable

MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Buy or sell EURUSD?"},
]


def engine_for(fake: FakeOllama, **kw: object) -> OllamaEngine:
    return OllamaEngine(OllamaSettings(base_url=fake.url, **kw))  # type: ignore[arg-type]


async def test_fake_speaks_the_protocol_the_official_client_reads(fake_ollama: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.1:70b", "smollm2:135m"]
    assert listed.models[0].details is not None and listed.models[0].details.family == "llama"
    whole = await client.chat(model="llama3.1:70b", messages=MESSAGES)
    assert whole.done and whole.message.content == fake_ollama.reply
    parts = [p async for p in await client.chat(model="llama3.1:70b", messages=MESSAGES, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == fake_ollama.reply
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == len(parts) - 1
    await client.close()


async def test_start_reports_loaded_with_server_version(fake_ollama: FakeOllama) -> None:
    engine = engine_for(fake_ollama)
    await engine.start()
    info = engine.info()
    assert (info.engine, info.model, info.loaded) == ("ollama", "llama3.1:70b", True)
    assert "ollama 0.6.8" in info.detail
    await engine.close()


async def test_stream_yields_tokens_in_order_and_sends_options(fake_ollama: FakeOllama) -> None:
    engine = engine_for(fake_ollama, keep_alive="1h", num_gpu=40, main_gpu=1)
    tokens = [t async for t in engine.stream(MESSAGES, max_tokens=64, temperature=0.3, stop=["###"])]
    expected = split_tokens(fake_ollama.reply)
    assert [t.text for t in tokens[:-1]] == expected
    assert [t.index for t in tokens] == list(range(len(expected) + 1))
    assert tokens[-1].finish_reason == "stop" and all(t.finish_reason is None for t in tokens[:-1])
    (body,) = fake_ollama.requests
    assert body["model"] == "llama3.1:70b" and body["stream"] is True and body["keep_alive"] == "1h"
    assert body["messages"] == MESSAGES
    assert body["options"] == {
        "num_predict": 64,
        "temperature": 0.3,
        "stop": ["###"],
        "num_gpu": 40,
        "main_gpu": 1,
    }
    await engine.close()


async def test_max_tokens_ends_with_length(fake_ollama: FakeOllama) -> None:
    engine = engine_for(fake_ollama)
    tokens = [t async for t in engine.stream(MESSAGES, max_tokens=3, temperature=0.0)]
    assert len(tokens) == 4 and tokens[-1].finish_reason == "length"
    await engine.close()


async def test_tokens_arrive_incrementally() -> None:
    with FakeOllama(reply="one two three four five six", token_delay=0.05) as fake:
        engine = engine_for(fake)
        arrivals: list[float] = []
        async for token in engine.stream(MESSAGES, max_tokens=64, temperature=0.0):
            if token.text:
                arrivals.append(time.perf_counter())
                if len(arrivals) == 1:
                    assert fake.active == 1  # the server is still generating
        assert len(arrivals) == 6
        assert arrivals[-1] - arrivals[0] >= 0.2
        await engine.close()


async def test_cancellation_disconnects_and_stops_generation() -> None:
    with FakeOllama(reply=" ".join(["tok"] * 200), token_delay=0.02) as fake:
        engine = engine_for(fake)
        async with aclosing(engine.stream(MESSAGES, max_tokens=500, temperature=0.0)) as tokens:
            async for token in tokens:
                if token.index == 2:
                    break
        assert await asyncio.to_thread(fake.wait_idle, 2.0)
        assert fake.disconnected == 1 and fake.completed == 0
        assert fake.tokens_sent < 20

        # Task cancellation works the same way.
        async def consume() -> None:
            async for _ in engine.stream(MESSAGES, max_tokens=500, temperature=0.0):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await asyncio.to_thread(fake.wait_idle, 2.0)
        assert fake.disconnected == 2
        await engine.close()


async def test_missing_model_is_failed_precondition(fake_ollama: FakeOllama) -> None:
    engine = OllamaEngine(OllamaSettings(base_url=fake_ollama.url, model="llama3.1:405b"))
    await engine.start()
    assert not engine.info().loaded and "ollama pull llama3.1:405b" in engine.info().detail
    with pytest.raises(FailedPrecondition) as err:
        async for _ in engine.stream(MESSAGES, max_tokens=8, temperature=0.0):
            pass
    assert err.value.reason == "LLM_MODEL_MISSING"
    await engine.close()


async def test_unreachable_server_is_unavailable_not_a_crash() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OllamaEngine(OllamaSettings(base_url=f"http://127.0.0.1:{port}"))
    await engine.start()  # must not raise
    assert not engine.info().loaded and "unreachable" in engine.info().detail
    with pytest.raises(Unavailable):
        async for _ in engine.stream(MESSAGES, max_tokens=8, temperature=0.0):
            pass
    await engine.close()


async def test_stream_cut_mid_answer_is_unavailable() -> None:
    with FakeOllama(reply="a b c d e f", cut_after=2) as fake:
        engine = engine_for(fake)
        seen: list[str] = []
        with pytest.raises(Unavailable) as err:
            async for token in engine.stream(MESSAGES, max_tokens=8, temperature=0.0):
                seen.append(token.text)
        assert seen == ["a", " b"] and err.value.reason == "LLM_STREAM_CUT"
        await engine.close()


async def test_analyst_over_ollama_queue_limit_and_status() -> None:
    with FakeOllama(reply=" ".join(["w"] * 40), token_delay=0.01) as fake:
        settings = LlmSettings(ollama=OllamaSettings(base_url=fake.url), max_concurrent=1, max_queued=1)
        analyst = Analyst(settings)
        await analyst.start()
        grounding = Grounding(symbol="EURUSD", unavailable=("forecast",))

        first = analyst.analyze("Buy?", grounding)
        await anext(first)  # holds the only slot
        second = analyst.analyze("Sell?", grounding)
        second_task = asyncio.ensure_future(anext(second))
        await asyncio.sleep(0.05)
        status = await analyst.status()
        assert (status.active, status.queue_depth, status.loaded) == (1, 1, True)
        with pytest.raises(ResourceExhausted):
            async with asyncio.timeout(1):
                await anext(analyst.analyze("Hold?", grounding))
        async for _ in first:
            pass
        await second_task
        await second.aclose()  # cancel the second answer early
        status = await analyst.status()
        assert (status.active, status.queue_depth) == (0, 0)
        assert status.answers_total == 2 and status.recent_tokens_per_second > 0
        assert status.engine == "ollama" and status.model == "llama3.1:70b"
        system = fake.requests[0]["messages"][0]
        assert system["role"] == "system" and "Unavailable" in system["content"]
        await analyst.close()
