"""The forecast service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the channel to the Data service (candles and events, services.training.data_client,
optionally cached), then starts the domain: the training-job runner, the retrain scheduler (its
switches are in docs/configuration.md) and the warm-up that imports torch and loads every current
model, so the first forecast pays no imports. Ready (SERVING) once that returned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from kitrading.forecast.v1 import service_pb2_grpc
from services.forecast.service import ForecastDomain
from services.forecast.servicer import ForecastServicer
from services.forecast.settings import ForecastSettings
from services.runtime.addresses import service_target
from services.runtime.app import ServiceAppBase, load_settings
from services.runtime.leases import lease_path
from services.training.data_client import DataServiceSource

log = logging.getLogger(__name__)


class ForecastApp(ServiceAppBase):
    def __init__(
        self,
        settings: ForecastSettings | None = None,
        *,
        data: str | None = None,
        schedule: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`data`: `host:port` of the Data service (default: `services.runtime.addresses`);
        `schedule`: run the retrain scheduler (default: see the module docstring)."""
        super().__init__("forecast", service_pb2_grpc.add_ForecastServiceServicer_to_server)
        self.settings = load_settings(settings, ForecastSettings.from_env, env)
        self.schedule = (self.settings.schedule if schedule is None else schedule) and (
            self.settings.auto_retrain_days > 0
        )
        self.source = DataServiceSource(
            data or service_target("data", env),
            default_timeframe=self.settings.timeframe,
            cache=self.settings.candle_cache,
        )
        self.domain = ForecastDomain(self.settings, self.source, event_stream=self.source.watch_events)
        self.servicer = ForecastServicer(self.domain)

    async def on_start(self) -> None:
        await self.source.start()
        await self.domain.start(schedule=self.schedule, warmup=True, lead=False)
        loaded = self.domain.forecaster.models.loaded()
        log.info(
            "forecast ready: %d model(s) loaded, data at %s, scheduler %s",
            len(loaded),
            self.source.target,
            "on" if self.schedule else "off",
        )

    async def on_stop(self) -> None:
        await self.domain.stop()
        await self.source.close()

    def active_training_jobs(self) -> int:
        return self.domain.jobs.active_count()

    def lease_path(self) -> Path:
        return lease_path(self.settings.home, self.name)

    async def on_lead(self) -> None:
        await self.domain.lead()
