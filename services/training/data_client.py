"""The forecast domain's `CandleSource` and `EventStream` over the Data service's gRPC API.

    source = DataServiceSource(service_target("data"))
    await source.start()                      # opens the channel (in the serving event loop)
    domain = ForecastDomain(settings, source, event_stream=source.watch_events)

| protocol call | Data RPC |
|---|---|
| `list_symbols()` | `ListSymbols` (every page) |
| `get_symbol(symbol)` | `GetSymbol` (NOT_FOUND -> None) |
| `fetch(symbol, timeframe, limit=n)` | `ListCandles` columns, newest first, `n` bars (pages of 5000) |
| `fetch(symbol, timeframe)` | `ListCandles` columns, oldest first, every page |
| `watch_events(after_id)` | `WatchEvents(after_event_id=after_id)` |

The candle cache (`cache=True`): the newest bars a forecast asked for are kept per series and
served from memory while `_follow` streams Data's CANDLES_INGESTED / SYMBOL_ADDED / SYMBOL_REMOVED
events, dropping a series' entry on each of its events. Cached bars are trusted only while that
stream follows Data with no gap: it starts after the newest event at start (found with a logarithmic
search over `ListEvents`, `newest_event_id`) and resumes after the last event seen; while it is
down every fetch goes to Data and nothing is cached. A fetch that overlaps an event for its series is
not stored. So a forecast sees a new candle within the event's delivery time (milliseconds), and an
unchanged series costs no Data call. Full histories (training) are never cached.

Every unary call's deadline is its default (`timeout_s`, `fetch_timeout_s` for a full history),
bounded by what is left of the caller's deadline (`services.runtime.deadline.remaining`), so a
forecast RPC never waits on Data longer than its own caller waits for it. Data's errors become
domain errors: NOT_FOUND -> `NotFound` (reason SYMBOL_NOT_FOUND), DEADLINE_EXCEEDED ->
`DeadlineExceeded`, anything else -> `Unavailable` naming the Data service.

A symbol's `timeframe` (the series the model trains on) is the service default (H1) when the
symbol has candles of it, else its longest stored series (GOOG and the other daily samples: D1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pandas as pd

from kitrading.client.errors import error_from_rpc
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import resources_pb2 as data_pb
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from services.runtime.channels import mesh_channel
from services.runtime.deadline import remaining
from services.runtime.errors import DeadlineExceeded, DomainError, NotFound, Unavailable
from services.training.sources import CANDLE_COLUMNS, DataEvent, SymbolInfo

log = logging.getLogger(__name__)

#: Largest ListCandles page the Data service allows.
MAX_PAGE = 5000


def timeframe_name(value: int) -> str | None:
    """`TIMEFRAME_H1` (by number) -> `H1`; unset -> None."""
    if value == market_pb2.TIMEFRAME_UNSPECIFIED:
        return None
    return market_pb2.Timeframe.Name(value).removeprefix("TIMEFRAME_")  # type: ignore[arg-type]


def timeframe_value(name: str) -> market_pb2.Timeframe.ValueType:
    return market_pb2.Timeframe.Value(f"TIMEFRAME_{name.upper()}")


def symbol_info(symbol: data_pb.Symbol, default_timeframe: str) -> SymbolInfo:
    """A Data `Symbol` as the forecast domain sees it (asset class name, active, trained series)."""
    asset = market_pb2.AssetClass.Name(symbol.asset_class).removeprefix("ASSET_CLASS_")
    series = {timeframe_name(s.timeframe): s.count for s in symbol.series if s.count > 0}
    series.pop(None, None)
    timeframe: str | None = None
    if default_timeframe in series:
        timeframe = default_timeframe
    elif series:
        timeframe = max(series.items(), key=lambda item: item[1])[0]
    return SymbolInfo(
        symbol=symbol.symbol,
        asset_class="FX" if asset == "UNSPECIFIED" else asset,
        active=symbol.active,
        timeframe=timeframe,
    )


def candles_frame(candles: Sequence[market_pb2.Candle]) -> pd.DataFrame:
    """Proto candles (any order) -> the candle contract frame, oldest first (one pass over the messages:
    this runs on every forecast)."""
    n = len(candles)
    if n == 0:
        return pd.DataFrame({name: [] for name in CANDLE_COLUMNS}).astype(
            {"time": "datetime64[ns, UTC]", **dict.fromkeys(CANDLE_COLUMNS[1:], "float64")}
        )
    rows = np.array(
        [(c.open, c.high, c.low, c.close, c.volume, c.time.seconds, c.time.nanos) for c in candles],
        dtype=np.float64,
    )
    ns = rows[:, 5].astype(np.int64) * 1_000_000_000 + rows[:, 6].astype(np.int64)
    columns: dict[str, Any] = {"time": pd.DatetimeIndex(ns.astype("datetime64[ns]")).tz_localize("UTC")}
    for i, name in enumerate(CANDLE_COLUMNS[1:]):
        columns[name] = rows[:, i]
    frame = pd.DataFrame(columns)
    if n > 1 and not bool(np.all(np.diff(ns) > 0)):
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    return frame


def columns_frame(pages: Sequence[market_pb2.CandleColumns]) -> pd.DataFrame:
    """Column pages (`ListCandles` with CANDLE_VIEW_COLUMNS, any order) -> the candle contract frame,
    oldest first: numpy reads each packed array whole, nothing runs per bar in Python."""
    if not pages:
        return candles_frame([])

    def column(name: str, dtype: type) -> np.ndarray:
        arrays: list[np.ndarray] = [np.array(getattr(page, name), dtype=dtype) for page in pages]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    micros = column("times_unix_micros", np.int64)
    steps = np.diff(micros)
    order: Any = slice(None)
    if not bool(np.all(steps > 0)):  # newest first (a `limit` read): reversed; else sorted
        order = slice(None, None, -1) if bool(np.all(steps < 0)) else np.argsort(micros, kind="stable")
    times = micros[order].astype("datetime64[us]").astype("datetime64[ns]")
    return pd.DataFrame(
        {
            "time": pd.DatetimeIndex(times, tz="UTC"),
            **{name: column(f"{name}s", np.float64)[order] for name in CANDLE_COLUMNS[1:]},
        },
        copy=False,
    )


def domain_error(exc: grpc.aio.AioRpcError, what: str) -> DomainError:
    """A failed Data call as the domain error the forecast caller should see."""
    error = error_from_rpc(exc)
    if error.code is grpc.StatusCode.NOT_FOUND:
        return NotFound(error.message, reason=error.reason or "SYMBOL_NOT_FOUND")
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the data service did not answer {what} in time", reason="DATA_TIMEOUT")
    return Unavailable(
        f"the data service failed {what}: {error.code.name} {error.message}", reason="DATA_UNAVAILABLE"
    )


@dataclass(slots=True)
class _Entry:
    """The newest candles of one series as last fetched; `complete`: the series has no more."""

    frame: pd.DataFrame
    complete: bool


class DataServiceSource:
    """`CandleSource` + `EventStream` over a Data service at `target` (see the module docstring)."""

    def __init__(
        self,
        target: str,
        *,
        default_timeframe: str = "H1",
        timeout_s: float = 10.0,
        fetch_timeout_s: float = 60.0,
        cache: bool = True,
        reconnect_s: float = 1.0,
    ) -> None:
        self.target = target
        self.default_timeframe = default_timeframe
        self.timeout_s = timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self.cache_enabled = cache
        self.reconnect_s = reconnect_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: data_grpc.DataServiceStub | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._epoch = 0
        self._live = False
        self._follower: asyncio.Task[None] | None = None
        self.calls = 0
        self.cache_hits = 0
        self.last_event_id = 0

    async def start(self) -> None:
        """Open the channel (lazily connected; call inside the event loop that will use it) and, with
        the cache on, start following Data's events."""
        if self._channel is None:
            self._channel = mesh_channel(self.target)
            self._stub = data_grpc.DataServiceStub(self._channel)
        if self.cache_enabled and self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="forecast-candle-cache")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    @property
    def stub(self) -> data_grpc.DataServiceStub:
        if self._stub is None:
            raise Unavailable("the data service channel is not open", reason="DATA_UNAVAILABLE")
        return self._stub

    @property
    def cache_live(self) -> bool:
        """True while cached candles are trusted (the event stream follows Data with no gap)."""
        return self._live

    def _timeout(self, default: float) -> float:
        # gRPC treats 0 as "no deadline": the smallest real one instead.
        return max(remaining(default), 0.001)

    # ---- CandleSource ---------------------------------------------------------------------------

    async def list_symbols(self) -> Sequence[SymbolInfo]:
        out: list[SymbolInfo] = []
        token = ""
        while True:
            self.calls += 1
            try:
                page = await self.stub.ListSymbols(
                    data_rr.ListSymbolsRequest(page_size=1000, page_token=token),
                    timeout=self._timeout(self.timeout_s),
                )
            except grpc.aio.AioRpcError as exc:
                raise domain_error(exc, "ListSymbols") from None
            out.extend(symbol_info(s, self.default_timeframe) for s in page.symbols)
            token = page.next_page_token
            if not token:
                return out

    async def get_symbol(self, symbol: str) -> SymbolInfo | None:
        self.calls += 1
        try:
            reply = await self.stub.GetSymbol(
                data_rr.GetSymbolRequest(symbol=symbol), timeout=self._timeout(self.timeout_s)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise domain_error(exc, "GetSymbol") from None
        return symbol_info(reply.symbol, self.default_timeframe)

    async def fetch(self, symbol: str, timeframe: str, *, limit: int | None = None) -> pd.DataFrame:
        """Candles oldest first; the newest `limit` when given (see the module docstring)."""
        if limit is None or not self._live:
            return await self._fetch(symbol, timeframe, limit)
        key = (symbol, timeframe)
        entry = self._entries.get(key)
        if entry is not None and (entry.complete or len(entry.frame) >= limit):
            self.cache_hits += 1
            frame = entry.frame
            return frame if len(frame) <= limit else frame.iloc[-limit:].reset_index(drop=True)
        generation, epoch = self._generations.get(key, 0), self._epoch
        frame = await self._fetch(symbol, timeframe, limit)
        if self._live and epoch == self._epoch and generation == self._generations.get(key, 0):
            self._entries[key] = _Entry(frame, complete=len(frame) < limit)
        return frame

    async def _fetch(self, symbol: str, timeframe: str, limit: int | None) -> pd.DataFrame:
        frame = timeframe_value(timeframe)
        wanted = math.inf if limit is None else max(0, limit)
        newest_first = limit is not None
        timeout = self._timeout(self.timeout_s if newest_first else self.fetch_timeout_s)
        pages: list[market_pb2.CandleColumns] = []
        got = 0
        token = ""
        while got < wanted:
            size = MAX_PAGE if math.isinf(wanted) else int(min(MAX_PAGE, wanted - got))
            self.calls += 1
            try:
                page = await self.stub.ListCandles(
                    data_rr.ListCandlesRequest(
                        symbol=symbol,
                        timeframe=frame,
                        page_size=size,
                        page_token=token,
                        descending=newest_first,
                        view=data_pb.CANDLE_VIEW_COLUMNS,
                    ),
                    timeout=timeout,
                )
            except grpc.aio.AioRpcError as exc:
                raise domain_error(exc, f"ListCandles {symbol} {timeframe}") from None
            count = len(page.columns.times_unix_micros)
            if count:
                pages.append(page.columns)
                got += count
            token = page.next_page_token
            if not token or not count:
                break
        return columns_frame(pages)

    # ---- the candle cache -----------------------------------------------------------------------

    def _invalidate(self, event: data_pb.Event) -> None:
        timeframe = timeframe_name(event.timeframe)
        if event.type == data_pb.EVENT_TYPE_CANDLES_INGESTED and timeframe:
            keys = [(event.symbol, timeframe)]
        else:  # a symbol added or removed: every series of it
            keys = [k for k in self._entries if k[0] == event.symbol]
        for key in keys:
            self._entries.pop(key, None)
            self._generations[key] = self._generations.get(key, 0) + 1

    def _drop_all(self) -> None:
        self._live = False
        self._entries.clear()
        self._epoch += 1

    async def _after(self, event_id: int) -> int | None:
        """The id of the first event after `event_id`, or None when there is none (yet)."""
        self.calls += 1
        reply = await self.stub.ListEvents(
            data_rr.ListEventsRequest(after_event_id=event_id, page_size=1),
            timeout=self._timeout(self.timeout_s),
        )
        return int(reply.events[0].event_id) if reply.events else None

    async def newest_event_id(self) -> int:
        """The newest persisted event id (0: none), by exponential then binary search over
        `ListEvents(after_event_id=k, page_size=1)`: about 2 log2(id) calls."""
        first = await self._after(0)
        if first is None:
            return 0
        lo, step = first - 1, 1024  # invariant: an event after `lo` exists
        hi = lo + step
        while (found := await self._after(hi)) is not None:  # until no event after `hi`
            lo, step = found - 1, step * 2
            hi = found + step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            found = await self._after(mid)
            if found is None:
                hi = mid
            else:
                lo = found - 1
        return hi

    async def _follow(self) -> None:
        """Keep the cache true to Data: drop a series' entry on each of its CANDLES_INGESTED events
        and a symbol's entries when it is added or removed. Cached candles are used only while this
        stream follows Data with no gap; on any failure the cache is dropped and it resumes after the
        last event seen (the first time: after the newest event at start, found by `newest_event_id`)."""
        last: int | None = None
        types = [
            data_pb.EVENT_TYPE_CANDLES_INGESTED,
            data_pb.EVENT_TYPE_SYMBOL_ADDED,
            data_pb.EVENT_TYPE_SYMBOL_REMOVED,
        ]
        while True:
            call = None
            try:
                if last is None:
                    last = await self.newest_event_id()
                call = self.stub.WatchEvents(data_rr.WatchEventsRequest(after_event_id=last, types=types))
                # after_event_id > 0: every later event comes, so entries fetched from now on are
                # safe; 0 (Data has no events at all) means "only new ones": trusted after the first.
                self._live = last > 0
                async for message in call:
                    self._invalidate(message.event)
                    last = self.last_event_id = int(message.event.event_id)
                    self._live = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("candle cache: data event stream failed (%s); uncached until it reconnects", exc)
            finally:
                self._drop_all()
                if call is not None:
                    call.cancel()
            await asyncio.sleep(self.reconnect_s)

    # ---- EventStream ----------------------------------------------------------------------------

    async def watch_events(self, after_event_id: int) -> AsyncIterator[DataEvent]:
        """Data's events after `after_event_id` (persisted first, then live), until the stream
        fails (the event monitor reconnects from the last id it saw). No deadline: it is endless."""
        call = self.stub.WatchEvents(data_rr.WatchEventsRequest(after_event_id=max(0, after_event_id)))
        try:
            async for message in call:
                event = message.event
                kind = data_pb.EventType.Name(event.type).removeprefix("EVENT_TYPE_")
                yield DataEvent(
                    event_id=int(event.event_id),
                    type=kind,
                    symbol=event.symbol,
                    timeframe=timeframe_name(event.timeframe) or "",
                )
        except grpc.aio.AioRpcError as exc:
            raise domain_error(exc, "WatchEvents") from None
        finally:
            call.cancel()
