"""Training jobs: a resource you can create, get, list, cancel and watch (AIP-151 style).

One job trains one or more symbols, one after another, in the training worker process
(services.forecast.worker). Jobs run one at a time in submission order; the worker stays warm for
`worker_idle_s` between jobs. Every state change is published to watchers as a `JobEvent` carrying
a full snapshot of the job, so a slow watcher may skip intermediate progress events without losing
state, and a late watcher starts from a SNAPSHOT event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pandas as pd

from services.forecast.registry import ModelRegistry, check_symbol
from services.forecast.settings import ForecastSettings
from services.forecast.sources import CandleSource, SymbolInfo
from services.forecast.training import TrainTask
from services.forecast.worker import TaskFailed, TrainingWorker, WorkerCrashed, WorkerOptions
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """Life cycle of a job and of each of its symbols (kitrading.common.v1.JobState names)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # per symbol: the model was fresh enough

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobEventType(StrEnum):
    SNAPSHOT = "SNAPSHOT"  # first event of every watch: the current state
    PROGRESS = "PROGRESS"  # a training step, a validation loss or a phase change of the symbol
    SYMBOL = "SYMBOL"  # a symbol changed state
    JOB = "JOB"  # the job changed state (the last event of a watch is a terminal JOB event)


@dataclass
class SymbolProgress:
    """Per-symbol state inside a job. `message` says why a symbol was skipped or failed."""

    symbol: str
    state: JobState = JobState.QUEUED
    phase: str = ""
    step: int = 0
    max_steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    version: str | None = None
    message: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass
class TrainingJob:
    """A training job. `step`/`max_steps` count optimizer steps over all its symbols;
    `eta_seconds` estimates the time left (None until the first steps are seen)."""

    job_id: str
    state: JobState
    trigger: str
    force: bool
    symbols: list[SymbolProgress]
    create_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    current_symbol: str | None = None
    step: int = 0
    max_steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    eta_seconds: float | None = None
    error: str = ""

    def symbol(self, name: str) -> SymbolProgress:
        return next(s for s in self.symbols if s.symbol == name)

    def snapshot(self) -> TrainingJob:
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class JobEvent:
    type: JobEventType
    job: TrainingJob
    sequence: int
    symbol: str | None = None
    detail: str = ""


@dataclass
class _Run:
    """Bookkeeping of a job that is not finished."""

    cancel: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    symbol_started: float = 0.0
    base_step: int = 0  # job steps of the symbols before the current one
    symbol_durations: list[float] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


WorkerFactory = Callable[[WorkerOptions], TrainingWorker]


class JobManager:
    """Creates and runs training jobs; see the module docstring."""

    def __init__(
        self,
        settings: ForecastSettings,
        source: CandleSource,
        registry: ModelRegistry,
        *,
        worker_factory: WorkerFactory = TrainingWorker,
        subscriber_queue: int = 256,
    ) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry
        self._worker_factory = worker_factory
        self._worker: TrainingWorker | None = None
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._runs: dict[str, _Run] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._subscriber_queue = subscriber_queue
        self._sequence = 0
        self._runner: asyncio.Task[None] | None = None
        self._running: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Remove staging leftovers of killed workers and start running queued jobs."""
        removed = await asyncio.to_thread(self.registry.clean_staging)
        if removed:
            log.warning("removed %d unfinished model directories left by a killed worker", len(removed))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_forever(), name="forecast-jobs")

    async def stop(self) -> None:
        """Cancel unfinished jobs and stop the worker."""
        for job_id in list(self._runs):
            with contextlib.suppress(NotFound):
                await self.cancel(job_id)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None

    @property
    def worker_info(self) -> dict[str, Any]:
        """What the running worker reported at start (pid, nice, threads, accelerator), or {}."""
        return dict(self._worker.info) if self._worker is not None and self._worker.alive else {}

    @property
    def worker_pid(self) -> int | None:
        """pid of the training worker process, when one is running."""
        return self._worker.pid if self._worker is not None and self._worker.alive else None

    # ---- create ---------------------------------------------------------------------------------

    async def train(
        self, symbols: Sequence[str], *, force: bool = True, background: bool = True, trigger: str = "manual"
    ) -> TrainingJob:
        """Train the given symbols. NotFound for a symbol the Data service does not know.

        background=False waits for the job to finish and returns its final state.
        """
        if not symbols:
            raise InvalidArgument("symbols", "at least one symbol is required")
        names = list(dict.fromkeys(check_symbol(s) for s in symbols))
        for name in names:
            if await self.source.get_symbol(name) is None:
                raise NotFound(
                    f"symbol {name} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": name}
                )
        return await self._submit(names, force=force, background=background, trigger=trigger)

    async def train_all(
        self, *, force: bool = False, background: bool = True, trigger: str = "manual"
    ) -> TrainingJob:
        """Train every active symbol; with force=False a symbol is SKIPPED when its model is younger
        than NHITS_AUTO_RETRAIN_DAYS and no candle newer than its training data exists."""
        names = [s.symbol for s in await self.source.list_symbols() if s.active]
        return await self._submit(names, force=force, background=background, trigger=trigger)

    async def _submit(self, names: list[str], *, force: bool, background: bool, trigger: str) -> TrainingJob:
        if self._runner is None:
            raise FailedPrecondition("the training job runner is not started", reason="NOT_STARTED")
        steps = self.settings.nhits.max_steps
        job = TrainingJob(
            job_id=uuid.uuid4().hex[:16],
            state=JobState.QUEUED,
            trigger=trigger,
            force=force,
            symbols=[SymbolProgress(name, max_steps=steps) for name in names],
            create_time=_now(),
            max_steps=steps * len(names),
        )
        self._jobs[job.job_id] = job
        self._runs[job.job_id] = _Run()
        self._trim()
        self._publish(job, JobEventType.JOB)
        self._queue.put_nowait(job.job_id)
        if not background:
            return await self.wait(job.job_id)
        return job.snapshot()

    # ---- read -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> TrainingJob:
        try:
            return self._jobs[job_id].snapshot()
        except KeyError:
            raise NotFound(f"training job {job_id!r} not found", reason="JOB_NOT_FOUND") from None

    def list_jobs(
        self, *, page_size: int = 50, page_token: str = "", states: Sequence[JobState] = ()
    ) -> tuple[list[TrainingJob], str]:
        """Jobs newest first, paginated: returns (page, next_page_token or "")."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        page_size = min(page_size or 50, 1000)
        try:
            offset = int(page_token or "0")
        except ValueError:
            raise InvalidArgument("page_token", "invalid page token") from None
        jobs = [j for j in reversed(self._jobs.values()) if not states or j.state in states]
        page = jobs[offset : offset + page_size]
        more = offset + page_size < len(jobs)
        return [j.snapshot() for j in page], str(offset + page_size) if more else ""

    def current(self) -> TrainingJob | None:
        """The running job, else the newest queued one, else None."""
        if self._running is not None:
            return self.get(self._running)
        queued = [j for j in self._jobs.values() if j.state is JobState.QUEUED]
        return queued[0].snapshot() if queued else None

    def latest(self) -> TrainingJob | None:
        """The current job, else the most recently created one (for "training progress")."""
        current = self.current()
        if current is not None:
            return current
        return next(reversed(self._jobs.values())).snapshot() if self._jobs else None

    def active_count(self) -> int:
        """Jobs queued or running."""
        return sum(1 for j in self._jobs.values() if not j.state.terminal)

    async def wait(self, job_id: str) -> TrainingJob:
        """Wait until the job is finished and return it (bound it with `asyncio.timeout`)."""
        self.get(job_id)
        run = self._runs.get(job_id)
        if run is not None:
            await run.done.wait()
        return self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[JobEvent]:
        """Events of one job: a SNAPSHOT first, then live events until a terminal JOB event."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"training job {job_id!r} not found", reason="JOB_NOT_FOUND")
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=self._subscriber_queue)
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            snapshot = job.snapshot()
            yield JobEvent(JobEventType.SNAPSHOT, snapshot, self._sequence)
            if snapshot.state.terminal:
                return
            while True:
                event = await queue.get()
                yield event
                if event.type is JobEventType.JOB and event.job.state.terminal:
                    return
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subscribers[job_id]

    # ---- cancel ---------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> TrainingJob:
        """Cancel a queued or running job (kills the worker if it is training for it). Cancelling
        a finished job changes nothing."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"training job {job_id!r} not found", reason="JOB_NOT_FOUND")
        run = self._runs.get(job_id)
        if run is None or job.state.terminal:
            return job.snapshot()
        run.cancel = True
        if job.state is JobState.QUEUED:
            self._finish(job, JobState.CANCELLED, "cancelled before it started")
        elif self._worker is not None:
            self._worker.kill()
            await self.wait(job_id)
        return self.get(job_id)

    # ---- staleness ------------------------------------------------------------------------------

    def model_age_days(self, symbol: str) -> float | None:
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return None
        return (_now() - version.created_at).total_seconds() / 86400

    def freshness(self, symbol: str, last_candle: pd.Timestamp | None) -> str:
        """Why a force=False retrain may be skipped ("" when it must train)."""
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return ""
        age = (_now() - version.created_at).total_seconds() / 86400
        if age >= self.settings.auto_retrain_days:
            return ""
        trained_until = version.metadata.get("data", {}).get("last_time")
        if last_candle is not None and trained_until and last_candle > pd.Timestamp(trained_until):
            return ""
        return f"model {version.version} is {age:.1f} days old and no newer candles exist"

    async def stale_symbols(self) -> list[str]:
        """Active symbols without a model or with one older than NHITS_AUTO_RETRAIN_DAYS."""
        out = []
        for info in await self.source.list_symbols():
            if not info.active:
                continue
            age = self.model_age_days(info.symbol)
            if age is None or age >= self.settings.auto_retrain_days:
                out.append(info.symbol)
        return out

    # ---- running --------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            try:
                job_id = await asyncio.wait_for(self._queue.get(), self.settings.worker_idle_s)
            except TimeoutError:
                if self._worker is not None:
                    await self._worker.stop()
                    self._worker = None
                continue
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED:
                continue
            self._running = job_id
            try:
                await self._run_job(job, self._runs[job_id])
            except Exception as exc:  # a bug here must not stop the runner
                log.exception("training job %s crashed", job_id)
                self._finish(job, JobState.FAILED, f"internal error: {type(exc).__name__}")
            finally:
                self._running = None

    async def _ensure_worker(self) -> TrainingWorker:
        if self._worker is not None and self._worker.alive:
            return self._worker
        s = self.settings
        options = WorkerOptions(
            models_dir=s.models_dir,
            nice=s.worker_nice,
            threads=s.worker_threads,
            use_gpu=s.use_gpu,
            gpu_memory_fraction=s.gpu_memory_fraction,
        )
        worker = self._worker_factory(options)
        await worker.start()
        self._worker = worker
        return worker

    async def _run_job(self, job: TrainingJob, run: _Run) -> None:
        job.state = JobState.RUNNING
        job.start_time = _now()
        self._publish(job, JobEventType.JOB)
        for sp in job.symbols:
            if run.cancel:
                break
            await self._run_symbol(job, run, sp)
        if run.cancel:
            self._finish(job, JobState.CANCELLED, "cancelled")
            return
        failed = [s for s in job.symbols if s.state is JobState.FAILED]
        if failed:
            summary = "; ".join(f"{s.symbol}: {s.message}" for s in failed)
            self._finish(
                job, JobState.FAILED, f"{len(failed)} of {len(job.symbols)} symbols failed: {summary}"
            )
        else:
            self._finish(job, JobState.SUCCEEDED)

    def _set_symbol(self, job: TrainingJob, sp: SymbolProgress, state: JobState, message: str = "") -> None:
        sp.state = state
        sp.message = message
        if state is JobState.RUNNING:
            sp.start_time = _now()
        elif state.terminal:
            sp.end_time = _now()
            sp.phase = ""
            if state is not JobState.SUCCEEDED:
                # Steps this symbol will never take leave the job total.
                job.max_steps -= max(0, sp.max_steps - sp.step)
        self._publish(job, JobEventType.SYMBOL, sp.symbol)

    async def _run_symbol(self, job: TrainingJob, run: _Run, sp: SymbolProgress) -> None:
        job.current_symbol = sp.symbol
        sp.phase = "fetching"
        run.symbol_started = time.monotonic()
        self._set_symbol(job, sp, JobState.RUNNING)
        try:
            info = await self.source.get_symbol(sp.symbol)
            if info is None:
                self._set_symbol(job, sp, JobState.FAILED, "symbol not found")
                return
            timeframe = info.timeframe or self.settings.timeframe
            candles = await self.source.fetch(sp.symbol, timeframe)
        except Exception as exc:
            self._set_symbol(job, sp, JobState.FAILED, f"could not read candles: {exc}")
            return
        if run.cancel:
            return
        last = pd.Timestamp(pd.to_datetime(candles["time"], utc=True).max()) if len(candles) else None
        if not job.force:
            reason = self.freshness(sp.symbol, last)
            if reason:
                self._set_symbol(job, sp, JobState.SKIPPED, reason)
                return
        task = self._task(job, info, timeframe, candles)
        run.base_step = job.step

        def on_event(kind: str, payload: dict[str, Any]) -> None:
            self._on_progress(job, run, sp, kind, payload)

        try:
            worker = await self._ensure_worker()
            if run.cancel:  # cancelled while the worker was starting
                self._set_symbol(job, sp, JobState.CANCELLED, "cancelled")
                return
            result = await worker.run(task, on_event)
        except TaskFailed as exc:
            self._set_symbol(job, sp, JobState.FAILED, str(exc))
        except WorkerCrashed as exc:
            self._worker = None
            # A worker killed while publishing leaves a hidden staging directory; drop it.
            await asyncio.to_thread(self.registry.clean_staging)
            if run.cancel:
                self._set_symbol(job, sp, JobState.CANCELLED, "cancelled while training")
            else:
                self._set_symbol(job, sp, JobState.FAILED, str(exc))
        else:
            sp.version = result["version"]
            sp.step = sp.max_steps = max(sp.step, result["metadata"]["training"]["steps"])
            job.step = run.base_step + sp.step
            run.symbol_durations.append(time.monotonic() - run.symbol_started)
            self._set_symbol(job, sp, JobState.SUCCEEDED)

    def _task(self, job: TrainingJob, info: SymbolInfo, timeframe: str, candles: pd.DataFrame) -> TrainTask:
        s = self.settings
        return TrainTask(
            job_id=job.job_id,
            symbol=info.symbol,
            asset_class=info.asset_class,
            timeframe=timeframe,
            candles=candles,
            config=s.nhits,
            eval_windows=s.eval_windows,
            eval_step=s.eval_step,
            calibration_windows=s.calibration_windows,
            min_train_windows=s.min_train_windows,
            keep_versions=s.keep_versions,
            extra_metadata={"trigger": job.trigger},
        )

    def _on_progress(
        self,
        job: TrainingJob,
        run: _Run,
        sp: SymbolProgress,
        kind: str,
        payload: dict[str, Any],
    ) -> None:
        if kind == "phase":
            sp.phase = str(payload["phase"])
        else:
            sp.step = int(payload.get("step", sp.step))
            sp.max_steps = int(payload.get("max_steps", sp.max_steps))
            if payload.get("train_loss") is not None:
                sp.train_loss = job.train_loss = float(payload["train_loss"])
            if payload.get("valid_loss") is not None:
                sp.valid_loss = job.valid_loss = float(payload["valid_loss"])
            job.step = run.base_step + sp.step
            job.eta_seconds = self._eta(job, run, sp)
        self._publish(job, JobEventType.PROGRESS, sp.symbol, kind)

    def _eta(self, job: TrainingJob, run: _Run, sp: SymbolProgress) -> float | None:
        if sp.step <= 0:
            return None
        elapsed = time.monotonic() - run.symbol_started
        this_symbol = elapsed / sp.step * sp.max_steps
        per_symbol = (
            sum(run.symbol_durations) / len(run.symbol_durations) if run.symbol_durations else this_symbol
        )
        remaining = sum(1 for s in job.symbols if s.state is JobState.QUEUED)
        return max(0.0, this_symbol - elapsed) + remaining * per_symbol

    def _finish(self, job: TrainingJob, state: JobState, error: str = "") -> None:
        for sp in job.symbols:
            if not sp.state.terminal:
                self._set_symbol(
                    job, sp, JobState.CANCELLED if state is JobState.CANCELLED else JobState.FAILED, error
                )
        job.state = state
        job.error = "" if state is JobState.SUCCEEDED else error
        job.end_time = _now()
        job.current_symbol = None
        job.eta_seconds = 0.0 if state is JobState.SUCCEEDED else None
        self._publish(job, JobEventType.JOB)
        run = self._runs.pop(job.job_id, None)
        if run is not None:
            run.done.set()

    def _publish(
        self, job: TrainingJob, kind: JobEventType, symbol: str | None = None, detail: str = ""
    ) -> None:
        self._sequence += 1
        subscribers = self._subscribers.get(job.job_id)
        if not subscribers:
            return
        event = JobEvent(kind, job.snapshot(), self._sequence, symbol, detail)
        for queue in subscribers:
            if queue.full():  # drop the oldest: every event carries the full state
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def _trim(self) -> None:
        while len(self._jobs) > self.settings.max_jobs_kept:
            oldest = next((k for k, j in self._jobs.items() if j.state.terminal), None)
            if oldest is None:
                return
            del self._jobs[oldest]
