"""The model services' candle frames from Data's column pages: numpy whole-array reads, oldest first."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kitrading.common.v1 import market_pb2
from services.training.data_client import candles_frame, columns_frame


def _page(first_hour: int, count: int, step: int = 1) -> market_pb2.CandleColumns:
    hours = list(range(first_hour, first_hour + step * count, step))
    return market_pb2.CandleColumns(
        times_unix_micros=[1_700_000_000_000_000 + h * 3_600_000_000 for h in hours],
        opens=[1.0 + h for h in hours],
        highs=[2.0 + h for h in hours],
        lows=[0.5 + h for h in hours],
        closes=[1.5 + h for h in hours],
        volumes=[10.0 * h for h in hours],
    )


def test_column_pages_make_the_same_frame_as_rows_oldest_first() -> None:
    newest_first = [_page(9, 5, step=-1), _page(4, 5, step=-1)]  # two pages of a descending read
    frame = columns_frame(newest_first)
    assert list(frame.columns) == ["time", "open", "high", "low", "close", "volume"]
    assert frame["open"].tolist() == [1.0 + h for h in range(10)]
    assert frame["time"].is_monotonic_increasing and str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert frame["time"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    rows = []
    for page in newest_first:
        for i, micros in enumerate(page.times_unix_micros):
            candle = market_pb2.Candle(
                open=page.opens[i],
                high=page.highs[i],
                low=page.lows[i],
                close=page.closes[i],
                volume=page.volumes[i],
            )
            candle.time.FromMicroseconds(micros)
            rows.append(candle)
    pd.testing.assert_frame_equal(frame, candles_frame(rows))
    shuffled = columns_frame([_page(5, 5), _page(4, 5, step=-1)])  # neither order: sorted
    assert shuffled["open"].tolist() == [1.0 + h for h in range(10)]
    empty = columns_frame([])
    pd.testing.assert_frame_equal(empty, candles_frame([]))
    assert np.array_equal(columns_frame([_page(0, 3)])["volume"].to_numpy(), [0.0, 10.0, 20.0])
