"""Bounded queue + concurrency limit: refuse beyond the queue, FIFO, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from services.llm.limiter import AnswerStats, GenerationLimiter, SpeedMeter
from services.runtime.errors import ResourceExhausted


async def test_queue_full_raises_resource_exhausted_at_once() -> None:
    limiter = GenerationLimiter(max_concurrent=1, max_queued=2)
    release = asyncio.Event()
    order: list[int] = []

    async def job(i: int) -> None:
        async with limiter.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(job(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert (limiter.active, limiter.queue_depth) == (1, 2)
    with pytest.raises(ResourceExhausted) as err:
        async with asyncio.timeout(0.5):  # refused, not hung
            await job(99)
    assert err.value.reason == "LLM_QUEUE_FULL"
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (limiter.active, limiter.queue_depth) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue_and_slots_are_not_lost() -> None:
    limiter = GenerationLimiter(max_concurrent=1, max_queued=4)
    hold = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot():
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    assert limiter.queue_depth == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert limiter.queue_depth == 0
    hold.set()
    await first
    assert limiter.active == 0
    async with limiter.slot():  # the slot is free again
        assert limiter.active == 1


async def test_waiter_cancelled_just_after_being_granted_passes_the_slot_on() -> None:
    limiter = GenerationLimiter(max_concurrent=1, max_queued=4)
    entered: list[str] = []

    async def use(name: str) -> None:
        async with limiter.slot():
            entered.append(name)

    await limiter._acquire()
    second = asyncio.create_task(use("second"))
    third = asyncio.create_task(use("third"))
    await asyncio.sleep(0.01)
    limiter._release()  # grants `second` ...
    second.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(second, third, return_exceptions=True)
    assert entered == ["third"]
    assert (limiter.active, limiter.queue_depth) == (0, 0)


def test_speed_meter() -> None:
    meter = SpeedMeter(window=2)
    assert meter.tokens_per_second() == 0.0 and meter.first_token_seconds() == 0.0
    meter.record(
        AnswerStats(tokens=11, first_token_seconds=0.2, generation_seconds=1.0, finish_reason="stop")
    )
    meter.record(
        AnswerStats(tokens=31, first_token_seconds=0.4, generation_seconds=1.0, finish_reason="stop")
    )
    assert meter.tokens_per_second() == pytest.approx(20.0)
    meter.record(AnswerStats(tokens=1, first_token_seconds=0.1, generation_seconds=0.0, finish_reason="stop"))
    assert meter.tokens_per_second() == pytest.approx(30.0)  # window of 2; a 1-token answer has no rate
    assert meter.answers_total == 3


async def test_queue_full_carries_a_retry_delay_from_the_recent_service_rate() -> None:
    limiter = GenerationLimiter(max_concurrent=1, max_queued=1)
    for _ in range(3):  # three answers of about 0.2 s each
        async with limiter.slot():
            await asyncio.sleep(0.2)
    release = asyncio.Event()

    async def job() -> None:
        async with limiter.slot():
            await release.wait()

    tasks = [asyncio.create_task(job()) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted) as err:
        await job()
    retry = float(err.value.metadata["retry_after_s"])
    # the queue has room when the running answer (~0.2 s) ends; rounded up to whole seconds
    assert retry == 1.0
    assert "retry in about 1 s" in err.value.message
    release.set()
    await asyncio.gather(*tasks)


def test_retry_delay_before_any_answer_is_the_default() -> None:
    limiter = GenerationLimiter(max_concurrent=1, max_queued=0, default_retry_after_s=7.0)
    assert limiter.retry_after_s() == 7.0
