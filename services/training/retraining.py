"""Automatic retraining of any trainer's models: on a schedule (stale models) and on data events.

`RetrainScheduler` checks every `interval_s` for the keys the trainer calls stale (`stale_keys`: no
model, or one older than the service's retrain age) and trains them in one job. A check that fails
(the Data service not up yet at a cold start) is retried with exponential backoff from
`retry_initial_s` to `retry_max_s`, logged as one warning line without a traceback, and is not a run:
`last_check` is the time of the last check that succeeded, `last_error` says why the last one failed.

`EventMonitor` consumes the Data service's event stream, collects the symbols of relevant events
(CANDLES_INGESTED, MARKET_EVENT by default) and, once no new relevant event arrived for
`event_debounce_s` (or `event_max_delay_s` after the first one, so a steady stream cannot starve
it), trains them in one job. It persists the id of the last event whose retraining has *finished*
(`state_path`, e.g. `$KITRADING_HOME/forecast/event_monitor.json`) and resumes the stream after
it on restart, so a restart re-triggers at most the retraining that was in flight (at-least-once).

`lead_retraining` starts both, and the clean-up of killed workers' leftovers, on the instance that
holds the service's lease (services.runtime.leases): one instance of a trainer runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.runtime.errors import DeadlineExceeded, Unavailable
from services.runtime.jobs import JobState
from services.training.jobs import JobRunner
from services.training.registry import atomic_write_text
from services.training.sources import DataEvent, EventStream

log = logging.getLogger(__name__)


class RetrainScheduler:
    """Periodically trains the keys whose model is missing or stale."""

    def __init__(
        self, jobs: JobRunner, *, interval_s: float, retry_initial_s: float = 5.0, retry_max_s: float = 300.0
    ) -> None:
        self.jobs = jobs
        self.interval_s = interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = min(retry_max_s, interval_s)
        self.last_check: datetime | None = None  # the last check that succeeded
        self.last_job_id: str | None = None
        self.last_error = ""  # why the last check failed; "" after one succeeded
        self.failures = 0  # checks failed in a row
        self.next_check: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(
                self._loop(), name=f"{self.jobs.trainer.model}-retrain-scheduler"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_now(self) -> str | None:
        """Submit one job for the stale symbols now; returns its id (None when none is stale).
        Raises what the trainer or the runner raised; then nothing is recorded as a run."""
        started = datetime.now(UTC)
        stale = await self.jobs.trainer.stale_keys()
        job_id = None
        if stale:
            job = await self.jobs.train(stale, force=True, background=True, trigger="scheduled")
            self.last_job_id = job_id = job.job_id
        self.last_check = started
        return job_id

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_now()
            except (Unavailable, DeadlineExceeded) as exc:  # inputs not ready (cold start): no traceback
                delay = self._failed(f"{type(exc).__name__}: {exc}")
                log.warning("scheduled retrain check failed (%s); retrying in %.0fs", self.last_error, delay)
            except Exception as exc:
                delay = self._failed(f"{type(exc).__name__}: {exc}")
                log.exception("scheduled retrain check failed; retrying in %.0fs", delay)
            else:
                self.failures = 0
                self.last_error = ""
                delay = self.interval_s
            self.next_check = datetime.now(UTC) + timedelta(seconds=delay)
            await asyncio.sleep(delay)

    def _failed(self, error: str) -> float:
        self.last_error = error
        self.failures += 1
        return float(min(self.retry_max_s, self.retry_initial_s * 2 ** min(self.failures - 1, 30)))


@dataclass
class EventMonitorStatus:
    running: bool
    connected: bool
    last_event_id: int  # persisted: every relevant event up to it has been retrained
    last_seen_event_id: int
    events_seen: int
    retrains_triggered: int
    pending_symbols: list[str]
    last_job_id: str | None
    last_error: str
    started_at: datetime | None


@dataclass
class _Batch:
    job_id: str
    max_event_id: int


@dataclass
class _State:
    committed: int = 0
    seen: int = 0
    events: int = 0
    triggered: int = 0
    pending: dict[str, int] = field(default_factory=dict)  # symbol -> newest event id
    first_pending_at: float = 0.0
    last_pending_at: float = 0.0
    in_flight: deque[_Batch] = field(default_factory=deque)


class EventMonitor:
    """Retrains symbols affected by data events; see the module docstring."""

    def __init__(
        self,
        stream: EventStream,
        jobs: JobRunner,
        state_path: Path,
        *,
        debounce_s: float = 60.0,
        max_delay_s: float = 600.0,
        types: tuple[str, ...] = ("CANDLES_INGESTED", "MARKET_EVENT"),
        reconnect_s: float = 5.0,
    ) -> None:
        self.stream = stream
        self.jobs = jobs
        self.state_path = state_path
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.types = frozenset(t.upper().removeprefix("EVENT_TYPE_") for t in types)
        self.reconnect_s = reconnect_s
        self._state = _State()
        self._tasks: list[asyncio.Task[None]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._connected = False
        self._last_error = ""
        self._last_job: str | None = None
        self._started_at: datetime | None = None

    # ---- persistence ----------------------------------------------------------------------------

    def load_last_event_id(self) -> int:
        try:
            return int(json.loads(self.state_path.read_text(encoding="utf-8"))["last_event_id"])
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return 0

    def _persist(self, event_id: int) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        body = {"last_event_id": event_id, "updated_at": datetime.now(UTC).isoformat()}
        atomic_write_text(self.state_path, json.dumps(body) + "\n")

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def start(self) -> EventMonitorStatus:
        """Start consuming after the persisted last event id (idempotent)."""
        if not self.running:
            committed = self.load_last_event_id()
            self._state = _State(committed=committed, seen=committed)
            self._started_at = datetime.now(UTC)
            self._tasks = [
                asyncio.create_task(self._consume(), name="forecast-event-consumer"),
                asyncio.create_task(self._debouncer(), name="forecast-event-debouncer"),
            ]
        return self.status()

    async def stop(self) -> EventMonitorStatus:
        """Stop consuming. Pending (not yet triggered) symbols are dropped; their events are after
        the persisted id, so they are replayed on the next start."""
        tasks = [*self._tasks, *self._batch_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._batch_tasks.clear()
        self._connected = False
        return self.status()

    def status(self) -> EventMonitorStatus:
        st = self._state
        return EventMonitorStatus(
            running=self.running,
            connected=self._connected,
            last_event_id=st.committed,
            last_seen_event_id=st.seen,
            events_seen=st.events,
            retrains_triggered=st.triggered,
            pending_symbols=sorted(st.pending),
            last_job_id=self._last_job,
            last_error=self._last_error,
            started_at=self._started_at,
        )

    # ---- consuming ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            stream: AsyncIterator[DataEvent] | None = None
            try:
                stream = self.stream(self._state.seen)
                self._connected = True
                async for event in stream:
                    self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "event stream failed (%s); reconnecting in %.0fs", self._last_error, self.reconnect_s
                )
            finally:
                self._connected = False
                if stream is not None and hasattr(stream, "aclose"):
                    with contextlib.suppress(Exception):
                        await stream.aclose()
            await asyncio.sleep(self.reconnect_s)

    def _on_event(self, event: DataEvent) -> None:
        st = self._state
        if event.event_id <= st.seen:
            return  # replayed
        st.seen = event.event_id
        st.events += 1
        kind = event.type.upper().removeprefix("EVENT_TYPE_")
        if kind in self.types and event.symbol:
            now = time.monotonic()
            if not st.pending:
                st.first_pending_at = now
            st.last_pending_at = now
            st.pending[event.symbol] = event.event_id
        elif not st.pending and not st.in_flight:
            # Nothing to retrain up to here: safe to move the resume point.
            self._commit(event.event_id)
        self._wake.set()

    def _commit(self, event_id: int) -> None:
        if event_id > self._state.committed:
            self._state.committed = event_id
            self._persist(event_id)

    async def _debouncer(self) -> None:
        while True:
            st = self._state
            if not st.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            due = min(st.last_pending_at + self.debounce_s, st.first_pending_at + self.max_delay_s)
            if now < due:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due - now)
                continue
            await self._trigger()

    async def _trigger(self) -> None:
        st = self._state
        symbols = sorted(st.pending)
        max_id = st.seen  # every event up to `seen` is covered by this batch or irrelevant
        st.pending = {}
        known = set(await self.jobs.trainer.all_keys())
        wanted = [s for s in symbols if s in known]
        if not wanted:
            if not st.in_flight:
                self._commit(max_id)
            return
        try:
            job = await self.jobs.train(wanted, force=True, background=True, trigger="event")
        except Exception as exc:
            self._last_error = f"could not submit retraining: {exc}"
            log.warning(self._last_error)
            return
        st.triggered += 1
        self._last_job = job.job_id
        st.in_flight.append(_Batch(job.job_id, max_id))
        task = asyncio.create_task(self._await_batch(job.job_id), name=f"event-job-{job.job_id}")
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _await_batch(self, job_id: str) -> None:
        job = await self.jobs.wait(job_id)
        if job.state is not JobState.SUCCEEDED:
            self._last_error = f"event-triggered job {job_id} ended {job.state}: {job.error}"
        st = self._state
        # Jobs finish in submission order; commit every finished batch at the head.
        while st.in_flight:
            head = st.in_flight[0]
            try:
                head_job = self.jobs.get(head.job_id)
            except Exception:
                head_job = None
            if head_job is not None and not head_job.state.terminal:
                break
            st.in_flight.popleft()
            self._commit(head.max_event_id)


async def lead_retraining(
    jobs: JobRunner,
    scheduler: RetrainScheduler,
    events: EventMonitor | None,
    *,
    schedule: bool,
    event_retrain: bool,
) -> None:
    """The once-only work of a trainer's lease holder: staging leftovers of killed workers removed
    (another instance's publish could be in progress elsewhere), the retrain scheduler (`schedule`)
    and the event monitor (`event_retrain`, with one)."""
    await jobs.clean_staging()
    if schedule:
        await scheduler.start()
    if events is not None and event_retrain:
        # The monitor's tasks outlive the caller: a fresh context inherits no deadline.
        await asyncio.create_task(events.start(), context=contextvars.Context())
