"""EmbedderDomain: the embedder's rules behind one facade (limits, devices, models, batching).

Plain Python, no gRPC. Text embeddings go through one `MicroBatcher`, so concurrent calls share
encode calls; a call asks for unit vectors or not, and the batch is always encoded raw and scaled
per call afterwards. Models load in `start()` (torch and transformers are imported only then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from services.embedder import series
from services.embedder.batcher import MicroBatcher
from services.embedder.sentiment import SentimentModel, SentimentResult, load_sentiment
from services.embedder.settings import EmbedderSettings
from services.embedder.text import TextEncoder, normalize
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from services.runtime.gpu import DeviceChoice
from services.training.sources import CandleSource

log = logging.getLogger(__name__)

#: Violations named per call at most (a call of 256 empty texts gets the first few).
MAX_VIOLATIONS = 10


@dataclass(frozen=True, slots=True)
class TextEmbeddings:
    """One row per text, in order: `vectors` (n, dimension) float32."""

    vectors: np.ndarray
    dimension: int
    model: str


@dataclass(frozen=True, slots=True)
class Sentiments:
    results: list[SentimentResult]
    model: str


@dataclass(frozen=True, slots=True)
class SeriesRequest:
    """A window given as candles (`candles`), or the newest `lookback` bars of a stored series."""

    candles: pd.DataFrame | None = None
    symbol: str = ""
    timeframe: str | None = None  # None: the settings' series timeframe
    lookback: int = 0  # 0: the settings' series lookback


@dataclass(frozen=True, slots=True)
class ModelInfo:
    kind: str  # text | sentiment | timeseries
    name: str
    dimension: int
    max_input_length: int
    loaded: bool


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    models: list[ModelInfo]
    device: str
    gpu_available: bool
    device_reason: str
    max_texts: int
    max_text_length: int
    batch_size: int = 0
    batch_wait_ms: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def _select_device(settings: EmbedderSettings) -> tuple[DeviceChoice, bool]:
    import torch

    from services.runtime.gpu import select_torch_device

    choice = select_torch_device(
        use_gpu=settings.use_gpu, device=settings.gpu_device, memory_fraction=settings.gpu_memory_fraction
    )
    return choice, bool(torch.cuda.is_available())


class EmbedderDomain:
    """Text embeddings, sentiment and time-series embeddings with the service's limits."""

    def __init__(
        self,
        settings: EmbedderSettings,
        source: CandleSource | None = None,
        *,
        encoder: TextEncoder | None = None,
        sentiment: SentimentModel | None = None,
    ) -> None:
        """`source`: where stored candles come from (the Data service); `encoder` / `sentiment`:
        already loaded models to use instead of loading those of the settings (tests)."""
        self.settings = settings
        self.source = source
        self.encoder = encoder
        self.sentiment_model = sentiment
        self.device = DeviceChoice("cpu", reason="not started")
        self.gpu_available = False
        self._batcher: MicroBatcher[str, np.ndarray] | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        """Choose the device, load the models (seconds) and start the batcher."""
        self.device, self.gpu_available = await asyncio.to_thread(_select_device, self.settings)
        device = f"cuda:{self.device.device}" if self.device.is_gpu else "cpu"
        if self.encoder is None:
            encoder = TextEncoder(self.settings.model, device=device, batch_size=self.settings.batch_size)
            self.encoder = await asyncio.to_thread(encoder.load)
        if self.sentiment_model is None:
            self.sentiment_model = await asyncio.to_thread(
                load_sentiment, self.settings.sentiment, self.settings.finbert_dir, device=device
            )
        encode = self.encoder.encode
        self._batcher = MicroBatcher(
            lambda texts: list(encode(texts)),
            max_batch=self.settings.batch_size,
            max_wait_s=self.settings.batch_wait_ms / 1000.0,
        )
        log.info(
            "embedder ready on %s: text %s, sentiment %s",
            device,
            self.encoder.name,
            self.sentiment_model.name,
        )

    async def stop(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()

    @property
    def ready(self) -> bool:
        return self._batcher is not None

    # ---- texts ----

    def check_texts(self, texts: Sequence[str]) -> None:
        """1..max_texts texts of 1..max_text_chars characters; InvalidArgument names the field and index."""
        limit, length = self.settings.max_texts, self.settings.max_text_chars
        if not texts:
            raise InvalidArgument("texts", "give at least one text")
        if len(texts) > limit:
            raise InvalidArgument("texts", f"at most {limit} texts per call, got {len(texts)}")
        violations = []
        for index, text in enumerate(texts):
            if not text.strip():
                violations.append(FieldViolation(f"texts[{index}]", "a text must not be empty"))
            elif len(text) > length:
                violations.append(
                    FieldViolation(f"texts[{index}]", f"at most {length} characters, got {len(text)}")
                )
            if len(violations) == MAX_VIOLATIONS:
                break
        if violations:
            raise InvalidArgument.of(violations)

    def _ready_batcher(self) -> MicroBatcher[str, np.ndarray]:
        if self._batcher is None or self.encoder is None:
            raise Unavailable("the embedder is not started", reason="EMBEDDER_NOT_READY")
        return self._batcher

    async def embed_texts(self, texts: Sequence[str], *, normalize_vectors: bool = True) -> TextEmbeddings:
        """One vector per text, in order (unit length when `normalize_vectors`)."""
        self.check_texts(texts)
        batcher = self._ready_batcher()
        assert self.encoder is not None
        rows = await batcher.submit(list(texts))
        vectors = np.stack(rows).astype(np.float32)
        if normalize_vectors:
            vectors = normalize(vectors)
        return TextEmbeddings(vectors, self.encoder.dimension, self.encoder.name)

    async def sentiment(self, texts: Sequence[str]) -> Sentiments:
        """The financial sentiment of each text, in order."""
        self.check_texts(texts)
        model = self.sentiment_model
        if model is None:
            raise Unavailable("the embedder is not started", reason="EMBEDDER_NOT_READY")
        results = await asyncio.to_thread(model.analyze, list(texts))
        return Sentiments(results, model.name)

    # ---- time series ----

    async def _window(self, request: SeriesRequest) -> pd.DataFrame:
        if request.candles is not None:
            series.check_window(request.candles, "window.candles")
            return request.candles
        if not request.symbol:
            raise InvalidArgument("symbol_window.symbol", "name a symbol or give a window of candles")
        if self.source is None:
            raise FailedPrecondition("this embedder has no Data service to read candles from")
        timeframe = request.timeframe or self.settings.series_timeframe
        lookback = request.lookback or self.settings.series_lookback
        if not series.MIN_BARS <= lookback <= series.MAX_BARS:
            raise InvalidArgument(
                "symbol_window.lookback", f"{series.MIN_BARS}..{series.MAX_BARS} bars, got {lookback}"
            )
        frame = await self.source.fetch(request.symbol, timeframe, limit=lookback)
        if len(frame) == 0:
            raise NotFound(f"no {timeframe} candles of {request.symbol}", reason="CANDLES_NOT_FOUND")
        if len(frame) < series.MIN_BARS:
            raise FailedPrecondition(
                f"{request.symbol} has {len(frame)} {timeframe} candles, a window needs {series.MIN_BARS}",
                reason="NOT_ENOUGH_CANDLES",
            )
        series.check_window(frame, "symbol_window")
        return frame

    async def embed_series(
        self, request: SeriesRequest, *, normalize_vector: bool = False
    ) -> series.SeriesEmbedding:
        """The `returns-v1` embedding of the window (services.embedder.series)."""
        frame = await self._window(request)
        return series.embed_window(frame, normalize=normalize_vector)

    # ---- info ----

    def info(self) -> EmbedderInfo:
        """Models with their dimensions, the device and the limits."""
        encoder, sentiment = self.encoder, self.sentiment_model
        text = ModelInfo(
            "text",
            encoder.name if encoder else self.settings.model or "sentence-transformers/all-MiniLM-L6-v2",
            encoder.dimension if encoder and encoder.loaded else 0,
            encoder.max_tokens if encoder and encoder.loaded else 0,
            bool(encoder and encoder.loaded),
        )
        mood = ModelInfo(
            "sentiment",
            sentiment.name if sentiment else self.settings.sentiment,
            0,
            int(getattr(sentiment, "max_tokens", 0)),
            sentiment is not None,
        )
        shape = ModelInfo("timeseries", series.METHOD, series.DIMENSION, series.MAX_BARS, True)
        device = f"cuda:{self.device.device}" if self.device.is_gpu else "cpu"
        stats = self._batcher.stats if self._batcher else None
        return EmbedderInfo(
            models=[text, mood, shape],
            device=device,
            gpu_available=self.gpu_available,
            device_reason=self.device.reason,
            max_texts=self.settings.max_texts,
            max_text_length=self.settings.max_text_chars,
            batch_size=self.settings.batch_size,
            batch_wait_ms=self.settings.batch_wait_ms,
            stats={} if stats is None else {"batches": stats.batches, "texts": stats.items},
        )
