"""A tiny real DataService (grpc.aio) for the SDK and CLI tests, run on its own loop in a thread.

The thread lets blocking SDK calls (sync client, CLI) and async ones share one server. Errors are
sent the way the mesh sends them: `google.rpc.Status` with ErrorInfo and BadRequest details, built by
`services.runtime.status`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as res
from kitrading.data.v1 import service_pb2_grpc
from services.runtime.errors import FieldViolation
from services.runtime.status import build_status, internal_status, trailing_metadata

SERVICE = "kitrading.data.v1.DataService"
DOMAIN = "kitrading.data"
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9._-]*$")
T0 = 1_704_067_200  # 2024-01-01 00:00 UTC


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


EURUSD = res.Symbol(
    symbol="EURUSD",
    display_name="Euro / US Dollar",
    asset_class=market_pb2.ASSET_CLASS_FX,
    active=True,
    series=[res.CandleSeries(timeframe=market_pb2.TIMEFRAME_H1, count=48)],
)


def event(event_id: int) -> res.Event:
    return res.Event(
        event_id=event_id,
        type=res.EVENT_TYPE_CANDLES_INGESTED,
        symbol="EURUSD",
        timeframe=market_pb2.TIMEFRAME_H1,
        create_time=_ts(T0 + event_id),
        candles_ingested=res.CandlesIngested(count=event_id),
    )


class FakeDataService(service_pb2_grpc.DataServiceServicer):
    """Counts calls per method; `fail_next[method] = n` fails its next n calls with UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_next: Counter[str] = Counter()
        self.last_metadata: dict[str, str] = {}
        self.last_time_remaining: float | None = None
        self.stream_cancelled = threading.Event()
        #: The next this many WatchEvents calls break with UNAVAILABLE after their three events
        #: (a service draining); every WatchEvents request is kept in `watch_requests`.
        self.break_streams = 0
        self.watch_requests: list[rr.WatchEventsRequest] = []

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        self.last_metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.last_time_remaining = context.time_remaining()
        if self.fail_next[method] > 0:
            self.fail_next[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    async def ListSymbols(self, request: rr.ListSymbolsRequest, context: Any) -> rr.ListSymbolsResponse:
        await self._enter("ListSymbols", context)
        return rr.ListSymbolsResponse(symbols=[EURUSD], total_size=1)

    async def _check_symbol(self, symbol: str, context: Any) -> None:
        if not SYMBOL_PATTERN.match(symbol):
            description = "value does not match regex pattern `^[A-Z0-9][A-Z0-9._-]*$`"
            status = build_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid argument: symbol: {description}",
                reason="INVALID_ARGUMENT",
                domain=DOMAIN,
                violations=[FieldViolation("symbol", description)],
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status.message, trailing_metadata(status))

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: Any) -> rr.GetSymbolResponse:
        await self._enter("GetSymbol", context)
        await self._check_symbol(request.symbol, context)
        if request.symbol == "BOOM":
            status = internal_status("log-123", DOMAIN)
            await context.abort(grpc.StatusCode.INTERNAL, status.message, trailing_metadata(status))
        if request.symbol != "EURUSD":
            status = build_status(
                grpc.StatusCode.NOT_FOUND,
                f"symbol {request.symbol} not found",
                reason="SYMBOL_NOT_FOUND",
                domain=DOMAIN,
                metadata={"symbol": request.symbol},
            )
            await context.abort(grpc.StatusCode.NOT_FOUND, status.message, trailing_metadata(status))
        return rr.GetSymbolResponse(symbol=EURUSD)

    async def CreateSymbol(self, request: rr.CreateSymbolRequest, context: Any) -> rr.CreateSymbolResponse:
        await self._enter("CreateSymbol", context)
        return rr.CreateSymbolResponse(symbol=request.symbol)

    async def ListCandles(self, request: rr.ListCandlesRequest, context: Any) -> rr.ListCandlesResponse:
        await self._enter("ListCandles", context)
        await self._check_symbol(request.symbol, context)
        count = request.page_size or 1000
        candles = [
            market_pb2.Candle(
                time=_ts(T0 + 3600 * i), open=1.1 + i / 1000, high=1.2, low=1.0, close=1.1, volume=100 + i
            )
            for i in range(min(count, 48))
        ]
        if request.descending:
            candles.reverse()
        return rr.ListCandlesResponse(candles=candles)

    async def ListEvents(self, request: rr.ListEventsRequest, context: Any) -> rr.ListEventsResponse:
        await self._enter("ListEvents", context)
        events = [event(request.after_event_id + i + 1) for i in range(3)]
        return rr.ListEventsResponse(events=events, last_event_id=events[-1].event_id)

    async def WatchEvents(
        self, request: rr.WatchEventsRequest, context: Any
    ) -> AsyncIterator[rr.WatchEventsResponse]:
        """Three events after `after_event_id`; symbol FAIL: an error after the first; from_beginning:
        stays open after the three (like the live stream) until the client cancels."""
        await self._enter("WatchEvents", context)
        self.watch_requests.append(request)
        for i in range(3):
            yield rr.WatchEventsResponse(event=event(request.after_event_id + i + 1))
            if "FAIL" in request.symbols:
                status = build_status(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "event store went away",
                    reason="EVENTS_UNAVAILABLE",
                    domain=DOMAIN,
                )
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, status.message, trailing_metadata(status)
                )
        if self.break_streams > 0:
            self.break_streams -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "data is shutting down; resubscribe")
        if request.from_beginning:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.stream_cancelled.set()
                raise

    async def ImportSamples(self, request: rr.ImportSamplesRequest, context: Any) -> rr.ImportSamplesResponse:
        await self._enter("ImportSamples", context)
        dataset = res.SampleDataset(
            symbol="EURUSD", timeframe=market_pb2.TIMEFRAME_H1, package="backtesting", candles=5000
        )
        return rr.ImportSamplesResponse(datasets=[dataset])


class ServerThread:
    """A grpc.aio server with the fake DataService and health, on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, *, with_health: bool = True) -> None:
        self.with_health = with_health
        self.servicer = FakeDataService()  # type: ignore[abstract]  # unlisted RPCs: UNIMPLEMENTED
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-data", daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> int:
        server = grpc.aio.server()
        service_pb2_grpc.add_DataServiceServicer_to_server(self.servicer, server)
        if self.with_health:
            health = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
            await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return port

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self) -> None:
        self.servicer.calls.clear()
        self.servicer.fail_next.clear()
        self.servicer.last_metadata = {}
        self.servicer.last_time_remaining = None
        self.servicer.stream_cancelled.clear()
        self.servicer.break_streams = 0
        self.servicer.watch_requests = []
