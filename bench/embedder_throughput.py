"""Embedder throughput through the service: 64 concurrent clients, one text each, against one
in-process `encode` at batch 64, measured in one run.

    .venv/bin/python -m bench.embedder_throughput [--clients 64] [--rounds 10] [--out FILE.json]

Starts `python -m services.embedder` (bundled all-MiniLM-L6-v2, CPU unless CUDA is present) on a
free port. Each round, `clients` concurrent `EmbedText` calls of one text each, over 8 channels,
direct gRPC; the service's micro-batcher groups them into encode calls. The baseline, in this
process on the same device with one math thread (as the service has): sentence-transformers
`encode` of the same texts at batch `clients`, one after each service round (interleaved).
Target (issue 13): service texts/s >= 0.9x the baseline's. The floors beside it: the same
number of trivial gRPC calls to the service, concurrently: health checks (gRPC's own servicer)
and `GetEmbedderInfo` (through the service's runtime interceptor, as `EmbedText` goes), and from
the latter the in-series bound encode / (encode + those calls), the best a round can reach when
its calls neither overlap its encode nor each other's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._mesh import free_port, wait_serving
from kitrading.embedder.v1 import request_response_pb2 as rr
from kitrading.embedder.v1 import service_pb2_grpc
from services.embedder.throughput import texts

TARGET = 0.9
CHANNELS = 8


async def service_round(stubs: list[Any], batch: list[str]) -> float:
    started = time.perf_counter()
    await asyncio.gather(
        *(
            stubs[i % len(stubs)].EmbedText(rr.EmbedTextRequest(texts=[t]), timeout=60)
            for i, t in enumerate(batch)
        )
    )
    return time.perf_counter() - started


async def trivial_round(health: list[Any], n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(
        *(health[i % len(health)].Check(health_pb2.HealthCheckRequest(), timeout=60) for i in range(n))
    )
    return time.perf_counter() - started


async def info_round(stubs: list[Any], n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(
        *(stubs[i % len(stubs)].GetEmbedderInfo(rr.GetEmbedderInfoRequest(), timeout=60) for i in range(n))
    )
    return time.perf_counter() - started


async def measure_service(
    target: str, clients: int, rounds: int, encode: Any
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per round, in turn: the service's round, the two floors, and the baseline `encode` of the
    same texts in this process (blocking, while the service is idle), so that each ratio compares
    rounds measured under the same conditions (the VM's speed drifts by 30 % within minutes)."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    try:
        stubs = [service_pb2_grpc.EmbedderServiceStub(c) for c in channels]
        health = [health_pb2_grpc.HealthStub(c) for c in channels]
        batch = texts(clients)
        await service_round(stubs, batch)  # warm-up
        service, trivial, info, baseline = [], [], [], []
        encode(batch)  # warm-up
        for _ in range(rounds):
            service.append(await service_round(stubs, batch))
            trivial.append(await trivial_round(health, clients))
            info.append(await info_round(stubs, clients))
            started = time.perf_counter()
            encode(batch)
            baseline.append(time.perf_counter() - started)
        return service, trivial, info, baseline
    finally:
        for channel in channels:
            await channel.close()


def baseline_encoder(clients: int) -> Any:
    """sentence-transformers `encode` at batch `clients`, one math thread, in this process."""
    import torch

    from services.embedder.settings import bundled_model_path
    from services.embedder.text import TextEncoder

    torch.set_num_threads(1)
    return TextEncoder(bundled_model_path(), batch_size=clients).load().encode


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--service-batch", type=int, help="the service's KITRADING_EMBEDDER_BATCH_SIZE (default: --clients)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="kitrading-bench-embedder-"))
    env = dict(
        os.environ,
        KITRADING_HOME=str(home),
        KITRADING_EMBEDDER_PORT=str(port),
        KITRADING_EMBEDDER_METRICS_PORT="0",
        KITRADING_EMBEDDER_BATCH_SIZE=str(args.service_batch or args.clients),
        OMP_NUM_THREADS="1",
    )
    log = (home / "embedder.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.embedder"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        target = f"127.0.0.1:{port}"
        wait_serving(target, "kitrading.embedder.v1.EmbedderService", timeout_s=300)
        encode = baseline_encoder(args.clients)
        service, trivial, info, baseline = asyncio.run(
            measure_service(target, args.clients, args.rounds, encode)
        )
    finally:
        proc.terminate()
        proc.wait(30)
    n = args.clients
    rate = {
        "service": n / statistics.median(service),
        "baseline_encode": n / statistics.median(baseline),
        "trivial_calls": n / statistics.median(trivial),
        "service_calls": n / statistics.median(info),
    }
    ratio = rate["service"] / rate["baseline_encode"]
    # A round's calls arrive before its encode and leave after it: with no overlap, the best ratio
    # is encode / (encode + the round's cost of as many calls through the service's runtime).
    bound = statistics.median(baseline) / (statistics.median(baseline) + statistics.median(info))
    result = {
        "clients": n,
        "rounds": args.rounds,
        "texts_per_s": rate,
        "ratio": ratio,
        "target": TARGET,
        "in_series_bound": bound,
    }
    print(f"| path ({n} texts a round, median of {args.rounds}) | texts/s |\n|---|---:|")
    print(f"| service: {n} concurrent EmbedText of one text | {rate['service']:.0f} |")
    print(f"| in-process encode at batch {n} (baseline) | {rate['baseline_encode']:.0f} |")
    print(f"| floor: {n} concurrent trivial calls (health) | {rate['trivial_calls']:.0f} calls/s |")
    info_rate = rate["service_calls"]
    print(f"| floor: {n} concurrent GetEmbedderInfo (the service's runtime) | {info_rate:.0f} calls/s |")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"\nratio service / baseline: {ratio:.2f} (target >= {TARGET}: {verdict})")
    print(f"in-series bound (encode / (encode + {n} runtime calls)): {bound:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
