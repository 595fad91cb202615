"""Do a window's nearest neighbours share its next-N-bar return direction more often than random windows?

Windows of `window` bars every `step` bars; a window's direction is up when the close `horizon`
bars after its last bar is above its last close. The rule that keeps it honest: a query window
only looks among earlier windows whose direction was already known at its last bar (their end plus
`horizon` is not after the query's end). The baseline is the exact expected agreement of `k` random
windows from that same eligible set. `python -m services.embedder.evaluation` prints the table of
the bundled data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from services.embedder.series import features


@dataclass(frozen=True, slots=True)
class NeighbourEvaluation:
    """Agreement of the k nearest earlier windows (`neighbour_rate`) against random earlier ones."""

    symbol: str
    bars: int
    window: int
    horizon: int
    step: int
    k: int
    windows: int
    queries: int
    neighbour_rate: float
    random_rate: float
    up_share: float
    #: Agreements counted (queries * k neighbours).
    neighbour_pairs: int

    @property
    def lift(self) -> float:
        return self.neighbour_rate - self.random_rate

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "lift": self.lift}


def window_vectors(frame: pd.DataFrame, window: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length embeddings (m, DIMENSION) of windows every `step` bars and their last bar index (m,)."""
    arrays = [frame[name].to_numpy(dtype=np.float64) for name in ("open", "high", "low", "close", "volume")]
    ends = np.arange(window - 1, len(frame), step)
    vectors = np.stack([features(*(a[e - window + 1 : e + 1] for a in arrays)) for e in ends])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0), ends


def eligible(ends: np.ndarray, query: int, horizon: int) -> np.ndarray:
    """Indices of the windows whose direction is known at the last bar of window `query`."""
    return np.flatnonzero(ends + horizon <= ends[query])


def nearest(vectors: np.ndarray, candidates: np.ndarray, query: int, k: int) -> np.ndarray:
    """The `k` candidates most similar (cosine) to window `query`, best first."""
    sims = vectors[candidates] @ vectors[query]
    top = np.argpartition(-sims, min(k, len(sims)) - 1)[:k]
    return candidates[top[np.argsort(-sims[top])]]


def evaluate(
    frame: pd.DataFrame,
    *,
    symbol: str = "",
    window: int = 64,
    horizon: int = 24,
    step: int = 4,
    k: int = 10,
    min_history: int = 100,
) -> NeighbourEvaluation:
    """The neighbour test on one candle series (see the module docstring)."""
    close = frame["close"].to_numpy(dtype=np.float64)
    vectors, ends = window_vectors(frame, window, step)
    keep = ends + horizon < len(close)  # windows whose own direction is known by the end of the data
    vectors, ends = vectors[keep], ends[keep]
    up = close[ends + horizon] > close[ends]
    hits = queries = 0
    expected = 0.0
    for query in range(len(ends)):
        candidates = eligible(ends, query, horizon)
        if len(candidates) < max(min_history, k):
            continue
        neighbours = nearest(vectors, candidates, query, k)
        hits += int((up[neighbours] == up[query]).sum())
        expected += float((up[candidates] == up[query]).mean())
        queries += 1
    return NeighbourEvaluation(
        symbol=symbol,
        bars=len(frame),
        window=window,
        horizon=horizon,
        step=step,
        k=k,
        windows=len(ends),
        queries=queries,
        neighbour_rate=hits / (queries * k) if queries else float("nan"),
        random_rate=expected / queries if queries else float("nan"),
        up_share=float(up.mean()) if len(up) else float("nan"),
        neighbour_pairs=queries * k,
    )


#: The horizon per timeframe of the bundled table: one day ahead on H1, one week on D1.
HORIZONS = {"H1": 24, "D1": 5}


def bundled_table(
    symbols: Sequence[str] | None = None, *, horizon: int | None = None, **options: Any
) -> list[NeighbourEvaluation]:
    """The neighbour test on every bundled series (services.data.samples), or on `symbols`;
    `horizon` None: `HORIZONS` by the series' timeframe."""
    from services.data.samples import SAMPLES, load_candles

    specs = [s for s in SAMPLES if symbols is None or s.symbol in symbols]
    candles = load_candles(specs)
    out = []
    for spec in specs:
        rows = candles.get(spec.symbol)
        if not rows:
            continue
        frame = pd.DataFrame(
            {
                name: [getattr(c, name) for c in rows]
                for name in ("time", "open", "high", "low", "close", "volume")
            }
        )
        timeframe = str(getattr(spec.timeframe, "value", spec.timeframe))
        bars_ahead = horizon or HORIZONS.get(timeframe.upper(), 5)
        out.append(evaluate(frame, symbol=spec.symbol, horizon=bars_ahead, **options))
    return out


def main() -> None:  # pragma: no cover - a report for docs/embedder.md
    print("symbol  bars  horizon  queries  neighbours  random  lift   up-share")
    for r in bundled_table():
        print(
            f"{r.symbol:7} {r.bars:5} {r.horizon:7} {r.queries:8} {r.neighbour_rate:10.4f} "
            f"{r.random_rate:7.4f} {r.lift:+.4f} {r.up_share:.3f}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
