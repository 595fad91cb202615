"""The regime domain in one object: the one door its servicer will use.

domain = RegimeDomain(RegimeSettings.from_env(), source)
await domain.start()                      # no model at all: the active symbols train in the background
job = await domain.train(["EURUSD"], background=False)
view, version = await domain.regime("EURUSD")   # filtered: the figure for a bar uses no later bar
scored = await domain.score([Signal("EURUSD", "buy")])
await domain.stop()

Models are the shared registry's versions (services.training.registry); the serving side loads the
current version of a symbol and reloads it when its pointer changes, so a retrain is picked up
without a restart and a killed training leaves the previous version serving.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from services.regime.regimes import RegimeModel, RegimeView, describe, hindsight_segments
from services.regime.scoring import Score, ScoringConfig, TrainedScorer, score_signals
from services.regime.segments import Segment
from services.regime.settings import RegimeSettings
from services.regime.signals import min_history
from services.regime.trainer import RegimeTrainer, regime_registry
from services.regime.training import REGIME_FILE, SCORER_FILE
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import JobRunner, RunnerSettings, TrainingJob
from services.training.registry import ModelVersion, PointerStamp
from services.training.retraining import EventMonitor, EventStream, RetrainScheduler, lead_retraining
from services.training.sources import CandleSource
from services.training.worker import WorkerOptions

log = logging.getLogger(__name__)

DEFAULT_LOOKBACK = 500
#: Relative tolerance when a signal restates the model's barriers.
_SAME = 1e-9


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: PointerStamp
    version: ModelVersion
    model: RegimeModel
    scorer: TrainedScorer

    @property
    def timeframe(self) -> str:
        return str(self.version.metadata.get("timeframe", "H1"))

    @property
    def edge(self) -> bool:
        return bool(self.version.metadata.get("evaluation", {}).get("edge", False))


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal to score: `side` buy or sell on `symbol`, entering at the last bar opening at or
    before `time` (None: the last bar). `timeframe`, `horizon` and the barriers empty or 0 mean the
    model's: a model is trained for one trade setting, which a signal may restate but not change."""

    symbol: str
    side: str
    time: datetime | None = None
    timeframe: str = ""
    horizon: int = 0
    take_profit: float = 0.0
    stop_loss: float = 0.0
    barrier_unit: str = ""


@dataclass(frozen=True, slots=True)
class ScoredSignal:
    """A scored signal and what it was scored with: the bar it entered at, the model's trade
    setting (`config`), its version and last bar, and whether its evaluation found an edge."""

    signal: Signal
    score: Score
    time: datetime
    timeframe: str
    config: ScoringConfig
    version: ModelVersion
    last_bar: datetime
    edge: bool


@dataclass(frozen=True, slots=True)
class ModelSummary:
    symbol: str
    timeframe: str
    version: ModelVersion
    edge: bool


@dataclass(frozen=True, slots=True)
class Status:
    """`ready` once a symbol has a model; `message` says what the service is doing."""

    ready: bool
    message: str
    models: list[ModelSummary]
    job: TrainingJob | None


class RegimeDomain:
    """Owns the registry, the job runner, the retraining automation and the loaded models."""

    def __init__(
        self, settings: RegimeSettings, source: CandleSource, *, event_stream: EventStream | None = None
    ) -> None:
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
        self.scheduler = RetrainScheduler(self.jobs, interval_s=settings.retrain_check_interval_s)
        self.events: EventMonitor | None = None
        if event_stream is not None:
            self.events = EventMonitor(
                event_stream,
                self.jobs,
                settings.state_dir / "event_monitor.json",
                debounce_s=settings.event_debounce_s,
                max_delay_s=settings.event_max_delay_s,
                types=("CANDLES_INGESTED",),
            )
        self.first_job: TrainingJob | None = None
        #: True while the first training waits for the Data service to list the symbols.
        self.bootstrapping = False
        self._bootstrap: asyncio.Task[None] | None = None
        self._schedule = True
        self._train_on_start: bool | None = None
        self._loaded: dict[str, _Loaded] = {}

    async def start(
        self, *, schedule: bool = True, train_on_start: bool | None = None, lead: bool = True
    ) -> None:
        """Start the job runner, the scheduler (`schedule` and a retrain age set) and the event
        monitor (when an event stream is given and enabled). With `train_on_start` (default: the
        settings'), queue the first training of every active symbol that has no model yet (all of
        them on a first start; the rest of an interrupted first training after a restart)."""
        await self.jobs.start(clean=False)
        await self._warmup()
        self._schedule, self._train_on_start = schedule, train_on_start
        if lead:
            await self.lead()

    async def lead(self) -> None:
        """The work one instance of the service does (services.runtime.leases): staging leftovers of
        killed workers removed (another instance's could be in progress), the scheduler, the event
        monitor and the first training."""
        await lead_retraining(
            self.jobs,
            self.scheduler,
            self.events,
            schedule=self._schedule and self.settings.schedule and self.settings.auto_retrain_days > 0,
            event_retrain=self.settings.event_retrain,
        )
        if (self.settings.train_on_start if self._train_on_start is None else self._train_on_start) and not (
            await self._queue_missing()
        ):
            self.bootstrapping = True
            # A fresh context: the task outlives the caller and must not inherit its deadline.
            self._bootstrap = asyncio.create_task(
                self._retry_missing(), name="regime-first-training", context=contextvars.Context()
            )

    async def _warmup(self) -> None:
        """Load every current model (and the libraries they need), so the first call pays no load."""
        for symbol in await asyncio.to_thread(self.registry.trained_keys):
            try:
                await self._model(symbol)
            except DomainError as exc:  # a symbol removed from Data: its calls say so later
                log.info("regime model of %s not loaded at start: %s", symbol, exc)

    async def _queue_missing(self) -> bool:
        """Queue the training of the active symbols without a model; False while the Data
        service cannot list them (at `kitrading up` it starts beside this one)."""
        try:
            trained = set(await asyncio.to_thread(self.registry.trained_keys))
            missing = [k for k in await self.trainer.all_keys() if k not in trained]
            if missing:
                self.first_job = await self.jobs.train(missing, trigger="first start")
        except DomainError as exc:
            log.info("first training waits for the data service: %s", exc)
            return False
        return True

    async def _retry_missing(self, retry_s: float = 2.0) -> None:
        try:
            while True:
                await asyncio.sleep(retry_s)
                if await self._queue_missing():
                    return
        finally:
            self.bootstrapping = False

    async def stop(self) -> None:
        if self._bootstrap is not None:
            self._bootstrap.cancel()
            await asyncio.gather(self._bootstrap, return_exceptions=True)
        if self.events is not None:
            await self.events.stop()
        await self.scheduler.stop()
        await self.jobs.stop()

    # ---- training -------------------------------------------------------------------------------

    async def train(
        self,
        symbols: Sequence[str] = (),
        *,
        force: bool = True,
        background: bool = True,
        timeframe: str | None = None,
    ) -> TrainingJob:
        """Train the given symbols, or every active one when none is given; `timeframe` None:
        each symbol's own."""
        if not symbols and timeframe is None:
            return await self.jobs.train_all(force=force, background=background)
        keys = list(symbols) or await self.trainer.all_keys()
        return await self.jobs.train(keys, force=force, background=background, timeframe=timeframe)

    def _first_training(self) -> TrainingJob | None:
        """The first-start job while it has not ended."""
        if self.first_job is None:
            return None
        job = self.jobs.get(self.first_job.job_id)
        return None if job.state.terminal else job

    # ---- status ---------------------------------------------------------------------------------

    async def status(self) -> Status:
        models = []
        for symbol in await asyncio.to_thread(self.registry.trained_keys):
            try:
                loaded = await self._model(symbol)
            except (FailedPrecondition, NotFound):
                continue
            models.append(ModelSummary(symbol, loaded.timeframe, loaded.version, loaded.edge))
        first = self._first_training()
        job = first or self.jobs.current()
        if first is not None:
            done = sum(1 for i in first.items if i.state.terminal)
            message = (
                f"training the active symbols at first start (job {first.job_id}): "
                f"{done} of {len(first.items)} done"
            )
        elif self.bootstrapping and not models:
            message = "waiting for the data service to queue the first training of the active symbols"
        elif models:
            message = f"serving {len(models)} model(s)" + (
                f"; job {job.job_id} is {job.state}" if job else ""
            )
        else:
            message = "no regime model yet: train with POST /api/v1/regime/train or `kitrading train-regime`"
        return Status(bool(models), message, models, job)

    # ---- regimes --------------------------------------------------------------------------------

    async def _model(self, symbol: str) -> _Loaded:
        """The current version of `symbol`'s model; FailedPrecondition (with how to train it, or
        the first-start job that is training it) when it has none, NotFound for a symbol the Data
        service does not know."""
        self.registry.check_key(symbol)
        stamp = await asyncio.to_thread(self.registry.pointer_stamp, symbol)
        loaded = self._loaded.get(symbol)
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        if stamp is None:
            await self._known(symbol)
            first = self._first_training()
            if first is not None and symbol in first.keys:
                raise FailedPrecondition(
                    f"no regime model for {symbol} yet: the first training is running (job "
                    f"{first.job_id}); retry when it ends, follow it with GET "
                    f"/api/v1/regime/training/jobs/{first.job_id}:watch",
                    reason="MODEL_TRAINING",
                    metadata={"symbol": symbol, "job_id": first.job_id},
                )
        # Off the event loop, all of it: the first load imports LightGBM (~1.5 s on 2 busy cores),
        # which, on the loop, stalled every call and the health check (the gateway then took the
        # service out: 503s for everyone while a first training published its models).
        loaded = await asyncio.to_thread(self._load, symbol, stamp)
        self._loaded[symbol] = loaded
        return loaded

    async def _known(self, symbol: str) -> None:
        """NotFound for a symbol the Data service does not know."""
        if await self.source.get_symbol(symbol) is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )

    async def versions(self, symbol: str) -> list[ModelVersion]:
        """`symbol`'s published versions, newest first (empty before its first training);
        NotFound for a symbol the Data service does not know."""
        self.registry.check_key(symbol)
        versions = await asyncio.to_thread(self.registry.newest_first, symbol)
        if not versions:
            await self._known(symbol)
        return versions

    async def rollback(self, symbol: str, version: str = "") -> ModelVersion:
        """Serve a stored version of `symbol`'s models (default: the one published before the
        current one); regimes and scores switch at their next call (`_model` follows the pointer)."""
        self.registry.check_key(symbol)
        if await asyncio.to_thread(self.registry.current_version, symbol) is None:
            await self._known(symbol)
        return await asyncio.to_thread(self.registry.rollback, symbol, version or None)

    def _load(self, symbol: str, stamp: PointerStamp | None) -> _Loaded:
        version = self.registry.get(symbol)  # FailedPrecondition (how to train it) when it has none
        assert stamp is not None  # registry.get raised otherwise
        regime = json.loads((version.path / REGIME_FILE).read_text())
        scorer = json.loads((version.path / SCORER_FILE).read_text())
        return _Loaded(stamp, version, RegimeModel.from_dict(regime), TrainedScorer.from_dict(scorer))

    async def _candles(self, symbol: str, timeframe: str, *, since: datetime | None = None) -> pd.DataFrame:
        """The newest `serve_bars` candles (the source caches them while it follows Data's events);
        the whole history when a signal asks for a bar before them."""
        candles = await self.source.fetch(symbol, timeframe, limit=self.settings.serve_bars)
        if since is not None and len(candles) >= self.settings.serve_bars:
            first = pd.Timestamp(candles["time"].iloc[0])
            first = first.tz_localize("UTC") if first.tzinfo is None else first
            at = pd.Timestamp(since)
            if (at.tz_localize("UTC") if at.tzinfo is None else at) < first:
                candles = await self.source.fetch(symbol, timeframe)
        return candles

    @staticmethod
    def _check_timeframe(loaded: _Loaded, symbol: str, timeframe: str, field: str = "timeframe") -> None:
        if timeframe and timeframe != loaded.timeframe:
            raise InvalidArgument(
                field,
                f"the regime model of {symbol} is trained on {loaded.timeframe}; send it or leave it unset",
            )

    async def regime(
        self, symbol: str, *, lookback: int = 0, timeframe: str = ""
    ) -> tuple[RegimeView, ModelVersion]:
        """The regime of the symbol's last bar, from filtered probabilities, and the model's version."""
        loaded = await self._model(symbol)
        self._check_timeframe(loaded, symbol, timeframe)
        candles = await self._candles(symbol, loaded.timeframe)
        view = await asyncio.to_thread(
            describe, loaded.model, candles, lookback=lookback or DEFAULT_LOOKBACK, symbol=symbol
        )
        return view, loaded.version

    async def hindsight(self, symbol: str, *, lookback: int = 0, timeframe: str = "") -> list[Segment]:
        """HINDSIGHT (Viterbi over the history, later bars included): for charts, never for signals."""
        loaded = await self._model(symbol)
        self._check_timeframe(loaded, symbol, timeframe)
        candles = await self._candles(symbol, loaded.timeframe)
        return await asyncio.to_thread(
            hindsight_segments, loaded.model, candles, lookback=lookback or DEFAULT_LOOKBACK
        )

    async def model(
        self, symbol: str, *, timeframe: str = ""
    ) -> tuple[ModelVersion, RegimeModel, ScoringConfig]:
        """The current version (its metadata: HMM fit, evaluation, data range), its HMM and the
        trade setting its scorer is trained for."""
        loaded = await self._model(symbol)
        self._check_timeframe(loaded, symbol, timeframe)
        return loaded.version, loaded.model, loaded.scorer.config

    # ---- signal scoring -------------------------------------------------------------------------

    async def score(self, signals: Sequence[Signal], *, field: str = "") -> list[ScoredSignal]:
        """Score many signals, of one or more symbols, in one pass per symbol; results in order.

        A bad field raises INVALID_ARGUMENT naming it: `field` given (e.g. "requests"), signal i's
        fields are `<field>[i].<name>`, else `<name>`. FAILED_PRECONDITION when a signal's bar has
        too little history before it."""
        if not signals:
            raise InvalidArgument(field or "signals", "at least one signal is required")

        def name(i: int, n: str) -> str:
            return f"{field}[{i}].{n}" if field else n

        by_symbol: dict[str, list[int]] = {}
        for i, signal in enumerate(signals):
            by_symbol.setdefault(signal.symbol, []).append(i)
        out: list[ScoredSignal | None] = [None] * len(signals)
        for symbol, indices in by_symbol.items():
            loaded = await self._model(symbol)
            for i in indices:
                self._check_timeframe(loaded, symbol, signals[i].timeframe, name(i, "timeframe"))
                _check_signal(signals[i], loaded.scorer.config, functools.partial(name, i))
            asked = [t for t in (signals[i].time for i in indices) if t is not None]
            candles = await self._candles(symbol, loaded.timeframe, since=min(asked) if asked else None)
            times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
            positions = [_position(times, signals[i].time, name(i, "time")) for i in indices]
            need = max(min_history(), loaded.scorer.regimes.vol_window + 1)
            for i, pos in zip(indices, positions, strict=True):
                if pos < need:
                    raise FailedPrecondition(
                        f"a signal needs {need} bars of {symbol} history before it; the one at "
                        f"{times[max(pos, 0)].isoformat()} has {max(pos, 0)}",
                        reason="NOT_ENOUGH_CANDLES",
                        metadata={"field": name(i, "time"), "needed": str(need)},
                    )
            sides = [signals[i].side for i in indices]
            scores = await asyncio.to_thread(score_signals, loaded.scorer, candles, positions, sides)
            last = times[-1].to_pydatetime()
            for i, pos, sc in zip(indices, positions, scores, strict=True):
                out[i] = ScoredSignal(
                    signals[i],
                    sc,
                    times[pos].to_pydatetime(),
                    loaded.timeframe,
                    loaded.scorer.config,
                    loaded.version,
                    last,
                    loaded.edge,
                )
        return [s for s in out if s is not None]


def _check_signal(signal: Signal, config: ScoringConfig, name: Callable[[str], str]) -> None:
    if signal.side not in ("buy", "sell"):
        raise InvalidArgument(name("side"), "must be buy or sell")
    if signal.horizon < 0:
        raise InvalidArgument(name("horizon"), "must not be negative")
    if signal.horizon and signal.horizon != config.horizon:
        raise InvalidArgument(
            name("horizon"), f"this model is trained for {config.horizon} bars; send {config.horizon} or 0"
        )
    given = signal.take_profit or signal.stop_loss or signal.barrier_unit
    if not given:
        return
    unit = signal.barrier_unit or config.barrier_unit
    own = f"{config.take_profit:g} / {config.stop_loss:g} {config.barrier_unit}"
    if unit != config.barrier_unit:
        raise InvalidArgument(
            name("barriers.unit"), f"this model's barriers are {own}; send its unit or leave barriers unset"
        )
    for field, asked, trained in (
        ("take_profit", signal.take_profit, config.take_profit),
        ("stop_loss", signal.stop_loss, config.stop_loss),
    ):
        if asked < 0 or not math.isfinite(asked):
            raise InvalidArgument(name(f"barriers.{field}"), "must be a finite number >= 0")
        if asked and abs(asked - trained) > _SAME * max(1.0, trained):
            raise InvalidArgument(
                name(f"barriers.{field}"),
                f"this model's barriers are {own} (take-profit / stop-loss); send them or 0",
            )


def _position(times: pd.DatetimeIndex, at: datetime | None, field: str) -> int:
    """The last bar opening at or before `at` (None: the last bar); INVALID_ARGUMENT before the first."""
    if at is None:
        return len(times) - 1
    stamp = pd.Timestamp(at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    pos = int(times.searchsorted(stamp, side="right")) - 1
    if pos < 0:
        raise InvalidArgument(field, f"before the first candle ({times[0].isoformat()})")
    return pos
