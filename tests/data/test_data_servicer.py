"""DataService over real gRPC (runtime + servicer + domain + embedded PostgreSQL), port 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

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


@pytest.fixture
async def stub(database_url: str) -> AsyncIterator[service_pb2_grpc.DataServiceStub]:
    app = DataApp(make_settings(database_url))
    settings = RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "0"})
    server: RunningServer = await create_server(app, settings)
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield service_pb2_grpc.DataServiceStub(channel)
    await server.stop(0)


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes)
    fields: list[str] = []
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def candle(hour: int, close: float) -> market_pb2.Candle:
    c = market_pb2.Candle(open=close, high=close + 0.001, low=close - 0.001, close=close, volume=10)
    c.time.FromSeconds(1_699_999_200 + hour * 3600)  # on the H1 grid
    return c


async def test_symbol_lifecycle_and_errors(stub: service_pb2_grpc.DataServiceStub) -> None:
    created = await stub.CreateSymbol(
        rr.CreateSymbolRequest(
            symbol=pb.Symbol(symbol="EURUSD", asset_class=market_pb2.ASSET_CLASS_FX, active=True)
        )
    )
    assert created.symbol.symbol == "EURUSD"
    with pytest.raises(grpc.aio.AioRpcError) as dup:
        await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD")))
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetSymbol(rr.GetSymbolRequest(symbol="NOPE"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for request, field in (
        (rr.GetSymbolRequest(symbol=""), "symbol"),
        (rr.GetSymbolRequest(symbol="X" * 40), "symbol"),
        (rr.ListSymbolsRequest(page_size=5000), "page_size"),
        (rr.ListCandlesRequest(symbol="EURUSD"), "timeframe"),
    ):
        method = (
            stub.GetSymbol
            if isinstance(request, rr.GetSymbolRequest)
            else (stub.ListSymbols if isinstance(request, rr.ListSymbolsRequest) else stub.ListCandles)
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await method(request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in bad_fields(bad.value)
    updated = await stub.UpdateSymbol(
        rr.UpdateSymbolRequest(
            symbol=pb.Symbol(symbol="EURUSD", display_name="Euro / US dollar"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.symbol.display_name == "Euro / US dollar"
    assert updated.symbol.asset_class == market_pb2.ASSET_CLASS_FX  # untouched by the mask
    listed = await stub.ListSymbols(rr.ListSymbolsRequest())
    assert [s.symbol for s in listed.symbols] == ["EURUSD"]


async def test_candles_range_stats_and_bad_bar(stub: service_pb2_grpc.DataServiceStub) -> None:
    await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", active=True)))
    written = await stub.UpsertCandles(
        rr.UpsertCandlesRequest(
            symbol="EURUSD", timeframe=H1, candles=[candle(h, 1.1 + h / 1000) for h in range(30)]
        )
    )
    assert written.upserted == 30
    again = await stub.UpsertCandles(
        rr.UpsertCandlesRequest(
            symbol="EURUSD", timeframe=H1, candles=[candle(h, 1.1 + h / 1000) for h in range(30)]
        )
    )
    assert again.upserted == 0  # idempotent: identical rows change nothing
    page = await stub.ListCandles(rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=20))
    assert len(page.candles) == 20 and page.next_page_token
    rest = await stub.ListCandles(
        rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=20, page_token=page.next_page_token)
    )
    assert len(rest.candles) == 10 and not rest.next_page_token
    latest = await stub.GetLatestCandle(rr.GetLatestCandleRequest(symbol="EURUSD", timeframe=H1))
    assert latest.candle.close == pytest.approx(1.129)
    stats = await stub.GetSymbolStats(rr.GetSymbolStatsRequest(symbol="EURUSD", timeframe=H1, lookback=10))
    assert stats.bars == 10 and len(stats.recent_candles) == 10
    broken = candle(40, 1.2)
    broken.high = broken.low - 1
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.UpsertCandles(
            rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=[candle(41, 1.2), broken])
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f.startswith("candles[1]") for f in bad_fields(bad.value))
    off_grid = [candle(h, 1.2) for h in range(50, 54)]
    off_grid[3].time.FromSeconds(off_grid[3].time.seconds + 17 * 60)  # an H1 candle at hh:17
    with pytest.raises(grpc.aio.AioRpcError) as grid:
        await stub.UpsertCandles(rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=off_grid))
    assert grid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(grid.value) == ["candles[3].time"]
    after = await stub.GetLatestCandle(rr.GetLatestCandleRequest(symbol="EURUSD", timeframe=H1))
    assert after.candle.time == latest.candle.time  # nothing half-written
    reversed_range = rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1)
    reversed_range.start_time.FromSeconds(2_000_000_000)
    reversed_range.end_time.FromSeconds(1_000_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as order:
        await stub.ListCandles(reversed_range)
    assert order.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(order.value) == ["end_time"]


async def test_candles_as_columns_over_grpc(stub: service_pb2_grpc.DataServiceStub) -> None:
    await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", active=True)))
    bars = [candle(h, 1.1 + h / 1000) for h in range(30)]
    await stub.UpsertCandles(rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=H1, candles=bars))
    request = rr.ListCandlesRequest(
        symbol="EURUSD", timeframe=H1, page_size=20, descending=True, view=pb.CANDLE_VIEW_COLUMNS
    )
    page = await stub.ListCandles(request)
    assert not page.candles and page.HasField("columns") and page.next_page_token
    newest = list(reversed(bars))[:20]
    assert list(page.columns.times_unix_micros) == [b.time.seconds * 1_000_000 for b in newest]
    assert np.array(page.columns.closes).tolist() == [b.close for b in newest]
    for name in ("opens", "highs", "lows", "volumes"):
        assert list(getattr(page.columns, name)) == [getattr(b, name[:-1]) for b in newest]
    request.page_token, request.view = page.next_page_token, pb.CANDLE_VIEW_ROWS  # same token, rows
    rest = await stub.ListCandles(request)
    assert [c.close for c in rest.candles] == [b.close for b in list(reversed(bars))[20:]]
    assert not rest.HasField("columns") and not rest.next_page_token
    default = await stub.ListCandles(rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, page_size=1))
    assert len(default.candles) == 1 and not default.HasField("columns")  # rows unless asked
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListCandles(rr.ListCandlesRequest(symbol="EURUSD", timeframe=H1, view=7))  # type: ignore[arg-type]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(bad.value) == ["view"]


async def test_events_stream_resumes_and_query_logs(stub: service_pb2_grpc.DataServiceStub) -> None:
    await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="GOOG", active=True)))
    stream = stub.WatchEvents(rr.WatchEventsRequest(from_beginning=True))
    first = await asyncio.wait_for(stream.read(), 10)
    assert first.event.type == pb.EVENT_TYPE_SYMBOL_ADDED
    await stub.UpsertCandles(rr.UpsertCandlesRequest(symbol="GOOG", timeframe=H1, candles=[candle(1, 100.0)]))
    second = await asyncio.wait_for(stream.read(), 10)
    assert second.event.type == pb.EVENT_TYPE_CANDLES_INGESTED
    assert second.event.candles_ingested.count == 1
    stream.cancel()
    # A subscriber that saw only the first event resumes after it and misses nothing.
    resumed = stub.WatchEvents(rr.WatchEventsRequest(after_event_id=first.event.event_id))
    again = await asyncio.wait_for(resumed.read(), 10)
    assert again.event.event_id == second.event.event_id
    resumed.cancel()
    await asyncio.sleep(0.3)  # query logs are flushed in the background
    logs = await stub.ListQueryLogs(rr.ListQueryLogsRequest(method="CreateSymbol"))
    assert logs.query_logs and logs.query_logs[0].code == "OK"
    assert '"symbol"' in logs.query_logs[0].parameters


async def test_a_new_symbol_is_active_unless_the_caller_says_otherwise(
    stub: service_pb2_grpc.DataServiceStub,
) -> None:
    omitted = await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="ZZA")))
    assert omitted.symbol.active
    explicit = await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="ZZB", active=False)))
    assert not explicit.symbol.active
    listed = await stub.ListSymbols(rr.ListSymbolsRequest(active_only=True))
    assert [s.symbol for s in listed.symbols] == ["ZZA"]


async def test_the_query_log_keeps_a_bounded_summary_never_the_request(
    stub: service_pb2_grpc.DataServiceStub,
) -> None:
    """A rejected 50,000-candle upsert is logged as its count and first candle, not as megabytes of
    JSON on the event loop; an update whose mask path has no JSON name is logged too (it was dropped
    with a traceback)."""
    await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="BIG", active=True)))
    many = [candle(i, 100.0 + i % 7) for i in range(50_000)]
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await stub.UpsertCandles(
            rr.UpsertCandlesRequest(symbol="BIG", timeframe=H1, candles=many), timeout=60
        )
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.UpdateSymbol(
            rr.UpdateSymbolRequest(
                symbol=pb.Symbol(symbol="BIG", display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["Display_Name"]),
            )
        )
    await asyncio.sleep(0.3)  # query logs are flushed in the background
    upsert = (await stub.ListQueryLogs(rr.ListQueryLogsRequest(method="UpsertCandles"))).query_logs[0]
    assert len(upsert.parameters) < 4096, len(upsert.parameters)
    summary = json.loads(upsert.parameters)
    assert summary["symbol"] == "BIG" and summary["candles"]["count"] == 50_000
    assert summary["candles"]["first"]["close"] == 100.0
    update = (await stub.ListQueryLogs(rr.ListQueryLogsRequest(method="UpdateSymbol"))).query_logs[0]
    assert update.code == "INVALID_ARGUMENT"
    assert json.loads(update.parameters)["updateMask"] == ["Display_Name"]


async def test_an_update_without_a_mask_changes_only_the_fields_it_sets(
    stub: service_pb2_grpc.DataServiceStub,
) -> None:
    """AIP-134: no update_mask means the fields present in the resource, not every mutable field (a
    PATCH of the description alone cleared the display name and deactivated the symbol)."""
    await stub.CreateSymbol(
        rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="KEEP", display_name="Keep me", description="old"))
    )
    updated = await stub.UpdateSymbol(
        rr.UpdateSymbolRequest(symbol=pb.Symbol(symbol="KEEP", description="new"))
    )
    assert (updated.symbol.display_name, updated.symbol.description, updated.symbol.active) == (
        "Keep me",
        "new",
        True,
    )
    off = await stub.UpdateSymbol(rr.UpdateSymbolRequest(symbol=pb.Symbol(symbol="KEEP", active=False)))
    assert not off.symbol.active and off.symbol.display_name == "Keep me"
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await stub.UpdateSymbol(rr.UpdateSymbolRequest(symbol=pb.Symbol(symbol="KEEP")))
    assert nothing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in (nothing.value.details() or "")

    created = await stub.CreateStrategy(
        rr.CreateStrategyRequest(
            strategy=pb.Strategy(strategy_id="keep", display_name="Keep", symbols=["KEEP"], active=True)
        )
    )
    assert created.strategy.active
    changed = await stub.UpdateStrategy(
        rr.UpdateStrategyRequest(strategy=pb.Strategy(strategy_id="keep", description="d"))
    )
    assert (changed.strategy.display_name, list(changed.strategy.symbols), changed.strategy.active) == (
        "Keep",
        ["KEEP"],
        True,
    )
