"""The regime domain in one object: the one door its servicer will use.

domain = RegimeDomain(RegimeSettings.from_env(), source)
await domain.start()
job = await domain.train(["EURUSD"], background=False)
view = await domain.regime("EURUSD")      # filtered: the figure for a bar uses no later bar
await domain.stop()

Models are the shared registry's versions (services.training.registry); the serving side loads the
current version of a symbol and reloads it when its pointer changes, so a retrain is picked up
without a restart and a killed training leaves the previous version serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from services.regime.regimes import RegimeModel, RegimeView, describe, hindsight_segments
from services.regime.scoring import Score, TrainedScorer, score_signals
from services.regime.segments import Segment
from services.regime.settings import RegimeSettings
from services.regime.signals import min_history
from services.regime.trainer import RegimeTrainer, regime_registry
from services.regime.training import REGIME_FILE, SCORER_FILE
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import JobRunner, RunnerSettings, TrainingJob
from services.training.registry import ModelVersion, PointerStamp
from services.training.retraining import RetrainScheduler
from services.training.sources import CandleSource
from services.training.worker import WorkerOptions

DEFAULT_LOOKBACK = 500


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: PointerStamp
    version: ModelVersion
    model: RegimeModel
    scorer: TrainedScorer


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal to score: `side` buy or sell, at the bar opening at `time` (None: the last bar);
    `horizon` and the ATR barriers 0 mean the model's own (a model is trained for one setting)."""

    side: str
    time: datetime | None = None
    horizon: int = 0
    take_profit_atr: float = 0.0
    stop_loss_atr: float = 0.0


class RegimeDomain:
    """Owns the registry, the job runner, the retrain scheduler and the loaded models."""

    def __init__(self, settings: RegimeSettings, source: CandleSource) -> None:
        self.settings = settings
        self.source = source
        self.registry = regime_registry(settings.models_dir)
        self.trainer = RegimeTrainer(settings, source, self.registry)
        options = WorkerOptions(
            spec=self.trainer.worker,
            models_dir=settings.models_dir,
            nice=settings.worker_nice,
            threads=settings.worker_threads,
            use_gpu=False,
        )
        self.jobs = JobRunner(
            self.trainer,
            RunnerSettings(
                worker=options, worker_idle_s=settings.worker_idle_s, max_jobs_kept=settings.max_jobs_kept
            ),
        )
        self.scheduler = RetrainScheduler(self.jobs, interval_s=3600.0)
        self._loaded: dict[str, _Loaded] = {}

    async def start(self, *, schedule: bool = True) -> None:
        await self.jobs.start()
        if schedule and self.settings.auto_retrain_days > 0:
            await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.jobs.stop()

    # ---- training -------------------------------------------------------------------------------

    async def train(
        self, symbols: Sequence[str] = (), *, force: bool = True, background: bool = True
    ) -> TrainingJob:
        """Train the given symbols, or every active one when none is given."""
        if not symbols:
            return await self.jobs.train_all(force=force, background=background)
        return await self.jobs.train(symbols, force=force, background=background)

    # ---- regimes --------------------------------------------------------------------------------

    async def _model(self, symbol: str) -> _Loaded:
        """The current version of `symbol`'s model; FailedPrecondition (with how to train it)
        when it has none, NotFound for a symbol the Data service does not know."""
        self.registry.check_key(symbol)
        stamp = await asyncio.to_thread(self.registry.pointer_stamp, symbol)
        loaded = self._loaded.get(symbol)
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        if stamp is None and await self.source.get_symbol(symbol) is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        version = await asyncio.to_thread(self.registry.get, symbol)
        regime = await asyncio.to_thread((version.path / REGIME_FILE).read_text)
        scorer = await asyncio.to_thread((version.path / SCORER_FILE).read_text)
        assert stamp is not None
        loaded = _Loaded(
            stamp,
            version,
            RegimeModel.from_dict(json.loads(regime)),
            TrainedScorer.from_dict(json.loads(scorer)),
        )
        self._loaded[symbol] = loaded
        return loaded

    async def regime(self, symbol: str, *, lookback: int = 0) -> tuple[RegimeView, ModelVersion]:
        """The regime of the symbol's last bar, from filtered probabilities, and the model's version."""
        loaded = await self._model(symbol)
        candles = await self.source.fetch(symbol, str(loaded.version.metadata.get("timeframe", "H1")))
        view = await asyncio.to_thread(
            describe, loaded.model, candles, lookback=lookback or DEFAULT_LOOKBACK, symbol=symbol
        )
        return view, loaded.version

    async def hindsight(self, symbol: str, *, lookback: int = 0) -> list[Segment]:
        """HINDSIGHT (Viterbi over the history, later bars included): for charts, never for signals."""
        loaded = await self._model(symbol)
        candles = await self.source.fetch(symbol, str(loaded.version.metadata.get("timeframe", "H1")))
        return await asyncio.to_thread(
            hindsight_segments, loaded.model, candles, lookback=lookback or DEFAULT_LOOKBACK
        )

    async def model(self, symbol: str) -> dict[str, Any]:
        """The current version's metadata: HMM states, log-likelihood, BIC, convergence, data range."""
        return dict((await self._model(symbol)).version.metadata)

    # ---- signal scoring -------------------------------------------------------------------------

    async def score(self, symbol: str, signals: Sequence[Signal]) -> list[Score]:
        """Score many signals of one symbol in one pass (INVALID_ARGUMENT names a bad field;
        FAILED_PRECONDITION when a signal's bar has too little history)."""
        if not signals:
            raise InvalidArgument("signals", "at least one signal is required")
        loaded = await self._model(symbol)
        config = loaded.scorer.config
        for i, signal in enumerate(signals):
            _check_signal(signal, config, i)
        candles = await self.source.fetch(symbol, str(loaded.version.metadata.get("timeframe", "H1")))
        times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
        positions = [_position(times, signal.time, i) for i, signal in enumerate(signals)]
        need = max(min_history(), loaded.scorer.regimes.vol_window + 1)
        short = [i for i, p in enumerate(positions) if p < need]
        if short:
            raise FailedPrecondition(
                f"a signal needs {need} bars of history before it; "
                f"signal {short[0]} has {positions[short[0]]}",
                reason="NOT_ENOUGH_CANDLES",
            )
        sides = [signal.side for signal in signals]
        return await asyncio.to_thread(score_signals, loaded.scorer, candles, positions, sides)


def _check_signal(signal: Signal, config: Any, index: int) -> None:
    prefix = f"signals[{index}]."
    if signal.side not in ("buy", "sell"):
        raise InvalidArgument(prefix + "direction", "must be buy or sell")
    trained = {
        "horizon": (signal.horizon, config.horizon),
        "take_profit_atr": (signal.take_profit_atr, config.take_profit_atr),
        "stop_loss_atr": (signal.stop_loss_atr, config.stop_loss_atr),
    }
    for field, (asked, own) in trained.items():
        if asked < 0:
            raise InvalidArgument(prefix + field, "must not be negative")
        if asked and asked != own:
            raise InvalidArgument(prefix + field, f"this model is trained for {own}; send {own} or 0")


def _position(times: pd.DatetimeIndex, at: datetime | None, index: int) -> int:
    """The bar opening at `at` (None: the last bar); INVALID_ARGUMENT when no bar opens then."""
    if at is None:
        return len(times) - 1
    found = np.flatnonzero(times == pd.Timestamp(at))
    if not len(found):
        raise InvalidArgument(f"signals[{index}].time", "no candle opens at that time")
    return int(found[0])
