"""Prometheus metrics of the LLM analyst: tokens, answers, the generation queue, the GPU budget.

- `kitrading_llm_tokens_total`: answer tokens generated; `rate(...[1m])` is the service's tokens/s;
- `kitrading_llm_answers_total{reason}`: answers ended (stop, length, cancelled, error);
- `kitrading_llm_first_token_seconds`: from getting a generation slot to the first token;
- read from the live analyst at scrape time: `kitrading_llm_queue_depth` (requests waiting for a
  slot), `kitrading_llm_queue_capacity` (waiting beyond which a request is refused),
  `kitrading_llm_generations_active`, `kitrading_llm_decode_tokens_per_second` (decode speed of the
  recent answers, what GetLlmStatus reports);
- the engine's GPU budget and what it holds against it, as the runtime's
  `kitrading_gpu_memory_{used,budget}_bytes{source="ollama"|"llama.cpp"}` (services.runtime.gpu).

`track(analyst)` makes an analyst the one reported (a process runs one; the latest wins).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.runtime import gpu
from services.runtime.metrics import REGISTRY

if TYPE_CHECKING:
    from services.llm.analyst import Analyst

TOKENS = Counter(
    "kitrading_llm_tokens_total",
    "Answer tokens generated (rate() of it is the service's tokens per second).",
    registry=REGISTRY,
)
ANSWERS = Counter(
    "kitrading_llm_answers_total",
    "Answers ended, by how: stop, length, cancelled, error.",
    ["reason"],
    registry=REGISTRY,
)
FIRST_TOKEN = Histogram(
    "kitrading_llm_first_token_seconds",
    "Seconds from getting a generation slot to the first token of the answer.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
    registry=REGISTRY,
)

_CURRENT: weakref.ReferenceType[Analyst] | None = None


def _analyst() -> Analyst | None:
    return _CURRENT() if _CURRENT is not None else None


def track(analyst: Analyst) -> None:
    """Report `analyst`'s queue, speed and GPU budget from now on."""
    global _CURRENT
    _CURRENT = weakref.ref(analyst)
    gpu.add_memory_source("llm", _gpu_memory)


def _gpu_memory() -> list[gpu.GpuMemoryUse]:
    analyst = _analyst()
    if analyst is None:
        return []
    info = analyst.engine.info()
    usage = info.gpu
    if usage is None or not usage.budget_bytes:
        return []
    device = analyst.settings.gpu.device
    return [gpu.GpuMemoryUse(info.engine, device, usage.used_bytes or 0, usage.budget_bytes)]


class LlmCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("kitrading_llm_queue_depth", "Requests waiting for a generation slot."),
            GaugeMetricFamily(
                "kitrading_llm_queue_capacity", "Requests that may wait before one more is refused."
            ),
            GaugeMetricFamily("kitrading_llm_generations_active", "Answers being generated right now."),
            GaugeMetricFamily(
                "kitrading_llm_decode_tokens_per_second",
                "Decode speed over the recent answers (0 before the first).",
            ),
        )

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        analyst = _analyst()
        if analyst is not None:
            depth, capacity, active, speed = families
            depth.add_metric([], analyst.limiter.queue_depth)
            capacity.add_metric([], analyst.limiter.max_queued)
            active.add_metric([], analyst.limiter.active)
            speed.add_metric([], analyst.meter.tokens_per_second())
        yield from families


REGISTRY.register(LlmCollector())
