"""Crash safety of a real RAG process: `kill -9` in the middle of concurrent adds and deletes loses
no acknowledged add and resurrects no acknowledged delete; a truncated index file is rebuilt from
the database at the next start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio

from bench._mesh import free_port, wait_serving
from kitrading.rag.v1 import request_response_pb2 as rr
from kitrading.rag.v1 import resources_pb2 as pb
from kitrading.rag.v1 import service_pb2_grpc

SERVICE = "kitrading.rag.v1.RagService"
TOPICS = ["rates", "oil", "gold", "equities", "volatility", "inflation", "jobs", "housing"]


def rag_env(database_url: str, home: Path, embedder: str, port: int) -> dict[str, str]:
    host, embedder_port = embedder.rsplit(":", 1)
    env = dict(os.environ)
    env.update(
        KITRADING_DATABASE_URL=database_url,
        KITRADING_HOME=str(home),
        KITRADING_RAG_PORT=str(port),
        KITRADING_EMBEDDER_HOST=host,
        KITRADING_EMBEDDER_PORT=embedder_port,
        KITRADING_RAG_INGEST_KNOWLEDGE="false",
        KITRADING_RAG_SAVE_INTERVAL_SECONDS="0.3",  # the file is rewritten while adds go on
        KITRADING_RAG_EXACT_MAX_CHUNKS="20",  # so the HNSW index (and its tombstones) is what crashes
        KITRADING_RAG_USE_GPU="false",
        KITRADING_METRICS="false",
    )
    return env


def start_rag(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A RAG process, once it serves (call it in a thread: the embedder shares the test's loop)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.rag"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        wait_serving(f"127.0.0.1:{env['KITRADING_RAG_PORT']}", SERVICE, timeout_s=60)
    except BaseException:
        process.kill()
        raise
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=30)


def text_of(i: int) -> str:
    return f"Desk note {i} about {TOPICS[i % len(TOPICS)]}: code K{i:04d}X. " + f"Detail {i} " * (5 + i % 7)


def vectors_in_index(status: rr.GetRagStatusResponse) -> int:
    found = re.search(r"(\d+) vectors", status.index_description)
    assert found, status.index_description
    return int(found.group(1))


async def check_everything_acknowledged(
    stub: service_pb2_grpc.RagServiceStub, added: dict[str, int], deleted: set[str]
) -> None:
    listed = await stub.ListDocuments(rr.ListDocumentsRequest(page_size=1000))
    stored = {d.document_id for d in listed.documents}
    assert set(added) - deleted <= stored, "an acknowledged add was lost"
    assert not deleted & stored, "an acknowledged delete came back"
    status = await stub.GetRagStatus(rr.GetRagStatusRequest())
    assert vectors_in_index(status) == status.chunks == sum(d.chunk_count for d in listed.documents)
    for doc_id, i in list(added.items())[:12]:
        if doc_id in deleted:
            continue
        reply = await stub.QueryKnowledgeBase(
            rr.QueryKnowledgeBaseRequest(query=f"K{i:04d}X", mode=pb.RETRIEVAL_MODE_HYBRID, min_score=-1)
        )
        assert reply.passages[0].document_id == doc_id


async def test_kill_9_mid_ingest_loses_nothing_acknowledged(
    database_url: str, embedder_target: str, tmp_path: Path
) -> None:
    env = rag_env(database_url, tmp_path, embedder_target, free_port())
    target = f"127.0.0.1:{env['KITRADING_RAG_PORT']}"
    added: dict[str, int] = {}
    deleted: set[str] = set()
    process = await asyncio.to_thread(start_rag, env)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_pb2_grpc.RagServiceStub(channel)
            counter = iter(range(10_000))
            enough = asyncio.Event()

            async def writer() -> None:
                while True:
                    i = next(counter)
                    try:
                        reply = await stub.AddDocument(
                            rr.AddDocumentRequest(title=f"note {i}", text=text_of(i))
                        )
                        added[reply.document.document_id] = i
                        if len(added) >= 40:
                            enough.set()
                        if i % 5 == 0:
                            await stub.DeleteDocument(
                                rr.DeleteDocumentRequest(document_id=reply.document.document_id)
                            )
                            deleted.add(reply.document.document_id)
                    except grpc.aio.AioRpcError:
                        return  # the process is gone

            writers = [asyncio.create_task(writer()) for _ in range(4)]
            await enough.wait()  # writes are in flight: kill now
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.gather(*writers)
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL and len(added) >= 40

    port = free_port()
    env["KITRADING_RAG_PORT"] = str(port)
    restarted = await asyncio.to_thread(start_rag, env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await check_everything_acknowledged(service_pb2_grpc.RagServiceStub(channel), added, deleted)
    finally:
        stop(restarted)

    index_file = tmp_path / "rag" / "index.faiss"
    raw = index_file.read_bytes()
    index_file.write_bytes(raw[: len(raw) // 3])  # truncated
    rebuilt = await asyncio.to_thread(start_rag, env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.RagServiceStub(channel)
            status = await stub.GetRagStatus(rr.GetRagStatusRequest())
            assert "rebuilt from the database (corrupt" in status.index_description
            await check_everything_acknowledged(stub, added, deleted)
    finally:
        stop(rebuilt)
