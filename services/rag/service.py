"""The RAG domain: documents in, passages out; no gRPC.

    domain = RagDomain(settings, EmbedderClient(target))
    await domain.start()    # database + migrations, documents, the index loaded and reconciled
    added = await domain.add(NewDocument(title=..., text=...))
    passages = await domain.query(Query("how is the forecast evaluated?", filters=Filters(symbol="EURUSD")))

The one non-obvious rule: PostgreSQL is the truth and the FAISS index a cache of it. An add is
acknowledged after its transaction committed (then its vectors enter the in-memory index); the
index file is rewritten at most every `save_interval_s`, and at start the file is reconciled with
`rag.chunks` (vectors missing from it added, vectors of deleted chunks removed) or, missing or
unreadable, rebuilt from the database. So `kill -9` at any moment loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.rag import store as st
from services.rag.chunking import Chunker, load_spans
from services.rag.embeddings import Embeddings
from services.rag.index import IndexFileError, IndexParams, VectorIndex, gpu_mirror
from services.rag.models import (
    HYBRID,
    Added,
    Cards,
    Document,
    DocumentPage,
    Filters,
    NewDocument,
    Passage,
    Query,
    RagStatus,
    Reembedding,
)
from services.rag.settings import RagSettings
from services.runtime.database import DatabasePool
from services.runtime.database_settings import resolve_database_url, revive_hook
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

#: Source prefix and tag of the documents the service ingests from the mesh's own docs.
KNOWLEDGE_SOURCE = "kitrading:docs/"
KNOWLEDGE_TAG = "mesh-knowledge"
#: Source prefix and tag of the model cards (services.rag.cards): `kitrading:model/forecast/EURUSD/H1`.
MODEL_SOURCE = "kitrading:model/"
MODEL_TAG = "model-card"
#: Longest text sent to the embedder for one chunk (its contract allows 8192 characters).
MAX_EMBED_CHARS = 8000
#: `_model` when the stored vectors come from more than one model (a re-embedding interrupted).
MIXED = "(several models)"
#: Longest wait between tries to reach the embedder for the model check at start.
MODEL_CHECK_MAX_S = 30.0


def embed_inputs(title: str, chunks: Sequence[str]) -> list[str]:
    """What the embedder gets for a document's chunks: the title, then the chunk."""
    return [(f"{title}\n{c}" if title else c)[:MAX_EMBED_CHARS] for c in chunks]


#: How often the knowledge ingest is retried until it succeeded once (the embedder may start later).
KNOWLEDGE_RETRY_S = 3.0
DEFAULT_TOP_K = 5


@dataclass(frozen=True, slots=True)
class QueryTimings:
    """Where the time of the last query went (seconds)."""

    embed: float = 0.0
    search: float = 0.0
    text_search: float = 0.0
    fetch: float = 0.0


def rrf(rankings: list[list[int]], k: int) -> list[int]:
    """Reciprocal rank fusion: ids by the sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda i: (-fused[i], i))


def title_of(text: str, fallback: str = "") -> str:
    """The first markdown heading, else the first line (at most 120 characters)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    heading = next((line.lstrip("#").strip() for line in lines if line.startswith("#")), "")
    return (heading or fallback or (lines[0] if lines else ""))[:120]


class ModelCards(Protocol):
    async def cards(self) -> Cards:
        """The model cards the other services publish now (services.rag.cards.MeshCards)."""
        ...


class RagDomain:
    def __init__(
        self, settings: RagSettings, embeddings: Embeddings, cards: ModelCards | None = None
    ) -> None:
        """`cards`: where the model cards come from (None: none are ingested)."""
        self.settings = settings
        self.embeddings = embeddings
        self.cards = cards
        self.chunker = Chunker(
            load_spans(settings.tokenizer), size=settings.chunk_tokens, overlap=settings.chunk_overlap
        )
        self.params = IndexParams(
            exact_max_chunks=settings.exact_max_chunks,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
        )
        self.gpu, self.gpu_reason = gpu_mirror(
            settings.use_gpu, settings.gpu_device, settings.gpu_memory_fraction
        )
        self.pool: DatabasePool | None = None
        self.store: st.RagStore | None = None
        self.index: VectorIndex | None = None
        #: How the index came to be at start (loaded, reconciled, rebuilt and why).
        self.index_origin = ""
        self._docs: dict[str, tuple[Document, np.ndarray]] = {}
        self._allowed: dict[Filters, np.ndarray] = {}
        self._write_lock = asyncio.Lock()
        self._saved_version = -1
        #: The model the index's vectors come from ("" with no documents, MIXED).
        self._model = ""
        self._reembedding: Reembedding | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reembed_task: asyncio.Task[None] | None = None
        self._checking = False
        self._update_time: datetime | None = None
        self._knowledge_done_at: float | None = None
        self._cards_lock = asyncio.Lock()
        self.last_timings = QueryTimings()
        self._started = False

    # ---- life cycle ----

    async def start(self, *, wait_db_s: float = 60.0) -> None:
        url = await resolve_database_url(self.settings.database)
        db = self.settings.database
        self.pool = DatabasePool(
            url,
            min_size=1,
            max_size=max(2, min(8, db.pool_max_size)),
            revive=revive_hook(db),
            name="rag database",
        )
        try:
            await self.pool.open(wait_s=wait_db_s)
            await st.migrate(url)
        except BaseException:
            await self.pool.close()
            raise
        self.store = st.RagStore(self.pool)
        for document, ids in await self.store.documents_with_chunks():
            self._docs[document.id] = (document, ids)
        self._update_time = await self.store.update_time()
        models = await self.store.models()
        self._model = next(iter(models)) if len(models) == 1 else (MIXED if models else "")
        if self._model == MIXED:
            # An interrupted re-embedding: no index can mix them; queries wait for the rest.
            total = await self.store.stale_documents(max(models, key=lambda m: models[m]))
            self._reembedding = Reembedding("", 0, len(total), datetime.now(UTC))
            self.index_origin = f"vectors of {len(models)} models in the database; re-embedding"
        else:
            await self._open_index()
        self._started = True
        self._resume_reembedding()

    def _resume_reembedding(self) -> None:
        """Check the embedder's model (in the background, once at a time) and re-embed if it
        differs, unless a re-embedding runs."""
        if self._checking or (self._reembed_task is not None and not self._reembed_task.done()):
            return
        self._checking = True
        self._spawn(self._check_model())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _check_model(self) -> None:
        """Once the embedder answers: re-embed the documents another model made, if any."""
        delay = 0.5
        try:
            while self._started:
                try:
                    model, _ = await self.embeddings.model()
                except Unavailable:  # the embedder may start after us
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MODEL_CHECK_MAX_S)
                    continue
                if self._model and model != self._model:
                    self.start_reembedding(model)
                return
        finally:
            self._checking = False

    def start_reembedding(self, model: str) -> None:
        """Re-embed in the background with `model` unless that already runs."""
        if self._reembed_task is not None and not self._reembed_task.done():
            return

        async def run() -> None:
            try:
                await self.reembed(model)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried at the next query or add that sees the model
                log.warning("re-embedding with %s stopped: %s", model, exc)
                if self._model != MIXED:
                    self._reembedding = None

        self._reembed_task = self._spawn(run())

    async def reembed(self, model: str) -> int:
        """Re-embed every document whose vectors another model made with `model`, then serve an
        index built from the new vectors; returns how many documents were re-embedded.

        Each document is one transaction (vectors and its `embedding_model` together), so a crash
        leaves every document with one model's vectors and the next start goes on from there.
        Documents added meanwhile are stored with the new model's vectors and are in the new index.
        """
        store = self._store()
        started, clock = datetime.now(UTC), time.perf_counter()
        done = 0
        while True:
            while stale := await store.stale_documents(model):
                state = Reembedding(model, done, done + len(stale), started)
                self._reembedding = state
                for document_id in stale:
                    if await self._reembed_document(document_id, model):
                        done += 1
                        state.documents_done = done
            async with self._write_lock:
                if await store.stale_documents(model):  # added with the old model just before
                    continue
                ids, vectors = await store.vectors()
                built: VectorIndex | None = None
                if len(ids):
                    built = VectorIndex(vectors.shape[1], self.params, gpu=self.gpu)
                    await asyncio.to_thread(built.add, ids, vectors)
                self.index, self._model, self._saved_version = built, model, -1
                self._changed()
                self.index_origin = (
                    f"re-embedded {done} documents with {model} in {time.perf_counter() - clock:.1f} s"
                )
                break
        log.info("rag: %s", self.index_origin)
        await self.save_index()
        self._reembedding = None
        return done

    async def _reembed_document(self, document_id: str, model: str) -> bool:
        """New vectors of `model` for one document; False when it was deleted meanwhile."""
        store = self._store()
        found = await store.chunks_of(document_id)
        if found is None:
            return False
        title, ids, texts = found
        vectors, used = (
            await self.embeddings.embed(embed_inputs(title, texts))
            if texts
            else (np.zeros((0, 0), np.float32), model)
        )
        if used != model:
            raise Unavailable(f"the embedder's model changed again (to {used})", reason="RAG_REEMBEDDING")
        async with self._write_lock:
            return await store.set_vectors(document_id, ids, vectors, model)

    def _reembedding_error(self) -> Unavailable:
        r = self._reembedding
        if r is None or not r.model:
            what = "is waiting to re-embed its documents (vectors of several models)"
        else:
            what = f"is re-embedding its documents with {r.model} ({r.documents_done} of {r.documents_total})"
        return Unavailable(f"the knowledge base {what}; retry shortly", reason="RAG_REEMBEDDING")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self.save_index()
        if self.pool is not None:
            await self.pool.close()

    @property
    def healthy(self) -> bool:
        return self._started and self.pool is not None and self.pool.healthy

    def _store(self) -> st.RagStore:
        if self.store is None:
            raise Unavailable("the knowledge base is not started", reason="RAG_NOT_READY")
        return self.store

    # ---- the index: load, reconcile, save ----

    async def _open_index(self) -> None:
        store = self._store()
        path = self.settings.index_path
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a write a crash interrupted
            stale.unlink(missing_ok=True)
        db_ids = await store.chunk_ids()
        started = time.perf_counter()
        try:
            index, meta = await asyncio.to_thread(VectorIndex.load, path, self.params, gpu=self.gpu)
        except IndexFileError as exc:
            index, why = None, str(exc)
        else:
            made_by = str(meta.get("model", ""))
            if self._model and made_by and made_by != self._model:  # re-embedded, not yet saved
                index, why = None, f"its vectors are {made_by}'s, the database's {self._model}'s"
        if index is not None:
            live = index.live_ids()
            missing = np.setdiff1d(db_ids, live)
            extra = np.setdiff1d(live, db_ids)
            ids, vectors = await store.vectors(missing) if len(missing) else (missing, None)
            if vectors is not None and len(ids) and vectors.shape[1] != index.dimension:
                index, why = None, "its dimension differs from the stored vectors'"
            else:
                if vectors is not None and len(ids):
                    await asyncio.to_thread(index.add, ids, vectors)
                if len(extra):
                    await asyncio.to_thread(index.remove, extra.tolist())
                self.index = index
                self.index_origin = (
                    f"loaded from {path.name}; {len(missing)} vectors added and {len(extra)} removed "
                    "to match the database"
                )
                if not len(missing) and not len(extra):
                    self._saved_version = index.version
        if index is None:
            ids, vectors = await store.vectors()
            if len(ids):
                built = VectorIndex(vectors.shape[1], self.params, gpu=self.gpu)
                await asyncio.to_thread(built.add, ids, vectors)
                self.index = built
            self.index_origin = f"rebuilt from the database ({why})"
        seconds = time.perf_counter() - started
        count = self.index.live_count if self.index is not None else 0
        log.info("rag index: %s; %d vectors in %.1f s", self.index_origin, count, seconds)
        if self.index is not None and self._saved_version != self.index.version:
            await self.save_index()

    async def save_index(self) -> bool:
        """Write the index file if it changed since the last write; True when written."""
        index = self.index
        if index is None or index.version == self._saved_version:
            return False
        version = index.version
        meta = {"model": self._model, "vectors": index.live_count}
        await asyncio.to_thread(index.save, self.settings.index_path, meta)
        self._saved_version = version
        return True

    def _changed(self) -> None:
        self._allowed.clear()

    # ---- documents ----

    async def add(self, doc: NewDocument, *, replace_source: bool = False) -> Added:
        """Store a document (chunked and embedded); the same text again returns the stored one."""
        store = self._store()
        if not doc.text.strip():
            raise InvalidArgument("text", "must contain words")
        doc = NewDocument(
            title=doc.title.strip() or title_of(doc.text),
            text=doc.text,
            source=doc.source.strip(),
            tags=tuple(dict.fromkeys(t.strip() for t in doc.tags if t.strip())),
            symbol=doc.symbol.strip().upper(),
            publish_time=doc.publish_time,
        )
        digest = st.content_hash(doc.text)
        existing = await store.find_by_hash(digest)
        if existing is not None:
            return Added(existing, created=False)
        chunks = await asyncio.to_thread(self.chunker.chunk, doc.text)
        if not chunks:
            raise InvalidArgument("text", "must contain words")
        vectors, model = await self.embeddings.embed(embed_inputs(doc.title, [c.text for c in chunks]))
        async with self._write_lock:
            # Vectors of another model than the index's: stored, indexed once all are re-embedded.
            indexed = not self._model or model == self._model
            if indexed and self.index is not None and vectors.shape[1] != self.index.dimension:
                raise FailedPrecondition(
                    f"the embedder's vectors have {vectors.shape[1]} dimensions, the knowledge "
                    f"base's {self.index.dimension} (model {self._model or 'unknown'}): re-embedding "
                    "is not supported",
                    reason="EMBEDDING_DIMENSION_MISMATCH",
                )
            result = await store.insert(
                doc, digest, [c.text for c in chunks], vectors, model, replace_source=replace_source
            )
            if result is None:  # a concurrent add of the same text won
                found = await store.find_by_hash(digest)
                if found is None:
                    raise Unavailable(
                        "the document vanished while it was added; retry", reason="RAG_CONFLICT"
                    )
                return Added(found, created=False)
            document, ids, replaced = result
            if self.index is None and indexed:
                self.index = VectorIndex(vectors.shape[1], self.params, gpu=self.gpu)
            for old in replaced:
                _, old_ids = self._docs.pop(old, (None, np.zeros(0, np.int64)))
                if self.index is not None:
                    await asyncio.to_thread(self.index.remove, old_ids.tolist())
            if indexed and self.index is not None:
                await asyncio.to_thread(self.index.add, ids, vectors)
                self._model = model
            self._docs[document.id] = (document, ids)
            self._update_time = document.create_time
            self._changed()
        if not indexed:
            self.start_reembedding(model)
        return Added(document, created=True)

    async def delete(self, document_id: str) -> int:
        """Remove a document, its chunks and their vectors; returns the number of chunks."""
        store = self._store()
        async with self._write_lock:
            ids = await store.delete(document_id)
            if ids is None:
                raise NotFound(f"no document {document_id}", reason="DOCUMENT_NOT_FOUND")
            self._docs.pop(document_id, None)
            if self.index is not None and ids:
                await asyncio.to_thread(self.index.remove, ids)
            self._update_time = await store.update_time()
            self._changed()
        return len(ids)

    async def get(self, document_id: str) -> Document:
        found = await self._store().get(document_id)
        if found is None:
            raise NotFound(f"no document {document_id}", reason="DOCUMENT_NOT_FOUND")
        return found

    async def list_documents(
        self, *, page_size: int = 0, page_token: str = "", symbol: str = "", tag: str = ""
    ) -> DocumentPage:
        return await self._store().list(page_size=page_size, page_token=page_token, symbol=symbol, tag=tag)

    # ---- search ----

    def allowed_ids(self, filters: Filters) -> np.ndarray | None:
        """The chunk ids a query with `filters` may return (None: every chunk)."""
        if filters.empty:
            return None
        cached = self._allowed.get(filters)
        if cached is None:
            parts = [ids for document, ids in self._docs.values() if filters.matches(document)]
            cached = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            self._allowed[filters] = cached
        return cached

    async def query(self, q: Query) -> list[Passage]:
        """The best `top_k` passages for `q.text`, highest score first (hybrid: best fused rank)."""
        store = self._store()
        if q.filters.start and q.filters.end and q.filters.start >= q.filters.end:
            raise InvalidArgument("end_time", "must be after start_time")
        top_k = q.top_k or DEFAULT_TOP_K
        if self._reembedding is not None:
            self._resume_reembedding()  # after a failed attempt (the embedder was down)
            raise self._reembedding_error()
        index = self.index
        if index is None or index.live_count == 0:
            return []
        started = time.perf_counter()
        vectors, model = await self.embeddings.embed([q.text])
        if model != self._model:  # the embedder's model changed: the index's vectors are stale
            self.start_reembedding(model)
            self._reembedding = self._reembedding or Reembedding(model, 0, len(self._docs), datetime.now(UTC))
            raise self._reembedding_error()
        query_vector = vectors[0]
        embedded = time.perf_counter()
        if query_vector.shape[0] != index.dimension:
            raise FailedPrecondition(
                f"the embedder's vectors have {query_vector.shape[0]} dimensions, "
                f"the index's {index.dimension}",
                reason="EMBEDDING_DIMENSION_MISMATCH",
            )
        allowed = self.allowed_ids(q.filters)
        if allowed is not None and not len(allowed):
            return []
        hybrid = q.mode == HYBRID
        fetch_k = max(top_k, self.settings.hybrid_candidates) if hybrid else top_k
        hits = await asyncio.to_thread(index.search, query_vector, fetch_k, allowed=allowed)
        searched = time.perf_counter()
        vector_scores = dict(zip(hits.ids.tolist(), hits.scores.tolist(), strict=True))
        text_seconds = 0.0
        if hybrid:
            lexical = await store.text_search(q.text, q.filters, self.settings.hybrid_candidates)
            text_seconds = time.perf_counter() - searched
            order = rrf([hits.ids.tolist(), lexical], self.settings.rrf_k)
        else:
            order = hits.ids.tolist()
        fetched_at = time.perf_counter()
        rows = await store.passages(order[: top_k * 2] if hybrid else order)
        passages: list[Passage] = []
        for chunk_id in order:
            row = rows.get(chunk_id)
            if row is None:  # deleted meanwhile
                continue
            score = vector_scores.get(chunk_id)
            if score is None:
                score = float(st.vector_of(row["vector"]) @ query_vector)
            if score < q.min_score:
                continue
            passages.append(
                Passage(
                    document_id=row["id"],
                    chunk_index=row["chunk_index"],
                    title=row["title"],
                    text=row["chunk_text"],
                    score=float(score),
                    source=row["source"],
                    symbol=row["symbol"],
                    tags=tuple(row["tags"]),
                    publish_time=row["publish_time"],
                )
            )
            if len(passages) == top_k:
                break
        self.last_timings = QueryTimings(
            embed=embedded - started,
            search=hits.seconds,
            text_search=text_seconds,
            fetch=time.perf_counter() - fetched_at,
        )
        return passages

    # ---- status ----

    def status(self) -> RagStatus:
        index = self.index
        chunks = sum(len(ids) for _, ids in self._docs.values())
        return RagStatus(
            gpu=self.gpu is not None,
            documents=len(self._docs),
            chunks=chunks,
            dimension=index.dimension if index is not None else 0,
            embedding_model=self._model,
            update_time=self._update_time,
            index_kind=index.kind if index is not None else "exact",
            index_memory_bytes=index.memory_bytes() if index is not None else 0,
            exact_max_chunks=self.settings.exact_max_chunks,
            index_description=(
                f"{index.describe() if index is not None else 'empty'}; chunking: {self.chunker.spans.name}, "
                f"{self.chunker.size} tokens, {self.chunker.overlap} overlap; at start: {self.index_origin}"
            ),
            reembedding=self._reembedding,
        )

    # ---- the mesh's own knowledge ----

    def knowledge_due(self) -> bool:
        if not self.settings.ingest_knowledge:
            return False
        if self._knowledge_done_at is None:
            return True
        refresh = self.settings.knowledge_refresh_s
        return refresh > 0 and time.monotonic() - self._knowledge_done_at >= refresh

    async def refresh_knowledge(self) -> int:
        """Ingest the mesh's docs (knowledge_files in knowledge_dir) that are new or changed; returns
        how many documents were (re)written. Unchanged files cost one query; a changed one replaces
        its previous version (same source). Does nothing when not due."""
        if not self.knowledge_due():
            return 0
        store = self._store()
        try:
            stored = await store.sources_with_hash(KNOWLEDGE_SOURCE)
            written = 0
            for name in self.settings.knowledge_files:
                path = self.settings.knowledge_path / name
                text = _read_text(path)
                if text is None:
                    continue
                source = KNOWLEDGE_SOURCE + name
                if stored.get(source) == st.content_hash(text):
                    continue
                added = await self.add(
                    NewDocument(title=title_of(text, name), text=text, source=source, tags=(KNOWLEDGE_TAG,)),
                    replace_source=True,
                )
                written += int(added.created)
        except Unavailable as exc:
            log.warning("knowledge ingest postponed: %s", exc.message)
            return 0
        self._knowledge_done_at = time.monotonic()
        if written:
            log.info(
                "knowledge base: %d mesh documents ingested from %s", written, self.settings.knowledge_path
            )
        return written

    async def refresh_model_cards(self) -> int:
        """Ingest the model cards of the other services that are new or changed; returns how many
        documents were (re)written. An unchanged card costs nothing but its hash; a changed one (a new
        model version) replaces the document of the same source; a card a service that answered no
        longer lists is deleted. A service that is down or untrained is skipped (its documents kept)."""
        if self.cards is None or self.settings.model_cards_s <= 0 or not self._started:
            return 0
        async with self._cards_lock:  # one refresh at a time (the periodic one and a caller's)
            return await self._refresh_model_cards(self.cards)

    async def _refresh_model_cards(self, cards: ModelCards) -> int:
        found = await cards.cards()
        written = 0
        try:
            store = self._store()
            stored = await store.sources_with_hash(MODEL_SOURCE)
            for card in found.cards:
                if stored.get(card.source) == st.content_hash(card.text):
                    continue
                added = await self.add(
                    NewDocument(
                        title=card.title,
                        text=card.text,
                        source=card.source,
                        tags=(KNOWLEDGE_TAG, MODEL_TAG),
                        symbol=card.symbol,
                        publish_time=card.publish_time,
                    ),
                    replace_source=True,
                )
                written += int(added.created)
            listed = {card.source for card in found.cards}
            for source, digest in stored.items():
                service = source.removeprefix(MODEL_SOURCE).split("/", 1)[0]
                if service in found.complete and source not in listed:
                    with contextlib.suppress(NotFound):
                        await self.delete(st.document_id(digest))
                    log.info("knowledge base: model card %s removed (its service no longer lists it)", source)
        except Unavailable as exc:
            log.warning("model cards postponed: %s", exc.message)
        if written:
            log.info("knowledge base: %d model cards (re)written", written)
        return written


def _read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("knowledge file %s unreadable: %s", path, exc)
        return None
    return text if text.strip() else None
