"""Text embeddings with sentence-transformers, from local files only (nothing is downloaded).

The offline switches of the Hugging Face libraries are set before they are first imported, so a
model name resolves only from the local cache; a missing model is a `ConfigError` at start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from services.embedder.settings import bundled_model_path
from services.runtime.config import ConfigError

log = logging.getLogger(__name__)

#: The bundled default's published name (the weights are those of the Hub model of that name).
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def offline() -> None:
    """Forbid Hugging Face downloads in this process (call before importing transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in the service's log


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero). Shape (n, d) -> (n, d), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class TextEncoder:
    """A sentence-transformers model: `encode(texts) -> (n, dimension)` float32, unnormalised."""

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 64) -> None:
        """`model`: a local directory or a name in the local Hugging Face cache ("": bundled)."""
        self.model = model or bundled_model_path()
        self.device = device
        self.batch_size = batch_size
        self.name = BUNDLED_NAME if self.model == bundled_model_path() else self.model
        self._st: Any = None
        self._dimension: int | None = None

    def load(self) -> TextEncoder:
        """Load the model (blocking: seconds); a model that cannot be found raises `ConfigError`."""
        if self._st is not None:
            return self
        offline()
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        local = Path(self.model).expanduser()
        source = str(local) if local.exists() else self.model
        try:
            self._st = SentenceTransformer(source, device=self.device, local_files_only=True)
        except Exception as exc:
            raise ConfigError(
                f"KITRADING_EMBEDDER_MODEL {self.model!r} is neither a model directory nor a model in "
                f"the local Hugging Face cache ({type(exc).__name__}: {exc})"
            ) from None
        self._st.eval()
        log.info("text model %s loaded on %s (%d dimensions)", self.name, self.device, self.dimension)
        return self

    @property
    def loaded(self) -> bool:
        return self._st is not None

    @property
    def st(self) -> Any:
        if self._st is None:
            raise RuntimeError("TextEncoder.load() was not called")
        return self._st

    @property
    def dimension(self) -> int:
        if self._dimension is None:  # asked on every request: sentence-transformers walks its modules
            self._dimension = int(self.st.get_embedding_dimension())
        return self._dimension

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens; longer texts are truncated by the model."""
        return int(self.st.max_seq_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, not normalised (blocking: run it in a thread)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.st.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
