"""A small fan-out of events to any number of async subscribers (the status stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_CLOSED = object()


class Subscription(Generic[T]):
    """One subscriber's queue. A subscriber `maxsize` events behind loses the oldest ones."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, item: object) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.dropped += 1
        self._queue.put_nowait(item)

    async def items(self) -> AsyncGenerator[T, None]:
        """Yield events until the hub closes."""
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            yield item  # type: ignore[misc]


class EventHub(Generic[T]):
    """`publish` never blocks; `subscribe()` registers at once, so a snapshot taken right after
    (without an await in between) is followed by every later event."""

    def __init__(self, queue_size: int = 256) -> None:
        self._queue_size = queue_size
        self._subscriptions: set[Subscription[T]] = set()
        self.closed = False

    def publish(self, item: T) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(item)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription[T]]:
        subscription: Subscription[T] = Subscription(self._queue_size)
        if self.closed:
            subscription.offer(_CLOSED)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every subscription (their `items()` return)."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription.offer(_CLOSED)

    def reopen(self) -> None:
        self.closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)
