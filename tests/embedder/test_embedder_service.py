"""EmbedderDomain: limits name the field and index, concurrent calls are batched, series, info."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from services.embedder import series
from services.embedder.sentiment import LexiconSentiment
from services.embedder.service import EmbedderDomain, SeriesRequest
from services.embedder.settings import EmbedderSettings
from services.embedder.text import TextEncoder
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

from .conftest import candle_source

SETTINGS = EmbedderSettings(use_gpu=False, max_texts=8, max_text_chars=200, batch_size=64, batch_wait_ms=5.0)


@pytest.fixture
async def domain(
    encoder: TextEncoder, lexicon: LexiconSentiment, eurusd: pd.DataFrame
) -> AsyncIterator[EmbedderDomain]:
    domain = EmbedderDomain(SETTINGS, candle_source(eurusd), encoder=encoder, sentiment=lexicon)
    await domain.start()
    yield domain
    await domain.stop()


def fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


async def test_embeds_texts_in_order_normalised_or_not(domain: EmbedderDomain, encoder: TextEncoder) -> None:
    texts = ["Gold rallies as the dollar weakens.", "Oil slumps on supply fears."]
    unit = await domain.embed_texts(texts)
    raw = await domain.embed_texts(texts, normalize_vectors=False)
    assert unit.vectors.shape == (2, 384) and unit.dimension == 384
    assert unit.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert np.allclose(np.linalg.norm(unit.vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(raw.vectors, encoder.encode(texts), atol=1e-5)


async def test_limits_name_the_field_and_the_index(domain: EmbedderDomain) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await domain.embed_texts([])
    assert fields(caught.value) == ["texts"]
    with pytest.raises(InvalidArgument, match="at most 8 texts") as caught:
        await domain.embed_texts(["a"] * 9)
    assert fields(caught.value) == ["texts"]
    with pytest.raises(InvalidArgument, match="at most 200 characters, got 201") as caught:
        await domain.sentiment(["fine", "x" * 201, " ", "fine"])
    assert fields(caught.value) == ["texts[1]", "texts[2]"]


async def test_concurrent_one_text_calls_share_encode_calls(domain: EmbedderDomain) -> None:
    texts = [f"Market note {i}: shares {'gain' if i % 3 else 'drop'} after results." for i in range(64)]
    before = domain.info().stats["batches"]
    results = await asyncio.gather(*(domain.embed_texts([t]) for t in texts))
    alone = (await domain.embed_texts(texts[:8])).vectors
    assert domain.info().stats["batches"] - before <= 3  # 64 calls, one or two encodes (+1 above)
    assert np.allclose(np.concatenate([r.vectors for r in results[:8]]), alone, atol=1e-4)


async def test_sentiment_through_the_domain(domain: EmbedderDomain) -> None:
    result = await domain.sentiment(["Strong gains lifted profits.", "Losses and a lawsuit hit the bank."])
    assert result.model == "loughran-mcdonald"
    assert [r.label for r in result.results] == ["positive", "negative"]


async def test_series_from_candles_and_from_the_data_service(
    domain: EmbedderDomain, eurusd: pd.DataFrame
) -> None:
    given = eurusd.iloc[-128:].reset_index(drop=True)
    direct = await domain.embed_series(SeriesRequest(candles=given))
    stored = await domain.embed_series(SeriesRequest(symbol="EURUSD"), normalize_vector=False)
    assert stored.bars == 128 and stored.end_time == eurusd["time"].iloc[-1]
    assert np.allclose(direct.vector, stored.vector)
    short = await domain.embed_series(SeriesRequest(symbol="EURUSD", timeframe="H1", lookback=16))
    assert short.bars == 16 and short.vector.shape == (series.DIMENSION,)
    with pytest.raises(NotFound, match="no H1 candles of GBPUSD"):
        await domain.embed_series(SeriesRequest(symbol="GBPUSD"))
    with pytest.raises(NotFound, match="D1"):
        await domain.embed_series(SeriesRequest(symbol="EURUSD", timeframe="D1"))
    with pytest.raises(InvalidArgument) as caught:
        await domain.embed_series(SeriesRequest(candles=given.iloc[:4]))
    assert fields(caught.value) == ["window.candles"]
    with pytest.raises(InvalidArgument) as caught:
        await domain.embed_series(SeriesRequest(symbol="EURUSD", lookback=5))
    assert fields(caught.value) == ["symbol_window.lookback"]


async def test_series_without_a_data_service(encoder: TextEncoder, lexicon: LexiconSentiment) -> None:
    domain = EmbedderDomain(SETTINGS, None, encoder=encoder, sentiment=lexicon)
    with pytest.raises(FailedPrecondition):
        await domain.embed_series(SeriesRequest(symbol="EURUSD"))
    with pytest.raises(Unavailable):  # not started
        await domain.embed_texts(["hello"])


async def test_info_names_models_dimensions_device_and_limits(domain: EmbedderDomain) -> None:
    info = domain.info()
    assert [(m.kind, m.name, m.dimension, m.loaded) for m in info.models] == [
        ("text", "sentence-transformers/all-MiniLM-L6-v2", 384, True),
        ("sentiment", "loughran-mcdonald", 0, True),
        ("timeseries", "kitrading/returns-v1", 48, True),
    ]
    assert info.models[0].max_input_length == 256
    assert info.device == "cpu" and info.device_reason == "GPU use disabled by settings"
    assert (info.max_texts, info.max_text_length) == (8, 200)


async def test_start_loads_the_configured_models(tmp_path: object) -> None:
    domain = EmbedderDomain(replace(SETTINGS, batch_size=4))
    await domain.start()
    try:
        assert domain.encoder is not None and domain.encoder.name.endswith("all-MiniLM-L6-v2")
        assert (await domain.embed_texts(["loaded at start"])).vectors.shape == (1, 384)
        assert (await domain.sentiment(["profit"])).results[0].label == "positive"
    finally:
        await domain.stop()


async def test_throughput_measurement_runs_both_paths() -> None:
    from services.embedder.throughput import measure, texts

    assert len(set(texts(64))) == 64
    result = await measure(SETTINGS, clients=4, rounds=1)
    assert result.batched_texts_per_s > 0 and result.direct_texts_per_s > 0
    assert 1 <= result.encode_calls <= 2 and result.ratio > 0
