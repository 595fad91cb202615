"""The regime domain end to end on the shared machinery: a real worker process trains EURUSD,
the facade serves its regime from filtered probabilities, a retrain is picked up at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pandas as pd
import pytest

from services.regime.service import RegimeDomain
from services.regime.settings import RegimeSettings
from services.runtime.errors import FailedPrecondition, NotFound
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
