"""Where a trivial unary call's time goes in the shared runtime: the Data service answering GetSymbol,
profiled with cProfile, beside a bare `grpc.aio` server answering the same message from memory.

    .venv/bin/python -m bench.runtime_profile [--calls 3000] [--top 25]

Both servers run in this process on the event loop of the main thread, the only thread cProfile
watches; the client is a synchronous gRPC stub on another thread (its work is not in the profile,
and its CPU is measured on its own thread and left out). Logging is configured as in production
(JSON lines at INFO, written to /dev/null here, so a terminal does not slow it), metrics are on,
and the Data service has its real embedded PostgreSQL. Printed:

- CPU per call of the server side (process CPU minus the client thread's), for the Data service
  and for the bare server: their ratio is the issue's figure (target <= 2x);
- the profile of the Data service's event-loop thread, grouped into the runtime's parts
  (interceptor, validation, NUL check, metrics, the per-call log line, query log, servicer and
  domain, grpc.aio machinery) with the share of loop time each takes, then the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from kitrading import mesh
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.data.app import DataApp
from services.data.settings import DataSettings
from services.runtime.config import RuntimeSettings
from services.runtime.database_settings import DatabaseSettings
from services.runtime.embedded import start_embedded_postgres
from services.runtime.logging import JsonFormatter
from services.runtime.server import create_server

TARGET_CPU_RATIO = 2.0
METHOD = "/kitrading.data.v1.DataService/GetSymbol"

#: Profile rows grouped by where their code lives (first match wins).
GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("validation (protovalidate)", lambda f, n: "protovalidate" in f or "celpy" in f or "/cel" in f),
    (
        "NUL check",
        lambda f, n: (f.endswith("runtime/interceptor.py") and "nul" in n) or "_holds_strings" in n,
    ),
    ("per-call log line (JSON)", lambda f, n: "/logging/" in f or f.endswith("runtime/logging.py")),
    ("metrics (prometheus_client)", lambda f, n: "prometheus_client" in f),
    ("query log (summary + buffer)", lambda f, n: "querylog" in f or ("protos.py" in f and "summary" in n)),
    ("interceptor (the rest)", lambda f, n: f.endswith("runtime/interceptor.py")),
    ("deadline, errors, status", lambda f, n: "runtime/" in f),
    ("servicer, convert, domain", lambda f, n: "services/data/" in f),
    ("asyncpg", lambda f, n: "asyncpg" in f),
    ("grpc.aio (Python side)", lambda f, n: "grpc" in f),
    ("asyncio", lambda f, n: "asyncio" in f),
]


class BareServicer(service_pb2_grpc.DataServiceServicer):
    """The floor: the same response from memory, no interceptor, no logging, no metrics."""

    def __init__(self) -> None:
        self.reply = rr.GetSymbolResponse(symbol=pb.Symbol(symbol="EURUSD", display_name="Euro / US Dollar"))

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: Any) -> rr.GetSymbolResponse:
        return self.reply


def client_calls(target: str, calls: int, out: dict[str, float]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        request = rr.GetSymbolRequest(symbol="EURUSD")
        for _ in range(200):  # warm up both ends
            stub.GetSymbol(request, timeout=5)
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(calls):
            stub.GetSymbol(request, timeout=5)
        out["client_cpu"] = time.thread_time() - cpu
        out["wall"] = time.perf_counter() - wall


async def measure(target: str, calls: int, profile: cProfile.Profile | None) -> dict[str, float]:
    """Run the client on its thread while this loop serves; CPU of the process minus the client's."""
    out: dict[str, float] = {}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            client_calls(target, calls, out)
        finally:
            loop.call_soon_threadsafe(done.set)

    process_cpu = time.process_time()
    if profile is not None:
        profile.enable()
    threading.Thread(target=run, daemon=True).start()
    await done.wait()
    if profile is not None:
        profile.disable()
    total = time.process_time() - process_cpu
    out["server_cpu_us"] = (total - out["client_cpu"]) / calls * 1e6
    out["wall_us"] = out["wall"] / calls * 1e6
    return out


def group_profile(stats: pstats.Stats) -> tuple[dict[str, float], float]:
    """Own time (tottime) per group, and the loop thread's total."""
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "poll' of 'select.epoll" in name:
            continue  # waiting for the next request: idle, not work
        total += tottime
        for label, matches in GROUPS:
            if matches(file, name):
                groups[label] += tottime
                break
        else:
            # Context.run holds the Cython of grpc.aio (not profiled on its own) and every callback
            groups["grpc.aio core callbacks, event loop, builtins"] += tottime
    return dict(groups), total


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kitrading-profile-") as tmp:
        url = start_embedded_postgres(Path(tmp) / "postgres", cleanup_mode="delete")
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - once, at start
        handler.setFormatter(JsonFormatter("data"))
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.INFO)

        app = DataApp(
            DataSettings(database=DatabaseSettings(url=url, pool_max_size=5), import_samples_on_start=False)
        )
        settings = RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "0"})
        server = await create_server(app, settings)
        bare = grpc.aio.server()
        service_pb2_grpc.add_DataServiceServicer_to_server(BareServicer(), bare)  # type: ignore[abstract]
        bare_port = bare.add_insecure_port("127.0.0.1:0")
        await bare.start()
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = service_pb2_grpc.DataServiceStub(channel)
                await stub.CreateSymbol(
                    rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", display_name="Euro / US Dollar"))
                )
            results: dict[str, list[dict[str, float]]] = {"data": [], "bare": []}
            for _ in range(args.rounds):  # interleaved so machine noise hits both alike
                results["bare"].append(await measure(f"127.0.0.1:{bare_port}", args.calls, None))
                results["data"].append(await measure(server.target, args.calls, None))
            profile = cProfile.Profile()
            await measure(server.target, args.calls, profile)
        finally:
            await bare.stop(0)
            await server.stop(0)

    def best(name: str, key: str) -> float:
        return min(r[key] for r in results[name])

    data_cpu, bare_cpu = best("data", "server_cpu_us"), best("bare", "server_cpu_us")
    print(f"GetSymbol, {args.calls} sequential calls x {args.rounds} rounds (best round):")
    print("| server | CPU per call (server side) | wall per call (client) |")
    print("|---|---|---|")
    floor = "bare grpc.aio, response from memory (floor)"
    print(f"| {floor} | {bare_cpu:.0f} us | {best('bare', 'wall_us'):.0f} us |")
    print(f"| Data service (runtime + PostgreSQL) | {data_cpu:.0f} us | {best('data', 'wall_us'):.0f} us |")
    ratio = data_cpu / bare_cpu
    verdict = "met" if ratio <= TARGET_CPU_RATIO else "NOT met"
    print(f"\nCPU ratio Data / bare: {ratio:.2f}x (target <= {TARGET_CPU_RATIO}x: {verdict})\n")

    stats = pstats.Stats(profile)
    groups, total = group_profile(stats)
    print(f"Profile of the Data service's event-loop thread ({args.calls} calls; own time, idle left out):")
    print("| part | per call | share |")
    print("|---|---|---|")
    for label, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {label} | {seconds / args.calls * 1e6:.0f} us | {seconds / total:.0%} |")
    print(f"| **loop thread busy** | {total / args.calls * 1e6:.0f} us | 100% |\n")
    stats.sort_stats("tottime").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
