"""Time-series embeddings (returns-v1) and the honest neighbour evaluation on the bundled data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.embedder.evaluation import bundled_table, eligible, evaluate, nearest, window_vectors
from services.embedder.series import DIMENSION, check_window, embed_window
from services.runtime.errors import InvalidArgument


def candles(close: np.ndarray, volume: float = 100.0) -> pd.DataFrame:
    close = np.asarray(close, dtype=np.float64)
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame(
        {
            "time": pd.date_range("2024-01-01", periods=len(close), freq="h", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": np.full(len(close), volume),
        }
    )


def walk(n: int, seed: int, scale: float = 0.01) -> np.ndarray:
    return 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, scale, n)))


def test_embedding_is_fixed_size_scale_free_and_describes_its_window() -> None:
    frame = candles(walk(128, 1))
    embedding = embed_window(frame)
    assert embedding.vector.shape == (DIMENSION,) and embedding.vector.dtype == np.float32
    assert embedding.bars == 128 and embedding.end_time == frame["time"].iloc[-1]
    assert np.isfinite(embedding.vector).all()
    # The price level and the volatility do not change the vector (returns are normalised).
    scaled = candles(walk(128, 1) * 7.0)
    assert np.allclose(embed_window(scaled).vector, embedding.vector, atol=1e-5)
    quiet = candles(100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.002, 128))))
    wild = candles(100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.02, 128))))
    assert np.allclose(embed_window(quiet).vector[:39], embed_window(wild).vector[:39], atol=1e-4)
    unit = embed_window(frame, normalize=True).vector
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-5)
    # Any window length gives the same dimension; a flat window is all finite.
    assert embed_window(candles(walk(9, 2))).vector.shape == (DIMENSION,)
    assert np.isfinite(embed_window(candles(np.full(20, 5.0))).vector).all()


def test_up_and_down_windows_are_far_apart() -> None:
    up = embed_window(candles(np.linspace(100, 120, 64) + walk(64, 3, 0.001)), normalize=True).vector
    up2 = embed_window(candles(np.linspace(50, 58, 64) + walk(64, 4, 0.001)), normalize=True).vector
    down = embed_window(candles(np.linspace(120, 100, 64) + walk(64, 5, 0.001)), normalize=True).vector
    assert float(up @ up2) > float(up @ down) + 0.5


def test_bad_windows_name_the_candle() -> None:
    with pytest.raises(InvalidArgument, match=r"8\.\.4096"):
        check_window(candles(walk(5, 1)))
    frame = candles(walk(20, 1))
    frame.loc[7, "close"] = -1.0
    with pytest.raises(InvalidArgument) as caught:
        check_window(frame)
    assert [v.field for v in caught.value.violations] == ["window.candles[7]"]
    frame = candles(walk(20, 1))
    frame.loc[3, "high"] = frame.loc[3, "low"] * 0.5
    with pytest.raises(InvalidArgument, match=r"symbol_window\[3\]"):
        check_window(frame, "symbol_window")


def test_neighbours_come_only_from_windows_whose_future_was_known() -> None:
    vectors, ends = window_vectors(candles(walk(600, 7)), window=32, step=4)
    horizon = 10
    for query in (40, 80, len(ends) - 1):
        candidates = eligible(ends, query, horizon)
        assert len(candidates) and (ends[candidates] + horizon <= ends[query]).all()
        assert (ends[candidates] < ends[query]).all()
        top = nearest(vectors, candidates, query, 5)
        assert set(top) <= set(candidates) and len(top) == 5
        sims = vectors[top] @ vectors[query]
        assert list(sims) == sorted(sims, reverse=True)


def test_a_predictable_series_shows_a_lift_and_a_random_walk_does_not() -> None:
    cycle = 100 + 5 * np.sin(np.arange(3000) * 2 * np.pi / 50) + walk(3000, 8, 0.0005)
    periodic = evaluate(candles(cycle), window=32, horizon=10, step=3, k=10, min_history=50)
    assert periodic.neighbour_rate > periodic.random_rate + 0.3
    noise = evaluate(candles(walk(3000, 9)), window=32, horizon=10, step=3, k=10, min_history=50)
    assert abs(noise.lift) < 0.05
    assert noise.queries > 500 and noise.neighbour_pairs == noise.queries * 10


def test_bundled_table_reports_whatever_it_shows() -> None:
    (eurusd,) = bundled_table(["EURUSD"])
    assert eurusd.symbol == "EURUSD" and eurusd.bars == 5000 and eurusd.horizon == 24
    assert eurusd.queries > 1000 and 0.0 < eurusd.neighbour_rate < 1.0 and 0.0 < eurusd.random_rate < 1.0
    assert eurusd.row()["lift"] == pytest.approx(eurusd.neighbour_rate - eurusd.random_rate)
