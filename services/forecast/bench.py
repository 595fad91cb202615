"""Forecast serving benchmark: batch vs one call per symbol, and latency while training runs.

    .venv/bin/python -m services.forecast.bench [--symbols 50] [--source-latency-ms 1]

Trains one tiny NHITS on the bundled EURUSD data (fixed seed), publishes it under `--symbols`
symbol names (each loaded as its own model), then measures with the forecast cache cleared
before every round (cold: every call computes) and warm (cache hits):
1. `forecast()` once per symbol, sequentially, vs one `forecast_many()` over all symbols;
2. single-symbol forecast latency while a training job runs in the worker process vs idle.
`--source-latency-ms` adds an await of that length to each candle fetch, standing in for the
Data service round trip. Prints ratios measured in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from services.forecast.service import ForecastDomain
from services.forecast.settings import ForecastSettings
from services.training.sources import InMemoryCandleSource, SymbolInfo, candles_from_ohlcv


class SlowSource(InMemoryCandleSource):
    """An in-memory source whose fetch awaits `latency_s` (a stand-in for a gRPC round trip)."""

    def __init__(self, latency_s: float) -> None:
        super().__init__()
        self.latency_s = latency_s

    async def fetch(self, symbol: str, timeframe: str, *, limit: int | None = None) -> pd.DataFrame:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return await super().fetch(symbol, timeframe, limit=limit)


def _ms(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms"


async def run(n_symbols: int, latency_ms: float, rounds: int) -> None:
    from backtesting.test import EURUSD

    home = Path(tempfile.mkdtemp(prefix="kitrading-bench-"))
    settings = replace(
        ForecastSettings(home=home, eval_windows=6, calibration_windows=60, min_train_windows=50),
        cache_size=10 * n_symbols,
    ).with_nhits(h=24, input_size=168, max_steps=50)
    source = SlowSource(latency_ms / 1e3)
    candles = candles_from_ohlcv(EURUSD)
    symbols = [f"FX{i:03d}" for i in range(n_symbols)]
    for symbol in ["EURUSD", *symbols]:
        source.put(SymbolInfo(symbol, "FX", timeframe="H1"), "H1", candles)
    domain = ForecastDomain(settings, source)
    await domain.start(schedule=False)
    try:
        job = await domain.jobs.train(["EURUSD"], background=False)
        assert job.state.value == "SUCCEEDED", job.error
        src = domain.registry.get("EURUSD").path
        for symbol in symbols:  # the same weights under many names: each is loaded separately
            staged = domain.registry.stage(symbol)
            for file in src.iterdir():
                if file.name != "metadata.json":
                    shutil.copy(file, staged.path / file.name)
            domain.registry.publish(staged, dict(domain.registry.get("EURUSD").metadata))
        await domain.forecaster.warmup()
        forecaster = domain.forecaster

        async def per_symbol() -> float:
            start = time.perf_counter()
            for symbol in symbols:
                await forecaster.forecast(symbol, 24)
            return time.perf_counter() - start

        async def batch() -> float:
            start = time.perf_counter()
            await forecaster.forecast_many(symbols, 24)
            return time.perf_counter() - start

        print(f"{n_symbols} symbols, source latency {latency_ms} ms, {rounds} rounds, torch threads "
              f"{settings.serving_threads}, cpu count {os.cpu_count()}")  # fmt: skip
        for label, clear in (("cold (cache cleared)", True), ("warm (cache hits)", False)):
            seq, bat = [], []
            for _ in range(rounds):
                if clear:
                    forecaster.clear_cache()
                seq.append(await per_symbol())
                if clear:
                    forecaster.clear_cache()
                bat.append(await batch())
            s, b = statistics.median(seq), statistics.median(bat)
            print(f"  {label:22s} one call per symbol {s * 1e3:8.1f} ms | batch {b * 1e3:8.1f} ms | "
                  f"speed-up x{s / b:5.1f}")  # fmt: skip

        async def latencies(n: int) -> list[float]:
            out = []
            for _ in range(n):
                forecaster.clear_cache()
                start = time.perf_counter()
                await forecaster.forecast("EURUSD", 24)
                out.append(time.perf_counter() - start)
                await asyncio.sleep(0.005)
            return out

        idle = await latencies(200)
        domain.trainer.settings = domain.trainer.settings.with_nhits(max_steps=400)
        job = await domain.jobs.train([symbols[0]])
        async for event in domain.jobs.watch(job.job_id):
            if event.detail == "step":
                break
        busy = await latencies(200)
        still_training = domain.jobs.get(job.job_id).state.value == "RUNNING"
        await domain.jobs.cancel(job.job_id)
        print(f"  single forecast, cold, idle            {_ms(idle)}")
        print(f"  single forecast, cold, while training  {_ms(busy)}  (still training: {still_training})")
    finally:
        await domain.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--source-latency-ms", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.symbols, args.source_latency_ms, args.rounds))


if __name__ == "__main__":
    main()
