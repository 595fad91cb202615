"""The RAG domain's plain values: documents, passages, query filters, the index status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

VECTOR, HYBRID = "vector", "hybrid"


@dataclass(frozen=True, slots=True)
class NewDocument:
    """What AddDocument asks to store."""

    title: str
    text: str
    source: str = ""
    tags: tuple[str, ...] = ()
    symbol: str = ""
    publish_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """A stored document; `text` is "" where only the metadata was read."""

    id: str
    title: str
    source: str
    symbol: str
    tags: tuple[str, ...]
    publish_time: datetime | None
    create_time: datetime
    chunk_count: int
    char_count: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class Added:
    document: Document
    #: False: the same text was already stored (`document` is that one).
    created: bool


@dataclass(frozen=True, slots=True)
class Passage:
    document_id: str
    chunk_index: int
    title: str
    text: str
    #: Cosine similarity to the query.
    score: float
    source: str
    symbol: str
    tags: tuple[str, ...]
    publish_time: datetime | None


@dataclass(frozen=True, slots=True)
class Filters:
    """Which documents a query may return passages of; empty fields do not filter."""

    #: Documents about this symbol or about none.
    symbol: str = ""
    #: Documents with any of these tags.
    tags: tuple[str, ...] = ()
    source: str = ""
    #: publish_time in [start, end) (documents without one are left out when either is set).
    start: datetime | None = None
    end: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.symbol or self.tags or self.source or self.start or self.end)

    def matches(self, d: Document) -> bool:
        if self.symbol and d.symbol not in ("", self.symbol):
            return False
        if self.tags and not set(self.tags) & set(d.tags):
            return False
        if self.source and d.source != self.source:
            return False
        if self.start is not None or self.end is not None:
            if d.publish_time is None:
                return False
            if self.start is not None and d.publish_time < self.start:
                return False
            if self.end is not None and d.publish_time >= self.end:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    top_k: int = 5
    filters: Filters = field(default_factory=Filters)
    min_score: float = 0.0
    mode: str = VECTOR


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[Document]
    next_page_token: str
    total_size: int


@dataclass(slots=True)
class Reembedding:
    """Progress of re-embedding the documents with `model` (the embedder's current text model)."""

    model: str
    documents_done: int
    documents_total: int
    start_time: datetime


@dataclass(frozen=True, slots=True)
class RagStatus:
    gpu: bool
    documents: int
    chunks: int
    dimension: int
    embedding_model: str
    update_time: datetime | None
    index_kind: str
    index_memory_bytes: int
    exact_max_chunks: int
    index_description: str
    reembedding: Reembedding | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """One document about a model of the mesh (services.rag.cards): `source` names the model and stays
    the same across its versions, so a new version's card replaces the previous one; `text` markdown."""

    source: str
    title: str
    text: str
    symbol: str = ""
    publish_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Cards:
    """What one refresh found."""

    cards: tuple[Card, ...] = ()
    #: The services that answered every call: their cards are all there are (others' documents go).
    complete: frozenset[str] = field(default_factory=frozenset)
