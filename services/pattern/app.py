"""The pattern service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the channel to the Data service (candles, cached while its events follow). The
rule-based detector needs no model, so the service is SERVING as soon as the channel is open.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kitrading.pattern.v1 import service_pb2_grpc
from services.pattern.service import PatternDomain
from services.pattern.servicer import PatternServicer
from services.pattern.settings import PatternSettings
from services.runtime.addresses import service_target
from services.runtime.app import ServiceAppBase, load_settings
from services.training.data_client import DataServiceSource

log = logging.getLogger(__name__)


class PatternApp(ServiceAppBase):
    def __init__(
        self,
        settings: PatternSettings | None = None,
        *,
        data: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`data`: `host:port` of the Data service (default: `services.runtime.addresses`)."""
        super().__init__("pattern", service_pb2_grpc.add_PatternServiceServicer_to_server)
        self.settings = load_settings(settings, PatternSettings.from_env, env)
        self.source = DataServiceSource(
            data or service_target("data", env), default_timeframe=self.settings.timeframe
        )
        self.domain = PatternDomain(self.settings, self.source)
        self.servicer = PatternServicer(self.domain)

    async def on_start(self) -> None:
        await self.source.start()
        log.info("pattern ready: rules engine, data at %s", self.source.target)

    async def on_stop(self) -> None:
        await self.source.close()
