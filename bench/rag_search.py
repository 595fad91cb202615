"""RAG at 100,000 chunks: index search p50 and recall@10 against exact, the whole RPC, ingest, memory.

    .venv/bin/python -m bench.rag_search [--chunks 100000] [--queries 300] [--out FILE]

Synthetic vectors, said plainly: 384-dimensional unit vectors (all-MiniLM-L6-v2's size) drawn
around 2,000 random cluster centres (seed 0), so neighbours exist as they do between real text
embeddings; queries are drawn the same way. One math thread (the service's budget).

(a) The index alone (services.rag.index.VectorIndex with the service's defaults: exact up to
    20,000 vectors, HNSW M=32 efConstruction=40 efSearch=64 above): build rate, memory, search p50
    / p99 of one query at k=10, recall@10 against exact search (faiss IndexFlatIP over the same
    vectors), and the exact search p50 beside it.
(b) The whole service: a RAG service in this process on port 0 with an embedded PostgreSQL, its
    chunks made by the service's own chunker from synthetic text (16-token chunks, 50 per
    document) and embedded by a synthetic embedder (the same vector distribution; no model, so the
    figures are the RAG service's own cost). Ingest rate of AddDocument (chunking, the database
    transaction, the index), then `QueryKnowledgeBase` p50 over gRPC (query vector, search, the
    passages read from PostgreSQL) with the in-service search time beside it. A real query also
    pays the embedder's one-text EmbedText (docs/benchmarks.md gives it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.runtime.threads import limit_math_threads

limit_math_threads(1)

import faiss  # noqa: E402
import grpc.aio  # noqa: E402
import numpy as np  # noqa: E402

from kitrading.rag.v1 import request_response_pb2 as rr  # noqa: E402
from kitrading.rag.v1 import service_pb2_grpc  # noqa: E402
from services.rag.app import RagApp  # noqa: E402
from services.rag.index import IndexParams, VectorIndex  # noqa: E402
from services.rag.settings import RagSettings  # noqa: E402
from services.runtime.database_settings import DatabaseSettings  # noqa: E402
from services.runtime.embedded import start_embedded_postgres  # noqa: E402

DIM, CLUSTERS, NOISE = 384, 2000, 0.9
rng0 = np.random.default_rng(0)
CENTRES = rng0.standard_normal((CLUSTERS, DIM)).astype(np.float32)


def synthetic(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = CENTRES[rng.integers(0, CLUSTERS, n)] + NOISE * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_of_text(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return synthetic(1, seed)[0]


class SyntheticEmbeddings:
    """A vector per text from its hash, distributed like (a)'s; no model is run."""

    async def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, str]:
        return np.stack([vector_of_text(t) for t in texts]), "synthetic-384"

    async def model(self) -> tuple[str, int]:
        return "synthetic-384", DIM


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def index_alone(chunks: int, queries: int) -> dict[str, Any]:
    x = synthetic(chunks, 1)
    q = synthetic(queries, 2)
    ids = np.arange(1, chunks + 1, dtype=np.int64)
    index = VectorIndex(DIM, IndexParams())
    started = time.perf_counter()
    for start in range(0, chunks, 1000):  # as documents arrive: batches of 1000 chunks
        index.add(ids[start : start + 1000], x[start : start + 1000])
    build_s = time.perf_counter() - started
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    search, exact_times, recall = [], [], []
    for row in q:
        t = time.perf_counter()
        _, truth = exact.search(row[None, :], 10)
        exact_times.append(time.perf_counter() - t)
        hits = index.search(row, 10)
        search.append(hits.seconds)
        recall.append(len(set(hits.ids.tolist()) & set((truth[0] + 1).tolist())) / 10)
    return {
        "kind": index.kind,
        "vectors": index.live_count,
        "build_s": build_s,
        "build_vectors_per_s": chunks / build_s,
        "memory_mib": index.memory_bytes() / 2**20,
        "search_p50_ms": pct(search, 50),
        "search_p99_ms": pct(search, 99),
        "exact_p50_ms": pct(exact_times, 50),
        "recall_at_10": float(np.mean(recall)),
    }


WORDS = [f"w{i}" for i in range(5000)]


def doc_text(i: int, per_doc: int) -> str:
    rng = np.random.default_rng(10_000 + i)
    # ~16 word pieces per sentence ("w123" is 2-3 pieces): one chunk each
    return " ".join(" ".join(rng.choice(WORDS, 6)) + "." for _ in range(per_doc))


async def whole_service(chunks: int, queries: int, home: Path) -> dict[str, Any]:
    per_doc = 50
    settings = RagSettings(
        home=home,
        database=DatabaseSettings(
            url=await asyncio.to_thread(start_embedded_postgres, home / "pg", cleanup_mode="delete")
        ),
        chunk_tokens=16,
        chunk_overlap=0,
        ingest_knowledge=False,
        model_cards_s=0.0,
        use_gpu=False,
        save_interval_s=3600.0,
    )
    app = RagApp(settings, embeddings=SyntheticEmbeddings())
    from tests.grpc_helpers import start_server

    server = await start_server(app, "rag")
    channel = grpc.aio.insecure_channel(server.target)
    stub = service_pb2_grpc.RagServiceStub(channel)
    try:
        started = time.perf_counter()
        added = 0
        i = 0
        sem = asyncio.Semaphore(4)

        async def add_one(n: int) -> int:
            async with sem:
                reply = await stub.AddDocument(
                    rr.AddDocumentRequest(title=f"doc {n}", text=doc_text(n, per_doc))
                )
                return reply.document.chunk_count

        while added < chunks:
            batch = [add_one(i + k) for k in range(20)]
            i += 20
            added += sum(await asyncio.gather(*batch))
        ingest_s = time.perf_counter() - started
        status = await stub.GetRagStatus(rr.GetRagStatusRequest())
        rpc, inner = [], []
        for n in range(queries):
            request = rr.QueryKnowledgeBaseRequest(query=f"query {n}", top_k=10, min_score=-1)
            t = time.perf_counter()
            reply = await stub.QueryKnowledgeBase(request)
            rpc.append(time.perf_counter() - t)
            inner.append(app.domain.last_timings.search)
            assert len(reply.passages) == 10
        t = time.perf_counter()
        await app.domain.save_index()
        save_s = time.perf_counter() - t
        return {
            "documents": status.documents,
            "chunks": status.chunks,
            "index": status.index_description.split(";")[0],
            "ingest_s": ingest_s,
            "ingest_chunks_per_s": status.chunks / ingest_s,
            "ingest_documents_per_s": status.documents / ingest_s,
            "rpc_p50_ms": pct(rpc, 50),
            "rpc_p99_ms": pct(rpc, 99),
            "search_in_rpc_p50_ms": pct(inner, 50),
            "index_file_mib": settings.index_path.stat().st_size / 2**20,
            "index_save_s": save_s,
        }
    finally:
        await channel.close()
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--skip-service", action="store_true", help="only (a)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"chunks": args.chunks, "synthetic": "vectors (a, b) and text (b)"}
    result["index"] = index_alone(args.chunks, args.queries)
    print(json.dumps({"index": result["index"]}, indent=2), flush=True)
    if not args.skip_service:
        with tempfile.TemporaryDirectory(prefix="kitrading-bench-rag-") as home:
            result["service"] = asyncio.run(whole_service(args.chunks, args.queries, Path(home)))
        print(json.dumps({"service": result["service"]}, indent=2), flush=True)
    a = result["index"]
    print(
        f"\nindex search p50 {a['search_p50_ms']:.3f} ms (target <= 1 ms), recall@10 {a['recall_at_10']:.3f} "
        f"(target >= 0.95), exact p50 {a['exact_p50_ms']:.2f} ms "
        f"({a['exact_p50_ms'] / a['search_p50_ms']:.0f}x slower)"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
