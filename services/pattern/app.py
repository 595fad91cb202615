"""The pattern service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the channel to the Data service (candles, cached while its events follow), then
starts the domain: the job runner, the retrain scheduler, the event monitor (new candles, debounced)
and, when no TCN is published, its first training in the background. The rule-based detector needs
no model, so the service is SERVING at once; GetPatternModel says what it is training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from kitrading.pattern.v1 import service_pb2_grpc
from services.pattern.service import PatternDomain
from services.pattern.servicer import PatternServicer
from services.pattern.settings import PatternSettings
from services.runtime.addresses import service_target
from services.runtime.app import ServiceAppBase, load_settings
from services.runtime.leases import lease_path
from services.training.data_client import DataServiceSource

log = logging.getLogger(__name__)


class PatternApp(ServiceAppBase):
    def __init__(
        self,
        settings: PatternSettings | None = None,
        *,
        data: str | None = None,
        schedule: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`data`: `host:port` of the Data service (default: `services.runtime.addresses`);
        `schedule`: run the retrain scheduler (default: the settings')."""
        super().__init__("pattern", service_pb2_grpc.add_PatternServiceServicer_to_server)
        self.settings = load_settings(settings, PatternSettings.from_env, env)
        self.source = DataServiceSource(
            data or service_target("data", env), default_timeframe=self.settings.timeframe
        )
        self.schedule = self.settings.schedule if schedule is None else schedule
        self.domain = PatternDomain(self.settings, self.source, event_stream=self.source.watch_events)
        self.servicer = PatternServicer(self.domain)

    async def on_start(self) -> None:
        await self.source.start()
        await self.domain.start(schedule=self.schedule, lead=False)
        current = self.domain.trainer.current()
        log.info(
            "pattern ready: rules engine, TCN %s, data at %s, scheduler %s%s",
            current.version if current else "not trained yet",
            self.source.target,
            "on" if self.schedule else "off",
            ", first training queued once the data service lists the symbols"
            if self.domain.bootstrapping
            else "",
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
