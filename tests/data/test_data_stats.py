"""Candle rules, summary statistics and the market-event rule, checked against pandas on real data."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from services.data.models import Candle, Timeframe
from services.data.stats import detect_market_events, summarize, validate_candles
from services.runtime.errors import InvalidArgument

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_validation_names_each_bad_field() -> None:
    good = Candle(T0, 1.0, 1.2, 0.9, 1.1, 10)
    bad = [
        good,
        Candle(T0.replace(hour=1), 1.0, 0.95, 0.9, 1.1, 10),  # high < close
        Candle(T0.replace(hour=2), 1.0, 1.2, 1.05, 1.1, 10),  # low > open
        Candle(T0.replace(hour=3), math.nan, 1.2, 0.9, 1.1, 10),
        Candle(T0.replace(hour=4), 1.0, 1.2, 0.9, 1.1, -1),
        Candle(T0.replace(hour=5), 0.0, 1.2, 0.9, 1.1, 1),
        Candle(T0, 1.0, 1.2, 0.9, 1.1, 10),  # repeats candles[0].time
    ]
    with pytest.raises(InvalidArgument) as err:
        validate_candles(bad)
    fields = [v.field for v in err.value.violations]
    assert fields == [
        "candles[1].high",
        "candles[2].low",
        "candles[3].open",
        "candles[4].volume",
        "candles[5].open",
        "candles[6].time",
    ]
    assert err.value.reason == "INVALID_CANDLE"


def test_real_data_passes_validation(sample_candles: dict[str, list[Candle]]) -> None:
    for candles in sample_candles.values():
        validate_candles(candles)


def test_summary_matches_pandas(eurusd: list[Candle]) -> None:
    window = eurusd[-100:]
    stats = summarize("EURUSD", Timeframe.H1, window)
    close = pd.Series([c.close for c in window])
    assert stats.bars == 100
    assert stats.change_percent == pytest.approx((close.iloc[-1] / close.iloc[0] - 1) * 100)
    assert stats.volatility == pytest.approx(np.log(close).diff().std())
    assert stats.high == max(c.high for c in window)
    assert stats.low == min(c.low for c in window)
    assert stats.mean_close == pytest.approx(close.mean())
    assert stats.recent_candles == tuple(window[-24:])
    assert stats.last_candle == window[-1]


def _pandas_market_events(closes: pd.Series, k: float, window: int) -> pd.Series:
    returns = np.log(closes).diff()
    sigma = returns.rolling(window).std().shift(1)
    z = returns / sigma
    return z[z.abs() > k]


@pytest.mark.parametrize("split", [150, 3000])
def test_market_events_match_pandas_rolling_rule(eurusd: list[Candle], split: int) -> None:
    closes = pd.Series([c.close for c in eurusd])
    expected = _pandas_market_events(closes, 4.0, 100)
    expected = expected[expected.index >= split]
    events = detect_market_events(
        closes.to_numpy()[:split],
        [c.time for c in eurusd[split:]],
        closes.to_numpy()[split:],
        k=4.0,
        window=100,
    )
    assert len(expected) > 0
    assert [e.time for e in events] == [eurusd[i].time for i in expected.index]
    assert [e.z_score for e in events] == pytest.approx(list(expected.values))
    assert all(e.threshold == 4.0 for e in events)


def test_market_events_need_a_full_window(eurusd: list[Candle]) -> None:
    closes = np.array([c.close for c in eurusd[:100]])
    events = detect_market_events(np.empty(0), [c.time for c in eurusd[:100]], closes, k=0.1, window=100)
    assert events == []  # 99 returns < window of 100
