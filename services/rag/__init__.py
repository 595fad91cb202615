"""The RAG service: a knowledge base of documents, chunked and embedded, searched with FAISS.

- `settings.py`: `RagSettings` (KITRADING_RAG_*, the database's variables).
- `chunking.py`: token-aware chunks with overlap (the embedding model's word pieces).
- `embeddings.py`: chunk and query vectors from the Embedder service over gRPC.
- `index.py`: the FAISS index (exact / HNSW), its file and its atomic writes.
- `store.py` + `migrations/`: documents, chunks, vectors and tsvectors in PostgreSQL (the truth).
- `service.py`: `RagDomain` (add, query with filters and hybrid retrieval, delete, the mesh's docs).
- `convert.py`, `servicer.py`, `app.py`: the gRPC side. docs/rag.md explains it for newcomers.
"""
