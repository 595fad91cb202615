-- The knowledge base: documents, their chunks with vectors (the FAISS index is rebuilt from these)
-- and full-text vectors for hybrid retrieval.
CREATE TABLE IF NOT EXISTS rag.documents (
    id              text        PRIMARY KEY,
    title           text        NOT NULL,
    text            text        NOT NULL,
    source          text        NOT NULL DEFAULT '',
    symbol          text        NOT NULL DEFAULT '',   -- '' = about no symbol
    tags            text[]      NOT NULL DEFAULT '{}',
    publish_time    timestamptz,
    create_time     timestamptz NOT NULL DEFAULT now(),
    content_hash    text        NOT NULL UNIQUE,       -- sha256 of the text: re-adding it is a no-op
    char_count      integer     NOT NULL,
    chunk_count     integer     NOT NULL,
    embedding_model text        NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_create_time_idx ON rag.documents (create_time DESC, id DESC);
CREATE INDEX IF NOT EXISTS documents_source_idx ON rag.documents (source);

CREATE TABLE IF NOT EXISTS rag.chunks (
    id          bigserial PRIMARY KEY,                 -- the vector's id in the FAISS index
    document_id text      NOT NULL REFERENCES rag.documents (id) ON DELETE CASCADE,
    chunk_index integer   NOT NULL,
    text        text      NOT NULL,
    vector      bytea     NOT NULL,                    -- float32 little-endian, unit length
    tsv         tsvector  NOT NULL,                    -- title (weight A) and text, English
    UNIQUE (document_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS chunks_tsv_idx ON rag.chunks USING gin (tsv);

-- One row per key: update_time (last add or delete).
CREATE TABLE IF NOT EXISTS rag.state (
    key   text        PRIMARY KEY,
    value timestamptz NOT NULL
);
