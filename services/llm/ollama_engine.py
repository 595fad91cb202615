"""Production engine: an Ollama server (`OLLAMA_BASE_URL`, model `OLLAMA_MODEL`) via the `ollama` client.

Streaming chat over Ollama's NDJSON `POST /api/chat`. Stopping early closes the HTTP response, and
Ollama stops generating when its client disconnects. `keep_alive` controls how long the model stays
in GPU memory; `main_gpu` and `num_gpu` (layers offloaded) are request options.

GPU memory budget (`KITRADING_LLM_GPU_MEMORY_FRACTION`): Ollama has no memory fraction, so the
budget becomes `num_gpu`, planned from the model's shape (`/api/show` `model_info`, `/api/tags`
size) and checked against what Ollama holds after each answer (`/api/ps` `size_vram`); over budget,
the next request asks for fewer layers and Ollama reloads the model with them (gpu_budget.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import httpx
import ollama

from services.llm.engine import ChatMessage, EngineInfo, FinishReason, Token
from services.llm.gpu_budget import GpuBudget, GpuSettings, ModelShape, usage_of
from services.llm.settings import OllamaSettings
from services.runtime.errors import DomainError, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

#: A status call re-checks the server at most this often.
REFRESH_SECONDS = 5.0
#: Context tokens assumed and asked for (`num_ctx`) under a GPU budget when KITRADING_LLM_CONTEXT is unset.
BUDGET_CONTEXT_TOKENS = 4096


class OllamaEngine:
    name = "ollama"

    def __init__(self, settings: OllamaSettings, gpu: GpuSettings | None = None) -> None:
        self.settings = settings
        #: None: no budget, Ollama places the layers (or KITRADING_LLM_NUM_GPU fixes them).
        self.gpu_budget = GpuBudget.resolve(gpu) if gpu is not None else None
        self._model_bytes: int | None = None
        #: The model size the layers were last planned for: the shape is re-read only when it changes.
        self._planned_for: int | None = None
        #: `num_gpu` of the last request (the layers Ollama loaded the model with, when it is loaded).
        self._sent_layers: int | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._client = ollama.AsyncClient(host=settings.base_url, timeout=settings.timeout_seconds)
        self._http = httpx.AsyncClient(base_url=settings.base_url, timeout=5.0)
        self._loaded = False
        self._detail = "not started"
        self._checked_at = 0.0

    async def start(self) -> None:
        await self.refresh(force=True)

    async def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        await self._http.aclose()
        await self._client.close()

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name,
            model=self.settings.model,
            loaded=self._loaded,
            detail=self._detail,
            gpu=usage_of(self.gpu_budget),
        )

    async def refresh(self, *, force: bool = False) -> EngineInfo:
        """Ask the server for its version and pulled models (cached for REFRESH_SECONDS)."""
        if not force and time.monotonic() - self._checked_at < REFRESH_SECONDS:
            return self.info()
        self._checked_at = time.monotonic()
        try:
            response = await self._http.get("/api/version")
            response.raise_for_status()
            version = str(response.json().get("version", "?"))
            listed = await self._client.list()
        except (httpx.HTTPError, ollama.ResponseError, ConnectionError, OSError, ValueError) as exc:
            self._loaded = False
            self._detail = f"Ollama at {self.settings.base_url} is unreachable ({type(exc).__name__})"
            log.warning("%s: %s", self._detail, exc)
            return self.info()
        wanted = _canonical(self.settings.model)
        sizes = {_canonical(m.model): int(m.size or 0) for m in listed.models if m.model}
        if wanted in sizes:
            self._loaded = True
            self._detail = f"ollama {version} at {self.settings.base_url}"
            self._model_bytes = sizes[wanted] or None
            if self.gpu_budget is not None:
                if self._planned_for != self._model_bytes:  # first time, or the model was re-pulled
                    await self._plan_layers()
                await self._check_gpu()
        else:
            self._loaded = False
            self._detail = (
                f"ollama {version} at {self.settings.base_url} has no model {self.settings.model!r}; "
                f"run `ollama pull {self.settings.model}`"
            )
        return self.info()

    def options(self, *, max_tokens: int, temperature: float, stop: Sequence[str]) -> dict[str, Any]:
        """Ollama request options (`extra_options` first, so the explicit settings win)."""
        s = self.settings
        opts: dict[str, Any] = dict(s.extra_options)
        opts.update(num_predict=max_tokens, temperature=temperature)
        if stop:
            opts["stop"] = list(stop)
        if s.num_gpu is not None:
            opts["num_gpu"] = s.num_gpu
        if s.main_gpu is not None:
            opts["main_gpu"] = s.main_gpu
        if s.context_tokens is not None:
            opts["num_ctx"] = s.context_tokens
        if self.gpu_budget is not None:
            # The budget's plan; 0 layers (all on the CPU) until the model's shape has been read.
            opts["num_gpu"] = self.gpu_budget.layers or 0
            opts["num_ctx"] = self.context_tokens
        return opts

    @property
    def context_tokens(self) -> int:
        return self.settings.context_tokens or BUDGET_CONTEXT_TOKENS

    async def _plan_layers(self) -> None:
        """Read the model's shape (`/api/show`) and turn the budget into a layer count."""
        budget = self.gpu_budget
        assert budget is not None
        try:
            shown = await self._client.show(self.settings.model)
            shape = ModelShape.from_metadata(dict(shown.modelinfo or {}), self._model_bytes or 0)
        except (httpx.HTTPError, ollama.ResponseError, ConnectionError, OSError, ValueError) as exc:
            budget.detail = f"model shape unreadable ({exc}); all layers on the CPU until it is read"
            log.warning("GPU budget: %s", budget.detail)
            return
        before = budget.layers
        layers = budget.plan(shape, self.context_tokens)
        self._planned_for = self._model_bytes
        if layers != before:
            log.info(
                "GPU budget %.2f GiB (%.0f%% of %.2f GiB): %s",
                budget.budget_bytes / (1 << 30),
                budget.fraction * 100,
                budget.total_bytes / (1 << 30),
                budget.detail,
            )

    async def _check_gpu(self) -> None:
        """What Ollama holds for the model now (`/api/ps`), checked against the budget."""
        budget = self.gpu_budget
        if budget is None:
            return
        try:
            running = await self._client.ps()
        except (httpx.HTTPError, ollama.ResponseError, ConnectionError, OSError, ValueError) as exc:
            log.warning("GPU budget: /api/ps failed: %s", exc)
            return
        wanted = _canonical(self.settings.model)
        held = [
            int(m.size_vram or 0) for m in running.models if _canonical(m.model or m.name or "") == wanted
        ]
        budget.observe(sum(held), loaded_layers=self._sent_layers if held else None)

    def _check_soon(self) -> None:
        """Check the GPU after an answer, off the answer's path."""
        if self.gpu_budget is None:
            return
        task = asyncio.create_task(self._check_gpu(), name="llm-gpu-check")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
    ) -> AsyncGenerator[Token, None]:
        parts: AsyncIterator[ollama.ChatResponse] | None = None
        index = 0
        if self.gpu_budget is not None and self.gpu_budget.layers is None and self._model_bytes:
            await self._plan_layers()
        options = self.options(max_tokens=max_tokens, temperature=temperature, stop=stop)
        try:
            if self.gpu_budget is not None:
                self._sent_layers = options["num_gpu"]
            parts = await self._client.chat(
                model=self.settings.model,
                messages=[dict(m) for m in messages],
                stream=True,
                options=options,
                keep_alive=keep_alive_value(self.settings.keep_alive),
            )
            async for part in parts:
                text = part.message.content or ""
                if part.done:
                    finish: FinishReason = "length" if part.done_reason == "length" else "stop"
                    self._check_soon()
                    yield Token(
                        text=text, index=index, finish_reason=finish, prompt_tokens=part.prompt_eval_count
                    )
                    return
                if text:
                    yield Token(text=text, index=index)
                    index += 1
            # The stream ended without a done chunk: the server went away mid-answer.
            raise Unavailable("Ollama closed the stream before the answer was done", reason="LLM_STREAM_CUT")
        except ollama.ResponseError as exc:
            raise self._map_response_error(exc) from None
        except (httpx.HTTPError, ConnectionError, OSError, ValueError) as exc:
            self._loaded = False
            raise Unavailable(
                f"Ollama at {self.settings.base_url} is unreachable ({type(exc).__name__})",
                reason="LLM_ENGINE_UNAVAILABLE",
            ) from None
        finally:
            closer = getattr(parts, "aclose", None)
            if closer is not None:
                # Closing the response tells Ollama to stop generating; never let it hang the caller.
                await asyncio.shield(closer())

    def _map_response_error(self, exc: ollama.ResponseError) -> DomainError:
        if exc.status_code == 404:
            self._loaded = False
            return FailedPrecondition(
                f"Ollama has no model {self.settings.model!r}; run `ollama pull {self.settings.model}`",
                reason="LLM_MODEL_MISSING",
            )
        return Unavailable(
            f"Ollama refused the request ({exc.status_code}): {exc.error}", reason="LLM_ENGINE_ERROR"
        )


def keep_alive_value(raw: str) -> str | float:
    """Ollama reads a JSON number as seconds and a string as a Go duration ("5m"); "-1" means forever."""
    try:
        return float(raw)
    except ValueError:
        return raw


def _canonical(model: str) -> str:
    return model if ":" in model else f"{model}:latest"
