"""A new embedding model: the knowledge base re-embeds its documents instead of mixing vectors.

Two real Embedder services: the bundled all-MiniLM-L6-v2 (384 dimensions) and a second model
built from it with a random 384 -> 64 projection (sentence-transformers `Dense`), saved to a temp
directory and loaded by path, as a production box loads a configured model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from kitrading.rag.v1 import request_response_pb2 as rr
from services.embedder.app import EmbedderApp
from services.embedder.sentiment import LexiconSentiment
from services.embedder.settings import EmbedderSettings, bundled_model_path
from services.embedder.text import BUNDLED_NAME, TextEncoder
from services.rag.embeddings import EmbedderClient
from services.training.sources import InMemoryCandleSource
from tests.grpc_helpers import details, start_server

from .conftest import RagFactory, RagStack
from .test_rag_service import BOE, ECB, OIL, add, query


@pytest.fixture(scope="module")
def projected_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model plus a fixed random 384 -> 64 linear layer: another model, 64 dimensions."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    torch.manual_seed(0)
    base = SentenceTransformer(bundled_model_path(), device="cpu", local_files_only=True)
    dense = Dense(384, 64, bias=False, activation_function=torch.nn.Identity())
    path = tmp_path_factory.mktemp("models") / "minilm-projected-64"
    SentenceTransformer(modules=[*base, dense], device="cpu").save(str(path))
    return path


@pytest.fixture(scope="module")
async def projected_embedder(projected_model: Path) -> AsyncIterator[str]:
    encoder = TextEncoder(str(projected_model), device="cpu", batch_size=64).load()
    assert encoder.dimension == 64
    settings = EmbedderSettings(use_gpu=False)
    app = EmbedderApp(settings, source=InMemoryCandleSource(), encoder=encoder, sentiment=LexiconSentiment())
    server = await start_server(app, "embedder")
    yield server.target
    await server.stop(0)


async def status(rag: RagStack) -> rr.GetRagStatusResponse:
    return await rag.stub.GetRagStatus(rr.GetRagStatusRequest())


async def settled(rag: RagStack, model: str, timeout_s: float = 60.0) -> rr.GetRagStatusResponse:
    """The status once the knowledge base serves vectors of `model` and no re-embedding runs."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        s = await status(rag)
        if s.embedding_model == model and not s.HasField("reembedding"):
            return s
        assert asyncio.get_running_loop().time() < deadline, s
        await asyncio.sleep(0.05)


async def stored_models(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r["embedding_model"] for r in await conn.fetch("SELECT embedding_model FROM rag.documents")]
    finally:
        await conn.close()


async def test_restart_with_another_model_reembeds_every_document(
    rag_factory: RagFactory, projected_embedder: str, projected_model: Path, database_url: str
) -> None:
    first = await rag_factory()
    ecb = await add(first, "ECB decision", ECB, symbol="EURUSD")
    await add(first, "BoE decision", BOE, symbol="GBPUSD")
    await add(first, "Oil", OIL)
    before = await status(first)
    assert (before.embedding_model, before.dimension, before.chunks) == (BUNDLED_NAME, 384, 3)
    await first.server.stop(0)

    # Restarted against an embedder that serves another model: re-embedded at start, not mixed.
    second = await rag_factory(embedder=projected_embedder)
    after = await settled(second, str(projected_model))
    assert (after.dimension, after.documents, after.chunks) == (64, 3, 3)
    assert "re-embedded 3 documents" in after.index_description
    assert await stored_models(database_url) == [str(projected_model)] * 3
    best = (await query(second, ECB))[0]
    assert best.document_id == ecb.document.document_id and best.score > 0.8
    await second.server.stop(0)

    # And back: the index file of the 64-dimension vectors is not reused for the 384 ones.
    third = await rag_factory()
    back = await settled(third, BUNDLED_NAME)
    assert (back.dimension, back.chunks) == (384, 3)
    assert (await query(third, "What did the ECB decide about interest rates?"))[0].title == "ECB decision"


async def test_a_model_change_while_running_refuses_queries_until_reembedded(
    rag_factory: RagFactory, projected_embedder: str, projected_model: Path, database_url: str
) -> None:
    """The embedder is redeployed with another model under a running knowledge base: the first query
    that sees it starts the re-embedding and is told to retry (UNAVAILABLE, RAG_REEMBEDDING), an add
    meanwhile is acknowledged and stored, and once done both documents are found."""
    rag = await rag_factory()
    ecb = await add(rag, "ECB decision", ECB)
    client = EmbedderClient(projected_embedder)
    await client.start()
    try:
        rag.app.domain.embeddings = client  # the same target now serving the new model
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await query(rag, ECB)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(err.value)[0] == "RAG_REEMBEDDING"
        assert "re-embedding its documents with" in (err.value.details() or "")
        oil = await add(rag, "Oil", OIL)
        assert oil.created
        done = await settled(rag, str(projected_model))
        assert (done.dimension, done.chunks) == (64, 2)
        assert (await query(rag, ECB))[0].document_id == ecb.document.document_id
        assert (await query(rag, OIL))[0].document_id == oil.document.document_id
        assert sorted(await stored_models(database_url)) == [str(projected_model)] * 2
    finally:
        await client.close()


async def test_an_interrupted_reembedding_goes_on_at_start(
    rag_factory: RagFactory, database_url: str
) -> None:
    """A crash mid re-embedding leaves documents of two models (each one complete: a document is one
    transaction); the next start refuses queries until the rest are re-embedded, then serves."""
    first = await rag_factory()
    await add(first, "ECB decision", ECB)
    boe = await add(first, "BoE decision", BOE)
    await first.server.stop(0)
    conn = await asyncpg.connect(database_url)
    try:
        sql = "UPDATE rag.documents SET embedding_model = 'an-older-model' WHERE id = $1"
        await conn.execute(sql, boe.document.document_id)
    finally:
        await conn.close()
    second = await rag_factory()
    back = await settled(second, BUNDLED_NAME)
    assert back.chunks == 2 and "re-embedded 1 documents" in back.index_description
    assert await stored_models(database_url) == [BUNDLED_NAME] * 2
    assert (await query(second, BOE))[0].document_id == boe.document.document_id


async def test_reembedding_waits_for_an_embedder_that_starts_later(
    rag_factory: RagFactory, embedder_target: str, database_url: str
) -> None:
    """Documents of two models and no embedder at start: queries are refused with the reason, and
    the re-embedding runs once an embedder answers (here: the client pointed at a live one)."""
    first = await rag_factory()
    ecb = await add(first, "ECB decision", ECB)
    await add(first, "Oil", OIL)
    await first.server.stop(0)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE rag.documents SET embedding_model = 'an-older-model' WHERE title = 'Oil'")
    finally:
        await conn.close()
    second = await rag_factory(embedder="127.0.0.1:1")  # nothing listens there
    waiting = await status(second)
    assert waiting.HasField("reembedding") and waiting.reembedding.documents_total == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(second, ECB)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and details(err.value)[0] == "RAG_REEMBEDDING"
    client = EmbedderClient(embedder_target)
    await client.start()
    try:
        second.app.domain.embeddings = client  # the embedder is up now
        await settled(second, BUNDLED_NAME)
        assert (await query(second, ECB))[0].document_id == ecb.document.document_id
    finally:
        await client.close()
