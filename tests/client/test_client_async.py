"""The asyncio client (grpc.aio) against the same in-process DataService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kitrading.client import (
    AsyncClient,
    AsyncServerStream,
    FailedPreconditionError,
    HealthStatus,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    _runtime,
    connect_async,
)
from kitrading.data.v1 import request_response_pb2 as rr

from .fake_data import FakeDataService, ServerThread


@pytest.fixture
async def client(data_server: ServerThread) -> AsyncIterator[AsyncClient]:
    async with connect_async(data_server.target) as c:
        yield c


async def test_unary_call(client: AsyncClient, servicer: FakeDataService) -> None:
    response = await client.data.list_symbols(rr.ListSymbolsRequest(page_size=5))
    assert [s.symbol for s in response.symbols] == ["EURUSD"]
    candles = await client.data.list_candles(rr.ListCandlesRequest(symbol="EURUSD", page_size=3))
    assert len(candles.candles) == 3
    assert servicer.calls == {"ListSymbols": 1, "ListCandles": 1}


async def test_concurrent_calls(client: AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.data.get_symbol(rr.GetSymbolRequest(symbol="EURUSD")) for _ in range(5))
    )
    assert {r.symbol.symbol for r in responses} == {"EURUSD"}


async def test_invalid_argument_is_parsed_from_the_trailers(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.data.get_symbol(rr.GetSymbolRequest(symbol="eurusd"))
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.domain == "kitrading.data"
    assert [v.field for v in caught.value.field_violations] == ["symbol"]


async def test_not_found(client: AsyncClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.data.get_symbol(rr.GetSymbolRequest(symbol="NOPE"))
    assert caught.value.reason == "SYMBOL_NOT_FOUND"


async def test_server_stream(client: AsyncClient) -> None:
    stream = client.data.watch_events(rr.WatchEventsRequest(after_event_id=4))
    assert isinstance(stream, AsyncServerStream)
    assert [r.event.event_id async for r in stream] == [5, 6, 7]


async def test_stream_error_during_iteration(client: AsyncClient) -> None:
    received: list[int] = []
    with pytest.raises(FailedPreconditionError) as caught:
        async for response in client.data.watch_events(rr.WatchEventsRequest(symbols=["FAIL"])):
            received.append(response.event.event_id)
    assert received == [1]
    assert caught.value.reason == "EVENTS_UNAVAILABLE"


async def test_cancel_stream(client: AsyncClient, servicer: FakeDataService) -> None:
    received: list[int] = []
    async with client.data.watch_events(rr.WatchEventsRequest(from_beginning=True)) as stream:
        async for response in stream:
            received.append(response.event.event_id)
            if len(received) == 3:
                stream.cancel()
    assert received == [1, 2, 3]
    assert await asyncio.to_thread(servicer.stream_cancelled.wait, 5)


async def test_health(client: AsyncClient) -> None:
    assert await client.health("data") is HealthStatus.SERVING
    assert await client.health("rag") is HealthStatus.SERVICE_UNKNOWN


async def test_unreachable() -> None:
    async with connect_async("127.0.0.1:1", timeout=2.0, retries=False) as client:
        with pytest.raises(UnavailableError):
            await client.data.list_symbols()


async def test_a_broken_subscription_is_resumed(
    client: AsyncClient, servicer: FakeDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_runtime, "RESUME_BACKOFF_S", (0.01, 0.02))
    servicer.break_streams = 1
    stream = client.data.watch_events(rr.WatchEventsRequest(after_event_id=4))
    assert [r.event.event_id async for r in stream] == [5, 6, 7, 8, 9, 10]
    assert stream.resumes == 1 and [r.after_event_id for r in servicer.watch_requests] == [4, 7]
