"""Sync from the users' external market-data API (`EASYINSIGHT_API_URL`) as background jobs.

Wire format (documented in docs/data.md):

    GET {base}/api/v1/candles?symbol=EURUSD&timeframe=H1&since=2018-02-07T15:00:00Z&limit=1000

    200 {"symbol": "EURUSD", "timeframe": "H1",
         "candles": [{"time": "2018-02-07T16:00:00Z", "open": 1.2261, "high": 1.2275,
                      "low": 1.2255, "close": 1.2270, "volume": 1543.0}, ...],
         "next_since": "2018-02-07T20:00:00Z"}          # or null on the last page

`since` is exclusive (only bars with time > since) and omitted for the whole history; candles are
oldest first; `next_since` is passed as the next `since` until it is null. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff (bounded); other 4xx and malformed bodies
fail the symbol at once. Every page is upserted idempotently in its own transaction, so a job that
fails half-way keeps what it fetched and the next (incremental) sync continues from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from services.data.events import EventBus
from services.data.ingest import CandleIngestor, as_utc
from services.data.models import (
    Candle,
    EventType,
    JobState,
    NewEvent,
    Page,
    SyncFinished,
    SyncJob,
    SyncStatus,
    SyncSymbolResult,
    Timeframe,
)
from services.runtime.pagination import decode_token, encode_token, resolve_page_size
from services.data.settings import DataSettings
from services.data.storage import Repository
from services.runtime.database import DatabasePool
from services.runtime.errors import DomainError, FailedPrecondition, NotFound

logger = logging.getLogger(__name__)

CANDLES_PATH = "/api/v1/candles"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class SourceError(Exception):
    """The external API failed for good (after retries, or with an error that retrying cannot fix)."""


@dataclass(frozen=True, slots=True)
class CandlePage:
    """One response of the candles endpoint: bars oldest first and where to continue (None: done)."""

    candles: list[Candle]
    next_since: datetime | None


def redact_source(url: str) -> str:
    """The source URL without any user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise SourceError(f"{what} must be an ISO 8601 string")
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise SourceError(f"{what} is not ISO 8601: {value!r}") from exc


def _parse_number(item: dict[str, Any], key: str, index: int, default: float | None = None) -> float:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(f"candles[{index}].{key} must be a number")
    return float(value)


def parse_page(body: Any, symbol: str, timeframe: Timeframe) -> CandlePage:
    """Validate the JSON shape of one response (not the candle rules, which ingestion checks)."""
    if not isinstance(body, dict) or not isinstance(body.get("candles"), list):
        raise SourceError("response must be an object with a 'candles' list")
    if body.get("symbol") not in (None, symbol) or body.get("timeframe") not in (None, timeframe.value):
        raise SourceError(f"response is for {body.get('symbol')}/{body.get('timeframe')}, not {symbol}")
    candles = []
    for i, item in enumerate(body["candles"]):
        if not isinstance(item, dict):
            raise SourceError(f"candles[{i}] must be an object")
        candles.append(
            Candle(
                _parse_time(item.get("time"), f"candles[{i}].time"),
                _parse_number(item, "open", i),
                _parse_number(item, "high", i),
                _parse_number(item, "low", i),
                _parse_number(item, "close", i),
                _parse_number(item, "volume", i, 0.0),
            )
        )
    next_since = body.get("next_since")
    return CandlePage(candles, None if next_since is None else _parse_time(next_since, "next_since"))


class EasyInsightClient:
    """HTTP client of the candles endpoint with bounded exponential-backoff retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._retries = retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self.requests = 0  # attempts made, for tests and metrics

    async def close(self) -> None:
        await self._http.aclose()

    async def fetch_candles(
        self, symbol: str, timeframe: Timeframe, since: datetime | None, limit: int
    ) -> CandlePage:
        """One page of bars with time > `since` (all history when None), at most `limit`."""
        params: dict[str, str | int] = {"symbol": symbol, "timeframe": timeframe.value, "limit": limit}
        if since is not None:
            params["since"] = since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        response = await self._get(self._base + CANDLES_PATH, params)
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError("response is not JSON") from exc
        return parse_page(body, symbol, timeframe)

    async def _get(self, url: str, params: dict[str, str | int]) -> httpx.Response:
        last_error = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt))
            self.requests += 1
            try:
                response = await self._http.get(url, params=params)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise SourceError(f"HTTP {response.status_code} from {redact_source(self._base)}")
            return response
        raise SourceError(f"gave up after {self._retries + 1} attempts: {last_error}")

    def _delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): backoff * 2^(attempt-1), capped."""
        return float(min(self._backoff_max_s, self._backoff_s * math.pow(2, attempt - 1)))


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
