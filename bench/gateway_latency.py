"""Unary latency p50/p99: direct gRPC vs through the Envoy gateway (gRPC and HTTP JSON), one run.

    .venv/bin/python -m bench.gateway_latency [--rounds 10] [--calls 300]

A real Data service process (embedded PostgreSQL) and a real Envoy on free ports. The same RPC
(`GetSymbol EURUSD`) is called sequentially by one client; the three paths are interleaved round by
round so machine noise hits them alike. Target (issue 2): the gateway adds at most 0.3 ms at p50
for native gRPC. HTTP JSON is reported against direct gRPC too, though it also pays JSON encoding
and a different client stack (httpx).

A fourth path, a bare Envoy (one listener, the router, one HTTP/2 cluster: no transcoder, health
filters, grpc-web, access log or limits), separates what our gateway config costs from what any
extra proxy hop costs on the machine.

CPU per call (user + system time of each process over its path's calls) shows where a hop's time
goes: Envoy's own work per proxied call, against the Data service's and the client's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with data_and_gateway() as m, bare_envoy(int(m.data_target.rsplit(":", 1)[1])) as (bare_port, bare_pid):
        direct_channel = grpc.insecure_channel(m.data_target)
        gateway_channel = grpc.insecure_channel(f"127.0.0.1:{m.gateway_port}")
        bare_channel = grpc.insecure_channel(f"127.0.0.1:{bare_port}")
        direct = service_pb2_grpc.DataServiceStub(direct_channel)
        via_gateway = service_pb2_grpc.DataServiceStub(gateway_channel)
        via_bare = service_pb2_grpc.DataServiceStub(bare_channel)
        direct.CreateSymbol(
            rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="EURUSD", asset_class=market_pb2.ASSET_CLASS_FX))
        )
        http = httpx.Client(base_url=m.gateway_url)
        request = rr.GetSymbolRequest(symbol="EURUSD")
        paths: dict[str, Callable[[], object]] = {
            "direct gRPC": lambda: direct.GetSymbol(request, timeout=5),
            "bare Envoy gRPC": lambda: via_bare.GetSymbol(request, timeout=5),
            "gateway gRPC": lambda: via_gateway.GetSymbol(request, timeout=5),
            "gateway HTTP JSON": lambda: http.get("/api/v1/symbols/EURUSD").raise_for_status(),
        }
        for call in paths.values():  # warm up connections, caches, JIT-free but still
            timed(call, 200)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        processes = {
            "client": psutil.Process(),
            "data service": psutil.Process(m.data_pid),
            "gateway Envoy": psutil.Process(m.envoy_pid),
            "bare Envoy": psutil.Process(bare_pid),
        }
        cpu: dict[str, dict[str, float]] = {path: dict.fromkeys(processes, 0.0) for path in paths}
        for _ in range(args.rounds):
            for name, call in paths.items():
                before = {p: cpu_seconds(proc) for p, proc in processes.items()}
                samples[name] += timed(call, args.calls)
                for p, proc in processes.items():
                    cpu[name][p] += cpu_seconds(proc) - before[p]
        http.close()
        direct_channel.close()
        gateway_channel.close()
        bare_channel.close()
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
    added = round(result["gateway gRPC"]["p50_ms"] - base, 3)
    added_http = round(result["gateway HTTP JSON"]["p50_ms"] - base, 3)
    added_bare = round(result["bare Envoy gRPC"]["p50_ms"] - base, 3)
    summary = {
        "paths": result,
        "cpu_us_per_call": cpu_us,
        "gateway_grpc_added_p50_ms": added,
        "gateway_grpc_ratio_p50": round(result["gateway gRPC"]["p50_ms"] / base, 3),
        "gateway_http_added_p50_ms": added_http,
        "gateway_http_ratio_p50": round(result["gateway HTTP JSON"]["p50_ms"] / base, 3),
        "bare_envoy_added_p50_ms": added_bare,
        "gateway_config_added_over_bare_p50_ms": round(added - added_bare, 3),
        "target_added_p50_ms": TARGET_ADDED_P50_MS,
        "target_met": added <= TARGET_ADDED_P50_MS,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'path':<20}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'calls':>8}")
    for name, r in result.items():
        print(f"{name:<20}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['mean_ms']:>10.3f}{r['calls']:>8}")
    print("\nCPU microseconds per call (user + system), by process:")
    print(f"{'path':<20}" + "".join(f"{p:>15}" for p in processes))
    for name, per in cpu_us.items():
        print(f"{name:<20}" + "".join(f"{per[p]:>15}" for p in processes))
    print(
        f"\ngateway gRPC adds {added:.3f} ms at p50 (ratio {summary['gateway_grpc_ratio_p50']}x; "
        f"target <= {TARGET_ADDED_P50_MS} ms: {'met' if summary['target_met'] else 'NOT met'})"
    )
    print(
        f"gateway HTTP JSON adds {added_http:.3f} ms at p50 vs direct gRPC "
        f"(ratio {summary['gateway_http_ratio_p50']}x)"
    )


if __name__ == "__main__":
    main()
