"""Gathering grounding sources: failures and timeouts become `unavailable`, never an error."""

from __future__ import annotations

import asyncio
import time

from services.llm.analyst import gather
from services.runtime.errors import Unavailable


async def test_gather_reports_failed_and_slow_sources() -> None:
    async def forecast() -> object:
        return {"points": 24}

    async def regime() -> object:
        raise Unavailable("regime service down")

    async def rag() -> object:
        await asyncio.sleep(10)
        return "never"

    async def patterns() -> object:
        return None  # no data is not a failure

    started = time.perf_counter()
    results, missing = await gather(
        {"forecast": forecast, "regime": regime, "rag": rag, "pattern": patterns}, per_source_seconds=0.2
    )
    assert time.perf_counter() - started < 1.0  # all at once, bounded by the per-source limit
    assert results == {"forecast": {"points": 24}, "pattern": None}
    assert missing == ("regime", "rag")
