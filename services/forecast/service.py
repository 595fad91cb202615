"""The forecast domain in one object: the one door the gRPC servicer uses.

domain = ForecastDomain(ForecastSettings.from_env(), source, event_stream=stream)
await domain.start()
job = await domain.train_all(force=False)
forecast = await domain.forecast("EURUSD", 24)
await domain.stop()

It holds the forecast's rules that the contract states and the machinery does not: a model is
trained on one series per symbol (asking for another timeframe is INVALID_ARGUMENT `timeframe`),
the step count is the service's (a per-request `max_steps` is INVALID_ARGUMENT), and the event
monitor watches every active symbol.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.forecast.forecasting import Forecast, Forecaster
from services.forecast.metrics import SystemMetrics, system_metrics
from services.forecast.registry import check_symbol, forecast_registry
from services.forecast.settings import MODEL_SCOPES, ForecastSettings
from services.forecast.trainer import ForecastTrainer
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import JobRunner, RunnerSettings, TrainingJob
from services.training.registry import ModelVersion
from services.training.retraining import EventMonitor, EventMonitorStatus, RetrainScheduler, lead_retraining
from services.training.sources import CandleSource, EventStream
from services.training.trainer import WorkerSpec
from services.training.worker import WorkerOptions

DEFAULT_HORIZON = 24


@dataclass(frozen=True, slots=True)
class ModelPerformance:
    """Walk-forward metrics of one model version: {model name: {metric: value}} for NHITS, Naive,
    SeasonalNaive on the same held-out windows (see services.forecast.evaluation)."""

    symbol: str
    version: str
    created_at: datetime
    timeframe: str
    data: dict[str, Any]
    evaluation: dict[str, Any]
    training: dict[str, Any]
    #: "symbol" (the symbol's own NHITS) or "global" (one NHITS across its timeframe's symbols).
    scope: str = "symbol"
    #: A global version's shared model: its id, timeframe and symbols ({} for a per-symbol one).
    global_model: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, dict[str, float | None]]:
        models: dict[str, dict[str, float | None]] = self.evaluation.get("models", {})
        return models

    @classmethod
    def of(cls, version: ModelVersion) -> ModelPerformance:
        meta = version.metadata
        return cls(
            symbol=version.key,
            version=version.version,
            created_at=version.created_at,
            timeframe=str(meta.get("timeframe", "")),
            data=dict(meta.get("data", {})),
            evaluation=dict(meta.get("evaluation", {})),
            training=dict(meta.get("training", {})),
            scope=str(meta.get("scope", "symbol")),
            global_model=dict(meta.get("global", {})),
        )


@dataclass(frozen=True, slots=True)
class TrainingProgress:
    """What "training progress" shows: the active jobs (oldest first), the latest ended one, and
    the retrain schedule."""

    active: list[TrainingJob]
    latest_ended: TrainingJob | None
    scheduler: RetrainScheduler
    schedule_enabled: bool


def runner_settings(settings: ForecastSettings, spec: WorkerSpec) -> RunnerSettings:
    """The shared runner's settings from the forecast's own (worker isolation, jobs kept)."""
    return RunnerSettings(
        worker=WorkerOptions(
            spec=spec,
            models_dir=settings.models_dir,
            nice=settings.worker_nice,
            threads=settings.worker_threads,
            use_gpu=settings.use_gpu,
            gpu_device=settings.gpu_device,
            gpu_memory_fraction=settings.gpu_memory_fraction,
        ),
        worker_idle_s=settings.worker_idle_s,
        max_jobs_kept=settings.max_jobs_kept,
    )


class ForecastDomain:
    """Owns the registry, the job runner, the forecaster and the retraining automation."""

    def __init__(
        self, settings: ForecastSettings, source: CandleSource, *, event_stream: EventStream | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.registry = forecast_registry(settings.models_dir)
        self.trainer = ForecastTrainer(settings, source, self.registry)
        self.jobs = JobRunner(self.trainer, runner_settings(settings, self.trainer.worker))
        self.forecaster = Forecaster(settings, source, self.registry)
        self.scheduler = RetrainScheduler(self.jobs, interval_s=settings.retrain_check_interval_s)
        self.schedule_enabled = False
        self.events: EventMonitor | None = None
        if event_stream is not None:
            self.events = EventMonitor(
                event_stream,
                self.jobs,
                settings.state_dir / "event_monitor.json",
                debounce_s=settings.event_debounce_s,
                max_delay_s=settings.event_max_delay_s,
                types=settings.event_types,
            )

    async def start(self, *, schedule: bool = True, warmup: bool = True, lead: bool = True) -> None:
        """Start the job runner and (by default) the retrain scheduler; `warmup` loads all models.
        `lead=False`: not the once-only work yet (`lead()`, when this instance holds the lease)."""
        await self.jobs.start(clean=False)
        self.schedule_enabled = schedule
        if lead:
            await self.lead()
        if warmup:
            await self.forecaster.warmup()

    async def lead(self) -> None:
        """The work one instance of the service does (services.runtime.leases): staging leftovers of
        killed workers removed (another instance's could be in progress), the scheduler."""
        # its event monitor starts when asked (StartEventMonitor, routed to the holder)
        await lead_retraining(
            self.jobs, self.scheduler, None, schedule=self.schedule_enabled, event_retrain=False
        )

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.stop()
        await self.scheduler.stop()
        await self.jobs.stop()

    # ---- training -------------------------------------------------------------------------------

    def _check_max_steps(self, value: int) -> None:
        configured = self.settings.nhits.max_steps
        if value not in (0, configured):
            raise InvalidArgument(
                "max_steps",
                f"a per-request step count is not supported; this service trains {configured} steps "
                "per symbol (NHITS_MAX_STEPS); send 0",
            )

    async def _series(self, symbol: str) -> str:
        """The timeframe `symbol` trains on; NotFound when Data does not know it."""
        info = await self.source.get_symbol(symbol)
        if info is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        return info.timeframe or self.settings.timeframe

    @staticmethod
    def _timeframe_error(symbol: str, trained: str, asked: str) -> InvalidArgument:
        return InvalidArgument(
            "timeframe",
            f"{symbol} is modelled on its {trained} candles, not {asked}; "
            f"ask for {trained} or leave it unset",
        )

    async def train_all(
        self,
        *,
        force: bool = False,
        background: bool = True,
        timeframe: str | None = None,
        max_steps: int = 0,
        scope: str | None = None,
    ) -> TrainingJob:
        """Train every active symbol (only those modelled on `timeframe` when given); `scope`
        ("symbol" or "global", default KITRADING_FORECAST_MODEL_SCOPE) says whether each symbol gets
        its own NHITS or each timeframe one across its symbols."""
        self._check_max_steps(max_steps)
        options = self._scope_options(scope)
        if timeframe is None:
            return await self.jobs.train_all(force=force, background=background, options=options)
        else:
            default = self.settings.timeframe
            names = [
                s.symbol
                for s in await self.source.list_symbols()
                if s.active and (s.timeframe or default) == timeframe
            ]
            if not names:
                raise FailedPrecondition(f"no active symbol is modelled on {timeframe} candles")
            return await self.jobs.train(
                names, force=force, background=background, timeframe=timeframe, options=options
            )

    @staticmethod
    def _scope_options(scope: str | None) -> dict[str, Any]:
        if scope is None:
            return {}
        if scope not in MODEL_SCOPES:
            raise InvalidArgument("scope", f"must be one of {', '.join(MODEL_SCOPES)}")
        return {"scope": scope}

    async def train_symbol(
        self,
        symbol: str,
        *,
        force: bool = True,
        background: bool = True,
        timeframe: str | None = None,
        max_steps: int = 0,
        scope: str | None = None,
    ) -> TrainingJob:
        """With scope "global" the symbol's timeframe model is retrained across all its active
        symbols, and each of them gets a new version."""
        self._check_max_steps(max_steps)
        options = self._scope_options(scope)
        trained = await self._series(symbol)
        if timeframe is not None and timeframe != trained:
            raise self._timeframe_error(symbol, trained, timeframe)
        return await self.jobs.train(
            [symbol], force=force, background=background, timeframe=timeframe, options=options
        )

    def training_progress(self) -> TrainingProgress:
        return TrainingProgress(
            active=self.jobs.active(),
            latest_ended=self.jobs.last_ended(),
            scheduler=self.scheduler,
            schedule_enabled=self.schedule_enabled and self.scheduler.running,
        )

    # ---- forecasts ------------------------------------------------------------------------------

    def _checked(self, forecast: Forecast, asked: str | None) -> Forecast | DomainError:
        if asked is not None and forecast.timeframe != asked:
            return self._timeframe_error(forecast.symbol, forecast.timeframe, asked)
        return forecast

    async def forecast(
        self, symbol: str, horizon: int = 0, *, timeframe: str | None = None, skip_cache: bool = False
    ) -> Forecast:
        """`horizon` 0 means 24; outside 1..the trained maximum is INVALID_ARGUMENT `horizon`."""
        if skip_cache:
            self.forecaster.clear_cache()
        result = self._checked(await self.forecaster.forecast(symbol, horizon or DEFAULT_HORIZON), timeframe)
        if isinstance(result, DomainError):
            raise result
        return result

    async def forecast_many(
        self,
        symbols: Sequence[str],
        horizon: int = 0,
        *,
        timeframe: str | None = None,
        skip_cache: bool = False,
    ) -> list[Forecast | DomainError]:
        """One result per symbol, in order: its forecast or the error it alone met."""
        if skip_cache:
            self.forecaster.clear_cache()
        results = await self.forecaster.forecast_many(list(symbols), horizon or DEFAULT_HORIZON)
        return [r if isinstance(r, DomainError) else self._checked(r, timeframe) for r in results]

    # ---- models ---------------------------------------------------------------------------------

    async def _known(self, symbol: str) -> None:
        if await self.source.get_symbol(symbol) is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )

    async def performance(
        self, symbol: str | None = None, *, active_only: bool = False
    ) -> list[ModelPerformance]:
        """Walk-forward metrics of one symbol's versions or of every symbol's, by symbol, newest
        version first (only the current one with `active_only`). NotFound for an unknown symbol."""
        if symbol is not None:
            symbols = [symbol]
            if not await self.versions(symbol):
                await self._known(symbol)
        else:
            symbols = await asyncio.to_thread(self.registry.trained_keys)
        rows: list[ModelPerformance] = []
        for name in sorted(symbols):
            versions = await self.versions(name)
            chosen = [v for v in versions if v.current] if active_only else versions
            rows.extend(ModelPerformance.of(v) for v in reversed(chosen))
        return rows

    async def versions(self, symbol: str) -> list[ModelVersion]:
        """A symbol's published versions, oldest first (empty when it has none)."""
        return await asyncio.to_thread(self.registry.list_versions, check_symbol(symbol))

    async def list_versions(self, symbol: str, *, timeframe: str | None = None) -> list[ModelVersion]:
        """Newest first; NotFound for a symbol Data does not know."""
        versions = list(reversed(await self.versions(symbol)))
        if not versions:
            await self._known(symbol)
        if timeframe is not None:
            versions = [v for v in versions if v.metadata.get("timeframe") == timeframe]
        return versions

    async def rollback(
        self, symbol: str, version: str | None = None, *, timeframe: str | None = None
    ) -> ModelVersion:
        """Serve an older version (default: the one before the current); forecasts switch at once."""
        versions = await self.versions(symbol)
        if not versions:
            await self._known(symbol)
        current = [v for v in versions if v.current]
        trained = str(current[0].metadata.get("timeframe", "")) if current else ""
        if timeframe is not None and trained and trained != timeframe:
            raise self._timeframe_error(symbol, trained, timeframe)
        return await asyncio.to_thread(self.registry.rollback, check_symbol(symbol), version)

    # ---- automation -----------------------------------------------------------------------------

    def _monitor(self) -> EventMonitor:
        if self.events is None:
            raise FailedPrecondition(
                "no event stream is configured for the forecast service", reason="NO_EVENT_STREAM"
            )
        return self.events

    async def start_event_monitor(
        self, *, symbols: Sequence[str] = (), cooldown_seconds: int = 0
    ) -> EventMonitorStatus:
        """The monitor watches every active symbol and debounces instead of a per-symbol cooldown."""
        if symbols:
            raise InvalidArgument(
                "symbols", "the event monitor watches every active symbol; leave `symbols` empty"
            )
        if cooldown_seconds:
            raise InvalidArgument(
                "cooldown_seconds",
                "events are debounced instead (KITRADING_FORECAST_EVENT_DEBOUNCE_SECONDS); send 0",
            )
        # The monitor's tasks outlive the caller: start them in a fresh context, so they do not
        # inherit the caller's deadline (services.runtime.deadline) for their own Data calls.
        return await asyncio.create_task(self._monitor().start(), context=contextvars.Context())

    async def stop_event_monitor(self) -> EventMonitorStatus:
        return await self._monitor().stop()

    def event_monitor_status(self) -> EventMonitorStatus:
        return self._monitor().status()

    def system_metrics(self) -> SystemMetrics:
        return system_metrics(active_training_jobs=self.jobs.active_count(), worker_pid=self.jobs.worker_pid)
