"""EmbedderService servicer: protos in, protos out; every call is one call into `EmbedderDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); the
embedder's rules live in the domain (services.embedder.service).
"""

from __future__ import annotations

from typing import Any

from kitrading.embedder.v1 import request_response_pb2 as rr
from kitrading.embedder.v1 import service_pb2_grpc
from services.embedder import convert as cv
from services.embedder import series
from services.embedder.service import EmbedderDomain

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class EmbedderServicer(service_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, domain: EmbedderDomain) -> None:
        self.domain = domain

    async def EmbedText(self, request: rr.EmbedTextRequest, context: Context) -> rr.EmbedTextResponse:
        return cv.embed_text_out(
            await self.domain.embed_texts(request.texts, normalize_vectors=request.normalize)
        )

    async def AnalyzeSentiment(
        self, request: rr.AnalyzeSentimentRequest, context: Context
    ) -> rr.AnalyzeSentimentResponse:
        return cv.sentiments_out(await self.domain.sentiment(request.texts))

    async def EmbedTimeSeries(
        self, request: rr.EmbedTimeSeriesRequest, context: Context
    ) -> rr.EmbedTimeSeriesResponse:
        embedding = await self.domain.embed_series(
            cv.series_request_in(request), normalize_vector=request.normalize
        )
        return cv.series_out(embedding, series.METHOD)

    async def GetEmbedderInfo(
        self, request: rr.GetEmbedderInfoRequest, context: Context
    ) -> rr.GetEmbedderInfoResponse:
        return cv.info_out(self.domain.info())
