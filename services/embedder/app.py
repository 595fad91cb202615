"""The embedder service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the channel to the Data service (stored candles for time-series embeddings; not
needed for texts), chooses the device and loads the models; ready (SERVING) once they are loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kitrading.embedder.v1 import service_pb2_grpc
from services.embedder.service import EmbedderDomain
from services.embedder.servicer import EmbedderServicer
from services.embedder.settings import EmbedderSettings
from services.runtime.addresses import service_target
from services.runtime.app import ServiceAppBase, load_settings
from services.training.data_client import DataServiceSource
from services.training.sources import CandleSource

log = logging.getLogger(__name__)


class EmbedderApp(ServiceAppBase):
    def __init__(
        self,
        settings: EmbedderSettings | None = None,
        *,
        data: str | None = None,
        source: CandleSource | None = None,
        env: Mapping[str, str] | None = None,
        **models: Any,
    ) -> None:
        """`data`: `host:port` of the Data service (default: `services.runtime.addresses`); `source`:
        a candle source to use instead (tests); `models`: `encoder=` / `sentiment=` already loaded."""
        super().__init__("embedder", service_pb2_grpc.add_EmbedderServiceServicer_to_server)
        self.settings = load_settings(settings, EmbedderSettings.from_env, env)
        self.data: DataServiceSource | None = None
        if source is None:
            self.data = DataServiceSource(
                data or service_target("data", env),
                default_timeframe=self.settings.series_timeframe,
                cache=False,
            )
            source = self.data
        self.domain = EmbedderDomain(self.settings, source, **models)
        self.servicer = EmbedderServicer(self.domain)

    async def on_start(self) -> None:
        if self.data is not None:
            await self.data.start()
        await self.domain.start()
        info = self.domain.info()
        log.info("embedder ready on %s: %s", info.device, ", ".join(m.name for m in info.models))

    async def on_stop(self) -> None:
        await self.domain.stop()
        if self.data is not None:
            await self.data.close()

    def healthy(self) -> bool:
        return self.domain.ready
