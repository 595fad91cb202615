"""MicroBatcher under real concurrency: asyncio requests batched into calls that run in a thread."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from services.embedder.batcher import BatcherClosed, MicroBatcher
from services.embedder.text import TextEncoder


class Recorder:
    """A blocking batch function: doubles each item, sleeps, remembers its batches and threads."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.batches.append(list(items))
            self.threads.add(threading.get_ident())
            time.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [2 * item for item in items]
        finally:
            with self._lock:
                self.running -= 1


async def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    fn = Recorder(delay=0.01)
    batcher = MicroBatcher(fn, max_batch=16, max_wait_s=0.05)
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(64)))
    assert results == [[2 * i] for i in range(64)]
    assert [len(b) for b in fn.batches] == [16, 16, 16, 16]
    assert threading.get_ident() not in fn.threads  # the encode runs in a worker thread
    assert fn.max_running == 1  # one batch at a time
    await batcher.close()


async def test_requests_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    fn = Recorder(delay=0.05)
    batcher = MicroBatcher(fn, max_batch=64, max_wait_s=0.001)

    async def later(i: int) -> list[int]:
        await asyncio.sleep(0.005 * i)
        return await batcher.submit([i, i + 100])

    results = await asyncio.gather(*(later(i) for i in range(8)))
    assert results == [[2 * i, 2 * (i + 100)] for i in range(8)]
    assert 2 <= len(fn.batches) < 8  # the first runs alone, the rest collected while it ran
    assert sorted(x for b in fn.batches for x in b) == sorted(x for i in range(8) for x in (i, i + 100))
    await batcher.close()


async def test_wait_bound_sends_a_lone_request_soon() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=64, max_wait_s=0.02)
    start = time.perf_counter()
    assert await batcher.submit([5]) == [10]
    assert time.perf_counter() - start < 0.5
    await batcher.close()


async def test_requests_are_not_split_and_a_big_one_runs_alone() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4, max_wait_s=0.01)
    big, small = await asyncio.gather(batcher.submit(list(range(10))), batcher.submit([1, 2, 3]))
    assert big == [2 * i for i in range(10)] and small == [2, 4, 6]
    assert [len(b) for b in fn.batches] == [10, 3]
    await batcher.close()


async def test_an_error_reaches_every_waiter_of_its_batch_only() -> None:
    fn = Recorder(delay=0.02, fail_on=3)
    batcher = MicroBatcher(fn, max_batch=4, max_wait_s=0.02)
    outcomes = await asyncio.gather(*(batcher.submit([i]) for i in range(8)), return_exceptions=True)
    failed = [o for o in outcomes[:4]]
    assert all(isinstance(o, ValueError) and "bad item 3" in str(o) for o in failed)
    assert outcomes[4:] == [[8], [10], [12], [14]]
    assert await batcher.submit([9]) == [18]  # the batcher goes on after a failed batch
    await batcher.close()


async def test_a_cancelled_waiter_does_not_break_its_batch() -> None:
    fn = Recorder(delay=0.05)
    batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.01)
    tasks = [asyncio.create_task(batcher.submit([i])) for i in range(4)]
    await asyncio.sleep(0.02)  # the batch is running now
    tasks[1].cancel()
    queued = asyncio.create_task(batcher.submit([7]))
    await asyncio.sleep(0)
    queued.cancel()  # cancelled while still queued: skipped
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], done[2], done[3]] == [[0], [4], [6]]
    assert await batcher.submit([1]) == [2]
    assert all(7 not in b for b in fn.batches)
    await batcher.close()


async def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    fn = Recorder(delay=0.1)
    batcher = MicroBatcher(fn, max_batch=1, max_wait_s=0.0)
    first = asyncio.create_task(batcher.submit([1]))
    second = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0.02)
    await batcher.close()
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(o, BatcherClosed) for o in outcomes)
    with pytest.raises(BatcherClosed):
        await batcher.submit([3])


async def test_batched_real_encodes_equal_one_encode_per_text(encoder: TextEncoder) -> None:
    texts = [f"Headline {i}: stocks {'rise' if i % 2 else 'fall'} on earnings." for i in range(24)]
    batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
        lambda batch: list(encoder.encode(batch)), max_batch=16, max_wait_s=0.005
    )
    rows = await asyncio.gather(*(batcher.submit([t]) for t in texts))
    batched = np.stack([r[0] for r in rows])
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert batcher.stats.batches == 2 and batcher.stats.requests == 24
    assert np.allclose(batched, alone, atol=1e-4)
    await batcher.close()
