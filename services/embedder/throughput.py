"""Texts/s of concurrent one-text calls through the domain's micro-batcher against one direct encode.

`python -m services.embedder.throughput [--clients 64] [--rounds 5]`: in one process, on the
configured device, the same texts: `clients` concurrent `embed_texts([text])` calls per round
against `TextEncoder.encode(texts)` at batch `clients`; prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, replace

from services.embedder.service import EmbedderDomain
from services.embedder.settings import EmbedderSettings

WORDS = ["rates", "profit", "bank", "shares", "outlook", "earnings", "inflation", "oil", "gold", "dollar"]


def texts(count: int) -> list[str]:
    """Headline-like texts of 10-14 words, all different (fixed, no randomness)."""
    return [
        " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(10 + i % 5)) + f" ({i})"
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Throughput:
    clients: int
    rounds: int
    batched_texts_per_s: float
    direct_texts_per_s: float
    encode_calls: int

    @property
    def ratio(self) -> float:
        return self.batched_texts_per_s / self.direct_texts_per_s


async def measure(settings: EmbedderSettings, *, clients: int = 64, rounds: int = 5) -> Throughput:
    domain = EmbedderDomain(replace(settings, batch_size=max(settings.batch_size, clients)))
    await domain.start()
    try:
        assert domain.encoder is not None
        batch = texts(clients)
        domain.encoder.encode(batch)  # warm up both paths once
        await asyncio.gather(*(domain.embed_texts([t]) for t in batch))
        before = domain.info().stats["batches"]
        start = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(domain.embed_texts([t]) for t in batch))
        batched = time.perf_counter() - start
        calls = domain.info().stats["batches"] - before
        start = time.perf_counter()
        for _ in range(rounds):
            domain.encoder.encode(batch)
        direct = time.perf_counter() - start
    finally:
        await domain.stop()
    n = clients * rounds
    return Throughput(clients, rounds, n / batched, n / direct, calls)


def main() -> None:  # pragma: no cover - a measurement for docs/embedder.md
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from services.runtime.threads import limit_math_threads

    limit_math_threads()
    result = asyncio.run(measure(EmbedderSettings.from_env(), clients=args.clients, rounds=args.rounds))
    print(
        f"{result.clients} concurrent one-text calls x {result.rounds}: "
        f"{result.batched_texts_per_s:.0f} texts/s in {result.encode_calls} encode calls; "
        f"one encode at batch {result.clients}: "
        f"{result.direct_texts_per_s:.0f} texts/s; ratio {result.ratio:.2f}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
