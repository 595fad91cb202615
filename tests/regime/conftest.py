"""Fixtures of the regime tests: `candles(symbol)` gives a bundled data set as a pandas frame.

The frame has columns time (UTC), open, high, low, close, volume, oldest first; each symbol is read
once per session and a fresh copy handed out, so a test may modify it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import cache

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from services.data.samples import SAMPLES, load_candles


@cache
def _frame(symbol: str) -> pd.DataFrame:
    specs = [s for s in SAMPLES if s.symbol == symbol]
    if not specs:
        raise KeyError(f"no bundled data set {symbol!r}")
    bars = load_candles(specs).get(symbol)
    if not bars:
        raise AssertionError(f"bundled data set {symbol} not installed (services.data.samples)")
    frame = pd.DataFrame([asdict(c) for c in bars])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame[["time", "open", "high", "low", "close", "volume"]].reset_index(drop=True)


@pytest.fixture(scope="session", autouse=True)
def _one_math_thread() -> Iterator[None]:
    """One BLAS/OpenMP thread (the cores are shared; the worker runs with one too)."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def candles() -> Callable[[str], pd.DataFrame]:
    """Factory: `candles("EURUSD")` -> frame (time, open, high, low, close, volume), a fresh copy."""

    def make(symbol: str) -> pd.DataFrame:
        return _frame(symbol).copy()

    return make
