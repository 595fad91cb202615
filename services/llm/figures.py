"""What the grounding sources answer, as plain dataclasses (the fan-out's vocabulary; no protobuf).

Each class mirrors the contract message of the same name, field for field, so `sources.py` can fill
it and `convert.context_of` can send it back unchanged. Enum values are their names without the
enum's prefix (`H1`, `BULL_TREND`, `BULLISH`, `NHITS`), "" when unset; times are aware UTC datetimes,
None when unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Candle:
    time: datetime | None
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """Data's summary of the symbol's last bars (`GetSymbolStats`)."""

    symbol: str
    timeframe: str
    last_candle: Candle | None
    bars: int
    #: Close-to-close change over the window, in percent.
    change_percent: float
    #: Standard deviation of bar log returns, a fraction.
    volatility: float
    high: float
    low: float
    mean_close: float = 0.0


@dataclass(frozen=True, slots=True)
class PredictionInterval:
    level: int
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    time: datetime | None
    value: float
    intervals: tuple[PredictionInterval, ...] = ()


@dataclass(frozen=True, slots=True)
class Forecast:
    symbol: str
    timeframe: str
    horizon: int
    points: tuple[ForecastPoint, ...]
    method: str = ""
    model_version: str = ""
    last_candle_time: datetime | None = None
    cached: bool = False
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class RegimeProbability:
    regime: str
    probability: float


@dataclass(frozen=True, slots=True)
class RegimeSegment:
    regime: str
    start_time: datetime | None
    end_time: datetime | None
    bars: int
    mean_probability: float


@dataclass(frozen=True, slots=True)
class RegimeState:
    symbol: str
    timeframe: str
    regime: str
    confidence: float
    probabilities: tuple[RegimeProbability, ...] = ()
    since_time: datetime | None = None
    history: tuple[RegimeSegment, ...] = ()
    model_version: str = ""
    last_candle_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class SignalScore:
    """The regime service's score of a trade: P(target before stop), its setting and drivers."""

    symbol: str
    side: str  # "buy" or "sell"
    probability: float
    expected_return: float
    regime: str
    edge: bool
    model_version: str = ""
    horizon: int = 0
    #: (feature, contribution in log-odds), largest first; the top few only.
    features: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class DetectedPattern:
    pattern_type: str
    confidence: float
    start_time: datetime | None = None
    end_time: datetime | None = None
    direction: str = ""


@dataclass(frozen=True, slots=True)
class PatternDetection:
    symbol: str
    timeframe: str
    patterns: tuple[DetectedPattern, ...]
    model_version: str = ""
    bars: int = 0
    window_start_time: datetime | None = None
    window_end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Passage:
    """A knowledge-base search hit (untrusted text)."""

    document_id: str
    chunk_index: int
    title: str
    text: str
    score: float
    source: str = ""
    symbol: str = ""
    tags: tuple[str, ...] = ()
    publish_time: datetime | None = None
