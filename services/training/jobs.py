"""Training jobs of any model: a resource you can create, get, list, cancel and watch (AIP-151).

One `JobRunner` per model service. A job trains one or more keys (symbols, or the model's name) one
after another in the worker process (services.training.worker): the trainer prepares each key's
task in this process, the worker runs it. Jobs run one at a time in submission order; the worker
stays warm for `worker_idle_s` between jobs. A job asked for while an equal one (same keys, force
and options) is queued or running is that job, not a second one; beyond `max_queued_jobs` queued
jobs a new one is RESOURCE_EXHAUSTED with a `retry_after_s` hint. Every change is published to watchers
as a `JobEvent` carrying a full snapshot of the job, so a slow watcher may skip intermediate
progress without losing state, and a late watcher starts from a SNAPSHOT event.
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

from services.runtime import tracing
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.runtime.jobs import JobState
from services.runtime.pagination import paginate
from services.training import metrics as training_metrics
from services.training.events import KIND, Phase, ProgressEvent, Step, Validation
from services.training.trainer import Skip, Trainer, TrainResult
from services.training.worker import TaskFailed, TrainingWorker, WorkerCrashed, WorkerOptions

log = logging.getLogger(__name__)

__all__ = [
    "ItemProgress",
    "JobEvent",
    "JobEventType",
    "JobRunner",
    "JobState",
    "RunnerSettings",
    "TrainingJob",
]


class JobEventType(StrEnum):
    SNAPSHOT = "SNAPSHOT"  # first event of every watch: the current state
    PROGRESS = "PROGRESS"  # a training step, a validation loss or a phase change of an item
    ITEM = "ITEM"  # an item (one key) changed state
    JOB = "JOB"  # the job changed state (the last event of a watch is a terminal JOB event)


@dataclass
class ItemProgress:
    """One key's state inside a job. `message` says why it was skipped or failed."""

    key: str
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
    """A training job of `model`. `step`/`max_steps` count steps over all its items;
    `eta_seconds` estimates the time left (None until the first steps are seen). `background` and
    `timeframe` are what the request that created it asked, kept for every later read."""

    job_id: str
    model: str
    per_symbol: bool
    state: JobState
    trigger: str
    force: bool
    items: list[ItemProgress]
    create_time: datetime
    background: bool = True
    timeframe: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    current: str | None = None
    step: int = 0
    max_steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    eta_seconds: float | None = None
    error: str = ""
    #: Trainer-specific options of the request (e.g. the pattern TCN's symbols), for `prepare`.
    options: dict[str, Any] = field(default_factory=dict)

    def item(self, key: str) -> ItemProgress:
        return next(i for i in self.items if i.key == key)

    @property
    def keys(self) -> list[str]:
        return [i.key for i in self.items]

    def snapshot(self) -> TrainingJob:
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """`key` names the item a PROGRESS or ITEM event is about; `progress` is the event itself and
    `detail` its kind ("phase", "step", "validation")."""

    type: JobEventType
    job: TrainingJob
    sequence: int
    key: str | None = None
    detail: str = ""
    progress: ProgressEvent | None = None


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How the runner keeps jobs and isolates its worker (every model service fills one in)."""

    worker: WorkerOptions
    worker_idle_s: float = 60.0
    max_jobs_kept: int = 200
    subscriber_queue: int = 256
    max_queued_jobs: int = 16
    """Jobs waiting to run beyond which a new one is refused (RESOURCE_EXHAUSTED)."""
    default_retry_after_s: float = 60.0
    """The retry hint before any job has finished (after: the mean duration of recent jobs)."""


@dataclass
class _Run:
    """Bookkeeping of a job that is not finished."""

    cancel: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    item_started: float = 0.0
    base_step: int = 0  # job steps of the items before the current one
    durations: list[float] = field(default_factory=list)
    training: bool = False  # a task is in the worker
    #: `traceparent` of the request that queued the job (tracing on): the job's spans continue it.
    trace: dict[str, str] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


WorkerFactory = Callable[[WorkerOptions], TrainingWorker]


class JobRunner:
    """Creates and runs training jobs of one trainer; see the module docstring."""

    def __init__(
        self, trainer: Trainer, settings: RunnerSettings, *, worker_factory: WorkerFactory = TrainingWorker
    ) -> None:
        self.trainer = trainer
        self.settings = settings
        self._worker_factory = worker_factory
        self._worker: TrainingWorker | None = None
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._runs: dict[str, _Run] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._sequence = 0
        self._runner: asyncio.Task[None] | None = None
        self._running: str | None = None
        training_metrics.track(self)  # progress gauges, read at scrape time

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, clean: bool = True) -> None:
        """Remove staging leftovers of killed workers (`clean`: an instance that does not hold the
        service's lease leaves them to the one that does, the only one that trains) and start running
        queued jobs."""
        if clean:
            await self.clean_staging()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_forever(), name=f"{self.trainer.model}-jobs")

    async def clean_staging(self) -> None:
        removed = await asyncio.to_thread(self.trainer.registry.clean_staging)
        if removed:
            log.warning("removed %d unfinished model directories left by a killed worker", len(removed))

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
        self,
        keys: Sequence[str],
        *,
        force: bool = True,
        background: bool = True,
        trigger: str = "manual",
        timeframe: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> TrainingJob:
        """Train the given keys (the trainer validates them: InvalidArgument, NotFound).

        background=False waits for the job to finish and returns its final state. `options` reach
        the trainer's `prepare` as `job.options` (a job with other options is not its twin).
        """
        if not keys:
            raise InvalidArgument(
                "symbols" if self.trainer.per_symbol else "model", "at least one is required"
            )
        names = await self.trainer.check_keys(keys)
        return await self._submit(
            names, force=force, background=background, trigger=trigger, timeframe=timeframe, options=options
        )

    async def train_all(
        self,
        *,
        force: bool = False,
        background: bool = True,
        trigger: str = "manual",
        options: dict[str, Any] | None = None,
    ) -> TrainingJob:
        """Train every key the trainer lists (with force=False its `prepare` may skip fresh ones)."""
        names = await self.trainer.all_keys()
        return await self._submit(
            names, force=force, background=background, trigger=trigger, timeframe=None, options=options
        )

    async def _submit(
        self,
        names: list[str],
        *,
        force: bool,
        background: bool,
        trigger: str,
        timeframe: str | None,
        options: dict[str, Any] | None = None,
    ) -> TrainingJob:
        if self._runner is None:
            raise FailedPrecondition("the training job runner is not started", reason="NOT_STARTED")
        options = dict(options or {})
        same = self._twin(names, force, timeframe, options)
        if same is not None:
            job = same
        else:
            self._admit()
            steps = self.trainer.planned_steps()
            job = TrainingJob(
                job_id=uuid.uuid4().hex[:16],
                model=self.trainer.model,
                per_symbol=self.trainer.per_symbol,
                state=JobState.QUEUED,
                trigger=trigger,
                force=force,
                items=[ItemProgress(name, max_steps=steps) for name in names],
                create_time=_now(),
                background=background,
                timeframe=timeframe,
                max_steps=steps * len(names),
                options=options,
            )
            self._jobs[job.job_id] = job
            self._runs[job.job_id] = _Run(trace=tracing.inject())
            self._trim()
            self._publish(job, JobEventType.JOB)
            self._queue.put_nowait(job.job_id)
        if not background:
            return await self.wait(job.job_id)
        return job.snapshot()

    def _twin(
        self, names: list[str], force: bool, timeframe: str | None, options: dict[str, Any] | None = None
    ) -> TrainingJob | None:
        """A queued or running job (not being cancelled) that would do exactly this, so a repeated
        request does not train twice."""
        for job in self._jobs.values():
            run = self._runs.get(job.job_id)
            if (
                run is not None
                and not run.cancel
                and not job.state.terminal
                and job.keys == names
                and job.force == force
                and job.timeframe == timeframe
                and job.options == (options or {})
            ):
                return job
        return None

    def _admit(self) -> None:
        queued = sum(1 for j in self._jobs.values() if j.state is JobState.QUEUED)
        if queued >= self.settings.max_queued_jobs:
            retry = self.retry_after_s()
            raise ResourceExhausted(
                f"{queued} {self.trainer.model} training jobs are queued (limit "
                f"{self.settings.max_queued_jobs}); retry in about {retry:.0f} s",
                reason="TRAINING_QUEUE_FULL",
                metadata={"retry_after_s": f"{retry:.0f}", "queued": str(queued)},
            )

    def retry_after_s(self) -> float:
        """When a slot in the queue is likely free: the mean duration of the last ten finished jobs
        (the running one ends, the first queued starts), else `default_retry_after_s`; at least 1 s."""
        durations = [
            (j.end_time - j.start_time).total_seconds()
            for j in self._jobs.values()
            if j.state.terminal and j.start_time is not None and j.end_time is not None
        ][-10:]
        if not durations:
            return max(1.0, self.settings.default_retry_after_s)
        return max(1.0, sum(durations) / len(durations))

    # ---- read -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> TrainingJob:
        try:
            return self._jobs[job_id].snapshot()
        except KeyError:
            raise NotFound(f"training job {job_id!r} not found", reason="JOB_NOT_FOUND") from None

    def list_jobs(
        self,
        *,
        page_size: int = 50,
        page_token: str = "",
        states: Sequence[JobState] = (),
        key: str | None = None,
    ) -> tuple[list[TrainingJob], str]:
        """Jobs newest first, optionally only in `states` or training `key`, paginated with the
        runtime's opaque tokens: returns (page, next_page_token or "")."""

        def order(job: TrainingJob) -> list[str]:
            return [job.create_time.isoformat(), job.job_id]

        jobs = sorted(
            (
                j
                for j in self._jobs.values()
                if (not states or j.state in states) and (key is None or key in j.keys)
            ),
            key=order,
            reverse=True,
        )
        page, token = paginate(
            jobs,
            kind=f"{self.trainer.model}-jobs",
            key=order,
            filters=[sorted(states), key],
            page_size=page_size,
            page_token=page_token,
            descending=True,
        )
        return [j.snapshot() for j in page], token

    def active(self) -> list[TrainingJob]:
        """Jobs queued or running, oldest first."""
        return [j.snapshot() for j in self._jobs.values() if not j.state.terminal]

    def last_ended(self) -> TrainingJob | None:
        """The most recently created job that has ended."""
        ended = [j for j in self._jobs.values() if j.state.terminal]
        return ended[-1].snapshot() if ended else None

    def current(self) -> TrainingJob | None:
        """The running job, else the oldest queued one, else None."""
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
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=self.settings.subscriber_queue)
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
        elif run.training and self._worker is not None:
            self._worker.kill()
            await self.wait(job_id)
        else:
            # Preparing or waiting for the worker to start: nothing to kill; the run sees
            # `run.cancel` before it sends a task, and the answer is CANCELLED now, not when the
            # worker is up (a cold start takes seconds).
            self._finish(job, JobState.CANCELLED, "cancelled")
        return self.get(job_id)

    # ---- running --------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that
                # races with a queued item, and stop() would then wait for this loop forever.
                async with asyncio.timeout(self.settings.worker_idle_s):
                    job_id = await self._queue.get()
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
        worker = self._worker_factory(self.settings.worker)
        await worker.start()
        self._worker = worker
        return worker

    async def _run_job(self, job: TrainingJob, run: _Run) -> None:
        with tracing.span(
            f"training job {job.model}",
            parent=run.trace,
            attributes={
                "kitrading.job_id": job.job_id,
                "kitrading.model": job.model,
                "kitrading.trigger": job.trigger,
            },
        ):
            await self._run_items(job, run)

    async def _run_items(self, job: TrainingJob, run: _Run) -> None:
        job.state = JobState.RUNNING
        job.start_time = _now()
        self._publish(job, JobEventType.JOB)
        for item in job.items:
            if run.cancel:
                break
            if item.state.terminal:  # done by an earlier item's run (one model for several keys)
                continue
            with tracing.span(f"train {item.key}", attributes={"kitrading.key": item.key}):
                await self._run_item(job, run, item)
        if run.cancel:
            self._finish(job, JobState.CANCELLED, "cancelled")
            return
        failed = [i for i in job.items if i.state is JobState.FAILED]
        if failed:
            summary = "; ".join(f"{i.key}: {i.message}" for i in failed)
            self._finish(job, JobState.FAILED, f"{len(failed)} of {len(job.items)} failed: {summary}")
        else:
            self._finish(job, JobState.SUCCEEDED)

    def _set_item(self, job: TrainingJob, item: ItemProgress, state: JobState, message: str = "") -> None:
        if item.state.terminal:  # already ended by a cancel that did not wait for the run
            return
        item.state = state
        item.message = message
        if state is JobState.RUNNING:
            item.start_time = _now()
        elif state.terminal:
            item.end_time = _now()
            item.phase = ""
            if state is not JobState.SUCCEEDED:
                # Steps this item will never take leave the job total.
                job.max_steps -= max(0, item.max_steps - item.step)
        self._publish(job, JobEventType.ITEM, item.key)

    async def _run_item(self, job: TrainingJob, run: _Run, item: ItemProgress) -> None:
        job.current = item.key
        item.phase = "preparing"
        run.item_started = time.monotonic()
        self._set_item(job, item, JobState.RUNNING)
        try:
            task = await self.trainer.prepare(item.key, job.snapshot())
        except Exception as exc:
            self._set_item(job, item, JobState.FAILED, str(exc) or type(exc).__name__)
            return
        if run.cancel:
            return
        if isinstance(task, Skip):
            self._set_item(job, item, JobState.SKIPPED, task.reason)
            return
        run.base_step = job.step

        def on_event(event: ProgressEvent) -> None:
            self._on_progress(job, run, item, event)

        try:
            worker = await self._ensure_worker()
            if run.cancel:  # cancelled while the worker was starting
                self._set_item(job, item, JobState.CANCELLED, "cancelled")
                return
            run.training = True
            try:
                result: TrainResult = await worker.run(task, on_event)
            finally:
                run.training = False
        except TaskFailed as exc:
            self._set_item(job, item, JobState.FAILED, str(exc))
        except WorkerCrashed as exc:
            self._worker = None
            # A worker killed while publishing leaves a hidden staging directory; drop it.
            await asyncio.to_thread(self.trainer.registry.clean_staging)
            if run.cancel:
                self._set_item(job, item, JobState.CANCELLED, "cancelled while training")
            else:
                self._set_item(job, item, JobState.FAILED, str(exc))
        else:
            item.version = result.version
            item.step = item.max_steps = max(item.step, result.steps)
            job.step = run.base_step + item.step
            run.durations.append(time.monotonic() - run.item_started)
            self._set_item(job, item, JobState.SUCCEEDED)
            self._mark_published(job, item, result)

    def _mark_published(self, job: TrainingJob, trained: ItemProgress, result: TrainResult) -> None:
        """Items of this job whose key `result` also published are done: same training, their
        own version; their planned steps leave the job total (they train no step of their own)."""
        for other in job.items:
            version = result.published.get(other.key)
            if other is trained or version is None or other.state.terminal:
                continue
            job.max_steps -= other.max_steps
            other.max_steps = other.step = 0
            other.version = version
            other.start_time = trained.start_time
            self._set_item(job, other, JobState.SUCCEEDED, f"trained with {trained.key} in one model")

    def _on_progress(self, job: TrainingJob, run: _Run, item: ItemProgress, event: ProgressEvent) -> None:
        if isinstance(event, Phase):
            item.phase = event.name
        else:
            item.step = event.step
            item.max_steps = event.max_steps
            if isinstance(event, Step) and event.train_loss is not None:
                item.train_loss = job.train_loss = event.train_loss
            if isinstance(event, Step | Validation) and event.valid_loss is not None:
                item.valid_loss = job.valid_loss = event.valid_loss
            job.step = run.base_step + item.step
            job.eta_seconds = self._eta(job, run, item)
        self._publish(job, JobEventType.PROGRESS, item.key, KIND[type(event)], event)

    def _eta(self, job: TrainingJob, run: _Run, item: ItemProgress) -> float | None:
        if item.step <= 0:
            return None
        elapsed = time.monotonic() - run.item_started
        this_item = elapsed / item.step * item.max_steps
        per_item = sum(run.durations) / len(run.durations) if run.durations else this_item
        remaining = sum(1 for i in job.items if i.state is JobState.QUEUED)
        return max(0.0, this_item - elapsed) + remaining * per_item

    def _finish(self, job: TrainingJob, state: JobState, error: str = "") -> None:
        if job.state.terminal:  # a cancel that did not wait already ended it
            return
        for item in job.items:
            if not item.state.terminal:
                self._set_item(
                    job, item, JobState.CANCELLED if state is JobState.CANCELLED else JobState.FAILED, error
                )
        job.state = state
        job.error = "" if state is JobState.SUCCEEDED else error
        job.end_time = _now()
        job.current = None
        job.eta_seconds = 0.0 if state is JobState.SUCCEEDED else None
        self._publish(job, JobEventType.JOB)
        run = self._runs.pop(job.job_id, None)
        if run is not None:
            run.done.set()

    def _publish(
        self,
        job: TrainingJob,
        kind: JobEventType,
        key: str | None = None,
        detail: str = "",
        progress: ProgressEvent | None = None,
    ) -> None:
        self._sequence += 1
        subscribers = self._subscribers.get(job.job_id)
        if not subscribers:
            return
        event = JobEvent(kind, job.snapshot(), self._sequence, key, detail, progress)
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
