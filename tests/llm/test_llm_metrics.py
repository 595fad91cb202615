"""The LLM's Prometheus metrics (services/llm/metrics.py): tokens, answers, the queue, the GPU budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from services.llm.analyst import Analyst
from services.llm.engine import EngineInfo, Token
from services.llm.gpu_budget import GpuUsage
from services.llm.settings import LlmSettings
from services.runtime.metrics import REGISTRY

GIB = 1 << 30


def value(name: str, **labels: str) -> float:
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


class HeldEngine:
    """Streams `tokens` tokens; the first answer waits for `release` (so a second one queues)."""

    def __init__(self, tokens: int, gpu: GpuUsage | None = None) -> None:
        self.tokens = tokens
        self.gpu = gpu
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def info(self) -> EngineInfo:
        return EngineInfo(engine="ollama", model="m", loaded=True, gpu=self.gpu)

    async def refresh(self) -> EngineInfo:
        return self.info()

    async def stream(
        self, messages: Sequence[Any], *, max_tokens: int, temperature: float, stop: Sequence[str] = ()
    ) -> AsyncGenerator[Token, None]:
        self.started.set()
        await self.release.wait()
        for index in range(self.tokens):
            yield Token(f"t{index} ", index, finish_reason="stop" if index == self.tokens - 1 else None)


async def drain(analyst: Analyst) -> int:
    count = 0
    async with aclosing(analyst.generate([{"role": "user", "content": "?"}])) as tokens:
        async for _token in tokens:
            count += 1
    return count


async def test_tokens_answers_and_the_queue() -> None:
    engine = HeldEngine(5)
    analyst = Analyst(LlmSettings(max_concurrent=1, max_queued=3), engine)
    tokens, stops = value("kitrading_llm_tokens_total"), value("kitrading_llm_answers_total", reason="stop")
    first_tokens = value("kitrading_llm_first_token_seconds_count")
    assert value("kitrading_llm_queue_capacity") == 3
    first = asyncio.create_task(drain(analyst))
    await engine.started.wait()
    second = asyncio.create_task(drain(analyst))
    for _ in range(100):
        if value("kitrading_llm_queue_depth") == 1:
            break
        await asyncio.sleep(0.01)
    assert value("kitrading_llm_queue_depth") == 1 and value("kitrading_llm_generations_active") == 1
    engine.release.set()
    assert await first == await second == 5
    assert value("kitrading_llm_tokens_total") - tokens == 10
    assert value("kitrading_llm_answers_total", reason="stop") - stops == 2
    assert value("kitrading_llm_first_token_seconds_count") - first_tokens == 2
    assert value("kitrading_llm_queue_depth") == 0 and value("kitrading_llm_generations_active") == 0
    assert value("kitrading_llm_decode_tokens_per_second") > 0


async def test_a_cancelled_answer_is_counted_as_cancelled() -> None:
    engine = HeldEngine(50)
    engine.release.set()
    analyst = Analyst(LlmSettings(), engine)
    before = value("kitrading_llm_answers_total", reason="cancelled")
    async with aclosing(analyst.generate([{"role": "user", "content": "?"}])) as tokens:
        async for _token in tokens:
            break  # the caller went away
    assert value("kitrading_llm_answers_total", reason="cancelled") - before == 1


def test_the_engine_gpu_budget_is_a_gpu_memory_gauge() -> None:
    usage = GpuUsage(
        budget_bytes=44 * GIB,
        total_bytes=80 * GIB,
        fraction=0.55,
        layers=40,
        total_layers=81,
        used_bytes=41 * GIB,
        detail="",
    )
    analyst = Analyst(LlmSettings(), HeldEngine(1, gpu=usage))
    assert value("kitrading_gpu_memory_used_bytes", source="ollama", device="0") == 41 * GIB
    assert value("kitrading_gpu_memory_budget_bytes", source="ollama", device="0") == 44 * GIB
    Analyst(LlmSettings(), HeldEngine(1))  # the latest analyst is the one reported: no budget
    assert value("kitrading_gpu_memory_budget_bytes", source="ollama", device="0") == 0
    del analyst
