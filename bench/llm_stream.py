"""LLM streaming: time to first token and tokens/s, embedded engine in-process vs the gateway's SSE.

    .venv/bin/python -m bench.llm_stream [--runs 21] [--max-tokens 128] [--json]

Starts `kitrading up --only data,llm` (embedded PostgreSQL with the bundled samples, the LLM service
with the bundled SmolLM2-135M-Instruct on llama.cpp, one math thread, and Envoy) on free ports, and
compares, in one run, with alternating repetitions (direct, gateway / gateway, direct, ...):

(a) direct: the same embedded engine (`LlamaCppEngine`, the service's settings read from the same
    environment: 1 thread, seed 42, context 2048) loaded in this bench process,
    `engine.stream(messages, max_tokens, temperature=0)`, where `messages` is built as the service
    builds it: the same `Grounder` gathers the same figures from the running Data service (forecast,
    regime, pattern and rag are not running and are named unavailable, as in the service), then
    `grounding.grounding_of` + `prompt.build_messages` with the same question. Only the per-request
    nonce differs (16 hex digits; from a seeded RNG here, random in the service). First token: from
    `stream()` to the first non-empty token; the prompt is already built.
(b) gateway: `POST /api/v1/analyze:stream` (SSE) through Envoy to the LLM service, same question,
    max tokens and temperature 0, one keep-alive HTTP/1.1 connection. First token: from sending the
    request to receiving the first `token` event, so it also pays the gathering (one Data call; the
    four missing services refuse the connection at once), the gRPC hop, JSON transcoding and HTTP.
    Tokens/s: over the token events' arrival times. The service's own figures for the same answers
    (its `completion` event: first token from the request's arrival in the LLM process, decode
    tokens/s) and the gathering time (`context.gatherMs`) split the difference.

Both engines keep the evaluated prompt prefix between answers (the static rules and market data);
the rest, from the nonce on (~115-130 tokens), is evaluated each time, about 1.2 s on one thread.
The nonce tokenises into a varying number of tokens, so the first token varies by +-100-200 ms per
run on either path; medians over many runs (and the split above) are what to read. Targets
(issue 4): gateway tokens/s >= 0.95x direct; gateway first token at most +50 ms over direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from services.llm.embedded import LlamaCppEngine
from services.llm.grounding import Grounder, grounding_of
from services.llm.grounding_settings import GroundingSettings
from services.llm.prompt import Grounding, build_messages
from services.llm.settings import LlmSettings
from services.llm.sources import MeshSources
from tests.e2e.mesh import RunningMesh, start_mesh

SEED = 42
SYMBOL = "EURUSD"
#: One question for every run: the prompts then differ only by their nonce (see the docstring).
QUESTION = "Should I buy or sell? Explain the trend, the risks and the levels to watch."
TARGET_RATE_RATIO = 0.95
TARGET_ADDED_FIRST_TOKEN_MS = 50.0


@dataclass(frozen=True)
class Sample:
    """One answer: seconds to the first token, decode tokens/s, non-empty tokens."""

    first_token_ms: float
    tokens_per_second: float
    tokens: int
    #: Gateway runs only: the service's own completion figures and the gathering time.
    service_first_token_ms: float = 0.0
    service_tokens_per_second: float = 0.0
    gather_ms: float = 0.0


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


@contextmanager
def llm_mesh() -> Iterator[RunningMesh]:
    with tempfile.TemporaryDirectory(prefix="kitrading-bench-llm-") as tmp:
        running = start_mesh(
            Path(tmp), ["data", "llm"], {"KITRADING_LLM_THREADS": "1", "KITRADING_LLM_SEED": str(SEED)}
        )
        try:
            running.wait_healthy("data")
            running.wait_healthy("llm")
            deadline = time.monotonic() + 120
            while True:  # the bundled samples are imported in the background of readiness
                stats = httpx.get(
                    f"{running.gateway}/api/v1/symbols/{SYMBOL}/stats",
                    params={"timeframe": "TIMEFRAME_H1"},
                    timeout=5,
                )
                if stats.status_code == 200 and int(stats.json().get("bars", 0)) > 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{SYMBOL} H1 candles never imported: {stats.text}")
                time.sleep(0.5)
            yield running
        finally:
            running.stop()


async def direct_answer(
    engine: LlamaCppEngine, grounding: Grounding, question: str, nonce: str, max_tokens: int
) -> Sample:
    messages = build_messages(question, grounding, nonce=nonce)
    times: list[float] = []
    start = time.perf_counter()
    async for token in engine.stream(messages, max_tokens=max_tokens, temperature=0.0):
        if token.text:
            times.append(time.perf_counter())
    return Sample((times[0] - start) * 1000.0, rate(times), len(times))


async def gateway_answer(
    client: httpx.AsyncClient, question: str, max_tokens: int
) -> tuple[Sample, dict[str, Any]]:
    body = {"symbol": SYMBOL, "question": question, "maxTokens": max_tokens, "temperature": 0}
    times: list[float] = []
    context: dict[str, Any] = {}
    completion: dict[str, Any] = {}
    start = time.perf_counter()
    async with client.stream("POST", "/api/v1/analyze:stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if "token" in event:
                times.append(time.perf_counter())
            elif "context" in event:
                context = event["context"]
            elif "completion" in event:
                completion = event["completion"]
            else:
                raise RuntimeError(f"unexpected event {event}")
    if not times or not completion:
        raise RuntimeError(f"no answer: {len(times)} tokens, completion {completion}")
    sample = Sample(
        (times[0] - start) * 1000.0,
        rate(times),
        len(times),
        service_first_token_ms=float(completion["timeToFirstTokenMs"]),
        service_tokens_per_second=float(completion["tokensPerSecond"]),
        gather_ms=float(context.get("gatherMs", 0.0)),
    )
    return sample, context


def median(samples: list[Sample], name: str) -> float:
    return float(statistics.median(getattr(s, name) for s in samples))


async def measure(mesh: RunningMesh, runs: int, max_tokens: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    settings = LlmSettings.from_env(mesh.env)  # the service's own settings (same env)
    engine = LlamaCppEngine(settings.embedded)
    await engine.start()
    info = engine.info()
    grounding_settings = GroundingSettings.from_env(mesh.env)
    grounder = Grounder(grounding_settings, MeshSources(grounding_settings))
    nonces = random.Random(SEED)
    direct: list[Sample] = []
    gateway: list[Sample] = []
    try:
        await grounder.start()
        gathered = await grounder.gather(SYMBOL, QUESTION)
        grounding = grounding_of(gathered)
        assert grounding.candles is not None, f"no {SYMBOL} candles: {gathered.unavailable}"
        timeout = httpx.Timeout(300.0, connect=5.0)
        async with httpx.AsyncClient(base_url=mesh.gateway, timeout=timeout) as client:
            # warm up both paths: the cold prompt evaluation, connections, the transcoder
            await direct_answer(engine, grounding, QUESTION, f"{nonces.getrandbits(64):016x}", max_tokens)
            _, context = await gateway_answer(client, QUESTION, max_tokens)
            service_close = context["candleStats"]["lastCandle"]["close"]
            assert grounding.candles.last_close == service_close, "the bench's grounding differs"
            assert set(grounding.unavailable) == {u.source for u in gathered.unavailable}
            for run in range(runs):
                nonce = f"{nonces.getrandbits(64):016x}"
                order = ("direct", "gateway") if run % 2 == 0 else ("gateway", "direct")
                for path in order:
                    if path == "direct":
                        direct.append(await direct_answer(engine, grounding, QUESTION, nonce, max_tokens))
                    else:
                        gateway.append((await gateway_answer(client, QUESTION, max_tokens))[0])
    finally:
        await grounder.close()
        await engine.close()
    pairs = list(zip(direct, gateway, strict=True))
    ratio = median(gateway, "tokens_per_second") / median(direct, "tokens_per_second")
    paired_ratio = float(statistics.median(g.tokens_per_second / d.tokens_per_second for d, g in pairs))
    added = [g.first_token_ms - d.first_token_ms for d, g in pairs]
    added_ms = float(statistics.median(added))
    added_se = statistics.stdev(added) / len(added) ** 0.5 if len(added) > 1 else math.nan
    transport = float(statistics.median(g.first_token_ms - g.service_first_token_ms for g in gateway))
    return {
        "model": info.model,
        "engine_detail": info.detail,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        #: 1-minute load average before and after the runs: other work on the machine skews the figures.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
        "max_tokens": max_tokens,
        "last_close": grounding.candles.last_close,
        "unavailable": list(grounding.unavailable),
        "direct": {
            "first_token_ms": median(direct, "first_token_ms"),
            "tokens_per_second": median(direct, "tokens_per_second"),
            "tokens": median(direct, "tokens"),
        },
        "gateway": {
            "first_token_ms": median(gateway, "first_token_ms"),
            "tokens_per_second": median(gateway, "tokens_per_second"),
            "tokens": median(gateway, "tokens"),
            "service_first_token_ms": median(gateway, "service_first_token_ms"),
            "service_tokens_per_second": median(gateway, "service_tokens_per_second"),
            "gather_ms": median(gateway, "gather_ms"),
        },
        "samples": {"direct": [asdict(s) for s in direct], "gateway": [asdict(s) for s in gateway]},
        "tokens_per_second_ratio": ratio,
        "tokens_per_second_ratio_paired": paired_ratio,
        "first_token_added_ms": added_ms,
        "first_token_added_mean_ms": statistics.fmean(added),
        "first_token_added_standard_error_ms": added_se,
        "first_token_transport_ms": transport,
        "target_rate_met": ratio >= TARGET_RATE_RATIO,
        "target_first_token_met": added_ms <= TARGET_ADDED_FIRST_TOKEN_MS,
    }


def report(r: dict[str, Any]) -> None:
    d, g = r["direct"], r["gateway"]
    print(
        f"LLM streaming, {r['model']} ({r['engine_detail']}); {r['machine']}; {r['date']}; load average "
        f"{r['load_average'][0]:.2f} before, {r['load_average'][1]:.2f} after\n"
        f"{SYMBOL} grounded prompt (last close {r['last_close']}, unavailable: "
        f"{', '.join(r['unavailable']) or 'none'}), max_tokens {r['max_tokens']}, temperature 0, "
        f"{r['runs']} alternating runs per path, medians\n"
    )
    print(f"{'path':<56}{'first token ms':>15}{'tokens/s':>10}{'tokens':>8}")
    a, b = "(a) direct: engine.stream() in the bench process", "(b) gateway: SSE, client send -> token events"
    print(f"{a:<56}{d['first_token_ms']:>15.1f}{d['tokens_per_second']:>10.1f}{d['tokens']:>8.0f}")
    print(f"{b:<56}{g['first_token_ms']:>15.1f}{g['tokens_per_second']:>10.1f}{g['tokens']:>8.0f}")
    seen = "    (b) as the LLM service saw it (completion event)"
    print(f"{seen:<56}{g['service_first_token_ms']:>15.1f}{g['service_tokens_per_second']:>10.1f}")
    print(f"{'    of which grounding (context.gatherMs)':<56}{g['gather_ms']:>15.1f}")
    spread = {
        path: (min(x["first_token_ms"] for x in runs), max(x["first_token_ms"] for x in runs))
        for path, runs in r["samples"].items()
    }
    print(
        f"\nfirst token per run: direct {spread['direct'][0]:.0f}-{spread['direct'][1]:.0f} ms, "
        f"gateway {spread['gateway'][0]:.0f}-{spread['gateway'][1]:.0f} ms"
    )
    print(
        f"tokens/s gateway / direct: {r['tokens_per_second_ratio']:.3f}x of the medians, "
        f"{r['tokens_per_second_ratio_paired']:.3f}x median of paired runs "
        f"(target >= {TARGET_RATE_RATIO}x: {'met' if r['target_rate_met'] else 'NOT met'})"
    )
    print(
        f"first token gateway - direct, paired runs: median {r['first_token_added_ms']:+.1f} ms, mean "
        f"{r['first_token_added_mean_ms']:+.1f} +- {r['first_token_added_standard_error_ms']:.1f} ms (s.e.) "
        f"(target <= +{TARGET_ADDED_FIRST_TOKEN_MS:.0f} ms: "
        f"{'met' if r['target_first_token_met'] else 'NOT met'})"
    )
    print(
        f"  what the gateway path adds before the engine starts: grounding {g['gather_ms']:.1f} ms + "
        f"client-observed minus service-recorded first token (Envoy, HTTP, gRPC) "
        f"{r['first_token_transport_ms']:+.1f} ms (medians)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=21, help="alternating repetitions per path")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with llm_mesh() as mesh:
        result = asyncio.run(measure(mesh, args.runs, args.max_tokens))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
