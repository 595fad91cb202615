"""EmbedderSettings: defaults, the environment, ranges and the bundled model's path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.embedder.settings import VARIABLES, EmbedderSettings, bundled_model_path
from services.runtime.config import ConfigError


def test_defaults_use_the_bundled_minilm_weights() -> None:
    settings = EmbedderSettings.from_env({})
    assert settings.max_texts == 256 and settings.sentiment == "lexicon"
    path = Path(settings.model_path())
    assert path == Path(bundled_model_path())
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()


def test_environment_is_read() -> None:
    settings = EmbedderSettings.from_env(
        {
            "KITRADING_EMBEDDER_MODEL": "/models/e5",
            "KITRADING_EMBEDDER_MAX_TEXTS": "32",
            "KITRADING_EMBEDDER_BATCH_WAIT_MS": "0.5",
            "KITRADING_EMBEDDER_SENTIMENT": "FinBERT",
            "KITRADING_EMBEDDER_FINBERT_DIR": "/models/finbert",
            "KITRADING_EMBEDDER_USE_GPU": "false",
            "KITRADING_EMBEDDER_SERIES_TIMEFRAME": "d1",
        }
    )
    assert settings.model_path() == "/models/e5"
    assert (settings.max_texts, settings.batch_wait_ms) == (32, 0.5)
    assert (settings.sentiment, settings.finbert_dir) == ("finbert", "/models/finbert")
    assert settings.use_gpu is False and settings.series_timeframe == "D1"
    assert all(var.name.startswith("KITRADING_EMBEDDER_") for var in VARIABLES)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KITRADING_EMBEDDER_MAX_TEXTS", "257"),
        ("KITRADING_EMBEDDER_MAX_TEXT_CHARS", "9000"),
        ("KITRADING_EMBEDDER_BATCH_SIZE", "0"),
        ("KITRADING_EMBEDDER_GPU_MEMORY_FRACTION", "0"),
        ("KITRADING_EMBEDDER_SENTIMENT", "vader"),
    ],
)
def test_out_of_range_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        EmbedderSettings.from_env({variable: value})


def test_built_in_code_obeys_the_ranges() -> None:
    with pytest.raises(ConfigError, match="attribute batch_wait_ms"):
        replace(EmbedderSettings(), batch_wait_ms=-1.0)
