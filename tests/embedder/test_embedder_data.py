"""EmbedTimeSeries of a stored series read through a real Data service (embedded PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import grpc.aio
import numpy as np
import pandas as pd
import pytest

from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import resources_pb2 as data_pb
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from kitrading.embedder.v1 import request_response_pb2 as rr
from kitrading.embedder.v1 import resources_pb2 as pb
from kitrading.embedder.v1 import service_pb2_grpc
from services.data import convert as data_cv
from services.data.app import DataApp
from services.data.samples import SAMPLES, load_candles
from services.embedder.app import EmbedderApp
from services.embedder.sentiment import LexiconSentiment
from services.embedder.series import embed_window
from services.embedder.settings import EmbedderSettings
from services.embedder.text import TextEncoder
from tests.conftest import PostgresForTests
from tests.data.conftest import make_settings
from tests.grpc_helpers import details, start_server


@pytest.fixture(scope="module")
async def embedder(
    postgres: PostgresForTests, encoder: TextEncoder, lexicon: LexiconSentiment
) -> AsyncIterator[service_pb2_grpc.EmbedderServiceStub]:
    name = f"test_embedder_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres.url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    data_server = await start_server(DataApp(make_settings(postgres.database_url(name))), "data")
    data_channel = grpc.aio.insecure_channel(data_server.target)
    data = data_grpc.DataServiceStub(data_channel)
    candles = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"][-300:]
    await data.CreateSymbol(
        data_rr.CreateSymbolRequest(
            symbol=data_pb.Symbol(symbol="EURUSD", asset_class=market_pb2.ASSET_CLASS_FX)
        )
    )
    await data.UpsertCandles(
        data_rr.UpsertCandlesRequest(
            symbol="EURUSD",
            timeframe=market_pb2.TIMEFRAME_H1,
            candles=[data_cv.candle_out(c) for c in candles],
        )
    )
    app = EmbedderApp(
        EmbedderSettings(use_gpu=False), data=data_server.target, encoder=encoder, sentiment=lexicon
    )
    server = await start_server(app, "embedder")
    channel = grpc.aio.insecure_channel(server.target)
    try:
        yield service_pb2_grpc.EmbedderServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await data_channel.close()
        await data_server.stop(0)
        conn = await asyncpg.connect(postgres.url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_stored_window_comes_from_the_data_service(
    embedder: service_pb2_grpc.EmbedderServiceStub,
) -> None:
    rows = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"][-128:]
    frame = pd.DataFrame(
        {k: [getattr(c, k) for c in rows] for k in ("time", "open", "high", "low", "close", "volume")}
    )
    reply = await embedder.EmbedTimeSeries(
        rr.EmbedTimeSeriesRequest(symbol_window=pb.SymbolWindow(symbol="EURUSD"))
    )
    assert reply.bars == 128
    assert np.allclose(reply.embedding.values, embed_window(frame).vector, atol=1e-6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embedder.EmbedTimeSeries(
            rr.EmbedTimeSeriesRequest(symbol_window=pb.SymbolWindow(symbol="GBPUSD"))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, details(caught.value)
