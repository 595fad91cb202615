from __future__ import annotations

from pathlib import Path

import pytest

from services.llm.analyst import create_engine
from services.llm.embedded import LlamaCppEngine
from services.llm.grounding_settings import GroundingSettings
from services.llm.ollama_engine import OllamaEngine, keep_alive_value
from services.llm.settings import LlmSettings
from services.runtime.config import ConfigError


def test_defaults_are_embedded_with_one_slot() -> None:
    s = LlmSettings.from_env({})
    assert s.engine == "embedded" and s.ollama is None
    assert s.concurrency == 1 and s.max_queued == 8
    assert s.embedded.threads == 1 and s.embedded.model_path is None
    assert isinstance(create_engine(s), LlamaCppEngine)


async def test_ollama_when_base_url_is_set() -> None:
    s = LlmSettings.from_env(
        {
            "OLLAMA_BASE_URL": "http://gpu-box:11434/",
            "KITRADING_LLM_KEEP_ALIVE": "-1",
            "KITRADING_LLM_NUM_GPU": "99",
            "KITRADING_LLM_MAIN_GPU": "0",
            "KITRADING_LLM_CONTEXT": "8192",
            "KITRADING_LLM_OLLAMA_OPTIONS": '{"num_thread": 8, "use_mmap": false}',
            "KITRADING_LLM_MAX_QUEUED": "3",
        }
    )
    assert s.engine == "ollama" and s.ollama is not None
    assert s.ollama.base_url == "http://gpu-box:11434"
    assert s.ollama.model == "llama3.1:70b"
    assert s.concurrency == 2 and s.max_queued == 3
    engine = create_engine(s)
    assert isinstance(engine, OllamaEngine)
    assert engine.options(max_tokens=10, temperature=0.1, stop=["\n\n"]) == {
        "num_thread": 8,
        "use_mmap": False,
        "num_predict": 10,
        "temperature": 0.1,
        "stop": ["\n\n"],
        "num_gpu": 99,
        "main_gpu": 0,
        "num_ctx": 8192,
    }
    assert keep_alive_value(s.ollama.keep_alive) == -1.0 and keep_alive_value("30m") == "30m"
    await engine.close()


def test_custom_model_path_and_hash() -> None:
    s = LlmSettings.from_env(
        {
            "KITRADING_LLM_MODEL_PATH": "/models/x.gguf",
            "KITRADING_LLM_MODEL_SHA256": "AB" * 32,
            "KITRADING_LLM_THREADS": "4",
            "KITRADING_LLM_MAX_CONCURRENT": "2",
        }
    )
    assert s.embedded.model_path == Path("/models/x.gguf")
    assert s.embedded.model_sha256 == "ab" * 32 and s.embedded.threads == 4 and s.concurrency == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KITRADING_LLM_MODEL_SHA256", "abc"),
        ("KITRADING_LLM_THREADS", "0"),
        ("KITRADING_LLM_MAX_QUEUED", "many"),
        ("KITRADING_LLM_TEMPERATURE", "5"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        LlmSettings.from_env({name: value})


def test_bad_ollama_options() -> None:
    with pytest.raises(ConfigError, match="KITRADING_LLM_OLLAMA_OPTIONS"):
        LlmSettings.from_env({"OLLAMA_BASE_URL": "http://x:1", "KITRADING_LLM_OLLAMA_OPTIONS": "[1]"})


def test_grounding_defaults_and_values() -> None:
    s = GroundingSettings.from_env({})
    assert (s.timeout_seconds, s.deadline_share, s.forecast_horizon, s.candle_lookback, s.passages) == (
        3.0,
        0.5,
        24,
        100,
        5,
    )
    assert s.target("data") == "127.0.0.1:3001" and s.target("rag") == "127.0.0.1:3008"
    s = GroundingSettings.from_env(
        {
            "KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS": "0.5",
            "KITRADING_LLM_FORECAST_HORIZON": "720",
            "KITRADING_LLM_CANDLE_LOOKBACK": "2",
            "KITRADING_LLM_PASSAGES": "50",
            "KITRADING_SERVICE_HOST": "mesh",
            "KITRADING_DATA_HOST": "data",
            "KITRADING_FORECAST_PORT": "4002",
        }
    )
    assert (s.timeout_seconds, s.forecast_horizon, s.candle_lookback, s.passages) == (0.5, 720, 2, 50)
    assert s.target("data") == "data:3001" and s.target("forecast") == "mesh:4002"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", "0.01"),
        ("KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", "601"),
        ("KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", "soon"),
        ("KITRADING_LLM_FORECAST_HORIZON", "0"),
        ("KITRADING_LLM_FORECAST_HORIZON", "721"),  # more than the forecast contract accepts
        ("KITRADING_LLM_CANDLE_LOOKBACK", "1"),
        ("KITRADING_LLM_CANDLE_LOOKBACK", "10001"),
        ("KITRADING_LLM_PASSAGES", "0"),
        ("KITRADING_LLM_PASSAGES", "51"),
        ("KITRADING_DATA_PORT", "0"),
        ("KITRADING_RAG_PORT", "65536"),
    ],
)
def test_bad_grounding_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        GroundingSettings.from_env({name: value})
