"""The LLM analyst as a `ServiceApp` for the shared runtime.

`start()` loads the model (embedded: verifies the GGUF's hash and loads it; Ollama: checks the
server and its models, never failing for an unreachable server) and opens the channels to the
grounding sources. Ready (SERVING) while the engine is loaded; for Ollama the state is re-checked every
`ENGINE_CHECK_SECONDS`, so health follows the Ollama server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kitrading.llm.v1 import service_pb2_grpc
from services.llm.analyst import Analyst
from services.llm.engine import Engine
from services.llm.grounding import Grounder
from services.llm.grounding_settings import GroundingSettings
from services.llm.servicer import LlmServicer
from services.llm.settings import LlmSettings
from services.llm.sources import MeshSources
from services.runtime.app import Periodic, ServiceAppBase, load_settings

log = logging.getLogger(__name__)

ENGINE_CHECK_SECONDS = 5.0


class LlmApp(ServiceAppBase):
    def __init__(
        self,
        settings: LlmSettings | None = None,
        grounding: GroundingSettings | None = None,
        *,
        engine: Engine | None = None,
    ) -> None:
        super().__init__("llm", service_pb2_grpc.add_LlmServiceServicer_to_server)
        self.settings = load_settings(settings, LlmSettings.from_env)
        self.grounding = load_settings(grounding, GroundingSettings.from_env)
        self.analyst = Analyst(self.settings, engine)
        self.grounder = Grounder(self.grounding, MeshSources(self.grounding))
        self.servicer = LlmServicer(self.analyst, self.grounder)

    async def on_start(self) -> None:
        await self.grounder.start()
        await self.analyst.start()
        info = self.analyst.engine.info()
        log.info("engine %s, model %s, loaded %s: %s", info.engine, info.model, info.loaded, info.detail)

    def periodic(self) -> Sequence[Periodic]:
        if self.settings.engine != "ollama":
            return ()
        return [Periodic("engine-check", ENGINE_CHECK_SECONDS, self.analyst.engine.refresh)]

    async def on_stop(self) -> None:
        await self.grounder.close()
        await self.analyst.close()

    def healthy(self) -> bool:
        return self.analyst.engine.info().loaded
