"""The one async interface every LLM engine implements, and the values it speaks in.

    engine = create_engine(LlmSettings.from_env())
    await engine.start()
    async with contextlib.aclosing(engine.stream(messages, max_tokens=256)) as tokens:
        async for token in tokens:
            print(token.text, end="")

Contract of `stream`:
- yields `Token`s in generation order as soon as each is produced; the last one carries
  `finish_reason` ("stop" or "length") and may have empty text;
- stopping early (break + aclose, task cancellation) stops generation at once: the engine checks
  between tokens and frees its resources before `aclose()` returns;
- raises `Unavailable` when the engine cannot serve (not loaded, server down) and
  `FailedPrecondition` when it is misconfigured (model missing).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

from services.llm.gpu_budget import GpuUsage

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


class ChatMessage(TypedDict):
    """One chat turn, in the shape both llama-cpp-python and Ollama accept."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Token:
    """One streamed piece of the answer (one model token, or a few when bytes join into a character)."""

    text: str
    index: int
    finish_reason: FinishReason | None = None
    #: Tokens of the prompt as the engine counted them; set on the last token when the engine knows.
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    engine: str
    model: str
    loaded: bool
    #: Why it is not loaded, or what it runs on ("llama.cpp 0.3.36, 1 thread"; "ollama 0.5.1").
    detail: str = ""
    #: The GPU memory budget and what the engine holds against it; None: no budget configured.
    gpu: GpuUsage | None = None


class Engine(Protocol):
    async def start(self) -> None:
        """Load the model / check the server. Never raises for an unreachable server: `info()` says so."""
        ...

    async def close(self) -> None: ...

    def info(self) -> EngineInfo:
        """The last known state, without I/O."""
        ...

    async def refresh(self) -> EngineInfo:
        """The state re-checked where that needs I/O (Ollama: the server and its models), cached briefly."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
    ) -> AsyncGenerator[Token, None]:
        """An async generator of tokens (see the module docstring for the contract)."""
        ...
