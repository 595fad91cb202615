"""The check loop: one independent task per target, with a hard timeout per check.

Each target is checked every `interval` seconds by its own task, so a slow or hanging target only
delays itself; every check is cut off after `timeout` seconds and then counts as UNREACHABLE. A
service that dies is therefore seen at the next tick plus at most `timeout` — within two intervals.

Listeners get every check result as (previous, current) state: the alert policy and the status
stream are both listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from services.runtime.logging import redact
from services.watchdog.models import HealthStatus, Probe, ProbeResult, TargetState, utcnow

log = logging.getLogger(__name__)

#: Called with (previous, current) after every check; must not block (spawn tasks for I/O).
Listener = Callable[[TargetState, TargetState], None]


class Monitor:
    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        interval: float,
        timeout: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        names = [p.name for p in probes]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate target names: {sorted(duplicates)}")
        self.interval = interval
        self.timeout = timeout
        self._probes = list(probes)
        self._clock = clock
        now = clock()
        self._states: dict[str, TargetState] = {
            p.name: TargetState(
                name=p.name,
                kind=p.kind,
                address=p.address,
                status=HealthStatus.UNKNOWN,
                latency_ms=None,
                last_check_time=None,
                last_change_time=now,
                last_error=None,
                last_error_at=None,
                detail="not checked yet",
            )
            for p in probes
        }
        self._locks = {p.name: asyncio.Lock() for p in probes}
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # ---- lifecycle ----

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Start one check task per target (the first checks run at once)."""
        if self._tasks:
            return
        self._stopping = False
        for probe in self._probes:
            self._tasks.append(asyncio.create_task(self._run(probe), name=f"watchdog-check-{probe.name}"))

    async def stop(self) -> None:
        """Stop the checks and close the probes' connections."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            tasks = list(pending)
        for probe in self._probes:
            try:
                await probe.close()
            except Exception:
                log.warning("closing probe %s failed", probe.name, exc_info=True)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    # ---- reads ----

    def snapshot(self) -> list[TargetState]:
        """Every target's state, in the order the targets were given."""
        return [self._states[p.name] for p in self._probes]

    def get(self, name: str) -> TargetState | None:
        return self._states.get(name)

    # ---- checks ----

    async def check_now(self) -> list[TargetState]:
        """Check every target at once (concurrently) and return the new snapshot."""
        await asyncio.gather(*(self._check(p) for p in self._probes))
        return self.snapshot()

    async def _run(self, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stopping:
            try:
                await self._check(probe)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a listener or probe must not end this target's checks
                log.exception("check of %s failed", probe.name)
            next_at += self.interval
            now = loop.time()
            next_at = max(next_at, now)  # a check that overran: next one right away, missed ticks dropped
            await asyncio.sleep(next_at - now)

    async def _check(self, probe: Probe) -> TargetState:
        loop = asyncio.get_running_loop()
        async with self._locks[probe.name]:
            started = loop.time()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the check finishes, and stop() would then wait forever.
                async with asyncio.timeout(self.timeout):
                    result = await probe.check(self.timeout)
            except TimeoutError:
                result = ProbeResult(HealthStatus.UNREACHABLE, error=f"no answer within {self.timeout:g} s")
            except Exception as exc:
                text = redact(f"{type(exc).__name__}: {exc}")
                result = ProbeResult(HealthStatus.UNREACHABLE, error=f"check failed: {text}")
            elapsed_ms = (loop.time() - started) * 1000.0
            previous = self._states[probe.name]
            current = self._next_state(previous, result, elapsed_ms)
            self._states[probe.name] = current
        for listener in self._listeners:
            try:
                listener(previous, current)
            except Exception:
                log.exception("watchdog listener failed for %s", probe.name)
        if current.status is not previous.status:
            log.info(
                "target %s: %s -> %s",
                probe.name,
                previous.status.value,
                current.status.value,
                extra={"target": probe.name, "status": current.status.value, "error": current.last_error},
            )
        return current

    def _next_state(self, previous: TargetState, result: ProbeResult, elapsed_ms: float) -> TargetState:
        now = self._clock()
        fine = result.status in (HealthStatus.SERVING, HealthStatus.NOT_APPLICABLE)
        return replace(
            previous,
            status=result.status,
            latency_ms=result.latency_ms if result.latency_ms is not None else round(elapsed_ms, 3),
            last_check_time=now,
            last_change_time=previous.last_change_time if result.status is previous.status else now,
            last_error=result.error if result.error else previous.last_error,
            last_error_at=now if result.error else previous.last_error_at,
            detail=result.detail,
            consecutive_failures=0 if fine else previous.consecutive_failures + 1,
        )
