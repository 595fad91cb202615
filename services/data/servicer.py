"""DataService servicer: protos in, protos out; every call is one call into `DataDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); this
module only translates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.data import convert as cv
from services.data.models import STRATEGY_MUTABLE_FIELDS, SYMBOL_MUTABLE_FIELDS, Timeframe
from services.data.service import DataDomain
from services.runtime.errors import InvalidArgument
from services.runtime.protos import update_paths

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


def _required_timeframe(value: int) -> Timeframe:
    timeframe = cv.timeframe_in(value)
    if timeframe is None:  # the contract's rule catches this first; kept for direct callers
        raise InvalidArgument("timeframe", "must be set")
    return timeframe


def _event_types(values: Any) -> list[Any]:
    return [t for t in (cv.event_type_in(v) for v in values) if t is not None]


class DataServicer(service_pb2_grpc.DataServiceServicer):
    def __init__(self, domain: DataDomain) -> None:
        self.domain = domain

    # -- symbols ----------------------------------------------------------------------------------

    async def ListSymbols(self, request: rr.ListSymbolsRequest, context: Context) -> rr.ListSymbolsResponse:
        page = await self.domain.list_symbols(
            page_size=request.page_size,
            page_token=request.page_token,
            asset_class=cv.asset_class_in(request.asset_class),
            active_only=request.active_only,
            prefix=request.prefix,
        )
        return rr.ListSymbolsResponse(
            symbols=[cv.symbol_out(s) for s in page.items],
            next_page_token=page.next_page_token,
            total_size=max(page.total_size, 0),
        )

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: Context) -> rr.GetSymbolResponse:
        return rr.GetSymbolResponse(symbol=cv.symbol_out(await self.domain.get_symbol(request.symbol)))

    async def CreateSymbol(
        self, request: rr.CreateSymbolRequest, context: Context
    ) -> rr.CreateSymbolResponse:
        created = await self.domain.create_symbol(cv.symbol_in(request.symbol, creating=True))
        return rr.CreateSymbolResponse(symbol=cv.symbol_out(created))

    async def UpdateSymbol(
        self, request: rr.UpdateSymbolRequest, context: Context
    ) -> rr.UpdateSymbolResponse:
        paths = update_paths(request.update_mask.paths, request.symbol, SYMBOL_MUTABLE_FIELDS)
        updated = await self.domain.update_symbol(cv.symbol_in(request.symbol), paths)
        return rr.UpdateSymbolResponse(symbol=cv.symbol_out(updated))

    async def DeleteSymbol(
        self, request: rr.DeleteSymbolRequest, context: Context
    ) -> rr.DeleteSymbolResponse:
        return rr.DeleteSymbolResponse(candles_deleted=await self.domain.delete_symbol(request.symbol))

    # -- strategies -------------------------------------------------------------------------------

    async def ListStrategies(
        self, request: rr.ListStrategiesRequest, context: Context
    ) -> rr.ListStrategiesResponse:
        page = await self.domain.list_strategies(
            page_size=request.page_size, page_token=request.page_token, active_only=request.active_only
        )
        return rr.ListStrategiesResponse(
            strategies=[cv.strategy_out(s) for s in page.items],
            next_page_token=page.next_page_token,
            total_size=max(page.total_size, 0),
        )

    async def GetStrategy(self, request: rr.GetStrategyRequest, context: Context) -> rr.GetStrategyResponse:
        return rr.GetStrategyResponse(
            strategy=cv.strategy_out(await self.domain.get_strategy(request.strategy_id))
        )

    async def CreateStrategy(
        self, request: rr.CreateStrategyRequest, context: Context
    ) -> rr.CreateStrategyResponse:
        created = await self.domain.create_strategy(cv.strategy_in(request.strategy))
        return rr.CreateStrategyResponse(strategy=cv.strategy_out(created))

    async def UpdateStrategy(
        self, request: rr.UpdateStrategyRequest, context: Context
    ) -> rr.UpdateStrategyResponse:
        paths = update_paths(request.update_mask.paths, request.strategy, STRATEGY_MUTABLE_FIELDS)
        updated = await self.domain.update_strategy(cv.strategy_in(request.strategy), paths)
        return rr.UpdateStrategyResponse(strategy=cv.strategy_out(updated))

    async def DeleteStrategy(
        self, request: rr.DeleteStrategyRequest, context: Context
    ) -> rr.DeleteStrategyResponse:
        await self.domain.delete_strategy(request.strategy_id)
        return rr.DeleteStrategyResponse()

    # -- candles ----------------------------------------------------------------------------------

    async def ListCandles(self, request: rr.ListCandlesRequest, context: Context) -> rr.ListCandlesResponse:
        args = (request.symbol, _required_timeframe(request.timeframe))
        kwargs: dict[str, Any] = {
            "start_time": cv.to_datetime(request, "start_time"),
            "end_time": cv.to_datetime(request, "end_time"),
            "page_size": request.page_size,
            "page_token": request.page_token,
            "descending": request.descending,
        }
        if request.view == pb.CANDLE_VIEW_COLUMNS:
            columns = await self.domain.list_candle_columns(*args, **kwargs)
            return rr.ListCandlesResponse(
                columns=cv.candle_columns_out(columns.columns), next_page_token=columns.next_page_token
            )
        page = await self.domain.list_candles(*args, **kwargs)
        return rr.ListCandlesResponse(
            candles=[cv.candle_out(c) for c in page.items], next_page_token=page.next_page_token
        )

    async def GetLatestCandle(
        self, request: rr.GetLatestCandleRequest, context: Context
    ) -> rr.GetLatestCandleResponse:
        candle = await self.domain.get_latest_candle(request.symbol, _required_timeframe(request.timeframe))
        return rr.GetLatestCandleResponse(candle=cv.candle_out(candle))

    async def UpsertCandles(
        self, request: rr.UpsertCandlesRequest, context: Context
    ) -> rr.UpsertCandlesResponse:
        result = await self.domain.upsert_candles(
            request.symbol, _required_timeframe(request.timeframe), [cv.candle_in(c) for c in request.candles]
        )
        return rr.UpsertCandlesResponse(upserted=result.upserted, last_time=cv.timestamp(result.last_time))

    async def GetSymbolStats(
        self, request: rr.GetSymbolStatsRequest, context: Context
    ) -> rr.GetSymbolStatsResponse:
        s = await self.domain.get_symbol_stats(
            request.symbol, _required_timeframe(request.timeframe), request.lookback
        )
        return rr.GetSymbolStatsResponse(
            symbol=s.symbol,
            timeframe=cv.timeframe_out(s.timeframe),
            last_candle=cv.candle_out(s.last_candle),
            bars=s.bars,
            change_percent=s.change_percent,
            volatility=s.volatility,
            high=s.high,
            low=s.low,
            mean_close=s.mean_close,
            recent_candles=[cv.candle_out(c) for c in s.recent_candles],
        )

    # -- sync -------------------------------------------------------------------------------------

    async def StartSync(self, request: rr.StartSyncRequest, context: Context) -> rr.StartSyncResponse:
        job = await self.domain.start_sync(
            list(request.symbols), cv.timeframe_in(request.timeframe), request.full
        )
        return rr.StartSyncResponse(job=cv.sync_job_out(job))

    async def GetSyncStatus(
        self, request: rr.GetSyncStatusRequest, context: Context
    ) -> rr.GetSyncStatusResponse:
        status = await self.domain.get_sync_status()
        return rr.GetSyncStatusResponse(
            source_configured=status.source_configured,
            source_url=status.source_url,
            running=status.running,
            latest_job=None if status.latest_job is None else cv.sync_job_out(status.latest_job),
        )

    async def GetSyncJob(self, request: rr.GetSyncJobRequest, context: Context) -> rr.GetSyncJobResponse:
        return rr.GetSyncJobResponse(job=cv.sync_job_out(await self.domain.get_sync_job(request.job_id)))

    async def ListSyncJobs(
        self, request: rr.ListSyncJobsRequest, context: Context
    ) -> rr.ListSyncJobsResponse:
        page = await self.domain.list_sync_jobs(page_size=request.page_size, page_token=request.page_token)
        return rr.ListSyncJobsResponse(
            jobs=[cv.sync_job_out(j) for j in page.items], next_page_token=page.next_page_token
        )

    # -- query logs -------------------------------------------------------------------------------

    async def ListQueryLogs(
        self, request: rr.ListQueryLogsRequest, context: Context
    ) -> rr.ListQueryLogsResponse:
        page = await self.domain.list_query_logs(
            page_size=request.page_size, page_token=request.page_token, method=request.method
        )
        return rr.ListQueryLogsResponse(
            query_logs=[cv.query_log_out(q) for q in page.items], next_page_token=page.next_page_token
        )

    # -- events -----------------------------------------------------------------------------------

    async def ListEvents(self, request: rr.ListEventsRequest, context: Context) -> rr.ListEventsResponse:
        page = await self.domain.list_events(
            after_event_id=request.after_event_id,
            page_size=request.page_size,
            types=_event_types(request.types),
            symbols=list(request.symbols),
        )
        return rr.ListEventsResponse(
            events=[cv.event_out(e) for e in page.events], last_event_id=page.last_event_id
        )

    async def WatchEvents(
        self, request: rr.WatchEventsRequest, context: Context
    ) -> AsyncIterator[rr.WatchEventsResponse]:
        events = self.domain.watch_events(
            after_event_id=request.after_event_id,
            types=_event_types(request.types),
            symbols=list(request.symbols),
            from_beginning=request.from_beginning,
        )
        async for event in events:
            yield rr.WatchEventsResponse(event=cv.event_out(event))

    # -- samples ----------------------------------------------------------------------------------

    async def ImportSamples(
        self, request: rr.ImportSamplesRequest, context: Context
    ) -> rr.ImportSamplesResponse:
        datasets = await self.domain.import_samples()
        return rr.ImportSamplesResponse(datasets=[cv.sample_out(d) for d in datasets])
