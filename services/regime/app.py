"""The regime service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the channel to the Data service (candles and events, services.training.data_client),
then starts the domain: the job runner, the retrain scheduler, the event monitor (new candles,
debounced) and, when no symbol has a model yet, the first training of the active symbols in the
background. The service is SERVING meanwhile: `GetRegimeStatus` says what it is training and the
calls that need a model answer FAILED_PRECONDITION naming the job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from kitrading.regime.v1 import service_pb2_grpc
from services.regime.service import RegimeDomain
from services.regime.servicer import RegimeServicer
from services.regime.settings import RegimeSettings
from services.runtime.addresses import service_target
from services.runtime.app import ServiceAppBase, load_settings
from services.runtime.leases import lease_path
from services.training.data_client import DataServiceSource

log = logging.getLogger(__name__)


class RegimeApp(ServiceAppBase):
    def __init__(
        self,
        settings: RegimeSettings | None = None,
        *,
        data: str | None = None,
        schedule: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`data`: `host:port` of the Data service (default: `services.runtime.addresses`);
        `schedule`: run the retrain scheduler (default: the settings')."""
        super().__init__("regime", service_pb2_grpc.add_RegimeServiceServicer_to_server)
        self.settings = load_settings(settings, RegimeSettings.from_env, env)
        self.schedule = self.settings.schedule if schedule is None else schedule
        self.source = DataServiceSource(
            data or service_target("data", env), default_timeframe=self.settings.timeframe
        )
        self.domain = RegimeDomain(self.settings, self.source, event_stream=self.source.watch_events)
        self.servicer = RegimeServicer(self.domain)

    async def on_start(self) -> None:
        await self.source.start()
        await self.domain.start(schedule=self.schedule, lead=False)
        trained = len(self.domain.registry.trained_keys())
        first = self.domain.first_job
        log.info(
            "regime ready: %d symbol model(s), data at %s, scheduler %s%s",
            trained,
            self.source.target,
            "on" if self.schedule else "off",
            f", first training job {first.job_id} queued" if first else "",
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
