"""The regime model bundle: fit on bundled data, describe from filtered probabilities only."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from services.regime.regimes import (
    RegimeModel,
    describe,
    filtered,
    fit_regimes,
    hindsight_segments,
    needed_candles,
)
from services.runtime.errors import FailedPrecondition


def fit(candles: pd.DataFrame, **options: object) -> RegimeModel:
    settings: dict[str, object] = {"n_states": None, "restarts": 2, "max_iter": 40, "vol_window": 24}
    return fit_regimes(candles, symbol="EURUSD", **{**settings, **options})  # type: ignore[arg-type]


def test_describe_uses_no_bar_after_the_one_it_describes(candles: Callable[[str], pd.DataFrame]) -> None:
    frame = candles("EURUSD")
    progress: list[tuple[int, int]] = []
    model = fit(frame, on_restart=lambda done, total, _: progress.append((done, total)))
    assert progress[-1][0] == progress[-1][1] == 6  # 2 restarts x 3 candidate state counts
    model = RegimeModel.from_dict(json.loads(json.dumps(model.to_dict())))
    view = describe(model, frame, lookback=300)
    assert abs(sum(p for _, p in view.probabilities) - 1) < 1e-9 and view.regime == view.probabilities[0][0]
    assert sum(s.bars for s in view.history) == 300 and view.history[-1].start_time == view.since
    assert set(view.transition) == set(model.names) and all(
        d >= 1 for d in view.expected_duration_bars.values()
    )
    _, regimes, proba = filtered(model, frame)
    for cut in (3000, 4000):
        changed = frame.copy()
        changed.loc[cut:, ["open", "high", "low", "close"]] *= 1.5  # bars from `cut` on
        _, same_regimes, changed_proba = filtered(model, changed)
        assert same_regimes == regimes
        assert np.allclose(changed_proba[: cut - 24], proba[: cut - 24])  # rows before bar `cut`
        assert not np.allclose(changed_proba[cut - 24 :], proba[cut - 24 :])
        past = describe(model, frame.iloc[:cut], lookback=300)
        assert past.probabilities[0][1] == pytest.approx(proba[cut - 25].max())
    truth = hindsight_segments(model, frame, lookback=300)
    assert sum(s.bars for s in truth) == 300


def test_names_survive_a_retrain_and_too_few_candles_say_how_many(
    candles: Callable[[str], pd.DataFrame],
) -> None:
    frame = candles("EURUSD")
    first = fit(frame.iloc[:4000], n_states=3)
    again = fit(frame, n_states=3, previous=first.states)
    assert sorted(first.names) == sorted(again.names)
    with pytest.raises(FailedPrecondition, match=f"at least {needed_candles(24)}") as error:
        fit(frame.iloc[:100])
    assert error.value.reason == "NOT_ENOUGH_CANDLES"
