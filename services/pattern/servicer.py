"""PatternService servicer: protos in, protos out; every call is one call into `PatternDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); the job
RPCs (Get, List, Cancel, Watch a training job) are the shared training servicer's
(services.training.servicer).
"""

from __future__ import annotations

from typing import Any

from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import service_pb2_grpc
from services.pattern import convert as cv
from services.pattern.service import PatternDomain
from services.runtime.pagination import paginate
from services.training.convert import job_out
from services.training.data_client import candles_frame
from services.training.servicer import TrainingJobMethods, TrainingRpcs, versions_page

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class PatternServicer(TrainingJobMethods, service_pb2_grpc.PatternServiceServicer):
    def __init__(self, domain: PatternDomain) -> None:
        self.domain = domain
        self.training = TrainingRpcs(domain.jobs)
        self.messages = rr

    async def DetectSymbolPatterns(
        self, request: rr.DetectSymbolPatternsRequest, context: Context
    ) -> rr.DetectSymbolPatternsResponse:
        result = await self.domain.detect_symbol(
            request.symbol,
            timeframe=cv.timeframe_in(request.timeframe),
            lookback=request.lookback,
            min_confidence=request.min_confidence,
            engine=cv.engine_in(request.engine),
        )
        return rr.DetectSymbolPatternsResponse(detection=cv.detection_out(result))

    async def DetectPatterns(
        self, request: rr.DetectPatternsRequest, context: Context
    ) -> rr.DetectPatternsResponse:
        cv.check_time_order(request.candles)
        result = await self.domain.detect_candles(
            candles_frame(request.candles),
            symbol=request.symbol if request.HasField("symbol") else "",
            timeframe=cv.timeframe_in(request.timeframe) or "H1",
            min_confidence=request.min_confidence,
            engine=cv.engine_in(request.engine),
        )
        return rr.DetectPatternsResponse(detection=cv.detection_out(result))

    async def ScanPatterns(
        self, request: rr.ScanPatternsRequest, context: Context
    ) -> rr.ScanPatternsResponse:
        results, errors = await self.domain.scan(
            timeframe=cv.timeframe_in(request.timeframe),
            lookback=request.lookback,
            min_confidence=request.min_confidence,
            engine=cv.engine_in(request.engine),
        )
        return cv.scan_out(results, errors)

    async def ListPatternTypes(
        self, request: rr.ListPatternTypesRequest, context: Context
    ) -> rr.ListPatternTypesResponse:
        chunk, token = paginate(
            list(self.domain.pattern_types()),
            kind="pattern-types",
            key=cv.type_order,
            filters=[],
            page_size=request.page_size,
            page_token=request.page_token,
            default=100,
        )
        return rr.ListPatternTypesResponse(
            pattern_types=[cv.type_out(s) for s in chunk], next_page_token=token
        )

    async def GetPatternModel(
        self, request: rr.GetPatternModelRequest, context: Context
    ) -> rr.GetPatternModelResponse:
        status = await self.domain.status()
        version = await self.domain.model(request.version) if request.version else status.version
        return cv.status_out(status, version)

    async def ListPatternModelVersions(
        self, request: rr.ListPatternModelVersionsRequest, context: Context
    ) -> rr.ListPatternModelVersionsResponse:
        chunk, token = versions_page(
            await self.domain.versions(), request, kind="pattern-versions", filters=[]
        )
        return rr.ListPatternModelVersionsResponse(
            models=[cv.model_out(v) for v in chunk], next_page_token=token
        )

    async def RollbackPatternModel(
        self, request: rr.RollbackPatternModelRequest, context: Context
    ) -> rr.RollbackPatternModelResponse:
        return rr.RollbackPatternModelResponse(
            model=cv.model_out(await self.domain.rollback(request.version))
        )

    async def TrainPatternModel(
        self, request: rr.TrainPatternModelRequest, context: Context
    ) -> rr.TrainPatternModelResponse:
        job = await self.domain.train(
            list(request.symbols),
            force=request.force,
            background=request.background,
            timeframe=cv.timeframe_in(request.timeframe) or None,
            max_steps=request.max_steps,
        )
        return rr.TrainPatternModelResponse(job=job_out(job))
