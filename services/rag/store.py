"""The knowledge base in PostgreSQL, schema `rag` (./migrations): the source of truth.

A document and all its chunks (text, vector, tsvector) are written in one transaction, so an
acknowledged AddDocument is durable whatever happens to the process next, and the FAISS index
(a cache, services/rag/index.py) can always be rebuilt from `rag.chunks`. Chunk ids are the
vectors' ids in the index. Documents page newest first by (create_time, id) with opaque tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.rag.models import Document, DocumentPage, Filters, NewDocument
from services.runtime.database import DatabasePool, apply_migrations
from services.runtime.errors import InvalidArgument
from services.runtime.pagination import BAD_TOKEN, decode_token, encode_token, resolve_page_size

SCHEMA = "rag"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
_TOKEN_KIND = "rag-documents"
_META = (
    "d.id, d.title, d.source, d.symbol, d.tags, d.publish_time, d.create_time, d.chunk_count, d.char_count"
)
#: Rows per fetch when the whole index is read back (rebuild at start).
VECTOR_BATCH = 10_000


def content_hash(text: str) -> str:
    """The identity of a document's content: sha256 of its text (stripped)."""
    return hashlib.sha256(text.strip().encode()).hexdigest()


def document_id(digest: str) -> str:
    return digest[:32]


async def migrate(url: str, *, timeout_s: float = 60.0) -> list[str]:
    return await apply_migrations(url, MIGRATIONS_DIR, schema=SCHEMA, timeout_s=timeout_s)


def _document(row: Any, *, text: str = "") -> Document:
    return Document(
        id=row["id"],
        title=row["title"],
        source=row["source"],
        symbol=row["symbol"],
        tags=tuple(row["tags"]),
        publish_time=row["publish_time"],
        create_time=row["create_time"],
        chunk_count=row["chunk_count"],
        char_count=row["char_count"],
        text=text,
    )


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_of(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4")


class RagStore:
    """Documents, chunks and vectors in PostgreSQL, through the service's `DatabasePool`."""

    def __init__(self, pool: DatabasePool) -> None:
        self.pool = pool

    # ---- writes ----

    async def find_by_hash(self, digest: str) -> Document | None:
        row = await self.pool.fetchrow(
            f"SELECT {_META} FROM {SCHEMA}.documents d WHERE content_hash = $1", digest
        )
        return None if row is None else _document(row)

    async def insert(
        self,
        doc: NewDocument,
        digest: str,
        chunks: Sequence[str],
        vectors: np.ndarray,
        model: str,
        *,
        replace_source: bool = False,
    ) -> tuple[Document, np.ndarray, list[str]] | None:
        """Store `doc` and its chunks in one transaction; returns (document, chunk ids, ids of the
        documents it replaced), or None when the same text is already stored. `replace_source`:
        first delete the other documents of the same source (the mesh's knowledge, refreshed)."""
        now = datetime.now(UTC)
        async with self.pool.transaction() as conn:
            replaced: list[str] = []
            if replace_source:
                rows = await conn.fetch(
                    f"DELETE FROM {SCHEMA}.documents WHERE source = $1 AND content_hash <> $2 RETURNING id",
                    doc.source,
                    digest,
                )
                replaced = [str(r["id"]) for r in rows]  # their chunks go with them (ON DELETE CASCADE)
            row = await conn.fetchrow(
                f"INSERT INTO {SCHEMA}.documents AS d (id, title, text, source, symbol, tags, publish_time, "
                "create_time, content_hash, char_count, chunk_count, embedding_model) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
                f"ON CONFLICT (content_hash) DO NOTHING RETURNING {_META}",
                document_id(digest),
                doc.title,
                doc.text,
                doc.source,
                doc.symbol,
                list(doc.tags),
                doc.publish_time,
                now,
                digest,
                len(doc.text),
                len(chunks),
                model,
            )
            if row is None:
                return None
            ids = await conn.fetch(
                f"INSERT INTO {SCHEMA}.chunks (document_id, chunk_index, text, vector, tsv) "
                "SELECT $1, i, t, v, setweight(to_tsvector('english', $5), 'A') || to_tsvector('english', t) "
                "FROM unnest($2::int[], $3::text[], $4::bytea[]) AS u(i, t, v) ORDER BY i RETURNING id",
                row["id"],
                list(range(len(chunks))),
                list(chunks),
                [vector_bytes(v) for v in vectors],
                doc.title,
            )
            await self._touch(conn, now)
        return _document(row), np.array([int(r["id"]) for r in ids], dtype=np.int64), replaced

    async def set_vectors(self, document_id_: str, ids: np.ndarray, vectors: np.ndarray, model: str) -> bool:
        """Replace the vectors of a document's chunks `ids` (n,) with `vectors` (n, d) of `model`,
        and its `embedding_model`, in one transaction; False when the document is gone."""
        async with self.pool.transaction() as conn:
            found = await conn.fetchval(
                f"UPDATE {SCHEMA}.documents SET embedding_model = $2 WHERE id = $1 RETURNING id",
                document_id_,
                model,
            )
            if found is None:
                return False
            await conn.execute(
                f"UPDATE {SCHEMA}.chunks c SET vector = u.v FROM unnest($1::bigint[], $2::bytea[]) "
                "AS u(id, v) WHERE c.id = u.id AND c.document_id = $3",
                [int(i) for i in ids],
                [vector_bytes(v) for v in vectors],
                document_id_,
            )
        return True

    async def delete(self, document_id_: str) -> list[int] | None:
        """Delete a document and its chunks; returns their ids, or None when there is no such document."""
        async with self.pool.transaction() as conn:
            found = await conn.fetchval(f"SELECT 1 FROM {SCHEMA}.documents WHERE id = $1", document_id_)
            if found is None:
                return None
            rows = await conn.fetch(
                f"DELETE FROM {SCHEMA}.chunks WHERE document_id = $1 RETURNING id", document_id_
            )
            await conn.execute(f"DELETE FROM {SCHEMA}.documents WHERE id = $1", document_id_)
            await self._touch(conn, datetime.now(UTC))
        return [int(r["id"]) for r in rows]

    async def _touch(self, conn: Any, when: datetime) -> None:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.state (key, value) VALUES ('update_time', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            when,
        )

    # ---- reads ----

    async def update_time(self) -> datetime | None:
        value: datetime | None = await self.pool.fetchval(
            f"SELECT value FROM {SCHEMA}.state WHERE key = 'update_time'"
        )
        return value

    async def documents_with_chunks(self) -> list[tuple[Document, np.ndarray]]:
        """Every document's metadata with its chunk ids (the domain's filter table)."""
        rows = await self.pool.fetch(
            f"SELECT {_META}, coalesce(array_agg(c.id ORDER BY c.chunk_index) "
            "FILTER (WHERE c.id IS NOT NULL), '{}') AS chunk_ids "
            f"FROM {SCHEMA}.documents d LEFT JOIN {SCHEMA}.chunks c ON c.document_id = d.id GROUP BY d.id"
        )
        return [(_document(r), np.array(r["chunk_ids"], dtype=np.int64)) for r in rows]

    async def models(self) -> dict[str, int]:
        """{embedding model: documents whose vectors it made}."""
        rows = await self.pool.fetch(
            f"SELECT embedding_model, count(*) AS n FROM {SCHEMA}.documents GROUP BY embedding_model"
        )
        return {str(r["embedding_model"]): int(r["n"]) for r in rows}

    async def stale_documents(self, model: str) -> list[str]:
        """Ids of the documents whose vectors another model made, oldest first."""
        rows = await self.pool.fetch(
            f"SELECT id FROM {SCHEMA}.documents WHERE embedding_model <> $1 ORDER BY create_time, id", model
        )
        return [str(r["id"]) for r in rows]

    async def chunks_of(self, document_id_: str) -> tuple[str, np.ndarray, list[str]] | None:
        """(title, chunk ids, chunk texts) of a document in chunk order; None when it is gone."""
        title = await self.pool.fetchval(f"SELECT title FROM {SCHEMA}.documents WHERE id = $1", document_id_)
        if title is None:
            return None
        rows = await self.pool.fetch(
            f"SELECT id, text FROM {SCHEMA}.chunks WHERE document_id = $1 ORDER BY chunk_index", document_id_
        )
        ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        return str(title), ids, [str(r["text"]) for r in rows]

    async def chunk_ids(self) -> np.ndarray:
        rows = await self.pool.fetch(f"SELECT id FROM {SCHEMA}.chunks ORDER BY id")
        return np.array([int(r["id"]) for r in rows], dtype=np.int64)

    async def vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given chunks, or of every chunk; read in batches of VECTOR_BATCH."""
        out_ids: list[np.ndarray] = []
        out_vectors: list[np.ndarray] = []
        after = -1
        wanted = None if ids is None else [int(i) for i in ids]
        while True:
            if wanted is None:
                rows = await self.pool.fetch(
                    f"SELECT id, vector FROM {SCHEMA}.chunks WHERE id > $1 ORDER BY id LIMIT $2",
                    after,
                    VECTOR_BATCH,
                )
            else:
                batch, wanted = wanted[:VECTOR_BATCH], wanted[VECTOR_BATCH:]
                rows = (
                    await self.pool.fetch(
                        f"SELECT id, vector FROM {SCHEMA}.chunks WHERE id = ANY($1::bigint[]) ORDER BY id",
                        batch,
                    )
                    if batch
                    else []
                )
            if not rows:
                break
            out_ids.append(np.array([int(r["id"]) for r in rows], dtype=np.int64))
            out_vectors.append(np.stack([vector_of(r["vector"]) for r in rows]))
            after = int(rows[-1]["id"])
            if wanted is not None and not wanted:
                break
        if not out_ids:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.concatenate(out_ids), np.vstack(out_vectors).astype(np.float32)

    async def passages(self, ids: Sequence[int]) -> dict[int, Any]:
        """Chunk id -> its row (text, vector, chunk_index and the document's metadata)."""
        rows = await self.pool.fetch(
            f"SELECT c.id AS chunk_id, c.chunk_index, c.text AS chunk_text, c.vector, {_META} "
            f"FROM {SCHEMA}.chunks c JOIN {SCHEMA}.documents d ON d.id = c.document_id "
            "WHERE c.id = ANY($1::bigint[])",
            [int(i) for i in ids],
        )
        return {int(r["chunk_id"]): r for r in rows}

    async def text_search(self, query: str, filters: Filters, limit: int) -> list[int]:
        """Chunk ids matching any word of `query` (English stemming), best `ts_rank_cd` first."""
        rows = await self.pool.fetch(
            "WITH q AS (SELECT nullif(replace(plainto_tsquery('english', $1)::text, '&', '|'), '')"
            "::tsquery AS q) "
            f"SELECT c.id FROM q, {SCHEMA}.chunks c JOIN {SCHEMA}.documents d ON d.id = c.document_id "
            "WHERE q.q IS NOT NULL AND c.tsv @@ q.q "
            "AND ($2 = '' OR d.symbol = '' OR d.symbol = $2) "
            "AND (cardinality($3::text[]) = 0 OR d.tags && $3::text[]) "
            "AND ($4 = '' OR d.source = $4) "
            "AND ($5::timestamptz IS NULL OR d.publish_time >= $5) "
            "AND ($6::timestamptz IS NULL OR d.publish_time < $6) "
            "ORDER BY ts_rank_cd(c.tsv, q.q) DESC, c.id LIMIT $7",
            query,
            filters.symbol,
            list(filters.tags),
            filters.source,
            filters.start,
            filters.end,
            limit,
        )
        return [int(r["id"]) for r in rows]

    async def get(self, document_id_: str) -> Document | None:
        row = await self.pool.fetchrow(
            f"SELECT {_META}, d.text FROM {SCHEMA}.documents d WHERE id = $1", document_id_
        )
        return None if row is None else _document(row, text=row["text"])

    async def list(self, *, page_size: int, page_token: str, symbol: str, tag: str) -> DocumentPage:
        size = resolve_page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        filters = [symbol, tag]
        key = decode_token(page_token, _TOKEN_KIND, filters)
        after_time: datetime | None = None
        after_id = ""
        if key is not None:
            try:
                after_time, after_id = datetime.fromisoformat(str(key[0])), str(key[1])
            except (ValueError, IndexError):
                raise InvalidArgument(
                    "page_token", "not a token issued by this list", reason=BAD_TOKEN
                ) from None
        where = "($1 = '' OR d.symbol = $1) AND ($2 = '' OR $2 = ANY(d.tags))"
        rows = await self.pool.fetch(
            f"SELECT {_META} FROM {SCHEMA}.documents d WHERE {where} "
            "AND ($3::timestamptz IS NULL OR (d.create_time, d.id) < ($3::timestamptz, $4)) "
            "ORDER BY d.create_time DESC, d.id DESC LIMIT $5",
            symbol,
            tag,
            after_time,
            after_id,
            size + 1,
        )
        total = int(
            await self.pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.documents d WHERE {where}", symbol, tag)
        )
        docs = [_document(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = encode_token(_TOKEN_KIND, filters, [docs[-1].create_time.isoformat(), docs[-1].id])
        return DocumentPage(docs, token, total)

    async def sources_with_hash(self, prefix: str) -> dict[str, str]:
        """Source -> content hash of the documents whose source starts with `prefix`."""
        rows = await self.pool.fetch(
            f"SELECT source, content_hash FROM {SCHEMA}.documents WHERE starts_with(source, $1)", prefix
        )
        return {r["source"]: r["content_hash"] for r in rows}
