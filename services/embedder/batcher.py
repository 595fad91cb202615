"""Dynamic micro-batching: concurrent asyncio requests share one call of a blocking batch function.

A request waits at most `max_wait_s` for others to join (or until `max_batch` items are queued);
the batch then runs in a worker thread while the next one collects. Requests are never split: one
larger than `max_batch` runs alone. A waiter that is cancelled is skipped, the rest of its batch
still gets its results; an error of the batch function is raised to every waiter of that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request ran."""


@dataclass
class _Request(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]


@dataclass
class BatchStats:
    """Counters for tests and logs: batch function calls, items and requests they served."""

    batches: int = 0
    items: int = 0
    requests: int = 0


class MicroBatcher(Generic[T, R]):
    """`await submit(items)` -> `fn(items of several requests)` split back per request, in order.

    `fn(batch) -> results` is blocking (an encode call); `len(results) == len(batch)`.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._pending: deque[_Request[T, R]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of `items`, in order, computed in a batch with other concurrent requests."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="micro-batcher")
        request: _Request[T, R] = _Request(list(items), loop.create_future())
        self._pending.append(request)
        assert self._arrived is not None
        self._arrived.set()
        return await request.future

    async def close(self) -> None:
        """Stop the worker; queued requests fail with `BatcherClosed` (a running batch finishes)."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while self._pending:
            request = self._pending.popleft()
            if not request.future.done():
                request.future.set_exception(BatcherClosed("the batcher closed before the request ran"))

    # ---- the worker ----

    def _queued_items(self) -> int:
        return sum(len(r.items) for r in self._pending if not r.future.done())

    async def _collect(self) -> None:
        """Wait until `max_batch` items are queued or `max_wait_s` passed since the first arrived."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._queued_items() < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Request[T, R]]:
        batch: list[_Request[T, R]] = []
        size = 0
        while self._pending:
            request = self._pending[0]
            if request.future.done():  # cancelled while queued
                self._pending.popleft()
                continue
            if batch and size + len(request.items) > self.max_batch:
                break
            batch.append(self._pending.popleft())
            size += len(request.items)
        return batch

    async def _run(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._collect()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[_Request[T, R]]) -> None:
        items = [item for request in batch for item in request.items]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.requests += len(batch)
        try:
            results = await asyncio.to_thread(self.fn, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except asyncio.CancelledError:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(BatcherClosed("the batcher closed while the batch ran"))
            raise
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.items)
            if not request.future.done():
                request.future.set_result(list(results[start:end]))
            start = end
