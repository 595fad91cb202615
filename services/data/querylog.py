"""Query logs: every Data call is recorded cheaply and written to `data.query_logs` in batches.

`record()` only appends to an in-memory buffer (no I/O, never raises); a background task flushes the
buffer every `flush_s` seconds with one multi-row INSERT. While the database is down rows stay
buffered (at most `buffer_max`; the oldest are dropped and counted in `dropped`). Rows older than
`retention_days` are deleted once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from services.data.models import Page, QueryLog
from services.runtime.database import DatabasePool
from services.runtime.errors import DomainError
from services.runtime.pagination import decode_token, encode_token, resolve_page_size

logger = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class _Pending:
    method: str
    parameters: str
    duration_ms: float
    rows: int
    code: str
    time: datetime


def short_method(method: str) -> str:
    """`/kitrading.data.v1.DataService/ListCandles` -> `ListCandles`."""
    return method.rsplit("/", 1)[-1]


class QueryLogRecorder:
    """Buffers query logs and writes them in the background; lists them newest first."""

    def __init__(
        self,
        pool: DatabasePool,
        *,
        flush_s: float = 1.0,
        buffer_max: int = 10_000,
        retention_days: float = 30.0,
    ) -> None:
        self._pool = pool
        self._flush_s = flush_s
        self._retention_days = retention_days
        self._next_prune = 0.0
        self._buffer: deque[_Pending] = deque(maxlen=buffer_max)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="query-log-flush")

    async def close(self) -> None:
        """Stop the background task and flush what is left (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    def record(self, method: str, parameters_json: str, duration_ms: float, rows: int, code: str) -> None:
        """Queue one log row; O(1), no I/O, never raises. `duration_ms` in milliseconds."""
        try:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(
                _Pending(
                    str(method),
                    str(parameters_json),
                    float(duration_ms),
                    int(rows),
                    str(code),
                    datetime.now(UTC),
                )
            )
        except Exception:  # a log must never fail the call it describes
            logger.exception("could not record query log")

    async def flush(self) -> int:
        """Write the buffered rows now; returns how many were written. Raises `Unavailable`.

        On failure the rows go back to the front of the buffer.
        """
        async with self._lock:
            batch = list(self._buffer)
            if not batch:
                return 0
            self._buffer.clear()
            try:
                async with self._pool.acquire() as conn:
                    await conn.executemany(
                        """INSERT INTO data.query_logs
                             (method, short_method, parameters, duration_ms, rows, code, create_time)
                           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                        [
                            (
                                p.method,
                                short_method(p.method),
                                p.parameters,
                                p.duration_ms,
                                p.rows,
                                p.code,
                                p.time,
                            )
                            for p in batch
                        ],
                    )
            except BaseException:
                self._requeue(batch)
                raise
            return len(batch)

    def _requeue(self, batch: list[_Pending]) -> None:
        rows = batch + list(self._buffer)
        keep = self._buffer.maxlen or len(rows)
        self.dropped += max(0, len(rows) - keep)
        self._buffer.clear()
        self._buffer.extend(rows[-keep:])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            if not self._pool.healthy:
                continue
            try:
                await self.flush()
                await self._prune()
            except DomainError as exc:
                logger.debug("query log flush deferred: %s", exc)
            except Exception:
                logger.exception("query log flush failed")

    async def _prune(self) -> None:
        """Delete logs older than the retention, at most once an hour (0 days: keep everything)."""
        now = time.monotonic()
        if self._retention_days <= 0 or now < self._next_prune:
            return
        self._next_prune = now + 3600.0
        async with self._pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM data.query_logs WHERE create_time < now() - make_interval(secs => $1)",
                self._retention_days * 86400.0,
            )

    async def list(self, page_size: int = 0, page_token: str = "", method: str = "") -> Page[QueryLog]:
        """Logs newest first, optionally only `method` (full name or short name like `ListCandles`)."""
        limit = resolve_page_size(page_size, DEFAULT_PAGE, MAX_PAGE)
        key = decode_token(page_token, "query_logs", [method])
        await self.flush_quietly()
        before = int(key[0]) if key else None
        args: list[object] = [limit + 1]
        clauses = ["TRUE"]
        if method:
            args.append(method)
            clauses.append(f"{'method' if '/' in method else 'short_method'} = ${len(args)}")
        if before is not None:
            args.append(before)
            clauses.append(f"query_log_id < ${len(args)}")
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT * FROM data.query_logs WHERE {" AND ".join(clauses)}
                    ORDER BY query_log_id DESC LIMIT $1""",
                *args,
            )
        items = [
            QueryLog(
                r["query_log_id"],
                r["method"],
                r["parameters"],
                r["duration_ms"],
                r["rows"],
                r["code"],
                r["create_time"],
            )
            for r in rows[:limit]
        ]
        token = encode_token("query_logs", [method], [items[-1].query_log_id]) if len(rows) > limit else ""
        return Page(tuple(items), token)

    async def flush_quietly(self) -> None:
        """Flush so a list reads its own writes; a failure here is left to the list query itself."""
        with contextlib.suppress(DomainError):
            await self.flush()
