"""Scheduled and event-triggered retraining: debounce, max delay, persisted resume point."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.runtime.errors import Unavailable
from services.runtime.jobs import JobState
from services.training.retraining import EventMonitor, RetrainScheduler
from services.training.sources import DataEvent, InMemoryCandleSource, SymbolInfo


@dataclass
class FakeJob:
    job_id: str
    symbols: list[str]
    trigger: str
    state: JobState = JobState.RUNNING
    error: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FakeTrainer:
    """The part of a Trainer that the automation uses: the active symbols and the stale ones."""

    model = "fake"

    def __init__(self, jobs: FakeJobs) -> None:
        self._jobs = jobs

    async def all_keys(self) -> list[str]:
        return [s.symbol for s in await self._jobs.source.list_symbols() if s.active]

    async def stale_keys(self) -> list[str]:
        return list(self._jobs.stale)


class FakeJobs:
    """The part of JobRunner that the automation uses; jobs finish when the test says so."""

    def __init__(self, symbols: list[str]) -> None:
        self.source = InMemoryCandleSource()
        for symbol in symbols:
            self.source._symbols[symbol] = SymbolInfo(symbol)
        self.jobs: list[FakeJob] = []
        self.stale: list[str] = []
        self.trainer = FakeTrainer(self)

    async def train(self, symbols: list[str], *, force: bool, background: bool, trigger: str) -> FakeJob:
        assert force and background
        job = FakeJob(f"job{len(self.jobs)}", list(symbols), trigger)
        self.jobs.append(job)
        return job

    async def wait(self, job_id: str) -> FakeJob:
        job = self.get(job_id)
        await job.done.wait()
        return job

    def get(self, job_id: str) -> FakeJob:
        return next(j for j in self.jobs if j.job_id == job_id)

    def finish(self, job: FakeJob) -> None:
        job.state = JobState.SUCCEEDED
        job.done.set()


class FakeStream:
    """The Data service's WatchEvents: replays persisted events after the id, then live ones."""

    def __init__(self) -> None:
        self.log: list[DataEvent] = []
        self.calls: list[int] = []
        self.live: asyncio.Queue[DataEvent | Exception] = asyncio.Queue()

    def emit(self, event_id: int, kind: str, symbol: str = "") -> None:
        event = DataEvent(event_id, kind, symbol, "H1")
        self.log.append(event)
        self.live.put_nowait(event)

    async def __call__(self, after_event_id: int) -> AsyncIterator[DataEvent]:
        self.calls.append(after_event_id)
        replay = [e for e in self.log if e.event_id > after_event_id]
        for event in replay:
            yield event
        seen = max((e.event_id for e in replay), default=after_event_id)
        while True:
            item = await self.live.get()
            if isinstance(item, Exception):
                raise item
            if item.event_id > seen:
                yield item


async def eventually(predicate: Any, within_s: float = 3.0) -> None:
    """Poll `predicate` (state changes happen in background tasks of the monitor)."""
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def monitor(stream: FakeStream, jobs: FakeJobs, path: Path, **kw: Any) -> EventMonitor:
    options = {"debounce_s": 0.2, "max_delay_s": 5.0, "reconnect_s": 0.05, **kw}
    return EventMonitor(stream, jobs, path, **options)  # type: ignore[arg-type]


async def test_events_are_debounced_into_one_retrain_and_the_id_persisted_after_it(tmp_path: Path) -> None:
    jobs, stream, state = FakeJobs(["EURUSD", "GOOG"]), FakeStream(), tmp_path / "event_monitor.json"
    mon = monitor(stream, jobs, state)
    await mon.start()
    for event_id, kind, symbol in [
        (1, "CANDLES_INGESTED", "EURUSD"),
        (2, "MARKET_EVENT", "GOOG"),
        (3, "SYMBOL_ADDED", "XYZ"),
        (4, "EVENT_TYPE_CANDLES_INGESTED", "EURUSD"),
    ]:
        stream.emit(event_id, kind, symbol)
        await asyncio.sleep(0.05)
    assert jobs.jobs == []  # still inside the debounce window
    await eventually(lambda: len(jobs.jobs) == 1)
    await asyncio.sleep(0.3)
    job = jobs.jobs[0]
    assert (job.symbols, job.trigger, len(jobs.jobs)) == (["EURUSD", "GOOG"], "event", 1)
    status = mon.status()
    assert (
        status.running
        and status.connected
        and status.retrains_triggered == 1
        and status.last_seen_event_id == 4
    )
    assert status.last_event_id == 0 and not state.exists()  # not persisted before the retrain finished
    jobs.finish(job)
    await eventually(lambda: mon.status().last_event_id == 4)
    assert json.loads(state.read_text())["last_event_id"] == 4
    await mon.stop()
    assert not mon.status().running

    # A new monitor (a restarted service) resumes after the persisted id: nothing is retrained twice.
    again = monitor(stream, jobs, state)
    await again.start()
    await eventually(lambda: stream.calls[-1:] == [4])
    stream.emit(5, "MARKET_EVENT", "GOOG")
    await eventually(lambda: len(jobs.jobs) == 2)
    assert jobs.jobs[1].symbols == ["GOOG"]
    await again.stop()


async def test_restart_before_the_retrain_finished_replays_its_events(tmp_path: Path) -> None:
    jobs, stream, state = FakeJobs(["EURUSD"]), FakeStream(), tmp_path / "state.json"
    mon = monitor(stream, jobs, state, debounce_s=0.05)
    await mon.start()
    stream.emit(7, "CANDLES_INGESTED", "EURUSD")
    await eventually(lambda: len(jobs.jobs) == 1)
    await mon.stop()  # the service stops while that retrain is in flight
    again = monitor(stream, jobs, state, debounce_s=0.05)
    await again.start()
    await eventually(lambda: len(jobs.jobs) == 2)  # at-least-once: event 7 is replayed
    assert stream.calls == [0, 0] and jobs.jobs[1].symbols == ["EURUSD"]
    await again.stop()


async def test_a_steady_stream_is_flushed_after_the_max_delay(tmp_path: Path) -> None:
    jobs, stream = FakeJobs(["EURUSD"]), FakeStream()
    mon = monitor(stream, jobs, tmp_path / "s.json", debounce_s=0.3, max_delay_s=0.4)
    await mon.start()
    for event_id in range(1, 11):  # one event every 0.1 s never leaves a 0.3 s quiet gap
        stream.emit(event_id, "CANDLES_INGESTED", "EURUSD")
        await asyncio.sleep(0.1)
    assert len(jobs.jobs) >= 1
    await mon.stop()


async def test_irrelevant_events_move_the_resume_point_and_errors_reconnect(tmp_path: Path) -> None:
    jobs, stream, state = FakeJobs(["EURUSD"]), FakeStream(), tmp_path / "s.json"
    mon = monitor(stream, jobs, state)
    await mon.start()
    stream.emit(1, "SYMBOL_UPDATED", "EURUSD")
    stream.emit(2, "CANDLES_INGESTED", "UNKNOWN")  # not an active symbol: nothing to train
    await eventually(lambda: mon.status().last_event_id == 2, within_s=2)
    stream.live.put_nowait(ConnectionError("data service restarted"))
    await eventually(lambda: len(stream.calls) == 2)
    assert stream.calls == [0, 2] and "data service restarted" in mon.status().last_error
    assert jobs.jobs == []
    await mon.stop()


async def test_scheduler_trains_stale_symbols_on_its_interval() -> None:
    jobs = FakeJobs(["EURUSD", "GOOG"])
    scheduler = RetrainScheduler(jobs, interval_s=0.05)  # type: ignore[arg-type]
    assert await scheduler.check_now() is None and jobs.jobs == []
    jobs.stale = ["GOOG"]
    await scheduler.start()
    await eventually(lambda: len(jobs.jobs) >= 2)
    await scheduler.stop()
    assert not scheduler.running
    assert all((j.symbols, j.trigger) == (["GOOG"], "scheduled") for j in jobs.jobs)
    assert scheduler.last_job_id == jobs.jobs[-1].job_id


@pytest.mark.parametrize("raw", ["", "{", '{"last_event_id": "x"}'])
def test_a_missing_or_broken_state_file_starts_from_zero(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "s.json"
    if raw:
        path.write_text(raw)
    assert monitor(FakeStream(), FakeJobs([]), path).load_last_event_id() == 0


class ColdStartJobs(FakeJobs):
    """A trainer whose inputs (the Data service) are unavailable for the first `failures` checks."""

    def __init__(self, symbols: list[str], failures: int) -> None:
        super().__init__(symbols)
        self.failures = failures
        self.checks = 0
        self.trainer.stale_keys = self._stale_keys  # type: ignore[method-assign]

    async def _stale_keys(self) -> list[str]:
        self.checks += 1
        if self.checks <= self.failures:
            raise Unavailable("the data service is unavailable", reason="DATA_UNAVAILABLE")
        return list(self.stale)


async def test_scheduled_retraining_at_a_cold_start_waits_for_its_inputs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = ColdStartJobs(["EURUSD"], failures=3)
    jobs.stale = ["EURUSD"]
    scheduler = RetrainScheduler(jobs, interval_s=3600, retry_initial_s=0.02, retry_max_s=0.05)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="services.training.retraining"):
        await scheduler.start()
        await eventually(lambda: jobs.checks == 2)
        # a failed run is reported as failed, not as a run
        assert scheduler.last_check is None and scheduler.last_job_id is None
        assert "unavailable" in scheduler.last_error
        assert scheduler.next_check is not None
        await eventually(lambda: len(jobs.jobs) == 1, within_s=2)  # retried with backoff, not an hour later
        await scheduler.stop()
    assert scheduler.last_check is not None and scheduler.last_error == ""
    assert scheduler.last_job_id == jobs.jobs[0].job_id
    assert not any(r.exc_info for r in caplog.records)  # no traceback for an input not ready yet
