"""RegimeService servicer: protos in, protos out; every call is one call into `RegimeDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); the
regime's rules live in the domain (services.regime.service), the job RPCs in the shared training
servicer (services.training.servicer).
"""

from __future__ import annotations

from typing import Any

from kitrading.regime.v1 import request_response_pb2 as rr
from kitrading.regime.v1 import service_pb2_grpc
from services.regime import convert as cv
from services.regime.service import RegimeDomain
from services.runtime.errors import InvalidArgument
from services.training.convert import job_out
from services.training.servicer import TrainingJobMethods, TrainingRpcs, versions_page

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class RegimeServicer(TrainingJobMethods, service_pb2_grpc.RegimeServiceServicer):
    def __init__(self, domain: RegimeDomain) -> None:
        self.domain = domain
        self.training = TrainingRpcs(domain.jobs)
        self.messages = rr

    # -- regimes ----------------------------------------------------------------------------------

    async def GetRegime(self, request: rr.GetRegimeRequest, context: Context) -> rr.GetRegimeResponse:
        timeframe = cv.timeframe_in(request.timeframe)
        view, version = await self.domain.regime(
            request.symbol, lookback=request.lookback, timeframe=timeframe
        )
        hindsight = []
        if request.include_hindsight:
            hindsight = await self.domain.hindsight(
                request.symbol, lookback=request.lookback, timeframe=timeframe
            )
        return rr.GetRegimeResponse(state=cv.state_out(request.symbol, view, version, hindsight))

    async def GetRegimeModel(
        self, request: rr.GetRegimeModelRequest, context: Context
    ) -> rr.GetRegimeModelResponse:
        version, model, config = await self.domain.model(
            request.symbol, timeframe=cv.timeframe_in(request.timeframe)
        )
        return rr.GetRegimeModelResponse(
            model=cv.model_out(request.symbol, version, model), scorer=cv.scorer_out(version, config)
        )

    async def ListRegimeModelVersions(
        self, request: rr.ListRegimeModelVersionsRequest, context: Context
    ) -> rr.ListRegimeModelVersionsResponse:
        versions = await self.domain.versions(request.symbol)
        chunk, token = versions_page(versions, request, kind="regime-versions", filters=[request.symbol])
        return rr.ListRegimeModelVersionsResponse(
            versions=[cv.version_out(v) for v in chunk], next_page_token=token
        )

    async def RollbackRegimeModel(
        self, request: rr.RollbackRegimeModelRequest, context: Context
    ) -> rr.RollbackRegimeModelResponse:
        version = await self.domain.rollback(request.symbol, request.version)
        return rr.RollbackRegimeModelResponse(version=cv.version_out(version))

    async def GetRegimeStatus(
        self, request: rr.GetRegimeStatusRequest, context: Context
    ) -> rr.GetRegimeStatusResponse:
        return cv.status_out(await self.domain.status())

    # -- scoring ----------------------------------------------------------------------------------

    async def ScoreSignal(self, request: rr.ScoreSignalRequest, context: Context) -> rr.ScoreSignalResponse:
        (scored,) = await self.domain.score([cv.signal_in(request)])
        return cv.scored_out(scored, request.side)

    async def BatchScoreSignals(
        self, request: rr.BatchScoreSignalsRequest, context: Context
    ) -> rr.BatchScoreSignalsResponse:
        scored = await self.domain.score([cv.signal_in(r) for r in request.requests], field="requests")
        return rr.BatchScoreSignalsResponse(
            responses=[cv.scored_out(s, r.side) for s, r in zip(scored, request.requests, strict=True)]
        )

    # -- training ---------------------------------------------------------------------------------

    async def TrainRegimeModels(
        self, request: rr.TrainRegimeModelsRequest, context: Context
    ) -> rr.TrainRegimeModelsResponse:
        settings = self.domain.settings
        for field, asked, configured, variable in (
            ("n_states", request.n_states, settings.n_states, "KITRADING_REGIME_STATES"),
            ("lookback", request.lookback, settings.lookback, "KITRADING_REGIME_LOOKBACK"),
        ):
            if asked and asked != configured:
                raise InvalidArgument(
                    field, f"the service trains with {variable}={configured}; send 0 or {configured}"
                )
        job = await self.domain.train(
            request.symbols,
            force=request.force,
            background=request.background,
            timeframe=cv.timeframe_in(request.timeframe) or None,
        )
        return rr.TrainRegimeModelsResponse(job=job_out(job))
