"""RagService servicer: protos in, protos out; every call is one call into `RagDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); the
knowledge base's rules live in the domain (services.rag.service).
"""

from __future__ import annotations

from typing import Any

from kitrading.rag.v1 import request_response_pb2 as rr
from kitrading.rag.v1 import service_pb2_grpc
from services.rag import convert as cv
from services.rag.service import RagDomain

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class RagServicer(service_pb2_grpc.RagServiceServicer):
    def __init__(self, domain: RagDomain) -> None:
        self.domain = domain

    async def AddDocument(self, request: rr.AddDocumentRequest, context: Context) -> rr.AddDocumentResponse:
        added = await self.domain.add(cv.add_in(request))
        return rr.AddDocumentResponse(document=cv.document_out(added.document), created=added.created)

    async def QueryKnowledgeBase(
        self, request: rr.QueryKnowledgeBaseRequest, context: Context
    ) -> rr.QueryKnowledgeBaseResponse:
        passages = await self.domain.query(cv.query_in(request))
        return rr.QueryKnowledgeBaseResponse(passages=[cv.passage_out(p) for p in passages])

    async def GetDocument(self, request: rr.GetDocumentRequest, context: Context) -> rr.GetDocumentResponse:
        return rr.GetDocumentResponse(document=cv.document_out(await self.domain.get(request.document_id)))

    async def ListDocuments(
        self, request: rr.ListDocumentsRequest, context: Context
    ) -> rr.ListDocumentsResponse:
        symbol = request.symbol if request.HasField("symbol") else ""
        return cv.list_out(
            await self.domain.list_documents(
                page_size=request.page_size, page_token=request.page_token, symbol=symbol, tag=request.tag
            )
        )

    async def DeleteDocument(
        self, request: rr.DeleteDocumentRequest, context: Context
    ) -> rr.DeleteDocumentResponse:
        return rr.DeleteDocumentResponse(chunks_deleted=await self.domain.delete(request.document_id))

    async def GetRagStatus(
        self, request: rr.GetRagStatusRequest, context: Context
    ) -> rr.GetRagStatusResponse:
        return cv.status_out(self.domain.status())
