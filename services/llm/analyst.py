"""The analyst: engine + queue limit + speed meter + grounded prompts, behind three calls.

    analyst = Analyst(LlmSettings.from_env())
    await analyst.start()
    grounding = Grounding(symbol="EURUSD", candles=..., forecast=..., unavailable=("rag",))
    async with contextlib.aclosing(analyst.analyze("Should I buy or sell?", grounding)) as tokens:
        async for token in tokens: ...
    status = await analyst.status()     # engine, model, loaded, queue depth, recent tokens/s

`analyze` validates at once (InvalidArgument for the question or symbol, before any queueing);
the returned stream waits for a generation slot on its first iteration, and raises
ResourceExhausted right there when the queue is full. The grounding comes from grounding.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from services.llm import metrics
from services.llm.embedded import LlamaCppEngine
from services.llm.engine import ChatMessage, Engine, Token
from services.llm.gpu_budget import GpuUsage
from services.llm.limiter import AnswerTimer, GenerationLimiter, SpeedMeter
from services.llm.ollama_engine import OllamaEngine
from services.llm.prompt import Grounding, PromptLimits, build_messages
from services.llm.settings import EngineKind, LlmSettings

log = logging.getLogger(__name__)


def _embedded(settings: LlmSettings) -> Engine:
    return LlamaCppEngine(settings.embedded, settings.gpu)


def _ollama(settings: LlmSettings) -> Engine:
    assert settings.ollama is not None
    return OllamaEngine(settings.ollama, settings.gpu)


ENGINES: dict[EngineKind, Callable[[LlmSettings], Engine]] = {"embedded": _embedded, "ollama": _ollama}


def create_engine(settings: LlmSettings) -> Engine:
    """Ollama when OLLAMA_BASE_URL is set, the embedded llama.cpp engine otherwise."""
    return ENGINES[settings.engine](settings)


@dataclass(frozen=True, slots=True)
class LlmStatus:
    engine: str
    model: str
    loaded: bool
    detail: str
    queue_depth: int
    active: int
    max_concurrent: int
    max_queued: int
    #: Decode speed over the recent answers (0.0 before the first answer).
    recent_tokens_per_second: float
    #: Median seconds from getting a slot to the first token over the recent answers.
    recent_first_token_seconds: float
    answers_total: int
    #: The GPU memory budget and what the engine holds against it; None: no budget configured.
    gpu: GpuUsage | None = None


class Analyst:
    def __init__(self, settings: LlmSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else create_engine(settings)
        self.limiter = GenerationLimiter(settings.concurrency, settings.max_queued)
        self.meter = SpeedMeter(settings.recent_window)
        metrics.track(self)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def status(self) -> LlmStatus:
        info = await self.engine.refresh()
        return LlmStatus(
            engine=info.engine,
            model=info.model,
            loaded=info.loaded,
            detail=info.detail,
            queue_depth=self.limiter.queue_depth,
            active=self.limiter.active,
            max_concurrent=self.limiter.max_concurrent,
            max_queued=self.limiter.max_queued,
            recent_tokens_per_second=self.meter.tokens_per_second(),
            recent_first_token_seconds=self.meter.first_token_seconds(),
            answers_total=self.meter.answers_total,
            gpu=info.gpu,
        )

    def analyze(
        self,
        question: str,
        grounding: Grounding,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        limits: PromptLimits | None = None,
    ) -> AsyncGenerator[Token, None]:
        """Validate and build the grounded prompt now; stream the answer (see the module docstring)."""
        messages = build_messages(question, grounding, limits=limits)
        return self.generate(messages, max_tokens=max_tokens, temperature=temperature)

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
    ) -> AsyncGenerator[Token, None]:
        """Stream from the engine within the queue/concurrency limit, recording the answer's speed."""
        async with self.limiter.slot():
            timer = AnswerTimer()
            reason = "cancelled"
            try:
                stream = self.engine.stream(
                    messages,
                    max_tokens=max_tokens or self.settings.max_tokens,
                    temperature=self.settings.temperature if temperature is None else temperature,
                    stop=stop,
                )
                async with aclosing(stream) as tokens:
                    async for token in tokens:
                        if token.text:
                            timer.token()
                            metrics.TOKENS.inc()
                        if token.finish_reason:
                            reason = token.finish_reason
                        yield token
                if reason == "cancelled":
                    reason = "stop"
            except Exception:
                reason = "error"
                raise
            finally:
                metrics.ANSWERS.labels(reason).inc()
                if timer.tokens:
                    stats = timer.finish(reason)
                    self.meter.record(stats)
                    metrics.FIRST_TOKEN.observe(stats.first_token_seconds)
