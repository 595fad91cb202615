"""The regime domain end to end on the shared machinery: a real worker process trains EURUSD,
the facade serves its regime from filtered probabilities, a retrain is picked up at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pandas as pd
import pytest

from services.regime.service import RegimeDomain, Signal
from services.regime.settings import RegimeSettings
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.jobs import JobState
from services.training.sources import InMemoryCandleSource, SymbolInfo


@pytest.fixture
async def domain(tmp_path: Path, candles: Callable[[str], pd.DataFrame]) -> AsyncIterator[RegimeDomain]:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", candles("EURUSD"))
    source.put(SymbolInfo("TINY", "FX", timeframe="H1"), "H1", candles("EURUSD").head(200))
    settings = RegimeSettings(
        home=tmp_path, restarts=1, max_iter=30, n_states=3, boosting_rounds=1, worker_nice=0
    )
    domain = RegimeDomain(settings, source)
    await domain.start(schedule=False)
    yield domain
    await domain.stop()


async def test_train_then_serve_the_filtered_regime(domain: RegimeDomain) -> None:
    with pytest.raises(FailedPrecondition, match="POST /api/v1/regime/train"):
        await domain.regime("EURUSD")
    with pytest.raises(NotFound):
        await domain.regime("NOPE")
    job = await domain.train(["EURUSD", "TINY"], background=False)
    states = {i.key: (i.state, i.message) for i in job.items}
    assert states["EURUSD"][0] is JobState.SUCCEEDED
    assert states["TINY"][0] is JobState.FAILED and "needs at least" in states["TINY"][1]
    assert job.model == "hmm" and job.items[0].step >= 1
    view, version = await domain.regime("EURUSD", lookback=200)
    assert version.version == "v000001" and sum(s.bars for s in view.history) == 200
    assert view.regime in {"BULL_TREND", "BEAR_TREND", "RANGE", "HIGH_VOLATILITY"}
    meta = await domain.model("EURUSD")
    assert meta["hmm"]["n_states"] == 3 and len(meta["hmm"]["states"]) == 3
    first_names = sorted(s["label"] for s in meta["hmm"]["states"])
    await domain.train(["EURUSD"], background=False)
    _, again = await domain.regime("EURUSD")
    assert again.version == "v000002"  # picked up without a restart
    assert sorted(s["label"] for s in (await domain.model("EURUSD"))["hmm"]["states"]) == first_names

    evaluation = meta["evaluation"]
    assert evaluation["signals"] > 500 and set(evaluation["scores_calibrated"]) >= {"auc", "brier"}
    strategies = [row["strategy"] for row in evaluation["backtest"]]
    assert len(strategies) == 3 and len(evaluation["reliability"]) >= 2
    scores = await domain.score("EURUSD", [Signal("buy"), Signal("sell"), Signal("buy", horizon=24)])
    assert len(scores) == 3 and all(0 < s.probability < 1 for s in scores)
    assert scores[0].features[0][0] and abs(scores[0].features[0][2]) >= abs(scores[0].features[-1][2])
    assert scores[0].probability == scores[2].probability  # the same signal, the model's own horizon
    with pytest.raises(InvalidArgument) as bad:
        await domain.score("EURUSD", [Signal("hold")])
    assert bad.value.violations[0].field == "signals[0].direction"
    with pytest.raises(InvalidArgument) as other:
        await domain.score("EURUSD", [Signal("buy", horizon=5)])
    assert other.value.violations[0].field == "signals[0].horizon"
