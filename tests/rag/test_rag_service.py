"""RagService over real gRPC: a RAG service on port 0 with its own database and a real Embedder
(all-MiniLM-L6-v2 on CPU): add, idempotent re-add, query with filters and hybrid retrieval, list,
get, delete (its vectors go too), status, errors, and the mesh's own docs ingested and refreshed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from kitrading.rag.v1 import request_response_pb2 as rr
from kitrading.rag.v1 import resources_pb2 as pb
from services.rag.service import KNOWLEDGE_SOURCE, KNOWLEDGE_TAG
from tests.grpc_helpers import details, fails

from .conftest import RagFactory, RagStack

ECB = (
    "The European Central Bank kept its deposit rate at 4 percent. Policy makers said inflation in the "
    "euro area remains too high and that rates will stay restrictive for as long as necessary."
)
BOE = (
    "The Bank of England voted to cut Bank Rate to 5 percent. Sterling fell against the dollar after "
    "the decision as traders priced further easing."
)
OIL = "Crude oil rallied after OPEC announced deeper production cuts; Brent rose above 90 dollars a barrel."


def ts(year: int, month: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime(year, month, 1, tzinfo=UTC))
    return out


async def add(rag: RagStack, title: str, text: str, **fields: object) -> rr.AddDocumentResponse:
    return await rag.stub.AddDocument(rr.AddDocumentRequest(title=title, text=text, **fields))  # type: ignore[arg-type]


async def query(rag: RagStack, text: str, **fields: object) -> list[pb.Passage]:
    reply = await rag.stub.QueryKnowledgeBase(rr.QueryKnowledgeBaseRequest(query=text, **fields))  # type: ignore[arg-type]
    return list(reply.passages)


async def test_add_query_readd_list_get_delete(rag: RagStack) -> None:
    ecb = await add(rag, "ECB decision", ECB, symbol="EURUSD", source="news:test", tags=["central-bank"])
    assert ecb.created and ecb.document.chunk_count == 1 and ecb.document.char_count == len(ECB)
    await add(rag, "BoE decision", BOE, symbol="GBPUSD", source="news:test", tags=["central-bank"])
    await add(rag, "Oil", OIL, source="news:other")

    again = await add(rag, "another title", ECB)
    assert not again.created and again.document.document_id == ecb.document.document_id
    assert again.document.title == "ECB decision"  # the stored one, unchanged

    best = (await query(rag, "What did the ECB decide about interest rates?"))[0]
    assert (best.document_id, best.title, best.symbol) == (ecb.document.document_id, "ECB decision", "EURUSD")
    assert 0.3 < best.score <= 1.0 and best.text == ECB and list(best.tags) == ["central-bank"]

    page = await rag.stub.ListDocuments(rr.ListDocumentsRequest(page_size=2))
    assert page.total_size == 3 and len(page.documents) == 2 and page.next_page_token
    assert not page.documents[0].text  # list carries no text
    rest = await rag.stub.ListDocuments(rr.ListDocumentsRequest(page_size=2, page_token=page.next_page_token))
    assert len(rest.documents) == 1 and not rest.next_page_token
    ids = {d.document_id for d in [*page.documents, *rest.documents]}
    assert len(ids) == 3
    only = await rag.stub.ListDocuments(rr.ListDocumentsRequest(symbol="GBPUSD"))
    assert [d.title for d in only.documents] == ["BoE decision"]

    got = await rag.stub.GetDocument(rr.GetDocumentRequest(document_id=ecb.document.document_id))
    assert got.document.text == ECB and got.document.source == "news:test"

    status = await rag.stub.GetRagStatus(rr.GetRagStatusRequest())
    assert (status.documents, status.chunks, status.dimension) == (3, 3, 384)
    assert status.backend == pb.INDEX_BACKEND_FAISS_CPU and status.index_kind == pb.INDEX_KIND_EXACT
    assert status.embedding_model.endswith("all-MiniLM-L6-v2") and status.index_memory_bytes > 3 * 384 * 4

    deleted = await rag.stub.DeleteDocument(rr.DeleteDocumentRequest(document_id=ecb.document.document_id))
    assert deleted.chunks_deleted == 1
    after = await query(rag, "What did the ECB decide about interest rates?", top_k=10)
    assert ecb.document.document_id not in {p.document_id for p in after}
    assert rag.app.domain.index is not None and rag.app.domain.index.live_count == 2  # the vector went too
    error = await fails(
        rag.stub.GetDocument(rr.GetDocumentRequest(document_id=ecb.document.document_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(error)[0] == "DOCUMENT_NOT_FOUND"


async def test_filters_by_symbol_source_tags_and_time(rag: RagStack) -> None:
    ecb = await add(rag, "ECB", ECB, symbol="EURUSD", source="news:a", tags=["cb"], publish_time=ts(2024, 3))
    boe = await add(rag, "BoE", BOE, symbol="GBPUSD", source="news:a", tags=["cb"], publish_time=ts(2024, 6))
    oil = await add(rag, "Oil", OIL, source="news:b", tags=["commodities"], publish_time=ts(2024, 9))
    by_id = {r.document.document_id: r.document.title for r in (ecb, boe, oil)}

    async def titles(**fields: object) -> set[str]:
        return {by_id[p.document_id] for p in await query(rag, "central bank rates", top_k=10, **fields)}

    assert await titles(min_score=-1) == {"ECB", "BoE", "Oil"}
    assert await titles(symbol="EURUSD", min_score=-1) == {"ECB", "Oil"}  # its own and general ones
    assert await titles(source="news:b", min_score=-1) == {"Oil"}
    assert await titles(tags=["cb"], min_score=-1) == {"ECB", "BoE"}
    assert await titles(start_time=ts(2024, 5), end_time=ts(2024, 10), min_score=-1) == {"BoE", "Oil"}
    assert await titles(end_time=ts(2024, 4), min_score=-1) == {"ECB"}
    assert await titles(symbol="USDJPY", source="news:a") == set()
    general = await add(rag, "undated", "Risk management: never risk more than one percent per trade.")
    assert general.document.document_id not in {
        p.document_id for p in await query(rag, "risk per trade", start_time=ts(2000, 1))
    }  # a time range leaves out documents without a publish time


async def test_hybrid_retrieval_finds_exact_terms(rag: RagStack) -> None:
    await add(rag, "ECB", ECB)
    await add(rag, "BoE", BOE)
    code = await add(rag, "Error codes", "The gateway answers LLM_QUEUE_FULL with a retry_after_s hint.")
    hybrid = await query(rag, "LLM_QUEUE_FULL", mode=pb.RETRIEVAL_MODE_HYBRID, min_score=-1)
    assert hybrid[0].document_id == code.document.document_id
    assert all(-1.0 <= p.score <= 1.0 for p in hybrid)  # scores stay cosine similarities
    vector = await query(rag, "LLM_QUEUE_FULL", mode=pb.RETRIEVAL_MODE_VECTOR, min_score=-1)
    assert {p.document_id for p in vector} == {p.document_id for p in hybrid}


async def test_bad_requests_are_invalid_argument(rag: RagStack) -> None:
    cases = [
        (rr.QueryKnowledgeBaseRequest(query="x", top_k=51), "top_k"),
        (rr.QueryKnowledgeBaseRequest(query=""), "query"),
        (rr.QueryKnowledgeBaseRequest(query="x", start_time=ts(2024, 5), end_time=ts(2024, 1)), "end_time"),
    ]
    for request, field in cases:
        error = await fails(rag.stub.QueryKnowledgeBase(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert field in details(error)[1]
    error = await fails(
        rag.stub.AddDocument(rr.AddDocumentRequest(title="t", text="   \n ")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["text"]
    error = await fails(
        rag.stub.ListDocuments(rr.ListDocumentsRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[0] == "INVALID_PAGE_TOKEN"
    await fails(
        rag.stub.DeleteDocument(rr.DeleteDocumentRequest(document_id="nope")), grpc.StatusCode.NOT_FOUND
    )


async def test_the_mesh_docs_are_ingested_once_and_refreshed_when_changed(
    rag_factory: RagFactory, tmp_path: Path
) -> None:
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    (knowledge / "models.md").write_text(
        "# Model performance\n\nNHITS beats the naive forecast on EURUSD H1.\n"
    )
    (knowledge / "regime.md").write_text("# Regime model card\n\nA Gaussian HMM with 2 to 4 states.\n")
    rag = await rag_factory(ingest_knowledge=True, knowledge_files=("models.md", "regime.md", "absent.md"))
    domain = rag.app.domain
    await domain.refresh_knowledge()  # the app's periodic task may have done it already
    listed = await rag.stub.ListDocuments(rr.ListDocumentsRequest(tag=KNOWLEDGE_TAG))
    assert {d.source for d in listed.documents} == {
        KNOWLEDGE_SOURCE + "models.md",
        KNOWLEDGE_SOURCE + "regime.md",
    }
    assert {d.title for d in listed.documents} == {"Model performance", "Regime model card"}
    best = (await query(rag, "which hidden Markov model finds the regimes?"))[0]
    assert best.title == "Regime model card"

    (knowledge / "regime.md").write_text(
        "# Regime model card\n\nA Gaussian HMM with 3 states, refit weekly.\n"
    )
    domain._knowledge_done_at = None  # due again
    assert await domain.refresh_knowledge() == 1
    listed = await rag.stub.ListDocuments(rr.ListDocumentsRequest(tag=KNOWLEDGE_TAG))
    assert len(listed.documents) == 2
    regime = next(d for d in listed.documents if d.source.endswith("regime.md"))
    text = (await rag.stub.GetDocument(rr.GetDocumentRequest(document_id=regime.document_id))).document.text
    assert "refit weekly" in text
    domain._knowledge_done_at = None
    assert await domain.refresh_knowledge() == 0  # unchanged: nothing written
