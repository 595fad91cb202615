"""ForecastService servicer: protos in, protos out; every call is one call into `ForecastDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); the
forecast's rules live in the domain (services.forecast.service), the job RPCs in the shared
training servicer (services.training.servicer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kitrading.forecast.v1 import request_response_pb2 as rr
from kitrading.forecast.v1 import service_pb2_grpc
from services.forecast import convert as cv
from services.forecast.service import ForecastDomain
from services.runtime.pagination import paginate
from services.training.convert import job_out
from services.training.servicer import TrainingJobMethods, TrainingRpcs, versions_page

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class ForecastServicer(TrainingJobMethods, service_pb2_grpc.ForecastServiceServicer):
    def __init__(self, domain: ForecastDomain) -> None:
        self.domain = domain
        self.training = TrainingRpcs(domain.jobs)
        self.messages = rr

    # -- training ---------------------------------------------------------------------------------

    async def TrainAll(self, request: rr.TrainAllRequest, context: Context) -> rr.TrainAllResponse:
        job = await self.domain.train_all(
            force=request.force,
            background=request.background,
            timeframe=cv.timeframe_in(request.timeframe),
            max_steps=request.max_steps,
        )
        return rr.TrainAllResponse(job=job_out(job))

    async def TrainSymbol(self, request: rr.TrainSymbolRequest, context: Context) -> rr.TrainSymbolResponse:
        job = await self.domain.train_symbol(
            request.symbol,
            force=request.force,
            background=request.background,
            timeframe=cv.timeframe_in(request.timeframe),
            max_steps=request.max_steps,
        )
        return rr.TrainSymbolResponse(job=job_out(job))

    async def GetTrainingProgress(
        self, request: rr.GetTrainingProgressRequest, context: Context
    ) -> rr.GetTrainingProgressResponse:
        return cv.training_progress_out(
            self.domain.training_progress(), self.domain.settings.auto_retrain_days
        )

    # -- forecasts --------------------------------------------------------------------------------

    async def GetForecast(self, request: rr.GetForecastRequest, context: Context) -> rr.GetForecastResponse:
        forecast = await self.domain.forecast(
            request.symbol,
            request.horizon,
            timeframe=cv.timeframe_in(request.timeframe),
            skip_cache=request.skip_cache,
        )
        response = rr.GetForecastResponse()
        cv.forecast_into(forecast, response.forecast)
        return response

    async def BatchGetForecasts(
        self, request: rr.BatchGetForecastsRequest, context: Context
    ) -> rr.BatchGetForecastsResponse:
        results = await self.domain.forecast_many(
            request.symbols,
            request.horizon,
            timeframe=cv.timeframe_in(request.timeframe),
            skip_cache=request.skip_cache,
        )
        return cv.batch_out(request.symbols, results)

    # -- models -----------------------------------------------------------------------------------

    async def ListModelPerformance(
        self, request: rr.ListModelPerformanceRequest, context: Context
    ) -> rr.ListModelPerformanceResponse:
        rows = await self.domain.performance(
            request.symbol if request.HasField("symbol") else None, active_only=request.active_only
        )
        chunk, token = paginate(
            rows,
            kind="forecast-performance",
            key=cv.performance_order,
            filters=[request.symbol, request.active_only],
            page_size=request.page_size,
            page_token=request.page_token,
            default=100,
        )
        return rr.ListModelPerformanceResponse(
            performances=[cv.performance_out(p) for p in chunk], next_page_token=token
        )

    async def ListModelVersions(
        self, request: rr.ListModelVersionsRequest, context: Context
    ) -> rr.ListModelVersionsResponse:
        timeframe = cv.timeframe_in(request.timeframe)
        versions = await self.domain.list_versions(request.symbol, timeframe=timeframe)
        chunk, token = versions_page(
            versions, request, kind="forecast-versions", filters=[request.symbol, timeframe]
        )
        return rr.ListModelVersionsResponse(
            versions=[cv.version_out(v) for v in chunk], next_page_token=token
        )

    async def RollbackModelVersion(
        self, request: rr.RollbackModelVersionRequest, context: Context
    ) -> rr.RollbackModelVersionResponse:
        version = await self.domain.rollback(
            request.symbol, request.version or None, timeframe=cv.timeframe_in(request.timeframe)
        )
        return rr.RollbackModelVersionResponse(version=cv.version_out(version))

    # -- event monitor ----------------------------------------------------------------------------

    async def StartEventMonitor(
        self, request: rr.StartEventMonitorRequest, context: Context
    ) -> rr.StartEventMonitorResponse:
        status = await self.domain.start_event_monitor(
            symbols=request.symbols, cooldown_seconds=request.cooldown_seconds
        )
        return rr.StartEventMonitorResponse(
            monitor=cv.monitor_out(status, debounce_s=self.domain.settings.event_debounce_s)
        )

    async def StopEventMonitor(
        self, request: rr.StopEventMonitorRequest, context: Context
    ) -> rr.StopEventMonitorResponse:
        status = await self.domain.stop_event_monitor()
        return rr.StopEventMonitorResponse(
            monitor=cv.monitor_out(status, debounce_s=self.domain.settings.event_debounce_s)
        )

    async def GetEventMonitorStatus(
        self, request: rr.GetEventMonitorStatusRequest, context: Context
    ) -> rr.GetEventMonitorStatusResponse:
        status = self.domain.event_monitor_status()
        return rr.GetEventMonitorStatusResponse(
            monitor=cv.monitor_out(status, debounce_s=self.domain.settings.event_debounce_s)
        )

    # -- system -----------------------------------------------------------------------------------

    async def GetSystemMetrics(
        self, request: rr.GetSystemMetricsRequest, context: Context
    ) -> rr.GetSystemMetricsResponse:
        snapshot = await asyncio.to_thread(self.domain.system_metrics)
        settings = self.domain.settings
        return rr.GetSystemMetricsResponse(
            metrics=cv.system_metrics_out(
                snapshot, use_gpu=settings.use_gpu, gpu_memory_fraction=settings.gpu_memory_fraction
            )
        )
