"""A symbol's regime model (features -> standardiser -> HMM -> named states) and what it says.

`fit_regimes` trains one on candles (keeping the previous version's names, services.regime.naming);
`describe` answers "which regime now" from FILTERED probabilities, so the figure for a bar uses no
later bar. Only `hindsight_segments` (the Viterbi path over the history) looks ahead, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from services.regime.features import FeatureFrame, Standardizer, min_candles, regime_features
from services.regime.hmm import RegimeHMM
from services.regime.naming import StateStats, match_states, name_states, regime_probabilities, state_stats
from services.regime.segments import Segment, segments
from services.runtime.errors import FailedPrecondition

#: Fewest feature rows an HMM is fitted on (75 per state at 4 states, ~35 parameters).
MIN_TRAINING_ROWS = 300


@dataclass(frozen=True, slots=True)
class RegimeModel:
    """A fitted regime model; `states[i]` names HMM state i (`label`) with its statistics."""

    vol_window: int
    standardizer: Standardizer
    hmm: RegimeHMM
    states: list[StateStats]

    @property
    def names(self) -> list[str]:
        return [s.label for s in self.states]

    def to_dict(self) -> dict[str, Any]:
        return {
            "vol_window": self.vol_window,
            "standardizer": self.standardizer.to_dict(),
            "hmm": self.hmm.to_dict(),
            "states": [s.to_dict() for s in self.states],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeModel:
        return cls(
            vol_window=int(data["vol_window"]),
            standardizer=Standardizer.from_dict(data["standardizer"]),
            hmm=RegimeHMM.from_dict(data["hmm"]),
            states=[StateStats.from_dict(s) for s in data["states"]],
        )


def needed_candles(vol_window: int) -> int:
    return MIN_TRAINING_ROWS + min_candles(vol_window) - 1


def check_enough(candles: pd.DataFrame, vol_window: int, symbol: str) -> None:
    need = needed_candles(vol_window)
    if len(candles) < need:
        raise FailedPrecondition(
            f"{symbol} has {len(candles)} candles; the regime model needs at least {need}",
            reason="NOT_ENOUGH_CANDLES",
            metadata={"symbol": symbol, "needed": str(need), "have": str(len(candles))},
        )


def fit_regimes(
    candles: pd.DataFrame,
    *,
    symbol: str,
    n_states: int | None,
    restarts: int,
    max_iter: int,
    vol_window: int,
    previous: Sequence[StateStats] = (),
    on_restart: Callable[[int, int, float], None] | None = None,
) -> RegimeModel:
    """Fit on every row of `candles` (columns time, open, high, low, close, volume); state names
    follow `previous` (the last version's states) when given."""
    check_enough(candles, vol_window, symbol)
    frame = regime_features(candles, vol_window=vol_window)
    standardizer = Standardizer().fit(frame.values)
    X = standardizer.transform(frame.values)
    hmm = RegimeHMM(n_states=n_states, n_restarts=restarts, max_iter=max_iter).fit(X, on_restart=on_restart)
    stats = state_stats(hmm.viterbi(X), frame.log_return, hmm.n_states_)
    labels = match_states(stats, previous) if previous else name_states(stats)
    return RegimeModel(
        vol_window, standardizer, hmm, [s.with_label(n) for s, n in zip(stats, labels, strict=True)]
    )


@dataclass(frozen=True, slots=True)
class RegimeView:
    """The regime of the last bar and the recent history, all from filtered probabilities.

    `probabilities` (regime -> probability at the last bar), most probable first; `history` segments
    of the filtered most-probable regime over the last `lookback` bars, oldest first."""

    regime: str
    probability: float
    probabilities: list[tuple[str, float]]
    since: datetime
    last_bar: datetime
    history: list[Segment]
    transition: dict[str, dict[str, float]]
    expected_duration_bars: dict[str, float]


def filtered(model: RegimeModel, candles: pd.DataFrame) -> tuple[FeatureFrame, list[str], np.ndarray]:
    """(features, regimes, (n, r) filtered regime probabilities) over every bar of `candles`."""
    frame = regime_features(candles, vol_window=model.vol_window)
    proba = model.hmm.filtered_proba(model.standardizer.transform(frame.values))
    regimes, by_regime = regime_probabilities(proba, model.names)
    return frame, regimes, by_regime


def describe(
    model: RegimeModel, candles: pd.DataFrame, *, lookback: int = 500, symbol: str = ""
) -> RegimeView:
    check_enough_rows = min_candles(model.vol_window) + 1
    if len(candles) < check_enough_rows:
        raise FailedPrecondition(
            f"{symbol or 'the symbol'} has {len(candles)} candles; describing its regime needs "
            f"at least {check_enough_rows}",
            reason="NOT_ENOUGH_CANDLES",
        )
    frame, regimes, proba = filtered(model, candles)
    best = proba.argmax(axis=1)
    labels = [regimes[i] for i in best]
    recent = slice(max(0, len(labels) - lookback), len(labels))
    history = segments(
        frame.times[recent],
        labels[recent],
        proba[np.arange(len(best)), best][recent],
        frame.log_return[recent],
    )
    last = proba[-1]
    ranked = sorted(zip(regimes, (float(p) for p in last), strict=True), key=lambda item: -item[1])
    return RegimeView(
        regime=ranked[0][0],
        probability=ranked[0][1],
        probabilities=ranked,
        since=history[-1].start_time,
        last_bar=frame.times[-1].to_pydatetime(),
        history=history,
        transition=transition_by_regime(model),
        expected_duration_bars={
            s.label: float(d) for s, d in zip(model.states, model.hmm.expected_durations_, strict=True)
        },
    )


def transition_by_regime(model: RegimeModel) -> dict[str, dict[str, float]]:
    """The state transition matrix folded onto regimes (a row: from, weighted by the states'
    stationary share within that regime)."""
    names = model.names
    weights = np.array([max(s.bars, 1) for s in model.states], dtype=np.float64)
    regimes = list(dict.fromkeys(names))
    out: dict[str, dict[str, float]] = {}
    for src in regimes:
        rows = [i for i, n in enumerate(names) if n == src]
        w = weights[rows] / weights[rows].sum()
        row = (model.hmm.transmat_[rows] * w[:, None]).sum(axis=0)
        out[src] = {dst: float(sum(row[j] for j, n in enumerate(names) if n == dst)) for dst in regimes}
    return out


def hindsight_segments(model: RegimeModel, candles: pd.DataFrame, *, lookback: int = 500) -> list[Segment]:
    """HINDSIGHT: segments of the Viterbi path, which uses every bar, later ones included."""
    frame = regime_features(candles, vol_window=model.vol_window)
    path = model.hmm.viterbi(model.standardizer.transform(frame.values))
    labels = [model.names[i] for i in path]
    recent = slice(max(0, len(labels) - lookback), len(labels))
    ones = np.ones(len(labels))[recent]
    return segments(frame.times[recent], labels[recent], ones, frame.log_return[recent])
