"""Fixtures of the RAG tests: a real Embedder service (bundled all-MiniLM-L6-v2 on CPU) for the
session, and RAG services on port 0, each on a fresh database with its index in a temp dir."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from kitrading.rag.v1 import service_pb2_grpc
from services.embedder.app import EmbedderApp
from services.embedder.sentiment import LexiconSentiment
from services.embedder.settings import EmbedderSettings
from services.embedder.text import TextEncoder
from services.rag.app import RagApp
from services.rag.settings import RagSettings
from services.runtime.database_settings import DatabaseSettings
from services.runtime.server import RunningServer
from services.training.sources import InMemoryCandleSource
from tests.grpc_helpers import start_server

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
async def embedder_target() -> AsyncIterator[str]:
    """`host:port` of a real Embedder service for the whole session."""
    import torch

    torch.set_num_threads(1)
    encoder = TextEncoder("", device="cpu", batch_size=64).load()
    app = EmbedderApp(
        EmbedderSettings(use_gpu=False),
        source=InMemoryCandleSource(),
        encoder=encoder,
        sentiment=LexiconSentiment(),
    )
    server = await start_server(app, "embedder")
    yield server.target
    await server.stop(0)


def rag_settings(url: str, home: Path, **overrides: Any) -> RagSettings:
    """Settings for tests: this database, the index under `home`, no docs or model cards ingested
    unless asked."""
    base = RagSettings(
        home=home,
        database=DatabaseSettings(url=url, pool_max_size=4),
        ingest_knowledge=False,
        model_cards_s=0.0,
        knowledge_dir=str(home / "knowledge"),
        use_gpu=False,
        save_interval_s=0.2,
    )
    return replace(base, **overrides)


@dataclass
class RagStack:
    app: RagApp
    server: RunningServer
    stub: service_pb2_grpc.RagServiceStub
    channel: grpc.aio.Channel


RagFactory = Callable[..., Awaitable[RagStack]]


@pytest.fixture
async def rag_factory(database_url: str, embedder_target: str, tmp_path: Path) -> AsyncIterator[RagFactory]:
    """`await factory(models=..., embedder=..., **settings_overrides)` -> a started RAG service
    (stopped after the test); `models`: service -> target of the services whose model cards it
    reads; `embedder`: another Embedder's target. Every stack of one test shares its database and
    index directory, so a second stack is the first one restarted."""
    stacks: list[RagStack] = []

    async def factory(
        models: Mapping[str, str] | None = None, embedder: str | None = None, **overrides: Any
    ) -> RagStack:
        settings = rag_settings(database_url, tmp_path, **overrides)
        app = RagApp(settings, embedder=embedder or embedder_target, models=models or {})
        server = await start_server(app, "rag")
        channel = grpc.aio.insecure_channel(server.target)
        stack = RagStack(app, server, service_pb2_grpc.RagServiceStub(channel), channel)
        stacks.append(stack)
        return stack

    yield factory
    for stack in reversed(stacks):
        await stack.channel.close()
        await stack.server.stop(0)


@pytest.fixture
async def rag(rag_factory: RagFactory) -> RagStack:
    return await rag_factory()
