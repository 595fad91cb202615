"""Pattern serving against real processes: Data, the pattern service and the Envoy gateway, one run.

    .venv/bin/python -m bench.pattern_serving [--calls 20] [--rounds 5] [--scan-rounds 5] [--out FILE]

Setup: embedded PostgreSQL, `python -m services.data` with every bundled data set (EURUSD H1, GOOG,
SP500, NASDAQ and MSFT D1; all active), then `python -m services.pattern` with its own KITRADING_HOME,
no first-start training, scheduler and event retraining off, and the tests' tiny TCN (window 32, 8
channels, 3 levels, 20 steps), which the bench trains once with `TrainPatternModel` so that the TCN
engine can be measured too; and an Envoy gateway routing to those two services only. The in-process
paths run `PatternDomain` in this process on a copy of the service's registry directory (the same TCN
version, checked) and the candles the service reads (the same patterns, checked).

(a) `DetectSymbolPatterns EURUSD` (lookback 200, the default) p50/p99, for the rules engine (the
    default) and the TCN: HTTP JSON through the gateway, native gRPC through the gateway, direct gRPC,
    and `PatternDomain.detect_symbol` in-process on in-memory candles (for the rules also on a Data
    source over gRPC, the service's own kind of source). The floor: a trivial call (`GetSymbol EURUSD`
    on Data) direct, through the gateway over gRPC and over HTTP JSON. All paths are interleaved round
    by round. Target (issue 12): gateway p50 <= 1.2x the in-process p50, for gRPC and for HTTP JSON.
(b) Every active symbol: one `ScanPatterns` against one `DetectSymbolPatterns` per symbol in sequence,
    direct gRPC (target: the scan >= 5x faster), with the in-process `PatternDomain.scan` as the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runtime.threads import limit_math_threads

limit_math_threads(1)  # the service's serving budget: one math thread

import grpc  # noqa: E402
import httpx  # noqa: E402

from bench._mesh import free_port, wait_serving  # noqa: E402
from bench.gateway_latency import added_per_round  # noqa: E402
from bench.regime_serving import summary, timed, wait_http  # noqa: E402
from gateway.envoy_config import GatewaySettings  # noqa: E402
from gateway.run import build_config, start_envoy, stop_envoy, wait_until_ready, write_config  # noqa: E402
from kitrading.common.v1 import job_pb2, market_pb2  # noqa: E402
from kitrading.data.v1 import request_response_pb2 as data_rr  # noqa: E402
from kitrading.data.v1 import resources_pb2 as data_pb  # noqa: E402
from kitrading.data.v1 import service_pb2_grpc as data_grpc  # noqa: E402
from kitrading.mesh import SERVICES  # noqa: E402
from kitrading.pattern.v1 import request_response_pb2 as rr  # noqa: E402
from kitrading.pattern.v1 import resources_pb2 as pb  # noqa: E402
from kitrading.pattern.v1 import service_pb2_grpc as pattern_grpc  # noqa: E402
from services.data import convert as data_cv  # noqa: E402
from services.data.samples import SAMPLES, load_candles  # noqa: E402
from services.pattern.service import PatternDomain, Result  # noqa: E402
from services.pattern.settings import PatternSettings  # noqa: E402
from services.training.data_client import DataServiceSource  # noqa: E402
from services.training.sources import InMemoryCandleSource, SymbolInfo  # noqa: E402

SYMBOL = "EURUSD"
TARGET_RATIO = 1.2
TARGET_SCAN = 5.0
ENV = {
    "KITRADING_PATTERN_TRAIN_ON_START": "false",
    "KITRADING_PATTERN_SCHEDULE": "false",
    "KITRADING_PATTERN_EVENT_RETRAIN": "false",
    "KITRADING_PATTERN_USE_GPU": "false",
    "KITRADING_PATTERN_WINDOW": "32",
    "KITRADING_PATTERN_CHANNELS": "8",
    "KITRADING_PATTERN_LEVELS": "3",
    "KITRADING_PATTERN_MAX_STEPS": "20",
    "KITRADING_PATTERN_BATCH_SIZE": "32",
    "KITRADING_PATTERN_TRAIN_BARS": "1500",
    "KITRADING_PATTERN_WORKER_NICE": "0",
    "KITRADING_PATTERN_WORKER_IDLE_SECONDS": "5",
    "KITRADING_METRICS": "false",
    "KITRADING_LOG_LEVEL": "WARNING",
    "KITRADING_DATA_IMPORT_SAMPLES": "false",
}
ENGINES = {"rules": pb.PATTERN_ENGINE_CHOICE_RULES, "tcn": pb.PATTERN_ENGINE_CHOICE_TCN}


@dataclass
class Stack:
    home: Path  # the bench's own directory (PostgreSQL, logs, the in-process copy of the registry)
    pattern_home: Path  # the pattern service's KITRADING_HOME
    data_target: str
    pattern_target: str
    gateway_target: str
    gateway_url: str
    symbols: list[str]
    setup_s: dict[str, float] = field(default_factory=dict)


def seed_data(target: str) -> list[str]:
    """Every bundled data set, active, at its own timeframe; the symbols seeded."""
    candles = load_candles(SAMPLES)
    with grpc.insecure_channel(target) as channel:
        stub = data_grpc.DataServiceStub(channel)
        for spec in SAMPLES:
            if spec.symbol not in candles:
                continue
            stub.CreateSymbol(
                data_rr.CreateSymbolRequest(
                    symbol=data_pb.Symbol(
                        symbol=spec.symbol,
                        asset_class=market_pb2.AssetClass.Value(f"ASSET_CLASS_{spec.asset_class.value}"),
                        active=True,
                    )
                ),
                timeout=30,
            )
            stub.UpsertCandles(
                data_rr.UpsertCandlesRequest(
                    symbol=spec.symbol,
                    timeframe=market_pb2.Timeframe.Value(f"TIMEFRAME_{spec.timeframe.value}"),
                    candles=[data_cv.candle_out(c) for c in candles[spec.symbol]],
                ),
                timeout=300,
            )
    return [s.symbol for s in SAMPLES if s.symbol in candles]


def train_tcn(target: str, timeout_s: float) -> str:
    """One tiny TCN over every active symbol (TrainPatternModel, waited for); its version."""
    with grpc.insecure_channel(target) as channel:
        stub = pattern_grpc.PatternServiceStub(channel)
        job = stub.TrainPatternModel(rr.TrainPatternModelRequest(force=True), timeout=timeout_s).job
        if job.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"TCN training {job.job_id} ended {job.state}: {job.error}")
        card = stub.GetPatternModel(rr.GetPatternModelRequest(), timeout=30)
        if not card.ready:
            raise RuntimeError(f"no TCN published after training: {card.status_message}")
        return str(card.model.version)


@contextmanager
def stack(train_timeout_s: float = 600.0) -> Iterator[Stack]:
    """PostgreSQL, Data (seeded), pattern (one tiny TCN trained) and Envoy; torn down after."""
    from services.runtime.embedded import start_embedded_postgres

    home = Path(tempfile.mkdtemp(prefix="kitrading-bench-pattern-"))
    pattern_home = home / "pattern-home"
    procs: list[subprocess.Popen[bytes]] = []
    envoy: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        db_url = start_embedded_postgres(home / "postgres", cleanup_mode="delete")
        data_port, pattern_port, gw_port, admin_port = free_port(), free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update(
            ENV,
            KITRADING_HOME=str(home / "data-home"),
            KITRADING_DATABASE_URL=db_url,
            KITRADING_DATA_PORT=str(data_port),
            KITRADING_PATTERN_PORT=str(pattern_port),
        )
        log = (home / "services.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.data"], env=env, stderr=log))
        data_target = f"127.0.0.1:{data_port}"
        wait_serving(data_target, "kitrading.data.v1.DataService")
        symbols = seed_data(data_target)
        t1 = time.perf_counter()
        pattern_env = {**env, "KITRADING_HOME": str(pattern_home)}
        procs.append(
            subprocess.Popen([sys.executable, "-m", "services.pattern"], env=pattern_env, stderr=log)
        )
        pattern_target = f"127.0.0.1:{pattern_port}"
        wait_serving(pattern_target, "kitrading.pattern.v1.PatternService")
        settings = GatewaySettings.from_env(
            env, port=gw_port, admin_port=admin_port, listen_address="127.0.0.1", reflection_port=None
        )
        routed = [s for s in SERVICES if s.name in ("data", "pattern")]
        config = build_config(settings, registry=routed, env=env)
        path = write_config(home / "envoy.yaml", config)
        envoy = start_envoy(path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, concurrency=1)
        wait_until_ready(admin_port=admin_port, process=envoy)
        t2 = time.perf_counter()
        train_tcn(pattern_target, train_timeout_s)
        t3 = time.perf_counter()
        for prefix in ("data", "tcn"):
            wait_http(f"http://127.0.0.1:{gw_port}/{prefix}/health")
        yield Stack(
            home,
            pattern_home,
            data_target,
            pattern_target,
            f"127.0.0.1:{gw_port}",
            f"http://127.0.0.1:{gw_port}",
            symbols,
            {
                "data_s": round(t1 - t0, 1),
                "pattern_s": round(t2 - t1, 1),
                "tcn_training_s": round(t3 - t2, 1),
            },
        )
    finally:
        if envoy is not None:
            stop_envoy(envoy)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def local_domain(s: Stack, source: Any) -> PatternDomain:
    """A `PatternDomain` in this process on a copy of the service's registry (never started: it only
    serves the published version)."""
    home = s.home / "in-process"
    models = PatternSettings(home=home).models_dir
    if not models.exists():
        shutil.copytree(PatternSettings(home=s.pattern_home).models_dir, models)
    return PatternDomain(PatternSettings(home=home, use_gpu=False), source)


def signature(patterns: Any) -> list[tuple[str, str, float, int]]:
    """What must agree between an RPC's patterns and the domain's: type, engine, confidence, end."""
    out = []
    for p in patterns:
        if isinstance(p, pb.DetectedPattern):
            out.append(
                (p.pattern_type, pb.PatternEngine.Name(p.engine), round(p.confidence, 4), p.end_time.seconds)
            )
        else:
            engine = f"PATTERN_ENGINE_{p.engine.upper()}"
            out.append(
                (p.detection.slug, engine, round(p.detection.confidence, 4), int(p.end_time.timestamp()))
            )
    return sorted(out)


async def bench_detect(
    s: Stack, stubs: dict[str, Any], http: httpx.Client, memory: PatternDomain, calls: int, rounds: int
) -> dict[str, Any]:
    data_source = DataServiceSource(s.data_target)
    await data_source.start()
    over_data = local_domain(s, data_source)
    symbol_request = data_rr.GetSymbolRequest(symbol=SYMBOL)
    requests = {name: rr.DetectSymbolPatternsRequest(symbol=SYMBOL, engine=e) for name, e in ENGINES.items()}
    urls = {
        name: f"/api/v1/patterns/{SYMBOL}?engine={pb.PatternEngineChoice.Name(e)}"
        for name, e in ENGINES.items()
    }
    same: dict[str, bool] = {}
    models: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name, request in requests.items():
        reply = stubs["pattern direct"].DetectSymbolPatterns(request, timeout=60).detection
        result: Result = await memory.detect_symbol(SYMBOL, engine=name)
        body = (await asyncio.to_thread(http.get, urls[name])).raise_for_status().json()
        same[name] = (
            signature(reply.patterns) == signature(result.patterns)
            and reply.model_version == result.model_version
            and body["detection"]["modelVersion"] == result.model_version
            and len(body["detection"].get("patterns", [])) == len(reply.patterns)
        )
        models[name], counts[name] = result.model_version, len(result.patterns)

    def rpc(stub: str, engine: str) -> Callable[[], object]:
        return lambda: stubs[stub].DetectSymbolPatterns(requests[engine], timeout=60)

    def domain(on: PatternDomain, engine: str) -> Callable[[], Awaitable[Result]]:
        return lambda: on.detect_symbol(SYMBOL, engine=engine)

    def get(url: str) -> Callable[[], object]:
        return lambda: http.get(url).raise_for_status()

    paths: dict[str, Callable[[], Awaitable[object] | object]] = {
        "trivial direct gRPC": lambda: stubs["data direct"].GetSymbol(symbol_request, timeout=5),
        "trivial gateway gRPC": lambda: stubs["data gateway"].GetSymbol(symbol_request, timeout=5),
        "trivial gateway HTTP JSON": get(f"/api/v1/symbols/{SYMBOL}"),
    }
    for engine in ENGINES:
        paths |= {
            f"{engine} direct gRPC": rpc("pattern direct", engine),
            f"{engine} gateway gRPC": rpc("pattern gateway", engine),
            f"{engine} gateway HTTP JSON": get(urls[engine]),
            f"{engine} in-process, in-memory candles": domain(memory, engine),
        }
    paths["rules in-process, Data source over gRPC"] = domain(over_data, "rules")
    for call in paths.values():  # warm up connections, the loaded TCN and the follow-through cache
        await timed(call, max(3, min(10, calls)))
    per_round: dict[str, list[list[float]]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            per_round[name].append(await timed(call, calls))
    await data_source.close()
    out = {name: summary([x for r in v for x in r]) for name, v in per_round.items()}

    def p50(name: str) -> float:
        return out[name]["p50_ms"]

    checks: dict[str, dict[str, Any]] = {}
    for engine in ENGINES:
        base = p50(f"{engine} in-process, in-memory candles")
        for kind in ("gRPC", "HTTP JSON"):
            ratio = p50(f"{engine} gateway {kind}") / base
            floor = p50(f"trivial gateway {kind}") - p50("trivial direct gRPC")
            checks[f"{engine} {kind}"] = {
                "ratio": round(ratio, 3),
                "added_p50_ms": round(p50(f"{engine} gateway {kind}") - base, 3),
                "allowed_added_ms": round((TARGET_RATIO - 1) * base, 3),
                # the trivial call's own cost: what a round trip of this kind costs with no work in it
                "trivial_call_p50_ms": p50(f"trivial gateway {kind}"),
                "trivial_gateway_added_p50_ms": round(floor, 3),
                "direct_over_in_process": round(p50(f"{engine} direct gRPC") / base, 3),
                "met": ratio <= TARGET_RATIO,
            }
    return {
        "paths": out,
        "same_patterns_rpc_http_in_process": same,
        "model_version": models,
        "patterns": counts,
        "bars": len(await memory.source.fetch(SYMBOL, "H1")),
        "gateway_over_direct_p50_ms": {
            f"{engine} {kind}": added_per_round(
                per_round, f"{engine} gateway {kind}", f"{engine} direct gRPC"
            )
            for engine in ENGINES
            for kind in ("gRPC", "HTTP JSON")
        },
        "candle_read_p50_ms": round(
            p50("rules in-process, Data source over gRPC") - p50("rules in-process, in-memory candles"), 3
        ),
        "target": checks,
    }


async def bench_scan(
    stub: pattern_grpc.PatternServiceStub, memory: PatternDomain, symbols: list[str], rounds: int
) -> dict[str, Any]:
    requests = [rr.DetectSymbolPatternsRequest(symbol=s) for s in symbols]
    replies: dict[str, dict[str, list[tuple[str, str, float, int]]]] = {}

    def scan() -> None:
        reply = stub.ScanPatterns(rr.ScanPatternsRequest(), timeout=300)
        if reply.errors:
            raise RuntimeError(f"scan errors: {list(reply.errors)}")
        replies["scan"] = {d.symbol: signature(d.patterns) for d in reply.detections}

    def one_by_one() -> None:
        replies["per symbol"] = {
            r.symbol: signature(stub.DetectSymbolPatterns(r, timeout=60).detection.patterns) for r in requests
        }

    async def in_process() -> None:
        results, _ = await memory.scan()
        replies["in-process"] = {r.symbol: signature(r.patterns) for r in results}

    paths: dict[str, Callable[[], Awaitable[object] | object]] = {
        "one ScanPatterns": scan,
        f"{len(symbols)} sequential DetectSymbolPatterns": one_by_one,
        "in-process PatternDomain.scan": in_process,
    }
    for call in paths.values():  # warm up
        await timed(call, 1)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            samples[name] += await timed(call, 1)
    same = replies["scan"] == replies["per symbol"] == replies["in-process"]
    med = {name: statistics.median(v) for name, v in samples.items()}
    sequential = med[f"{len(symbols)} sequential DetectSymbolPatterns"]
    speedup = sequential / med["one ScanPatterns"]
    return {
        "symbols": symbols,
        "rounds": rounds,
        "median_ms": {name: round(v, 2) for name, v in med.items()},
        "all_ms": {name: [round(x, 2) for x in v] for name, v in samples.items()},
        "same_patterns_everywhere": same,
        "scan_speedup": round(speedup, 3),
        # the most any one-call scan could gain while each symbol's detection costs what it does now
        "speedup_bound_by_in_process_scan": round(sequential / med["in-process PatternDomain.scan"], 3),
        "scan_vs_in_process": round(med["one ScanPatterns"] / med["in-process PatternDomain.scan"], 3),
        "target_ge": TARGET_SCAN,
        "met": speedup >= TARGET_SCAN,
    }


async def run(calls: int, rounds: int, scan_rounds: int) -> dict[str, Any]:
    with ExitStack() as es:
        s = es.enter_context(stack())

        def channel(target: str) -> grpc.Channel:
            return es.enter_context(grpc.insecure_channel(target))

        stubs: dict[str, Any] = {
            "data direct": data_grpc.DataServiceStub(channel(s.data_target)),
            "data gateway": data_grpc.DataServiceStub(channel(s.gateway_target)),
            "pattern direct": pattern_grpc.PatternServiceStub(channel(s.pattern_target)),
            "pattern gateway": pattern_grpc.PatternServiceStub(channel(s.gateway_target)),
        }
        http = es.enter_context(httpx.Client(base_url=s.gateway_url, timeout=60))
        limit = PatternSettings().history_bars
        reader = DataServiceSource(s.data_target, cache=False)
        await reader.start()
        source = InMemoryCandleSource()
        for info in await reader.list_symbols():  # what the service reads
            frame = info.timeframe or "H1"
            source.put(
                SymbolInfo(info.symbol, info.asset_class, info.active, frame),
                frame,
                await reader.fetch(info.symbol, frame, limit=limit),
            )
        await reader.close()
        memory = local_domain(s, source)
        detect = await bench_detect(s, stubs, http, memory, calls, rounds)
        scan = await bench_scan(stubs["pattern direct"], memory, s.symbols, scan_rounds)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "setup_s": s.setup_s,
        "training": {k: v for k, v in ENV.items() if k.startswith("KITRADING_PATTERN_")},
        "a_detect": detect,
        "b_scan": scan,
        "targets_met": {**{f"a_{k}": v["met"] for k, v in detect["target"].items()}, "b_scan": scan["met"]},
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(result: dict[str, Any]) -> None:
    a, b = result["a_detect"], result["b_scan"]
    m = result["machine"]
    print(
        f"cpus {m['cpus']}, python {m['python']}, load {m['load_average']}, setup {result['setup_s']}, "
        f"{a['bars']} {SYMBOL} H1 bars, models {a['model_version']}, patterns {a['patterns']}, "
        f"same patterns over gRPC, HTTP and in-process: {a['same_patterns_rpc_http_in_process']}\n"
    )
    print(f"| (a) DetectSymbolPatterns {SYMBOL} / floor | p50 ms | p99 ms | calls |")
    print("|---|---:|---:|---:|")
    for name, p in a["paths"].items():
        print(f"| {name} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | {p['n']} |")
    print(f"\n| (b) every active symbol ({len(b['symbols'])}), direct gRPC | median ms |")
    print("|---|---:|")
    for name, v in b["median_ms"].items():
        print(f"| {name} | {v:.2f} |")
    print(f"\nsame patterns on every path: {b['same_patterns_everywhere']}\n")
    print("| target (issue 12) | measured | floor | |")
    print("|---|---:|---|---|")
    for name, t in a["target"].items():
        print(
            f"| {name} through the gateway p50 <= {TARGET_RATIO:g}x in-process p50 | {t['ratio']:.3f}x "
            f"({t['added_p50_ms']:+.3f} ms; allowed {t['allowed_added_ms']:+.3f} ms) | trivial call "
            f"{t['trivial_call_p50_ms']:.3f} ms, its gateway hop "
            f"{t['trivial_gateway_added_p50_ms']:+.3f} ms; "
            f"direct {t['direct_over_in_process']:.3f}x | {verdict(t['met'])} |"
        )
    print(
        f"| one ScanPatterns >= {TARGET_SCAN:g}x faster than one call per symbol | {b['scan_speedup']}x | "
        f"bound by the in-process scan: {b['speedup_bound_by_in_process_scan']}x | {verdict(b['met'])} |"
    )
    hop = a["gateway_over_direct_p50_ms"]
    print(
        "\nthrough the gateway over direct gRPC, p50 per round (median [min, max]): "
        + ", ".join(f"{k} {v['median']:+.3f} [{v['min']:+.3f}, {v['max']:+.3f}] ms" for k, v in hop.items())
        + f"; reading the candles from Data over gRPC costs {a['candle_read_p50_ms']:+.3f} ms in-process; "
        f"the scan takes {b['scan_vs_in_process']}x the in-process scan"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="DetectSymbolPatterns calls per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of (a)")
    parser.add_argument("--scan-rounds", type=int, default=5, help="interleaved rounds of (b)")
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.calls, args.rounds, args.scan_rounds))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    report(result)
    return result


if __name__ == "__main__":
    main()
