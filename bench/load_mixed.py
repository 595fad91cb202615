"""A bounded mixed load through the gateway: reads, forecasts, writes and analyze streams at rising
concurrency, on loopback only.

    .venv/bin/python -m bench.load_mixed [--stage-seconds 15] [--first-token-runs 5] [--out FILE.json]

Starts the whole mesh with `kitrading up` (embedded PostgreSQL with the bundled samples, every
implemented service, Envoy) on free ports, with the tests' small trainings (`tests.e2e.mesh.TINY`) and
the gateway's rate limits on (`LOAD_ENV`: 50 calls a second per client, 50 at once; 60 calls that start
work a minute, 10 at once), trains EURUSD's forecast, then runs `STAGES` back to back:

- `paced`: 10 calls a second from 2 workers, below every limit: every call must succeed;
- `c4`, `c16`, `c64`: that many closed-loop workers (no pause between calls, 429 or not: a hostile
  client), beyond the limits: every call must succeed or be shed (HTTP 429, which the gRPC status
  RESOURCE_EXHAUSTED becomes), never a 5xx, another 4xx or a call that hangs (30 s client timeout).

A worker's call is a read (70 %: a page of 20 symbols, 500 H1 candles, EURUSD's regime), a forecast
(20 %: EURUSD) or a write (10 %: a PATCH of GOOG's description). Through all four stages, `ANALYSTS`
analysts stream `POST /api/v1/analyze:stream` (8 tokens, temperature 0) one answer after the other
(120 s timeout: the whole mesh's grounding makes a long prompt, ~17 s to the first token on one
thread here) and record the first token's arrival. Per stage and class: calls, successes, shed,
errors (with examples), p50 and p99 of the successful calls' latency; the analyses over the whole
run. Each service's resident memory (its training workers included) before and after.

Then 200 concurrent reads of 5,000-candle pages straight to the Data service's gRPC port
(`burst_reads`: its own admission, `KITRADING_DATA_MAX_CONCURRENT_RPCS`, not the gateway's limits):
each call served or refused at once with RESOURCE_EXHAUSTED, with the slowest served call's latency.
And the LLM's first token while idle and while a forecast train-all runs
(`first_token_during_training`, target p99 <= 1.5x idle). `tests/e2e/test_load_e2e.py` runs the
same functions inside `make test`; results in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

#: The gateway's limits during the run (`gateway.rate_limits`), low enough that the closed-loop
#: stages exceed them on this 2-core machine.
LOAD_ENV = {
    "KITRADING_GATEWAY_RATE_LIMITS": "on",
    "KITRADING_GATEWAY_RATE_LIMIT_PER_SECOND": "50",
    "KITRADING_GATEWAY_RATE_LIMIT_BURST": "50",
    "KITRADING_GATEWAY_EXPENSIVE_PER_MINUTE": "60",
    "KITRADING_GATEWAY_EXPENSIVE_BURST": "10",
}
CLIENT_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 120.0
ANALYSTS = 2
SYMBOL, WRITE_SYMBOL = "EURUSD", "GOOG"
ANALYZE = {"symbol": SYMBOL, "question": "Buy or sell?", "maxTokens": 8, "temperature": 0}


@dataclass(frozen=True)
class Stage:
    name: str
    workers: int
    #: Calls a second from all workers together (paced, open loop); None: closed loop, no pause.
    rate: float | None = None


STAGES = (Stage("paced", 2, rate=10.0), Stage("c4", 4), Stage("c16", 16), Stage("c64", 64))


@dataclass
class Outcome:
    calls: int = 0
    ok: int = 0
    shed: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def record(self, status: int | None, ms: float, detail: str = "") -> None:
        self.calls += 1
        if status is not None and 200 <= status < 300:
            self.ok += 1
            self.latencies_ms.append(ms)
        elif status == 429:
            self.shed += 1
        else:
            self.errors += 1
            if len(self.examples) < 5:
                self.examples.append(f"{status}: {detail[:300]}")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls": self.calls,
            "ok": self.ok,
            "shed_429": self.shed,
            "errors": self.errors,
            "p50_ms": round(percentile(self.latencies_ms, 50), 1),
            "p99_ms": round(percentile(self.latencies_ms, 99), 1),
        }
        if self.first_token_ms:
            out["first_token_p50_ms"] = round(percentile(self.first_token_ms, 50), 1)
            out["first_token_p99_ms"] = round(percentile(self.first_token_ms, 99), 1)
        if self.examples:
            out["error_examples"] = self.examples
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


Call = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def _calls() -> list[tuple[str, float, Call]]:
    """(class, weight, call) of the workers' mix."""

    def symbols(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return c.get("/api/v1/symbols", params={"pageSize": 20})

    def candles(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        params: dict[str, str | int] = {"timeframe": "TIMEFRAME_H1", "pageSize": 500}
        return c.get(f"/api/v1/symbols/{SYMBOL}/candles", params=params)

    def regime(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return c.get(f"/api/v1/regime/{SYMBOL}")

    def forecast(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return c.get(f"/api/v1/forecast/{SYMBOL}")

    def write(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return c.patch(f"/api/v1/symbols/{WRITE_SYMBOL}", json={"description": f"load test write {i}"})

    return [
        ("read", 0.7 / 3, symbols),
        ("read", 0.7 / 3, candles),
        ("read", 0.7 / 3, regime),
        ("forecast", 0.2, forecast),
        ("write", 0.1, write),
    ]


async def analyze_once(client: httpx.AsyncClient) -> tuple[int | None, float, float | None, str]:
    """(status, total ms, first token ms or None, detail) of one streamed answer."""
    start = time.perf_counter()
    first: float | None = None
    try:
        async with client.stream(
            "POST", "/api/v1/analyze:stream", json=ANALYZE, timeout=STREAM_TIMEOUT_S
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                return response.status_code, (time.perf_counter() - start) * 1e3, None, body
            completed = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "token" in event and first is None:
                    first = (time.perf_counter() - start) * 1e3
                if "completion" in event:
                    completed = True
            total = (time.perf_counter() - start) * 1e3
            if not completed:  # a stream that ended without its completion event
                return None, total, first, "stream ended without a completion event"
            return 200, total, first, ""
    except httpx.HTTPError as exc:
        return None, (time.perf_counter() - start) * 1e3, first, f"{type(exc).__name__}: {exc}"


async def run_stage(base_url: str, stage: Stage, seconds: float, seed: int = 20261204) -> dict[str, Any]:
    """One stage; returns per-class summaries and the stage's wall time (a hang shows as a long one)."""
    outcomes: dict[str, Outcome] = {"read": Outcome(), "forecast": Outcome(), "write": Outcome()}
    mix = _calls()
    weights = [w for _, w, _ in mix]
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    interval = stage.workers / stage.rate if stage.rate else 0.0
    limits = httpx.Limits(max_connections=stage.workers + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def worker(index: int) -> None:
            n = 0
            next_at = time.monotonic() + interval * index / max(1, stage.workers)
            while time.monotonic() < deadline:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                kind, _, call = rng.choices(mix, weights)[0]
                n += 1
                start = time.perf_counter()
                try:
                    response = await call(client, index * 1_000_000 + n)
                    status, detail = response.status_code, response.text
                except httpx.HTTPError as exc:
                    status, detail = None, f"{type(exc).__name__}: {exc}"
                outcomes[kind].record(status, (time.perf_counter() - start) * 1e3, detail)

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(stage.workers)))
        wall = time.monotonic() - started
    return {
        "stage": stage.name,
        "workers": stage.workers,
        "rate": stage.rate,
        "wall_s": round(wall, 1),
        "classes": {k: v.summary() for k, v in outcomes.items()},
    }


async def analysts(base_url: str, count: int, until: asyncio.Event) -> Outcome:
    """`count` analysts streaming answers one after the other until `until` is set."""
    outcome = Outcome()
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:

        async def analyst() -> None:
            while not until.is_set():
                status, total, first, detail = await analyze_once(client)
                outcome.record(status, total, detail)
                if first is not None and status == 200:
                    outcome.first_token_ms.append(first)
                if status == 429:  # shed: a polite client waits (Retry-After) instead of spinning
                    await asyncio.sleep(1.0)

        await asyncio.gather(*(analyst() for _ in range(count)))
    return outcome


async def burst_reads(data_target: str, calls: int = 200, page_size: int = 5000) -> dict[str, Any]:
    """`calls` ListCandles of `page_size` H1 bars at once over one channel, direct to Data."""
    import grpc

    from kitrading.common.v1 import market_pb2
    from kitrading.data.v1 import request_response_pb2 as rr
    from kitrading.data.v1 import service_pb2_grpc

    request = rr.ListCandlesRequest(symbol=SYMBOL, timeframe=market_pb2.TIMEFRAME_H1, page_size=page_size)
    async with grpc.aio.insecure_channel(data_target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        await stub.ListCandles(request, timeout=60)  # warm: the channel, the page's plan

        async def one() -> tuple[str, float, int]:
            start = time.perf_counter()
            try:
                reply = await stub.ListCandles(request, timeout=60)
                return "OK", (time.perf_counter() - start) * 1e3, len(reply.candles)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, (time.perf_counter() - start) * 1e3, 0

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(calls)))
        wall = time.perf_counter() - started
    codes: dict[str, int] = {}
    for code, _, _ in results:
        codes[code] = codes.get(code, 0) + 1
    served = [ms for code, ms, _ in results if code == "OK"]
    refused = [ms for code, ms, _ in results if code == "RESOURCE_EXHAUSTED"]
    return {
        "calls": calls,
        "page_size": page_size,
        "codes": codes,
        "candles_per_page": max(n for _, _, n in results),
        "served_p50_ms": round(percentile(served, 50)),
        "served_p99_ms": round(percentile(served, 99)),
        "served_max_ms": round(max(served, default=0.0)),
        "refused_max_ms": round(max(refused, default=0.0)),
        "wall_s": round(wall, 2),
    }


def memory(pids: Mapping[str, int]) -> dict[str, int]:
    """Resident memory in MiB per process (its children included: training workers)."""
    out = {}
    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
        out[name] = round(rss / 2**20)
    return out


async def run_load(
    base_url: str, pids: Mapping[str, int], seconds: float, stages: tuple[Stage, ...] = STAGES
) -> dict[str, Any]:
    before = memory(pids)
    done = asyncio.Event()
    analyses = asyncio.create_task(analysts(base_url, ANALYSTS, done))
    started = time.monotonic()
    results = [await run_stage(base_url, stage, seconds) for stage in stages]
    done.set()
    analyze = await analyses  # the answers under way end first (bounded by their timeout)
    wall = time.monotonic() - started
    after = memory(pids)
    return {
        "stage_seconds": seconds,
        "stages": results,
        "analyze": {"analysts": ANALYSTS, **analyze.summary()},
        "wall_s": round(wall, 1),
        "memory_mib": {"before": before, "after": after},
    }


async def first_token_during_training(base_url: str, runs: int) -> dict[str, Any]:
    """The analyst's first token (p50, p99 over `runs` answers) idle, then while forecast train-alls
    run (background, forced; a new one started whenever the last ended, so training runs through every
    sample; the last cancelled after them); the ratio of the p99s (target <= 1.5) and the share of
    the sampling time a training was running."""
    async with httpx.AsyncClient(base_url=base_url, timeout=STREAM_TIMEOUT_S) as client:

        async def sample() -> list[float]:
            out = []
            for _ in range(runs):
                status, _, first, detail = await analyze_once(client)
                assert status == 200 and first is not None, f"analyze failed: {status} {detail}"
                out.append(first)
            return out

        async def progress() -> dict[str, Any]:
            reply: dict[str, Any] = (await client.get("/api/v1/forecast/training/progress")).json()
            return reply

        async def train_all() -> None:
            params = {"background": "true", "force": "true"}
            started = await client.post("/api/v1/forecast/train-all", params=params)
            assert started.status_code == 200, started.text

        polls = {True: 0, False: 0}
        sampling = asyncio.Event()

        async def keep_training(stop: asyncio.Event) -> None:
            while not stop.is_set():
                training = bool((await progress()).get("training"))
                if sampling.is_set():
                    polls[training] += 1
                if not training:
                    await train_all()
                await asyncio.sleep(0.5)

        await analyze_once(client)  # warm: the first answer evaluates the whole prompt
        idle = await sample()
        stop = asyncio.Event()
        keeper = asyncio.create_task(keep_training(stop))
        deadline = time.monotonic() + 120
        while not (await progress()).get("training"):  # until a worker trains (jobs queue first)
            assert time.monotonic() < deadline, "train-all never started"
            await asyncio.sleep(0.5)
        sampling.set()
        during = await sample()
        stop.set()
        await keeper
        for job in (await progress()).get("activeJobs", []):
            await client.post(f"/api/v1/forecast/training/jobs/{job['jobId']}:cancel", json={})
    p99_idle, p99_during = percentile(idle, 99), percentile(during, 99)
    return {
        "runs": runs,
        "idle_ms": [round(v) for v in idle],
        "during_training_ms": [round(v) for v in during],
        "idle_p50_ms": round(percentile(idle, 50)),
        "during_p50_ms": round(percentile(during, 50)),
        "p99_ratio": round(p99_during / p99_idle, 2) if p99_idle else None,
        "training_share": round(polls[True] / max(1, polls[True] + polls[False]), 2),
    }


async def prepare(base_url: str) -> None:
    """The first-start trainings done (regime, pattern), EURUSD's forecast model (foreground training)
    so the forecast class has a model to serve, and the analyst's prompt prefix evaluated once."""
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        deadline = time.monotonic() + 300
        while True:
            regime = (await client.get("/api/v1/regime/status")).json()
            pattern = (await client.get("/api/v1/patterns/model")).json()
            if regime.get("ready") and pattern.get("ready"):
                break
            assert time.monotonic() < deadline, f"first-start trainings not done: {regime} {pattern}"
            await asyncio.sleep(1.0)
        print(
            f"prepare: first-start trainings done after {300 - (deadline - time.monotonic()):.0f} s",
            flush=True,
        )
        begun = time.monotonic()
        trained = await client.post(f"/api/v1/forecast/{SYMBOL}/train")
        assert trained.status_code == 200, trained.text
        print(f"prepare: {SYMBOL} forecast trained in {time.monotonic() - begun:.0f} s", flush=True)
        forecast = await client.get(f"/api/v1/forecast/{SYMBOL}")
        assert forecast.status_code == 200, forecast.text
        begun = time.monotonic()
        status, _, _, detail = await analyze_once(client)
        assert status == 200, detail
        print(f"prepare: first analysis in {time.monotonic() - begun:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage-seconds", type=float, default=15.0)
    parser.add_argument("--first-token-runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from kitrading import mesh
    from tests.e2e.mesh import TINY, start_mesh

    home = Path(tempfile.mkdtemp(prefix="kitrading-bench-load-"))
    services = [s.name for s in mesh.SERVICES if s.implemented]
    running = start_mesh(home, services, {**TINY, **LOAD_ENV})
    try:
        for s in mesh.SERVICES:
            if s.implemented:
                running.wait_healthy(s.prefix, timeout_s=300)
        running.wait_for_samples()
        asyncio.run(prepare(running.gateway))
        pids = {name: pid for name in [*services, "gateway"] if (pid := running.pid(name))}
        result = asyncio.run(run_load(running.gateway, pids, args.stage_seconds))
        result["burst_reads"] = asyncio.run(burst_reads(running.target("data")))
        result["first_token"] = asyncio.run(
            first_token_during_training(running.gateway, args.first_token_runs)
        )
    finally:
        running.stop()
        shutil.rmtree(home, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
