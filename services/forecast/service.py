"""The forecast domain in one object: what the gRPC servicer holds and calls.

domain = ForecastDomain(ForecastSettings.from_env(), source, event_stream=stream)
await domain.start()
job = await domain.jobs.train_all(force=False, background=True)
forecast = await domain.forecaster.forecast("EURUSD", 24)
await domain.stop()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.forecast.forecasting import Forecaster
from services.forecast.jobs import JobManager
from services.forecast.metrics import SystemMetrics, system_metrics
from services.forecast.registry import ModelRegistry, ModelVersion, check_symbol
from services.forecast.retraining import EventMonitor, EventMonitorStatus, RetrainScheduler
from services.forecast.settings import ForecastSettings
from services.forecast.sources import CandleSource, EventStream
from services.runtime.errors import FailedPrecondition


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

    @property
    def models(self) -> dict[str, dict[str, float | None]]:
        models: dict[str, dict[str, float | None]] = self.evaluation.get("models", {})
        return models

    @classmethod
    def of(cls, version: ModelVersion) -> ModelPerformance:
        meta = version.metadata
        return cls(
            symbol=version.symbol,
            version=version.version,
            created_at=version.created_at,
            timeframe=str(meta.get("timeframe", "")),
            data=dict(meta.get("data", {})),
            evaluation=dict(meta.get("evaluation", {})),
            training=dict(meta.get("training", {})),
        )


class ForecastDomain:
    """Owns the registry, the job manager, the forecaster and the retraining automation."""

    def __init__(
        self, settings: ForecastSettings, source: CandleSource, *, event_stream: EventStream | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.registry = ModelRegistry(settings.models_dir)
        self.jobs = JobManager(settings, source, self.registry)
        self.forecaster = Forecaster(settings, source, self.registry)
        self.scheduler = RetrainScheduler(self.jobs, interval_s=settings.retrain_check_interval_s)
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

    async def start(self, *, schedule: bool = True, warmup: bool = True) -> None:
        """Start the job runner and (by default) the retrain scheduler; `warmup` loads all models."""
        await self.jobs.start()
        if schedule:
            await self.scheduler.start()
        if warmup:
            await self.forecaster.warmup()

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.stop()
        await self.scheduler.stop()
        await self.jobs.stop()

    # ---- models ---------------------------------------------------------------------------------

    async def performance(self, symbol: str | None = None) -> list[ModelPerformance]:
        """Metrics of the current version of one symbol (FailedPrecondition without a model) or of
        every symbol that has one."""
        if symbol is not None:
            check_symbol(symbol)
            return [ModelPerformance.of(await asyncio.to_thread(self.registry.get, symbol))]
        versions = await asyncio.to_thread(lambda: list(self.registry.iter_current()))
        return [ModelPerformance.of(v) for v in versions]

    async def versions(self, symbol: str) -> list[ModelVersion]:
        return await asyncio.to_thread(self.registry.list_versions, check_symbol(symbol))

    async def rollback(self, symbol: str, version: str | None = None) -> ModelVersion:
        """Serve an older version (default: the one before the current); forecasts switch at once."""
        return await asyncio.to_thread(self.registry.rollback, check_symbol(symbol), version)

    # ---- automation -----------------------------------------------------------------------------

    def _monitor(self) -> EventMonitor:
        if self.events is None:
            raise FailedPrecondition(
                "no event stream is configured for the forecast service", reason="NO_EVENT_STREAM"
            )
        return self.events

    async def start_event_monitor(self) -> EventMonitorStatus:
        return await self._monitor().start()

    async def stop_event_monitor(self) -> EventMonitorStatus:
        return await self._monitor().stop()

    def event_monitor_status(self) -> EventMonitorStatus:
        return self._monitor().status()

    def system_metrics(self) -> SystemMetrics:
        return system_metrics(active_training_jobs=self.jobs.active_count(), worker_pid=self.jobs.worker_pid)
