"""The LLM analyst as a `ServiceApp` for the shared runtime.

`start()` loads the model (embedded: verifies the GGUF's hash and loads it; Ollama: checks the
server and its models, never failing for an unreachable server) and opens the channels to the
grounding sources. Ready (SERVING) while the engine is loaded; for Ollama the state is re-checked every
`ENGINE_CHECK_SECONDS`, so health follows the Ollama server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc

from kitrading.llm.v1 import service_pb2_grpc
from services.llm.analyst import Analyst
from services.llm.engine import Engine
from services.llm.grounding import Grounder
from services.llm.grounding_settings import GroundingSettings
from services.llm.servicer import LlmServicer
from services.llm.settings import LlmSettings
from services.llm.sources import MeshSources
from services.runtime.interceptor import Observer

log = logging.getLogger(__name__)

ENGINE_CHECK_SECONDS = 5.0


class LlmApp:
    def __init__(
        self,
        settings: LlmSettings | None = None,
        grounding: GroundingSettings | None = None,
        *,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings or LlmSettings.from_env()
        self.grounding = grounding or GroundingSettings.from_env()
        self.analyst = Analyst(self.settings, engine)
        self.grounder = Grounder(self.grounding, MeshSources(self.grounding))
        self.servicer = LlmServicer(self.analyst, self.grounder)
        self._watcher: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_LlmServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.grounder.start()
        await self.analyst.start()
        info = self.analyst.engine.info()
        log.info("engine %s, model %s, loaded %s: %s", info.engine, info.model, info.loaded, info.detail)
        if self.settings.engine == "ollama":
            self._watcher = asyncio.create_task(self._watch_engine(), name="llm-engine-check")

    async def _watch_engine(self) -> None:
        while True:
            await asyncio.sleep(ENGINE_CHECK_SECONDS)
            try:
                await self.analyst.engine.refresh()
            except Exception:  # a check must never stop the service
                log.exception("engine check failed")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.grounder.close()
        await self.analyst.close()

    def is_ready(self) -> bool:
        return self.analyst.engine.info().loaded

    @property
    def observers(self) -> Sequence[Observer]:
        return []
