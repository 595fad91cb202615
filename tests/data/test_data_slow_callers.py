"""A slow caller does not hold up the rest: callers that never read their answers (a raw HTTP/2 client
that grants no flow-control window beyond the first 64 KiB) keep no admission slot, so every other
call is still served while they hang on (real Data service, real gRPC, embedded PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import h2.config
import h2.connection

from kitrading import mesh
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.data.app import DataApp
from services.runtime.config import RuntimeSettings
from services.runtime.server import RunningServer, create_server
from tests.data.conftest import make_settings

H1 = market_pb2.TIMEFRAME_H1
LIMIT = 4


def _runtime() -> RuntimeSettings:
    base = RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "0"})
    values = {f: getattr(base, f) for f in base.__dataclass_fields__}
    # a held slot would show at once: no wait for one
    values.update(max_concurrent_unary=LIMIT, admission_wait_ms=0)
    return RuntimeSettings(**values)


def _bars(n: int) -> list[market_pb2.Candle]:
    bars = []
    for hour in range(n):
        close = 1.1 + (hour % 100) / 1000
        bar = market_pb2.Candle(open=close, high=close + 0.001, low=close - 0.001, close=close, volume=10)
        bar.time.FromSeconds(1_600_000_000 - 1_600_000_000 % 3600 + hour * 3600)
        bars.append(bar)
    return bars


@contextlib.asynccontextmanager
async def never_reading_caller(target: str, request: rr.ListCandlesRequest) -> AsyncIterator[None]:
    """Send one ListCandles over raw HTTP/2, then never read a byte of the answer."""
    host, port = target.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/kitrading.data.v1.DataService/ListCandles"),
            (":authority", target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    body = request.SerializeToString()
    conn.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    try:
        yield
    finally:
        writer.close()


async def test_callers_that_never_read_their_answers_hold_up_no_one(database_url: str) -> None:
    app = DataApp(make_settings(database_url))
    server: RunningServer = await create_server(app, _runtime())
    interceptor = server.interceptor
    assert interceptor is not None
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", active=True)))
            await stub.UpsertCandles(
                rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=_bars(5000))
            )
            big = rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=5000)  # ~0.3 MB of rows
            assert len((await stub.ListCandles(big)).SerializeToString()) > 4 * 65_535
            query = rr.ListQueryLogsRequest(method="ListCandles", page_size=100)

            async def answered() -> int:
                logs = await stub.ListQueryLogs(query)  # reads its own writes (flushes the batch)
                return sum(log.rows == 5000 for log in logs.query_logs)

            async with contextlib.AsyncExitStack() as stack:
                # twice the admission limit, each stuck on flow control; one at a time, each answered
                # before the next comes, so a slot kept by a stuck send would refuse the fifth
                for stuck in range(1, 2 * LIMIT + 1):
                    await stack.enter_async_context(never_reading_caller(server.target, big))
                    for _ in range(400):
                        if await answered() == 1 + stuck:
                            break
                        await asyncio.sleep(0.05)
                    assert await answered() == 1 + stuck  # answered; the answer cannot leave
                assert interceptor.unary_in_flight == 0  # no slot kept by a send that cannot finish
                small = rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=100, descending=True)
                for _ in range(3):  # every other caller is served, none refused, while they hang on
                    pages = await asyncio.gather(*(stub.ListCandles(small, timeout=10) for _ in range(LIMIT)))
                    assert all(len(page.candles) == 100 for page in pages)
                assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10)).symbol.symbol
    finally:
        await server.stop(0)
