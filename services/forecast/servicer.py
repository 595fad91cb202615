"""ForecastService servicer: protos in, protos out; every call is a call into `ForecastDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); this module
translates and adds the few rules the contract has and the domain does not:

- `timeframe` (unset: the symbol's own series, H1 where it has H1 candles, else D1): a model is
  trained on one series per symbol, so asking for another is INVALID_ARGUMENT naming `timeframe`;
- `max_steps` other than 0 (the service's NHITS_MAX_STEPS) is INVALID_ARGUMENT: a per-request step
  count is not supported by the job runner;
- `horizon` 0 means 24; outside 1..the trained maximum is the domain's INVALID_ARGUMENT `horizon`;
- `skip_cache` drops the forecast cache before computing;
- the event monitor watches every active symbol and debounces instead of a per-symbol cooldown, so
  a non-empty `symbols` or a `cooldown_seconds` is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from kitrading.common.v1 import training_pb2
from kitrading.forecast.v1 import request_response_pb2 as rr
from kitrading.forecast.v1 import resources_pb2 as pb
from kitrading.forecast.v1 import service_pb2_grpc
from services.forecast import convert as cv
from services.forecast.forecasting import Forecast
from services.forecast.jobs import JobState, TrainingJob
from services.forecast.registry import ModelVersion
from services.forecast.retraining import EventMonitorStatus
from services.forecast.service import ForecastDomain, ModelPerformance
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling

DEFAULT_HORIZON = 24
#: How many jobs' request options (background, timeframe) are remembered for later reads.
_REMEMBERED_JOBS = 1000
#: Converted forecasts kept for reuse (keyed by symbol, version, last candle, computation, horizon).
_REMEMBERED_MESSAGES = 2048
_TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ForecastServicer(service_pb2_grpc.ForecastServiceServicer):
    def __init__(self, domain: ForecastDomain, *, schedule_enabled: bool = True) -> None:
        self.domain = domain
        self.schedule_enabled = schedule_enabled
        self._options: OrderedDict[str, tuple[bool, str | None]] = OrderedDict()
        self._messages: OrderedDict[tuple[Any, ...], pb.Forecast] = OrderedDict()

    # -- helpers ----------------------------------------------------------------------------------

    def _job(self, job: TrainingJob) -> training_pb2.TrainingJob:
        background, timeframe = self._options.get(job.job_id, (False, None))
        return cv.job_out(job, background=background, timeframe=timeframe)

    def _remember(self, job: TrainingJob, background: bool, timeframe: str | None) -> None:
        self._options[job.job_id] = (background, timeframe)
        while len(self._options) > _REMEMBERED_JOBS:
            self._options.popitem(last=False)

    def _check_max_steps(self, value: int) -> None:
        configured = self.domain.settings.nhits.max_steps
        if value not in (0, configured):
            raise InvalidArgument(
                "max_steps",
                f"a per-request step count is not supported; this service trains {configured} steps "
                "per symbol (NHITS_MAX_STEPS); send 0",
            )

    async def _series(self, symbol: str) -> str:
        """The timeframe `symbol` trains on; NotFound when Data does not know it."""
        info = await self.domain.source.get_symbol(symbol)
        if info is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        return info.timeframe or self.domain.settings.timeframe

    @staticmethod
    def _timeframe_error(symbol: str, trained: str, asked: str) -> InvalidArgument:
        return InvalidArgument(
            "timeframe",
            f"{symbol} is modelled on its {trained} candles, not {asked}; "
            f"ask for {trained} or leave it unset",
        )

    def _forecast_message(self, forecast: Forecast, into: pb.Forecast) -> None:
        """Write `forecast` into `into`, reusing the message of an identical earlier answer (a
        forecast-cache hit converts nothing: building 24 points costs ~0.1 ms, a copy ~4 us)."""
        key = (
            forecast.symbol,
            forecast.model_version,
            forecast.last_candle_time,
            forecast.generated_at,
            forecast.horizon,
        )
        message = self._messages.get(key)
        if message is None:
            message = cv.forecast_out(forecast)
            self._messages[key] = message
            while len(self._messages) > _REMEMBERED_MESSAGES:
                self._messages.popitem(last=False)
        else:
            self._messages.move_to_end(key)
        into.CopyFrom(message)
        into.cached = forecast.cached

    def _checked(self, forecast: Forecast, asked: str | None) -> Forecast:
        if asked is not None and forecast.timeframe != asked:
            raise self._timeframe_error(forecast.symbol, forecast.timeframe, asked)
        return forecast

    # -- training ---------------------------------------------------------------------------------

    async def TrainAll(self, request: rr.TrainAllRequest, context: Context) -> rr.TrainAllResponse:
        self._check_max_steps(request.max_steps)
        timeframe = cv.timeframe_in(request.timeframe)
        jobs = self.domain.jobs
        if timeframe is None:
            submit = jobs.train_all(force=request.force, background=True)
        else:
            default = self.domain.settings.timeframe
            names = [
                s.symbol
                for s in await self.domain.source.list_symbols()
                if s.active and (s.timeframe or default) == timeframe
            ]
            if not names:
                raise FailedPrecondition(f"no active symbol is modelled on {timeframe} candles")
            submit = jobs.train(names, force=request.force, background=True)
        job = await submit
        self._remember(job, request.background, timeframe)
        if not request.background:
            job = await jobs.wait(job.job_id)
        return rr.TrainAllResponse(job=self._job(job))

    async def TrainSymbol(self, request: rr.TrainSymbolRequest, context: Context) -> rr.TrainSymbolResponse:
        self._check_max_steps(request.max_steps)
        timeframe = cv.timeframe_in(request.timeframe)
        trained = await self._series(request.symbol)
        if timeframe is not None and timeframe != trained:
            raise self._timeframe_error(request.symbol, trained, timeframe)
        jobs = self.domain.jobs
        job = await jobs.train([request.symbol], force=request.force, background=True)
        self._remember(job, request.background, timeframe)
        if not request.background:
            job = await jobs.wait(job.job_id)
        return rr.TrainSymbolResponse(job=self._job(job))

    async def GetTrainingProgress(
        self, request: rr.GetTrainingProgressRequest, context: Context
    ) -> rr.GetTrainingProgressResponse:
        jobs = self.domain.jobs
        active, _ = jobs.list_jobs(page_size=1000, states=(JobState.QUEUED, JobState.RUNNING))
        ended, _ = jobs.list_jobs(page_size=1, states=_TERMINAL)
        settings = self.domain.settings
        return rr.GetTrainingProgressResponse(
            training=bool(active),
            active_jobs=[self._job(j) for j in reversed(active)],  # oldest first
            latest_job=self._job(ended[0]) if ended else None,
            schedule=cv.schedule_out(
                self.domain.scheduler,
                enabled=self.schedule_enabled and self.domain.scheduler.running,
                interval_days=settings.auto_retrain_days,
            ),
        )

    async def GetTrainingJob(
        self, request: rr.GetTrainingJobRequest, context: Context
    ) -> rr.GetTrainingJobResponse:
        return rr.GetTrainingJobResponse(job=self._job(self.domain.jobs.get(request.job_id)))

    async def ListTrainingJobs(
        self, request: rr.ListTrainingJobsRequest, context: Context
    ) -> rr.ListTrainingJobsResponse:
        state = cv.job_state_in(request.state)
        everything, _ = self.domain.jobs.list_jobs(page_size=1000, states=(state,) if state else ())
        if request.HasField("symbol"):
            everything = [j for j in everything if any(s.symbol == request.symbol for s in j.symbols)]
        chunk, token = cv.page(everything, request.page_size, request.page_token)
        return rr.ListTrainingJobsResponse(jobs=[self._job(j) for j in chunk], next_page_token=token)

    async def CancelTrainingJob(
        self, request: rr.CancelTrainingJobRequest, context: Context
    ) -> rr.CancelTrainingJobResponse:
        return rr.CancelTrainingJobResponse(job=self._job(await self.domain.jobs.cancel(request.job_id)))

    async def WatchTrainingJob(
        self, request: rr.WatchTrainingJobRequest, context: Context
    ) -> AsyncIterator[rr.WatchTrainingJobResponse]:
        background, timeframe = self._options.get(request.job_id, (False, None))
        sequence = 0
        async with aclosing(self.domain.jobs.watch(request.job_id)) as events:  # type: ignore[type-var]
            async for event in events:
                message = cv.job_event_out(event, sequence + 1, background=background, timeframe=timeframe)
                if message is None:
                    continue
                sequence += 1
                yield rr.WatchTrainingJobResponse(event=message)

    # -- forecasts --------------------------------------------------------------------------------

    async def GetForecast(self, request: rr.GetForecastRequest, context: Context) -> rr.GetForecastResponse:
        forecaster = self.domain.forecaster
        if request.skip_cache:
            forecaster.clear_cache()
        forecast = await forecaster.forecast(request.symbol, request.horizon or DEFAULT_HORIZON)
        checked = self._checked(forecast, cv.timeframe_in(request.timeframe))
        response = rr.GetForecastResponse()
        self._forecast_message(checked, response.forecast)
        return response

    async def BatchGetForecasts(
        self, request: rr.BatchGetForecastsRequest, context: Context
    ) -> rr.BatchGetForecastsResponse:
        forecaster = self.domain.forecaster
        if request.skip_cache:
            forecaster.clear_cache()
        symbols = list(request.symbols)
        asked = cv.timeframe_in(request.timeframe)
        results = await forecaster.forecast_many(symbols, request.horizon or DEFAULT_HORIZON)
        response = rr.BatchGetForecastsResponse()
        for symbol, result in zip(symbols, results, strict=True):
            outcome = result
            if isinstance(result, Forecast) and asked is not None and result.timeframe != asked:
                outcome = self._timeframe_error(symbol, result.timeframe, asked)
            if isinstance(outcome, DomainError):
                response.errors.append(cv.batch_error_out(symbol, outcome))
            else:
                self._forecast_message(outcome, response.forecasts.add())
        return response

    # -- models -----------------------------------------------------------------------------------

    async def _known(self, symbol: str) -> None:
        if await self.domain.source.get_symbol(symbol) is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )

    async def ListModelPerformance(
        self, request: rr.ListModelPerformanceRequest, context: Context
    ) -> rr.ListModelPerformanceResponse:
        domain = self.domain
        if request.HasField("symbol"):
            symbols = [request.symbol]
            if not await domain.versions(request.symbol):
                await self._known(request.symbol)
        else:
            symbols = await asyncio.to_thread(domain.registry.symbols)
        rows: list[ModelPerformance] = []
        for symbol in sorted(symbols):
            versions = await domain.versions(symbol)
            chosen: Sequence[ModelVersion] = (
                [v for v in versions if v.current] if request.active_only else versions
            )
            rows.extend(ModelPerformance.of(v) for v in reversed(chosen))  # newest first
        chunk, token = cv.page(rows, request.page_size, request.page_token)
        return rr.ListModelPerformanceResponse(
            performances=[cv.performance_out(p) for p in chunk], next_page_token=token
        )

    async def ListModelVersions(
        self, request: rr.ListModelVersionsRequest, context: Context
    ) -> rr.ListModelVersionsResponse:
        versions = list(reversed(await self.domain.versions(request.symbol)))  # newest first
        if not versions:
            await self._known(request.symbol)
        asked = cv.timeframe_in(request.timeframe)
        if asked is not None:
            versions = [v for v in versions if v.metadata.get("timeframe") == asked]
        chunk, token = cv.page(versions, request.page_size, request.page_token)
        return rr.ListModelVersionsResponse(
            versions=[cv.version_out(v) for v in chunk], next_page_token=token
        )

    async def RollbackModelVersion(
        self, request: rr.RollbackModelVersionRequest, context: Context
    ) -> rr.RollbackModelVersionResponse:
        versions = await self.domain.versions(request.symbol)
        if not versions:
            await self._known(request.symbol)
        asked = cv.timeframe_in(request.timeframe)
        current = [v for v in versions if v.current]
        trained = str(current[0].metadata.get("timeframe", "")) if current else ""
        if asked is not None and trained and trained != asked:
            raise self._timeframe_error(request.symbol, trained, asked)
        version = await self.domain.rollback(request.symbol, request.version or None)
        return rr.RollbackModelVersionResponse(version=cv.version_out(version))

    # -- event monitor ----------------------------------------------------------------------------

    def _monitor(self, status: EventMonitorStatus) -> pb.EventMonitor:
        return cv.monitor_out(status, debounce_s=self.domain.settings.event_debounce_s)

    async def StartEventMonitor(
        self, request: rr.StartEventMonitorRequest, context: Context
    ) -> rr.StartEventMonitorResponse:
        if request.symbols:
            raise InvalidArgument(
                "symbols", "the event monitor watches every active symbol; leave `symbols` empty"
            )
        if request.cooldown_seconds:
            raise InvalidArgument(
                "cooldown_seconds",
                "events are debounced instead (KITRADING_FORECAST_EVENT_DEBOUNCE_SECONDS); send 0",
            )
        # The monitor's tasks outlive this call: start them outside its context, so they do not
        # inherit this RPC's deadline (services.runtime.deadline) for their own Data calls.
        task = asyncio.create_task(self.domain.start_event_monitor(), context=contextvars.Context())
        return rr.StartEventMonitorResponse(monitor=self._monitor(await task))

    async def StopEventMonitor(
        self, request: rr.StopEventMonitorRequest, context: Context
    ) -> rr.StopEventMonitorResponse:
        return rr.StopEventMonitorResponse(monitor=self._monitor(await self.domain.stop_event_monitor()))

    async def GetEventMonitorStatus(
        self, request: rr.GetEventMonitorStatusRequest, context: Context
    ) -> rr.GetEventMonitorStatusResponse:
        return rr.GetEventMonitorStatusResponse(monitor=self._monitor(self.domain.event_monitor_status()))

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
