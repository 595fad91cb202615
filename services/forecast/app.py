"""The forecast service as a `ServiceApp` for the shared runtime.

`start()` opens the channel to the Data service (the domain's `CandleSource` and `EventStream`,
`services.forecast.data_source`), then starts the domain: the training-job runner, the retrain
scheduler (unless disabled, below) and the warm-up that imports torch and loads every current model,
so the first forecast does not pay seconds of imports. Ready (SERVING) once that returned.
The `kitrading_training_jobs_active` gauge follows the job manager (every second and after every RPC).

Candles come from the Data service; with `KITRADING_FORECAST_CANDLE_CACHE` true (default) the newest
bars of each series are kept in memory and dropped on Data's CANDLES_INGESTED event for that series
(`data_source.py`), so a forecast does not call Data while its series is unchanged.

The scheduler runs when `NHITS_AUTO_RETRAIN_DAYS` > 0 and `KITRADING_FORECAST_SCHEDULE` is true
(default): at start and every `KITRADING_FORECAST_RETRAIN_CHECK_SECONDS` it trains the active symbols
whose model is missing or older than NHITS_AUTO_RETRAIN_DAYS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

import grpc

from kitrading.forecast.v1 import service_pb2_grpc
from services.forecast.data_source import DataServiceSource
from services.forecast.service import ForecastDomain
from services.forecast.servicer import ForecastServicer
from services.forecast.settings import ForecastSettings
from services.runtime import metrics
from services.runtime.addresses import service_target
from services.runtime.config import ConfigError, env_bool
from services.runtime.interceptor import Observer, RpcRecord

log = logging.getLogger(__name__)

GAUGE_PERIOD_S = 1.0


class ForecastApp:
    def __init__(
        self,
        settings: ForecastSettings | None = None,
        *,
        data: str | None = None,
        schedule: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`data`: `host:port` of the Data service (default: the registry, `KITRADING_DATA_HOST`/`_PORT`);
        `schedule`: run the retrain scheduler (default: see the module docstring)."""
        try:
            self.settings = settings or ForecastSettings.from_env(env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if schedule is None:
            schedule = env_bool("KITRADING_FORECAST_SCHEDULE", True, env)
        self.schedule = schedule and self.settings.auto_retrain_days > 0
        self.source = DataServiceSource(
            data or service_target("data", env),
            default_timeframe=self.settings.timeframe,
            cache=env_bool("KITRADING_FORECAST_CANDLE_CACHE", True, env),
        )
        self.domain = ForecastDomain(self.settings, self.source, event_stream=self.source.watch_events)
        self.servicer = ForecastServicer(self.domain, schedule_enabled=self.schedule)
        self._started = False
        self._gauge_task: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_ForecastServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.source.start()
        await self.domain.start(schedule=self.schedule, warmup=True)
        loaded = self.domain.forecaster.models.loaded()
        log.info(
            "forecast ready: %d model(s) loaded, data at %s, scheduler %s",
            len(loaded),
            self.source.target,
            "on" if self.schedule else "off",
        )
        self._gauge_task = asyncio.create_task(self._follow_jobs(), name="forecast-jobs-gauge")
        self._started = True

    async def _follow_jobs(self) -> None:
        while True:
            self._update_gauge()
            await asyncio.sleep(GAUGE_PERIOD_S)

    def _update_gauge(self) -> None:
        metrics.TRAINING_JOBS_ACTIVE.labels("forecast").set(self.domain.jobs.active_count())

    async def stop(self) -> None:
        self._started = False
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauge_task
            self._gauge_task = None
        await self.domain.stop()
        await self.source.close()
        self._update_gauge()

    def is_ready(self) -> bool:
        return self._started

    def _after_rpc(self, record: RpcRecord) -> None:
        self._update_gauge()

    @property
    def observers(self) -> Sequence[Observer]:
        return [self._after_rpc]
