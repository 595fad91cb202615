"""Production engine: an Ollama server (`OLLAMA_BASE_URL`, model `OLLAMA_MODEL`) via the `ollama` client.

Streaming chat over Ollama's NDJSON `POST /api/chat`. Stopping early closes the HTTP response, and
Ollama stops generating when its client disconnects. GPU placement is Ollama's: `num_gpu` (layers
offloaded) and `main_gpu` are passed as request options, `keep_alive` controls how long the model
stays in GPU memory; a hard GPU memory budget belongs to the Ollama server/container (see docs/llm.md).
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
from services.llm.settings import OllamaSettings
from services.runtime.errors import DomainError, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

#: A status call re-checks the server at most this often.
REFRESH_SECONDS = 5.0


class OllamaEngine:
    name = "ollama"

    def __init__(self, settings: OllamaSettings) -> None:
        self.settings = settings
        self._client = ollama.AsyncClient(host=settings.base_url, timeout=settings.timeout_seconds)
        self._http = httpx.AsyncClient(base_url=settings.base_url, timeout=5.0)
        self._loaded = False
        self._detail = "not started"
        self._checked_at = 0.0

    async def start(self) -> None:
        await self.refresh(force=True)

    async def close(self) -> None:
        await self._http.aclose()
        await self._client.close()

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name, model=self.settings.model, loaded=self._loaded, detail=self._detail
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
        names = {m.model for m in listed.models if m.model}
        if _canonical(self.settings.model) in {_canonical(n) for n in names}:
            self._loaded = True
            self._detail = f"ollama {version} at {self.settings.base_url}"
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
        return opts

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
        try:
            parts = await self._client.chat(
                model=self.settings.model,
                messages=[dict(m) for m in messages],
                stream=True,
                options=self.options(max_tokens=max_tokens, temperature=temperature, stop=stop),
                keep_alive=keep_alive_value(self.settings.keep_alive),
            )
            async for part in parts:
                text = part.message.content or ""
                if part.done:
                    finish: FinishReason = "length" if part.done_reason == "length" else "stop"
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
