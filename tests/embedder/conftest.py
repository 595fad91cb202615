"""Fixtures of the embedder tests: the bundled all-MiniLM-L6-v2 encoder (CPU), the lexicon and the
bundled EURUSD candles, each loaded once per session."""

from __future__ import annotations

import pandas as pd
import pytest

from services.embedder.sentiment import LexiconSentiment
from services.embedder.text import TextEncoder
from services.training.sources import CANDLE_COLUMNS, InMemoryCandleSource, SymbolInfo


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    import torch

    torch.set_num_threads(1)
    return TextEncoder("", device="cpu", batch_size=64).load()


@pytest.fixture(scope="session")
def lexicon() -> LexiconSentiment:
    return LexiconSentiment()


@pytest.fixture(scope="session")
def eurusd() -> pd.DataFrame:
    """The bundled EURUSD H1 candles (5000 bars) in the candle contract."""
    from services.data.samples import SAMPLES, load_candles

    rows = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"]
    return pd.DataFrame({name: [getattr(c, name) for c in rows] for name in CANDLE_COLUMNS}).assign(
        time=lambda f: pd.to_datetime(f["time"], utc=True)
    )


def candle_source(eurusd: pd.DataFrame) -> InMemoryCandleSource:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", eurusd)
    return source
