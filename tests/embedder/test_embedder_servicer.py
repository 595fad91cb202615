"""EmbedderService over real gRPC: the app on port 0 with the bundled model, the lexicon and the
bundled EURUSD candles as its Data source; error details name the field and index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import numpy as np
import pandas as pd
import pytest

from kitrading.common.v1 import market_pb2
from kitrading.embedder.v1 import request_response_pb2 as rr
from kitrading.embedder.v1 import resources_pb2 as pb
from kitrading.embedder.v1 import service_pb2_grpc
from services.embedder.app import EmbedderApp
from services.embedder.sentiment import LexiconSentiment
from services.embedder.settings import EmbedderSettings
from services.embedder.text import TextEncoder
from services.runtime.protos import timestamp
from tests.grpc_helpers import details, start_server

from .conftest import candle_source


@dataclass
class Stack:
    stub: service_pb2_grpc.EmbedderServiceStub
    app: EmbedderApp


@pytest.fixture(scope="module")
async def stack(
    encoder: TextEncoder, lexicon: LexiconSentiment, eurusd: pd.DataFrame
) -> AsyncIterator[Stack]:
    settings = EmbedderSettings(use_gpu=False, max_texts=16, max_text_chars=300)
    app = EmbedderApp(settings, source=candle_source(eurusd), encoder=encoder, sentiment=lexicon)
    server = await start_server(app, "embedder")
    channel = grpc.aio.insecure_channel(server.target)
    yield Stack(service_pb2_grpc.EmbedderServiceStub(channel), app)
    await channel.close()
    await server.stop(0)


async def fails(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def test_embed_text(stack: Stack) -> None:
    reply = await stack.stub.EmbedText(
        rr.EmbedTextRequest(texts=["ECB holds rates", "Fed cuts"], normalize=True)
    )
    assert reply.dimension == 384 and reply.model == "sentence-transformers/all-MiniLM-L6-v2"
    vectors = np.array([e.values for e in reply.embeddings])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_concurrent_clients_are_batched(stack: Stack) -> None:
    stats = stack.app.domain.info().stats
    before = stats["batches"]
    replies = await asyncio.gather(
        *(stack.stub.EmbedText(rr.EmbedTextRequest(texts=[f"note {i}"])) for i in range(32))
    )
    assert all(len(r.embeddings) == 1 for r in replies)
    assert stack.app.domain.info().stats["batches"] - before < 32


async def test_limits_are_invalid_argument_naming_field_and_index(stack: Stack) -> None:
    error = await fails(
        stack.stub.EmbedText(rr.EmbedTextRequest(texts=["a"] * 17)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "at most 16 texts" in (error.details() or "") and details(error)[1] == ["texts"]
    error = await fails(
        stack.stub.AnalyzeSentiment(rr.AnalyzeSentimentRequest(texts=["ok", "y" * 301])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["texts[1]"]
    # The contract's own limit (protovalidate) holds before the domain's.
    error = await fails(
        stack.stub.EmbedText(rr.EmbedTextRequest(texts=["a"] * 257)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "texts" in details(error)[1][0]
    await fails(stack.stub.EmbedText(rr.EmbedTextRequest()), grpc.StatusCode.INVALID_ARGUMENT)


async def test_analyze_sentiment(stack: Stack) -> None:
    reply = await stack.stub.AnalyzeSentiment(
        rr.AnalyzeSentimentRequest(texts=["Strong gains and record profits.", "The outlook is uncertain."])
    )
    good, unsure = reply.sentiments
    assert reply.model == "loughran-mcdonald"
    assert good.label == pb.SENTIMENT_LABEL_POSITIVE and good.score == 1.0 and good.polarity == 1.0
    assert {w.word for w in good.words} >= {"strong", "gains", "profits"}
    assert unsure.label == pb.SENTIMENT_LABEL_NEUTRAL and unsure.uncertainty > 0
    assert [w.category for w in unsure.words] == [pb.SENTIMENT_WORD_CATEGORY_UNCERTAINTY]


async def test_embed_time_series_given_and_stored(stack: Stack, eurusd: pd.DataFrame) -> None:
    tail = eurusd.iloc[-64:]
    window = pb.CandleWindow(
        candles=[
            market_pb2.Candle(
                time=timestamp(r.time), open=r.open, high=r.high, low=r.low, close=r.close, volume=r.volume
            )
            for r in tail.itertuples()
        ]
    )
    given = await stack.stub.EmbedTimeSeries(rr.EmbedTimeSeriesRequest(window=window))
    stored = await stack.stub.EmbedTimeSeries(
        rr.EmbedTimeSeriesRequest(
            symbol_window=pb.SymbolWindow(symbol="EURUSD", timeframe=market_pb2.TIMEFRAME_H1, lookback=64)
        )
    )
    assert given.dimension == 48 and given.bars == 64 and given.model == "kitrading/returns-v1"
    assert np.allclose(given.embedding.values, stored.embedding.values, atol=1e-6)
    assert stored.window_end_time.ToDatetime() == tail["time"].iloc[-1].to_pydatetime().replace(tzinfo=None)
    unit = await stack.stub.EmbedTimeSeries(
        rr.EmbedTimeSeriesRequest(symbol_window=pb.SymbolWindow(symbol="EURUSD"), normalize=True)
    )
    assert unit.bars == 128 and np.linalg.norm(unit.embedding.values) == pytest.approx(1.0, abs=1e-5)
    error = await fails(
        stack.stub.EmbedTimeSeries(rr.EmbedTimeSeriesRequest(symbol_window=pb.SymbolWindow(symbol="NOPE"))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(error)[0] == "CANDLES_NOT_FOUND"
    bad = pb.CandleWindow()
    bad.CopyFrom(window)
    bad.candles[5].low = bad.candles[5].high * 2
    error = await fails(
        stack.stub.EmbedTimeSeries(rr.EmbedTimeSeriesRequest(window=bad)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["window.candles[5]"]


async def test_get_embedder_info(stack: Stack) -> None:
    reply = await stack.stub.GetEmbedderInfo(rr.GetEmbedderInfoRequest())
    assert [(m.kind, m.dimension) for m in reply.models] == [
        (pb.EMBEDDING_KIND_TEXT, 384),
        (pb.EMBEDDING_KIND_SENTIMENT, 0),
        (pb.EMBEDDING_KIND_TIMESERIES, 48),
    ]
    assert all(m.loaded for m in reply.models)
    assert reply.device == "cpu" and reply.device_reason == "GPU use disabled by settings"
    assert (reply.max_texts, reply.max_text_length) == (16, 300)


def test_the_app_reads_candles_from_the_data_service_by_default() -> None:
    app = EmbedderApp(EmbedderSettings(use_gpu=False), env={"KITRADING_DATA_PORT": "3999"})
    assert app.data is not None and app.data.target == "127.0.0.1:3999"
    assert app.domain.source is app.data and not app.healthy()
