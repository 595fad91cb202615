"""Measure the embedded engine: time to first token and decode tokens/s on a grounded analysis prompt.

    .venv/bin/python -m services.llm.measure --threads 1 --runs 5 --max-tokens 128

Greedy decoding, a fixed grounded EURUSD prompt with a different question per run, the
bundled SmolLM2-135M-Instruct unless KITRADING_LLM_MODEL_PATH says otherwise. Run 0 evaluates the
whole prompt (cold); later runs reuse the evaluated rules + market data prefix. Prints one line per
run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace

from services.llm.embedded import LlamaCppEngine
from services.llm.prompt import CandleStats, Forecast, ForecastPoint, Grounding, Regime, build_messages
from services.llm.settings import LlmSettings

GROUNDING = Grounding(
    symbol="EURUSD",
    candles=CandleStats(
        last_close=1.08523, change_pct=0.42, volatility_pct=0.151, high=1.0912, low=1.0801, bars=200
    ),
    forecast=Forecast(
        points=tuple(
            ForecastPoint(step=i, value=1.0852 + i * 1e-4, lo80=1.08, hi80=1.09, lo95=1.075, hi95=1.095)
            for i in range(1, 25)
        ),
        model_version="nhits-eurusd-v7",
    ),
    regime=Regime(name="bullish trend", probability=0.81),
)

QUESTIONS = ("Should I buy or sell?", "What are the main risks?", "How wide is the forecast range?")


async def measure(threads: int, runs: int, max_tokens: int) -> None:
    settings = LlmSettings.from_env()
    engine = LlamaCppEngine(replace(settings.embedded, threads=threads))
    started = time.perf_counter()
    await engine.start()
    print(f"load {time.perf_counter() - started:.2f}s  {engine.info().model}  {engine.info().detail}")
    ttfts: list[float] = []
    rates: list[float] = []
    for run in range(runs):
        # A fresh nonce per question, as in service: the rules and market data prefix is reused.
        messages = build_messages(QUESTIONS[run % len(QUESTIONS)], GROUNDING)
        t0 = time.perf_counter()
        first = last = 0.0
        count = 0
        async for token in engine.stream(messages, max_tokens=max_tokens, temperature=0.0):
            if token.text:
                last = time.perf_counter()
                first = first or last
                count += 1
        rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
        ttfts.append(first - t0)
        rates.append(rate)
        print(f"run {run}: first token {first - t0:.3f}s, {count} tokens, {rate:.1f} tokens/s")
    print(f"median: first token {statistics.median(ttfts):.3f}s, {statistics.median(rates):.1f} tokens/s")
    await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(measure(args.threads, args.runs, args.max_tokens))


if __name__ == "__main__":
    main()
