"""Sync from the users' market-data API as background jobs (one at a time, persisted in `data.sync_jobs`).

Each symbol is fetched page by page (`services/data/easyinsight.py`) and every page is upserted
idempotently in its own transaction, so a job that fails half-way keeps what it fetched and the next
(incremental) sync continues from there. Why this is not the shared training runner: docs/data.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from services.data.easyinsight import EasyInsightClient, SourceError, redact_source
from services.data.events import EventBus
from services.data.ingest import CandleIngestor
from services.data.models import (
    EventType,
    NewEvent,
    Page,
    SyncFinished,
    SyncJob,
    SyncStatus,
    SyncSymbolResult,
    Timeframe,
)
from services.data.settings import DataSettings
from services.data.storage import Repository
from services.runtime.database import DatabasePool
from services.runtime.errors import DomainError, FailedPrecondition, NotFound
from services.runtime.jobs import JobState
from services.runtime.pagination import decode_token, encode_token, resolve_page_size

logger = logging.getLogger(__name__)


class SyncManager:
    """Starts, runs (one at a time, in the background), persists and reports sync jobs."""

    def __init__(
        self, pool: DatabasePool, repo: Repository, ingestor: CandleIngestor, settings: DataSettings
    ):
        self._pool = pool
        self._repo = repo
        self._ingestor = ingestor
        self._settings = settings
        self._run_lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._progress: dict[str, SyncJob] = {}  # latest state of running jobs
        self._periodic: asyncio.Task[None] | None = None

    @property
    def source_url(self) -> str | None:
        return self._settings.easyinsight_api_url

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    async def start(self) -> None:
        """Fail jobs a previous process left unfinished; start the periodic sync if configured."""
        async with self._pool.acquire() as conn:
            failed = await self._repo.fail_unfinished_jobs(conn, "interrupted: the Data service restarted")
        if failed:
            logger.warning("marked %d interrupted sync jobs as failed", failed)
        if self._settings.sync_interval_s > 0 and self.source_url:
            self._periodic = asyncio.create_task(self._run_periodic(), name="sync-periodic")

    async def close(self) -> None:
        """Cancel the periodic loop and running jobs (they are saved as CANCELLED, best effort)."""
        tasks = [t for t in (self._periodic, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- API --------------------------------------------------------------------------------------------

    async def start_job(
        self, symbols: Sequence[str] = (), timeframe: Timeframe | None = None, full: bool = False
    ) -> SyncJob:
        """Queue a job for `symbols` (empty: every active symbol) and run it in the background."""
        if not self.source_url:
            raise FailedPrecondition(
                "no market-data source configured: set EASYINSIGHT_API_URL",
                reason="SYNC_SOURCE_NOT_CONFIGURED",
            )
        timeframe = timeframe or self._settings.sync_default_timeframe
        async with self._pool.acquire() as conn:
            chosen = await self._resolve_symbols(conn, symbols)
            job = await self._repo.insert_job(
                conn, SyncJob(uuid.uuid4().hex, JobState.QUEUED, tuple(chosen), timeframe, full)
            )
        task = asyncio.create_task(self._run(job), name=f"sync-{job.job_id}")
        self._tasks[job.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.job_id, None))
        return job

    async def wait(self, job_id: str) -> SyncJob:
        """Wait for a job started by this process to finish, then return it."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.get_job(job_id)

    async def get_job(self, job_id: str) -> SyncJob:
        async with self._pool.acquire() as conn:
            job = await self._repo.get_job(conn, job_id)
        if job is None:
            raise NotFound(f"sync job {job_id} not found", reason="SYNC_JOB_NOT_FOUND")
        return job

    async def list_jobs(self, page_size: int = 0, page_token: str = "") -> Page[SyncJob]:
        limit = resolve_page_size(page_size, 100, 1000)
        key = decode_token(page_token, "sync_jobs", [])
        before = (datetime.fromisoformat(key[0]), str(key[1])) if key else None
        async with self._pool.acquire() as conn:
            jobs = await self._repo.list_jobs(conn, before, limit + 1)
        token = ""
        if len(jobs) > limit:
            last = jobs[limit - 1]
            assert last.create_time is not None
            token = encode_token("sync_jobs", [], [last.create_time.isoformat(), last.job_id])
        return Page(tuple(jobs[:limit]), token)

    async def status(self) -> SyncStatus:
        async with self._pool.acquire() as conn:
            latest = await self._repo.list_jobs(conn, None, 1)
        return SyncStatus(
            source_configured=bool(self.source_url),
            source_url=redact_source(self.source_url or ""),
            running=self.running,
            latest_job=latest[0] if latest else None,
        )

    # -- running ----------------------------------------------------------------------------------------

    async def _resolve_symbols(self, conn: Any, symbols: Sequence[str]) -> list[str]:
        if not symbols:
            return await self._repo.active_symbols(conn)
        unique = list(dict.fromkeys(symbols))
        existing = await self._repo.existing_symbols(conn, unique)
        missing = [s for s in unique if s not in existing]
        if missing:
            raise NotFound(f"unknown symbols: {', '.join(missing)}", reason="SYMBOL_NOT_FOUND")
        return unique

    async def _run(self, job: SyncJob) -> None:
        self._progress[job.job_id] = job
        try:
            async with self._run_lock:
                await self._save(replace(job, state=JobState.RUNNING, start_time=datetime.now(UTC)))
                job = await self._run_symbols(self._progress[job.job_id])
        except asyncio.CancelledError:
            job = replace(
                self._progress[job.job_id],
                state=JobState.CANCELLED,
                error="cancelled: the Data service stopped",
            )
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(job))
            raise
        except Exception as exc:
            logger.exception("sync job %s failed", job.job_id)
            job = replace(
                self._progress[job.job_id], state=JobState.FAILED, error=f"{type(exc).__name__}: {exc}"
            )
        finally:
            self._progress.pop(job.job_id, None)
        await self._finish(job)

    async def _run_symbols(self, job: SyncJob) -> SyncJob:
        client = EasyInsightClient(
            self.source_url or "",
            timeout_s=self._settings.sync_timeout_s,
            retries=self._settings.sync_retries,
            backoff_s=self._settings.sync_backoff_s,
            backoff_max_s=self._settings.sync_backoff_max_s,
        )
        try:
            for symbol in job.symbols:
                result = await self._sync_symbol(client, symbol, job.timeframe, job.full)
                failed = result.state is JobState.FAILED
                job = await self._save(
                    replace(
                        job,
                        results=(*job.results, result),
                        candles_upserted=job.candles_upserted + result.candles_upserted,
                        symbols_done=job.symbols_done + (not failed),
                        symbols_failed=job.symbols_failed + failed,
                    )
                )
        finally:
            await client.close()
        if job.symbols_failed:
            error = f"{job.symbols_failed} of {len(job.symbols)} symbols failed"
            return replace(job, state=JobState.FAILED, error=error)
        return replace(job, state=JobState.SUCCEEDED)

    async def _sync_symbol(
        self, client: EasyInsightClient, symbol: str, timeframe: Timeframe, full: bool
    ) -> SyncSymbolResult:
        upserted = 0
        try:
            since = None
            if not full:
                async with self._pool.acquire() as conn:
                    series = await self._repo.get_series(conn, symbol, timeframe)
                since = None if series is None else series.last_time
            for _ in range(self._settings.sync_max_pages):
                page = await client.fetch_candles(symbol, timeframe, since, self._settings.sync_page_limit)
                if page.candles:
                    upserted += (await self._ingestor.ingest(symbol, timeframe, page.candles)).upserted
                if page.next_since is None or not page.candles:
                    break
                if since is not None and page.next_since <= since:
                    raise SourceError("next_since does not advance")
                since = page.next_since
        except (SourceError, DomainError) as exc:
            message = exc.message if isinstance(exc, DomainError) else str(exc)
            logger.warning("sync of %s %s failed: %s", symbol, timeframe.value, message)
            return SyncSymbolResult(symbol, JobState.FAILED, upserted, message)
        return SyncSymbolResult(symbol, JobState.SUCCEEDED, upserted)

    async def _save(self, job: SyncJob) -> SyncJob:
        """Persist progress; the latest state is also kept in memory for the error paths."""
        self._progress[job.job_id] = job
        async with self._pool.acquire() as conn:
            return await self._repo.save_job(conn, job)

    async def _finish(self, job: SyncJob) -> None:
        """Persist the final state with a SYNC_FINISHED event; waits up to 60 s for the database."""
        job = replace(job, end_time=datetime.now(UTC))
        details = SyncFinished(job.job_id, job.state, job.candles_upserted)
        for _ in range(12):
            try:
                async with self._pool.transaction() as conn:
                    await self._repo.save_job(conn, job)
                    await EventBus.write(conn, [NewEvent(EventType.SYNC_FINISHED, details=details)])
                return
            except DomainError:
                await self._pool.wait_healthy(5.0)
        logger.error("could not save the final state of sync job %s", job.job_id)

    async def _run_periodic(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sync_interval_s)
            if self.running or not self._pool.healthy:
                continue
            try:
                await self.start_job()
            except DomainError as exc:
                logger.warning("periodic sync not started: %s", exc.message)
