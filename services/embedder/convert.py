"""Protos <-> the embedder domain's plain values (services.embedder.service)."""

from __future__ import annotations

from kitrading.embedder.v1 import request_response_pb2 as rr
from kitrading.embedder.v1 import resources_pb2 as pb
from services.embedder.sentiment import SentimentResult
from services.embedder.series import SeriesEmbedding
from services.embedder.service import EmbedderInfo, Sentiments, SeriesRequest, TextEmbeddings
from services.runtime.protos import timestamp
from services.training.data_client import candles_frame, timeframe_name

LABELS: dict[str, pb.SentimentLabel.ValueType] = {
    "positive": pb.SENTIMENT_LABEL_POSITIVE,
    "negative": pb.SENTIMENT_LABEL_NEGATIVE,
    "neutral": pb.SENTIMENT_LABEL_NEUTRAL,
}
CATEGORIES: dict[str, pb.SentimentWordCategory.ValueType] = {
    "positive": pb.SENTIMENT_WORD_CATEGORY_POSITIVE,
    "negative": pb.SENTIMENT_WORD_CATEGORY_NEGATIVE,
    "uncertainty": pb.SENTIMENT_WORD_CATEGORY_UNCERTAINTY,
}
KINDS: dict[str, pb.EmbeddingKind.ValueType] = {
    "text": pb.EMBEDDING_KIND_TEXT,
    "sentiment": pb.EMBEDDING_KIND_SENTIMENT,
    "timeseries": pb.EMBEDDING_KIND_TIMESERIES,
}


def series_request_in(request: rr.EmbedTimeSeriesRequest) -> SeriesRequest:
    """The request's window: given candles, or a stored series (symbol, timeframe, lookback)."""
    if request.WhichOneof("source") == "window":
        return SeriesRequest(candles=candles_frame(request.window.candles))
    window = request.symbol_window
    return SeriesRequest(
        symbol=window.symbol, timeframe=timeframe_name(window.timeframe), lookback=window.lookback
    )


def embed_text_out(result: TextEmbeddings) -> rr.EmbedTextResponse:
    return rr.EmbedTextResponse(
        embeddings=[pb.Embedding(values=row.tolist()) for row in result.vectors],
        dimension=result.dimension,
        model=result.model,
    )


def sentiment_out(result: SentimentResult) -> pb.Sentiment:
    return pb.Sentiment(
        label=LABELS[result.label],
        score=result.score,
        positive=result.positive,
        negative=result.negative,
        neutral=result.neutral,
        uncertainty=result.uncertainty,
        polarity=result.polarity,
        words=[
            pb.SentimentWord(word=w.word, category=CATEGORIES[w.category], count=w.count)
            for w in result.words
        ],
    )


def sentiments_out(result: Sentiments) -> rr.AnalyzeSentimentResponse:
    return rr.AnalyzeSentimentResponse(
        sentiments=[sentiment_out(r) for r in result.results], model=result.model
    )


def series_out(result: SeriesEmbedding, model: str) -> rr.EmbedTimeSeriesResponse:
    return rr.EmbedTimeSeriesResponse(
        embedding=pb.Embedding(values=result.vector.tolist()),
        dimension=len(result.vector),
        model=model,
        bars=result.bars,
        window_start_time=timestamp(result.start_time),
        window_end_time=timestamp(result.end_time),
    )


def info_out(info: EmbedderInfo) -> rr.GetEmbedderInfoResponse:
    return rr.GetEmbedderInfoResponse(
        models=[
            pb.EmbeddingModel(
                kind=KINDS[m.kind],
                name=m.name,
                dimension=m.dimension,
                max_input_length=m.max_input_length,
                loaded=m.loaded,
            )
            for m in info.models
        ],
        device=info.device,
        gpu_available=info.gpu_available,
        device_reason=info.device_reason,
        max_texts=info.max_texts,
        max_text_length=info.max_text_length,
    )
