"""The RAG service as a `ServiceApp` on the shared base (services.runtime.app).

`on_start` opens the embedder channel, then the domain (database, migrations, the index loaded and
reconciled with the database); ready (SERVING) once that is done and while the database answers.
Periodic: the index file rewritten when it changed, the mesh's own docs ingested (retried until
the embedder answers, then every `knowledge_refresh_s`), and the forecast, regime and pattern model
cards polled every `model_cards_s` (services.rag.cards; a service that is down is skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from kitrading.rag.v1 import service_pb2_grpc
from services.rag.cards import CARD_SERVICES, MeshCards
from services.rag.embeddings import EmbedderClient, Embeddings
from services.rag.service import KNOWLEDGE_RETRY_S, RagDomain
from services.rag.servicer import RagServicer
from services.rag.settings import RagSettings
from services.runtime.addresses import service_target
from services.runtime.app import Periodic, ServiceAppBase, load_settings

log = logging.getLogger(__name__)


class RagApp(ServiceAppBase):
    def __init__(
        self,
        settings: RagSettings | None = None,
        *,
        embedder: str | None = None,
        embeddings: Embeddings | None = None,
        models: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`embedder`: `host:port` of the Embedder service (default: `services.runtime.addresses`);
        `embeddings`: vectors from elsewhere instead (the benchmark's synthetic ones); `models`:
        service -> `host:port` of the forecast, regime and pattern services whose model cards are
        ingested (default: all three at `services.runtime.addresses`; a service left out is not asked)."""
        super().__init__("rag", service_pb2_grpc.add_RagServiceServicer_to_server)
        self.settings = load_settings(settings, RagSettings.from_env, env)
        self.client: EmbedderClient | None = None
        if embeddings is None:
            self.client = EmbedderClient(
                embedder or service_target("embedder", env, instances=True),
                batch=self.settings.embed_batch,
                timeout_s=self.settings.embed_timeout_s,
            )
            embeddings = self.client
        self.cards: MeshCards | None = None
        if self.settings.model_cards_s > 0:
            targets = (
                dict(models)
                if models is not None
                else {s: service_target(s, env, instances=True) for s in CARD_SERVICES}
            )
            self.cards = MeshCards(targets)
        self.domain = RagDomain(self.settings, embeddings, self.cards)
        self.servicer = RagServicer(self.domain)

    async def on_start(self) -> None:
        if self.client is not None:
            await self.client.start()
        if self.cards is not None:
            await self.cards.start()
        await self.domain.start()
        s = self.domain.status()
        log.info("rag ready: %d documents, %d chunks; %s", s.documents, s.chunks, s.index_description)

    async def on_stop(self) -> None:
        await self.domain.stop()
        if self.client is not None:
            await self.client.close()
        if self.cards is not None:
            await self.cards.close()

    def healthy(self) -> bool:
        return self.domain.healthy

    def periodic(self) -> Sequence[Periodic]:
        tasks = [
            Periodic("save-index", self.settings.save_interval_s, self.domain.save_index),
            Periodic("knowledge", KNOWLEDGE_RETRY_S, self.domain.refresh_knowledge, immediately=True),
        ]
        if self.cards is not None:
            cards = self.domain.refresh_model_cards
            tasks.append(Periodic("model-cards", self.settings.model_cards_s, cards, immediately=True))
        return tasks
