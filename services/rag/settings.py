"""RAG service settings: one typed dataclass, read once from the environment.

`FIELDS` maps each attribute to its variable and range (docs/configuration.md); built in code or from
the environment, a value out of range raises `ConfigError` naming the variable. The database is
`services/runtime/database_settings.py`'s; the embedder is found like every other service
(`services.runtime.addresses`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.runtime.config import (
    HOME,
    BoolVar,
    ConfigError,
    FloatVar,
    IntVar,
    ListVar,
    TextVar,
    Var,
    check_fields,
    read_fields,
)
from services.runtime.database_settings import DatabaseSettings

#: The repository's docs/ (in the image: /app/docs): the mesh's own knowledge.
REPO_DOCS = Path(__file__).resolve().parents[2] / "docs"
#: What the knowledge base ingests at start when they exist (model cards, catalogue, performance).
KNOWLEDGE_FILES = (
    "models.md",
    "forecast.md",
    "regime.md",
    "patterns.md",
    "embedder.md",
    "llm.md",
    "rag.md",
)
#: Texts per EmbedText call the embedder's contract allows.
CONTRACT_MAX_TEXTS = 256


@dataclass(frozen=True, slots=True)
class RagSettings:
    """Configuration of the RAG domain; the index lives in `home/rag/` (the `rag-index` volume)."""

    home: Path = Path(".kitrading")
    #: Tokens per chunk and tokens shared by two neighbouring chunks.
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    #: A tokenizer.json; "" = the bundled all-MiniLM-L6-v2's when installed, "words" = a word count.
    tokenizer: str = ""
    #: Up to this many chunks search is exact (IndexFlatIP); above it an HNSW graph.
    exact_max_chunks: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    #: The index file is rewritten at most this often while it changes (the database is the truth).
    save_interval_s: float = 10.0
    #: Texts per EmbedText call, and how long one may take.
    embed_batch: int = 64
    embed_timeout_s: float = 120.0
    #: Hybrid retrieval: candidates taken from each retriever, and the RRF constant k.
    hybrid_candidates: int = 50
    rrf_k: int = 60
    #: The mesh's own documentation, ingested at start and re-read every `knowledge_refresh_s`.
    ingest_knowledge: bool = True
    knowledge_dir: str = ""
    knowledge_files: tuple[str, ...] = KNOWLEDGE_FILES
    knowledge_refresh_s: float = 600.0
    #: The forecast, regime and pattern model cards are polled this often over gRPC (0: never).
    model_cards_s: float = 60.0
    use_gpu: bool = True
    gpu_device: int = 0
    gpu_memory_fraction: float = 0.05
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)
        if self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(
                f"KITRADING_RAG_CHUNK_OVERLAP ({self.chunk_overlap}) must be below "
                f"KITRADING_RAG_CHUNK_TOKENS ({self.chunk_tokens})"
            )

    @property
    def data_dir(self) -> Path:
        return self.home / "rag"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.faiss"

    @property
    def knowledge_path(self) -> Path:
        return Path(self.knowledge_dir) if self.knowledge_dir else REPO_DOCS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RagSettings:
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        values["home"] = Path(values["home"])
        return replace(defaults, database=DatabaseSettings.from_env(env), **values)


_P = "KITRADING_RAG_"
#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "home": HOME,
    "chunk_tokens": IntVar(_P + "CHUNK_TOKENS", 16, 512),
    "chunk_overlap": IntVar(_P + "CHUNK_OVERLAP", 0, 256),
    "tokenizer": TextVar(_P + "TOKENIZER", "a tokenizer.json path, or words"),
    "exact_max_chunks": IntVar(_P + "EXACT_MAX_CHUNKS", 0, 100_000_000),
    "hnsw_m": IntVar(_P + "HNSW_M", 4, 128),
    "hnsw_ef_construction": IntVar(_P + "HNSW_EF_CONSTRUCTION", 8, 2048),
    "hnsw_ef_search": IntVar(_P + "HNSW_EF_SEARCH", 8, 4096),
    "save_interval_s": FloatVar(_P + "SAVE_INTERVAL_SECONDS", 0.1, 3600.0),
    "embed_batch": IntVar(_P + "EMBED_BATCH", 1, CONTRACT_MAX_TEXTS),
    "embed_timeout_s": FloatVar(_P + "EMBED_TIMEOUT_SECONDS", 0.0, 3600.0, above=True),
    "hybrid_candidates": IntVar(_P + "HYBRID_CANDIDATES", 1, 1000),
    "rrf_k": IntVar(_P + "RRF_K", 1, 1000),
    "ingest_knowledge": BoolVar(_P + "INGEST_KNOWLEDGE"),
    "knowledge_dir": TextVar(_P + "KNOWLEDGE_DIR", "a directory"),
    "knowledge_files": ListVar(_P + "KNOWLEDGE_FILES", what="a file name", pattern=r"[^/\s]+"),
    "knowledge_refresh_s": FloatVar(_P + "KNOWLEDGE_REFRESH_SECONDS", 0.0, 7 * 86_400.0),
    "model_cards_s": FloatVar(_P + "MODEL_CARDS_SECONDS", 0.0, 86_400.0),
    "use_gpu": BoolVar(_P + "USE_GPU"),
    "gpu_device": IntVar(_P + "GPU_DEVICE", 0, 255),
    "gpu_memory_fraction": FloatVar(_P + "GPU_MEMORY_FRACTION", 0.0, 1.0, above=True),
}
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
