"""Unary latency p50/p99: direct gRPC vs through the Envoy gateway (gRPC and HTTP JSON), one run.

    .venv/bin/python -m bench.gateway_latency [--rounds 10] [--calls 300]

A real Data service process (embedded PostgreSQL) and a real Envoy on free ports. The same RPC
(`GetSymbol EURUSD`) is called sequentially by one client; the three paths are interleaved round by
round so machine noise hits them alike. Target (issue 2): the gateway adds at most 0.3 ms at p50
for native gRPC. HTTP JSON is reported against direct gRPC too, though it also pays JSON encoding
and a different client stack (httpx).

A fourth path, a bare Envoy (one listener, the router, one HTTP/2 cluster: no transcoder, health
filters, grpc-web, access log or limits), separates what our gateway config costs from what any
Envoy hop costs on the machine. A fifth, a TCP relay in C (`bench/tcp_relay.c`, compiled with the
machine's `cc`; left out with a note where there is none), copies bytes without parsing them: what
it adds is the floor of any extra hop here (loopback writes and wake-ups), before HTTP/2 work.

CPU per call (user + system time of each process over its path's calls) shows where a hop's time
goes: Envoy's own work per proxied call, against the Data service's and the client's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import yaml

from bench._mesh import data_and_gateway, free_port
from gateway.run import envoy_binary, stop_envoy, wait_until_ready
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc

TARGET_ADDED_P50_MS = 0.3


def bare_envoy_config(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """The smallest Envoy that proxies gRPC to one HTTP/2 upstream."""
    router = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "bare",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}],
    }
    http2 = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bare",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2
                    },
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        },
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@contextmanager
def bare_envoy(upstream_port: int) -> Iterator[tuple[int, int]]:
    """(port, pid) of a bare Envoy in front of `upstream_port`."""
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bare.yaml"
        path.write_text(yaml.safe_dump(bare_envoy_config(port, admin, upstream_port)))
        process = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "error",
            ]
        )
        try:
            wait_until_ready(admin_port=admin, process=process)
            yield port, process.pid
        finally:
            stop_envoy(process)


@contextmanager
def tcp_relay(upstream_port: int) -> Iterator[tuple[int, int] | None]:
    """(port, pid) of `bench/tcp_relay.c` in front of `upstream_port`; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("no C compiler (cc): the TCP relay path is left out", file=sys.stderr)
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "tcp_relay"
        source = Path(__file__).with_name("tcp_relay.c")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
        port = free_port()
        process = subprocess.Popen(
            [str(binary), str(port), str(upstream_port)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"tcp_relay did not start (exit {process.wait(5)})")
            yield port, process.pid
        finally:
            process.kill()
            process.wait(5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def added_per_round(
    samples: dict[str, list[list[float]]], path: str, base: str = "direct gRPC"
) -> dict[str, float]:
    """p50(path) - p50(base) in each round (the two ran back to back): median, min and max over rounds."""
    diffs = [
        percentile(mine, 50) - percentile(theirs, 50)
        for mine, theirs in zip(samples[path], samples[base], strict=True)
    ]
    return {
        "median": round(statistics.median(diffs), 3),
        "min": round(min(diffs), 3),
        "max": round(max(diffs), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with ExitStack() as stack:
        m = stack.enter_context(data_and_gateway())
        data_port = int(m.data_target.rsplit(":", 1)[1])
        bare_port, bare_pid = stack.enter_context(bare_envoy(data_port))
        relay = stack.enter_context(tcp_relay(data_port))

        def stub(target: str) -> service_pb2_grpc.DataServiceStub:
            return service_pb2_grpc.DataServiceStub(stack.enter_context(grpc.insecure_channel(target)))

        direct = stub(m.data_target)
        via_gateway = stub(f"127.0.0.1:{m.gateway_port}")
        via_bare = stub(f"127.0.0.1:{bare_port}")
        direct.CreateSymbol(
            rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", asset_class=market_pb2.ASSET_CLASS_FX))
        )
        http = stack.enter_context(httpx.Client(base_url=m.gateway_url))
        request = rr.GetSymbolRequest(symbol="EURUSD")
        paths: dict[str, Callable[[], object]] = {"direct gRPC": lambda: direct.GetSymbol(request, timeout=5)}
        processes = {"client": psutil.Process(), "data service": psutil.Process(m.data_pid)}
        if relay is not None:
            via_relay = stub(f"127.0.0.1:{relay[0]}")
            paths["TCP relay gRPC"] = lambda: via_relay.GetSymbol(request, timeout=5)
            processes["TCP relay"] = psutil.Process(relay[1])
        paths["bare Envoy gRPC"] = lambda: via_bare.GetSymbol(request, timeout=5)
        paths["gateway gRPC"] = lambda: via_gateway.GetSymbol(request, timeout=5)
        paths["gateway HTTP JSON"] = lambda: http.get("/api/v1/symbols/EURUSD").raise_for_status()
        processes["gateway Envoy"] = psutil.Process(m.envoy_pid)
        processes["bare Envoy"] = psutil.Process(bare_pid)
        for call in paths.values():  # warm up connections and caches
            timed(call, 200)
        rounds: dict[str, list[list[float]]] = {name: [] for name in paths}
        cpu: dict[str, dict[str, float]] = {path: dict.fromkeys(processes, 0.0) for path in paths}
        for _ in range(args.rounds):
            for name, call in paths.items():
                before = {p: cpu_seconds(proc) for p, proc in processes.items()}
                rounds[name].append(timed(call, args.calls))
                for p, proc in processes.items():
                    cpu[name][p] += cpu_seconds(proc) - before[p]
    samples = {name: [x for r in per_round for x in r] for name, per_round in rounds.items()}
    result = {
        name: {
            "p50_ms": round(percentile(v, 50), 3),
            "p99_ms": round(percentile(v, 99), 3),
            "mean_ms": round(statistics.fmean(v), 3),
            "calls": len(v),
        }
        for name, v in samples.items()
    }
    cpu_us = {
        name: {p: round(seconds / len(samples[name]) * 1e6) for p, seconds in per_process.items()}
        for name, per_process in cpu.items()
    }
    base = result["direct gRPC"]["p50_ms"]
    added = {name: round(r["p50_ms"] - base, 3) for name, r in result.items() if name != "direct gRPC"}
    per_round = {name: added_per_round(rounds, name) for name in added}
    summary = {
        "paths": result,
        "cpu_us_per_call": cpu_us,
        "added_p50_ms": added,
        "added_p50_per_round_ms": per_round,
        "gateway_grpc_added_p50_ms": added["gateway gRPC"],
        "gateway_grpc_ratio_p50": round(result["gateway gRPC"]["p50_ms"] / base, 3),
        "gateway_http_added_p50_ms": added["gateway HTTP JSON"],
        "gateway_http_ratio_p50": round(result["gateway HTTP JSON"]["p50_ms"] / base, 3),
        "bare_envoy_added_p50_ms": added["bare Envoy gRPC"],
        "tcp_relay_added_p50_ms": added.get("TCP relay gRPC"),
        "gateway_config_added_over_bare_p50_ms": round(added["gateway gRPC"] - added["bare Envoy gRPC"], 3),
        "target_added_p50_ms": TARGET_ADDED_P50_MS,
        "target_met": added["gateway gRPC"] <= TARGET_ADDED_P50_MS,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{'path':<20}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'calls':>8}"
        "   adds at p50 (per round: median [min, max])"
    )
    for name, r in result.items():
        extra = ""
        if name in added:
            spread = per_round[name]
            low, high = spread["min"], spread["max"]
            extra = f"   {added[name]:+.3f} ({spread['median']:+.3f} [{low:+.3f}, {high:+.3f}])"
        print(
            f"{name:<20}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['mean_ms']:>10.3f}{r['calls']:>8}{extra}"
        )
    print("\nCPU microseconds per call (user + system), by process:")
    print(f"{'path':<20}" + "".join(f"{p:>15}" for p in processes))
    for name, per in cpu_us.items():
        print(f"{name:<20}" + "".join(f"{per[p]:>15}" for p in processes))
    print(
        f"\ngateway gRPC adds {added['gateway gRPC']:.3f} ms at p50 "
        f"(ratio {summary['gateway_grpc_ratio_p50']}x; "
        f"target <= {TARGET_ADDED_P50_MS} ms: {'met' if summary['target_met'] else 'NOT met'})"
    )
    print(
        f"gateway HTTP JSON adds {added['gateway HTTP JSON']:.3f} ms at p50 vs direct gRPC "
        f"(ratio {summary['gateway_http_ratio_p50']}x)"
    )


if __name__ == "__main__":
    main()
