"""Bounded queue + concurrency limit for generations, and the recent-speed meter of the status call.

`GenerationLimiter(max_concurrent=1, max_queued=8)`: up to `max_concurrent` generations run; up to
`max_queued` more wait in FIFO order; one more is refused at once with `ResourceExhausted` (never a
hang), with a `retry_after_s` hint: the mean time a slot was held by the recent answers (the queue
has room again when the running one ends), at least 1 s. A waiter that is cancelled leaves the queue.
`queue_depth` and `active` are observable.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.runtime.errors import ResourceExhausted


class GenerationLimiter:
    def __init__(self, max_concurrent: int, max_queued: int, *, default_retry_after_s: float = 10.0) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.default_retry_after_s = default_retry_after_s
        self._held: collections.deque[float] = collections.deque(maxlen=20)  # seconds per slot
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def active(self) -> int:
        """Generations holding a slot now."""
        return self._active

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the body; ResourceExhausted when the queue is full."""
        await self._acquire()
        held_from = time.monotonic()
        try:
            yield
        finally:
            self._held.append(time.monotonic() - held_from)
            self._release()

    def refusal(self) -> ResourceExhausted:
        """The error for a request that can neither run nor wait, with its retry hint."""
        retry = self.retry_after_s()
        return ResourceExhausted(
            f"the LLM is busy: {self._active} answer(s) running and {len(self._waiters)} waiting "
            f"(limit {self.max_queued}); retry in about {retry:.0f} s",
            reason="LLM_QUEUE_FULL",
            metadata={
                "max_queued": str(self.max_queued),
                "max_concurrent": str(self.max_concurrent),
                "retry_after_s": f"{retry:.0f}",
            },
        )

    def retry_after_s(self) -> float:
        """Whole seconds until the queue likely has room: the recent mean time a slot was held
        (`default_retry_after_s` before the first answer), at least 1."""
        if not self._held:
            return max(1.0, self.default_retry_after_s)
        return float(max(1, math.ceil(sum(self._held) / len(self._held))))

    async def _acquire(self) -> None:
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise self.refusal()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted the slot just as we were cancelled: hand it on.
                self._release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        # The slot was transferred to us by _release (self._active already counts it).

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes directly to the next waiter
                return
        self._active -= 1


@dataclass(frozen=True, slots=True)
class AnswerStats:
    """One finished (or cancelled) answer."""

    tokens: int
    #: Seconds from holding a slot to the first token.
    first_token_seconds: float
    #: Seconds from the first to the last token.
    generation_seconds: float
    finish_reason: str

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took."""
        if self.tokens < 2 or self.generation_seconds <= 0:
            return 0.0
        return (self.tokens - 1) / self.generation_seconds


class SpeedMeter:
    """The last `window` answers' speed, for the status call."""

    def __init__(self, window: int = 20) -> None:
        self._recent: collections.deque[AnswerStats] = collections.deque(maxlen=window)
        self.answers_total = 0

    def record(self, stats: AnswerStats) -> None:
        self._recent.append(stats)
        self.answers_total += 1

    @property
    def recent(self) -> tuple[AnswerStats, ...]:
        return tuple(self._recent)

    def tokens_per_second(self) -> float:
        """Decode tokens/s over the recent answers (token-weighted); 0.0 before the first answer.

        Safe from another thread (the metrics server's): it reads one copy of the answers."""
        recent = self.recent
        tokens = sum(s.tokens - 1 for s in recent if s.tokens >= 2)
        seconds = sum(s.generation_seconds for s in recent if s.tokens >= 2)
        return tokens / seconds if seconds > 0 else 0.0

    def first_token_seconds(self) -> float:
        """Median time to the first token over the recent answers; 0.0 before the first answer."""
        values = sorted(s.first_token_seconds for s in self._recent if s.tokens > 0)
        return values[len(values) // 2] if values else 0.0


class AnswerTimer:
    """Measures one answer: call `token()` per non-empty token, `finish(reason)` at the end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0

    def token(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.tokens += 1

    def finish(self, reason: str) -> AnswerStats:
        first = self.first if self.first is not None else time.perf_counter()
        last = self.last if self.last is not None else first
        return AnswerStats(
            tokens=self.tokens,
            first_token_seconds=first - self.start,
            generation_seconds=last - first,
            finish_reason=reason,
        )
