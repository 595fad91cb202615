"""Protos <-> the RAG domain's plain values (services.rag.models)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from kitrading.rag.v1 import request_response_pb2 as rr
from kitrading.rag.v1 import resources_pb2 as pb
from services.rag.models import (
    HYBRID,
    VECTOR,
    Document,
    DocumentPage,
    Filters,
    NewDocument,
    Passage,
    Query,
    RagStatus,
)
from services.runtime.protos import timestamp

MODES: dict[int, str] = {
    pb.RETRIEVAL_MODE_UNSPECIFIED: VECTOR,
    pb.RETRIEVAL_MODE_VECTOR: VECTOR,
    pb.RETRIEVAL_MODE_HYBRID: HYBRID,
}
KINDS: dict[str, pb.IndexKind.ValueType] = {"exact": pb.INDEX_KIND_EXACT, "hnsw": pb.INDEX_KIND_HNSW}


def time_in(value: timestamp_pb2.Timestamp) -> datetime | None:
    """A set Timestamp as an aware datetime; unset (0) -> None."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToDatetime(tzinfo=UTC)


def add_in(request: rr.AddDocumentRequest) -> NewDocument:
    return NewDocument(
        title=request.title,
        text=request.text,
        source=request.source,
        tags=tuple(request.tags),
        symbol=request.symbol if request.HasField("symbol") else "",
        publish_time=time_in(request.publish_time),
    )


def query_in(request: rr.QueryKnowledgeBaseRequest) -> Query:
    return Query(
        text=request.query,
        top_k=request.top_k,
        filters=Filters(
            symbol=request.symbol if request.HasField("symbol") else "",
            tags=tuple(request.tags),
            source=request.source,
            start=time_in(request.start_time),
            end=time_in(request.end_time),
        ),
        min_score=request.min_score,
        mode=MODES.get(request.mode, VECTOR),
    )


def document_out(d: Document) -> pb.Document:
    return pb.Document(
        document_id=d.id,
        title=d.title,
        text=d.text,
        source=d.source,
        tags=list(d.tags),
        symbol=d.symbol,
        publish_time=timestamp(d.publish_time),
        create_time=timestamp(d.create_time),
        chunk_count=d.chunk_count,
        char_count=d.char_count,
    )


def passage_out(p: Passage) -> pb.Passage:
    return pb.Passage(
        document_id=p.document_id,
        chunk_index=p.chunk_index,
        title=p.title,
        text=p.text,
        score=p.score,
        source=p.source,
        symbol=p.symbol,
        tags=list(p.tags),
        publish_time=timestamp(p.publish_time),
    )


def list_out(page: DocumentPage) -> rr.ListDocumentsResponse:
    return rr.ListDocumentsResponse(
        documents=[document_out(d) for d in page.documents],
        next_page_token=page.next_page_token,
        total_size=page.total_size,
    )


def status_out(s: RagStatus) -> rr.GetRagStatusResponse:
    return rr.GetRagStatusResponse(
        backend=pb.INDEX_BACKEND_FAISS_GPU if s.gpu else pb.INDEX_BACKEND_FAISS_CPU,
        documents=s.documents,
        chunks=s.chunks,
        dimension=s.dimension,
        embedding_model=s.embedding_model,
        update_time=timestamp(s.update_time),
        index_kind=KINDS.get(s.index_kind, pb.INDEX_KIND_UNSPECIFIED),
        index_memory_bytes=s.index_memory_bytes,
        exact_max_chunks=s.exact_max_chunks,
        index_description=s.index_description,
        reembedding=None
        if s.reembedding is None
        else pb.Reembedding(
            model=s.reembedding.model,
            documents_done=s.reembedding.documents_done,
            documents_total=s.reembedding.documents_total,
            start_time=timestamp(s.reembedding.start_time),
        ),
    )
