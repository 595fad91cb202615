"""PatternService servicer: protos in, protos out; every call is one call into `PatternDomain`.

The TCN and its training are not built (issue 12): TrainPatternModel answers UNIMPLEMENTED saying
so, and the job RPCs find no job. Detection answers with the rules engine and says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import service_pb2_grpc
from services.pattern import convert as cv
from services.pattern.service import PatternDomain
from services.runtime.errors import NotFound, Unimplemented
from services.runtime.pagination import paginate
from services.training.data_client import candles_frame

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling

NO_TRAINER = "the pattern TCN is not built yet; detections come from the rule-based detector"


class PatternServicer(service_pb2_grpc.PatternServiceServicer):
    def __init__(self, domain: PatternDomain) -> None:
        self.domain = domain

    async def DetectSymbolPatterns(
        self, request: rr.DetectSymbolPatternsRequest, context: Context
    ) -> rr.DetectSymbolPatternsResponse:
        result = await self.domain.detect_symbol(
            request.symbol,
            timeframe=cv.timeframe_in(request.timeframe),
            lookback=request.lookback,
            min_confidence=request.min_confidence,
        )
        return rr.DetectSymbolPatternsResponse(detection=cv.detection_out(result))

    async def DetectPatterns(
        self, request: rr.DetectPatternsRequest, context: Context
    ) -> rr.DetectPatternsResponse:
        cv.check_unique_times(request.candles)
        result = await self.domain.detect_candles(
            candles_frame(request.candles),
            symbol=request.symbol if request.HasField("symbol") else "",
            timeframe=cv.timeframe_in(request.timeframe) or "H1",
            min_confidence=request.min_confidence,
        )
        return rr.DetectPatternsResponse(detection=cv.detection_out(result))

    async def ScanPatterns(
        self, request: rr.ScanPatternsRequest, context: Context
    ) -> rr.ScanPatternsResponse:
        results, errors = await self.domain.scan(
            timeframe=cv.timeframe_in(request.timeframe),
            lookback=request.lookback,
            min_confidence=request.min_confidence,
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

    async def TrainPatternModel(
        self, request: rr.TrainPatternModelRequest, context: Context
    ) -> rr.TrainPatternModelResponse:
        raise Unimplemented(NO_TRAINER, reason="NO_TRAINER")

    async def GetTrainingJob(
        self, request: rr.GetTrainingJobRequest, context: Context
    ) -> rr.GetTrainingJobResponse:
        raise NotFound(f"training job {request.job_id} not found: {NO_TRAINER}", reason="JOB_NOT_FOUND")

    async def ListTrainingJobs(
        self, request: rr.ListTrainingJobsRequest, context: Context
    ) -> rr.ListTrainingJobsResponse:
        return rr.ListTrainingJobsResponse()

    async def CancelTrainingJob(
        self, request: rr.CancelTrainingJobRequest, context: Context
    ) -> rr.CancelTrainingJobResponse:
        raise NotFound(f"training job {request.job_id} not found: {NO_TRAINER}", reason="JOB_NOT_FOUND")

    async def WatchTrainingJob(
        self, request: rr.WatchTrainingJobRequest, context: Context
    ) -> AsyncIterator[rr.WatchTrainingJobResponse]:
        raise NotFound(f"training job {request.job_id} not found: {NO_TRAINER}", reason="JOB_NOT_FOUND")
        yield rr.WatchTrainingJobResponse()  # pragma: no cover - makes this an async generator
