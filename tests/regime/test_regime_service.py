"""The regime domain end to end on the shared machinery: a real worker process trains EURUSD,
the facade serves its regime from filtered probabilities, a retrain is picked up at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pandas as pd
import pytest

from services.regime.service import RegimeDomain, Signal
from services.regime.settings import RegimeSettings
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.runtime.jobs import JobState
from services.training.sources import InMemoryCandleSource, SymbolInfo


@pytest.fixture
async def domain(tmp_path: Path, candles: Callable[[str], pd.DataFrame]) -> AsyncIterator[RegimeDomain]:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", candles("EURUSD"))
    source.put(SymbolInfo("TINY", "FX", timeframe="H1"), "H1", candles("EURUSD").head(200))
    settings = RegimeSettings(
        home=tmp_path, restarts=1, max_iter=30, n_states=3, boosting_rounds=1, worker_nice=0, serve_bars=1000
    )
    domain = RegimeDomain(settings, source)
    await domain.start(schedule=False, train_on_start=False)
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
    meta = (await domain.model("EURUSD"))[0].metadata
    assert meta["hmm"]["n_states"] == 3 and len(meta["hmm"]["states"]) == 3
    first_names = sorted(s["label"] for s in meta["hmm"]["states"])
    await domain.train(["EURUSD"], background=False)
    _, again = await domain.regime("EURUSD")
    assert again.version == "v000002"  # picked up without a restart
    retrained = (await domain.model("EURUSD"))[0].metadata
    assert sorted(s["label"] for s in retrained["hmm"]["states"]) == first_names

    evaluation = meta["evaluation"]
    assert evaluation["signals"] > 500 and set(evaluation["scores_calibrated"]) >= {"auc", "brier"}
    strategies = [row["strategy"] for row in evaluation["backtest"]]
    assert len(strategies) == 3 and len(evaluation["reliability"]) >= 2
    signals = [
        Signal("EURUSD", "buy"),
        Signal("EURUSD", "sell"),
        Signal("EURUSD", "buy", horizon=24, take_profit=2.0, stop_loss=1.0, barrier_unit="atr"),
    ]
    scored = await domain.score(signals)
    scores = [s.score for s in scored]
    assert len(scores) == 3 and all(0 < s.probability < 1 for s in scores)
    assert scores[0].features[0][0] and abs(scores[0].features[0][2]) >= abs(scores[0].features[-1][2])
    assert scores[0].probability == scores[2].probability  # the same signal, the model's own setting
    assert scored[0].config.horizon == 24 and scored[0].config.barrier_unit == "atr"
    assert scored[0].time == scored[0].last_bar and 0 < scores[0].regime_probability <= 1
    with pytest.raises(InvalidArgument) as bad:
        await domain.score([Signal("EURUSD", "hold")])
    assert bad.value.violations[0].field == "side"
    with pytest.raises(InvalidArgument) as other:
        await domain.score([Signal("EURUSD", "buy"), Signal("EURUSD", "buy", horizon=5)], field="requests")
    assert other.value.violations[0].field == "requests[1].horizon"
    for wrong, field in (
        (Signal("EURUSD", "buy", take_profit=3.0), "barriers.take_profit"),
        (Signal("EURUSD", "buy", barrier_unit="percent"), "barriers.unit"),
        (Signal("EURUSD", "buy", timeframe="D1"), "timeframe"),
    ):
        with pytest.raises(InvalidArgument) as error:
            await domain.score([wrong])
        assert error.value.violations[0].field == field
    # serve_bars=1000: a signal before the newest 1000 bars reads the whole history
    first_bar = (await domain.source.fetch("EURUSD", "H1"))["time"].iloc[0]
    (old,) = await domain.score([Signal("EURUSD", "buy", time=first_bar + pd.Timedelta(days=30))])
    assert old.time < (await domain.source.fetch("EURUSD", "H1", limit=1000))["time"].iloc[0]
    with pytest.raises(InvalidArgument) as early:
        await domain.score([Signal("EURUSD", "buy", time=first_bar - pd.Timedelta(hours=1))])
    assert early.value.violations[0].field == "time"
    with pytest.raises(FailedPrecondition, match="bars of EURUSD history"):
        await domain.score([Signal("EURUSD", "buy", time=first_bar + pd.Timedelta(hours=5))])
    # A time between bars enters at the bar opening before it; the response says which.
    bars = (await domain.source.fetch("EURUSD", "H1"))["time"]
    between = bars.iloc[-10] + pd.Timedelta(minutes=30)
    (at,) = await domain.score([Signal("EURUSD", "sell", time=between)])
    assert at.time == bars.iloc[-10].to_pydatetime()
    status = await domain.status()
    assert status.ready and [m.symbol for m in status.models] == ["EURUSD"] and "serving 1" in status.message


async def test_first_start_trains_the_active_symbols_and_says_so(
    tmp_path: Path, candles: Callable[[str], pd.DataFrame]
) -> None:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", candles("EURUSD").tail(1500))
    settings = RegimeSettings(
        home=tmp_path, restarts=1, max_iter=20, n_states=2, boosting_rounds=1, worker_nice=0
    )
    domain = RegimeDomain(settings, source)
    await domain.start(schedule=False)
    try:
        assert domain.first_job is not None and domain.first_job.trigger == "first start"
        status = await domain.status()
        assert not status.ready and "first start" in status.message
        assert status.job is not None and status.job.job_id == domain.first_job.job_id
        with pytest.raises(FailedPrecondition, match="first training is running") as busy:
            await domain.regime("EURUSD")
        assert busy.value.reason == "MODEL_TRAINING"
        job = await domain.jobs.wait(domain.first_job.job_id)
        assert job.state is JobState.SUCCEEDED
        view, _ = await domain.regime("EURUSD")
        assert 0 < view.probability <= 1
        assert (await domain.status()).ready
    finally:
        await domain.stop()
    # A restart with a model in the registry trains nothing.
    again = RegimeDomain(settings, source)
    await again.start(schedule=False)
    try:
        assert again.first_job is None
    finally:
        await again.stop()


class StartingData(InMemoryCandleSource):
    """The Data service while it starts beside this one (`kitrading up`): its first listings fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def list_symbols(self) -> list[SymbolInfo]:
        if self.failures > 0:
            self.failures -= 1
            raise Unavailable("data is starting; retry shortly")
        return list(await super().list_symbols())


async def test_the_first_training_waits_for_a_starting_data_service(
    tmp_path: Path, candles: Callable[[str], pd.DataFrame]
) -> None:
    source = StartingData(failures=2)
    source.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", candles("EURUSD").tail(1200))
    settings = RegimeSettings(home=tmp_path, restarts=1, max_iter=20, n_states=2, boosting_rounds=1)
    domain = RegimeDomain(settings, source)
    await domain.start(schedule=False)
    try:
        assert domain.first_job is None and domain.bootstrapping
        assert "waiting for the data service" in (await domain.status()).message
        deadline = asyncio.get_running_loop().time() + 30
        while domain.first_job is None:
            assert asyncio.get_running_loop().time() < deadline, "the first training was never queued"
            await asyncio.sleep(0.1)
        assert not domain.bootstrapping and source.failures == 0
        assert (await domain.jobs.wait(domain.first_job.job_id)).state is JobState.SUCCEEDED
    finally:
        await domain.stop()


async def test_a_model_is_loaded_off_the_event_loop(
    domain: RegimeDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the fault-isolation e2e: the first load of a model imports LightGBM, 1.5 s on a
    busy 2-core box; done on the event loop it stalled the gRPC health check past the gateway's 1 s
    timeout, and the gateway took the whole service out (503s) while a first training published."""
    import threading

    from services.regime import service as regime_service

    await domain.train(["EURUSD"], background=False)
    domain._loaded.clear()
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []
    real = regime_service.TrainedScorer.from_dict

    def spy(state: dict[str, object]) -> object:
        seen.append(threading.current_thread())
        return real(state)

    monkeypatch.setattr(regime_service.TrainedScorer, "from_dict", staticmethod(spy))
    await domain.regime("EURUSD")
    assert seen and all(thread is not loop_thread for thread in seen)
