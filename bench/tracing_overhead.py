"""What tracing costs per call: the same Data service + gateway with tracing off and on, one run.

    .venv/bin/python -m bench.tracing_overhead [--rounds 8] [--calls 300] [--json]

Two real meshes of one Data service (embedded PostgreSQL) behind a real Envoy from `gateway.run`:
`off` is the default (no OTEL_* variable: nothing of OpenTelemetry is imported, the runtime tests
one module flag per call); `on` exports every span (Envoy's tracer, the server interceptor, 100 %
sampled) over OTLP/gRPC to a collector in this process that counts and drops them. The same read
(`GetSymbol EURUSD`) is called sequentially, direct gRPC and through the gateway (native gRPC and
HTTP JSON), the paths interleaved round by round so machine noise hits them alike.

Off can only differ from "no tracing code at all" by the flag tests on the call path: their cost is
timed in-process too and given as a share of a direct call (the floor: the same call on `off`).
"""

from __future__ import annotations

import argparse
import functools
import json
import threading
import timeit
from collections.abc import Callable
from concurrent import futures
from contextlib import ExitStack
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench._mesh import data_and_gateway, free_port
from bench.gateway_latency import added_per_round, percentile, timed
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.runtime import tracing

REQUEST = rr.GetSymbolRequest(symbol="EURUSD")


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_get(client: httpx.Client) -> None:
    client.get("/api/v1/symbols/EURUSD").raise_for_status()


def flag_tests_ns() -> float:
    """Nanoseconds of the off path's checks per call (three `tracing.ENABLED` reads)."""
    loops = 1_000_000
    seconds = timeit.timeit(
        "tracing.ENABLED; tracing.ENABLED; tracing.ENABLED", globals={"tracing": tracing}, number=loops
    )
    return seconds / loops * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    sink = Sink()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, collector)
    collector_port = free_port()
    collector.add_insecure_port(f"127.0.0.1:{collector_port}")
    collector.start()
    on_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    paths: dict[str, Callable[[], object]] = {}
    with ExitStack() as stack:
        for mode, env in (("off", {}), ("on", on_env)):
            m = stack.enter_context(data_and_gateway(extra_env=env))
            direct = service_pb2_grpc.DataServiceStub(
                stack.enter_context(grpc.insecure_channel(m.data_target))
            )
            gateway = service_pb2_grpc.DataServiceStub(
                stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{m.gateway_port}"))
            )
            http = stack.enter_context(httpx.Client(base_url=m.gateway_url))
            direct.CreateSymbol(
                rr.CreateSymbolRequest(
                    symbol=pb.Symbol(symbol="EURUSD", asset_class=market_pb2.ASSET_CLASS_FX)
                )
            )
            paths[f"{mode} direct gRPC"] = functools.partial(direct.GetSymbol, REQUEST, timeout=5)
            paths[f"{mode} gateway gRPC"] = functools.partial(gateway.GetSymbol, REQUEST, timeout=5)
            paths[f"{mode} gateway HTTP"] = functools.partial(_http_get, http)
        for call in paths.values():
            timed(call, 200)
        rounds: dict[str, list[list[float]]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, call in paths.items():
                rounds[name].append(timed(call, args.calls))
    collector.stop(1)
    samples = {name: [x for r in rounds[name] for x in r] for name in paths}
    result = {
        name: {"p50_ms": round(percentile(v, 50), 3), "p99_ms": round(percentile(v, 99), 3), "calls": len(v)}
        for name, v in samples.items()
    }
    kinds = ("direct gRPC", "gateway gRPC", "gateway HTTP")
    on_vs_off: dict[str, dict[str, Any]] = {
        kind: {
            "ratio_p50": round(result[f"on {kind}"]["p50_ms"] / result[f"off {kind}"]["p50_ms"], 3),
            "added_p50_per_round_ms": added_per_round(rounds, f"on {kind}", f"off {kind}"),
        }
        for kind in kinds
    }
    flags_ns = flag_tests_ns()
    floor_ms = result["off direct gRPC"]["p50_ms"]
    summary: dict[str, Any] = {
        "paths": result,
        "on_vs_off": on_vs_off,
        "spans_exported_on": sink.spans,
        "off_path_flag_tests_ns": round(flags_ns, 1),
        "off_path_share_of_direct_call": round(flags_ns / (floor_ms * 1e6), 7),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'path':<20}{'p50 ms':>10}{'p99 ms':>10}{'calls':>8}")
    for name, r in result.items():
        print(f"{name:<20}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['calls']:>8}")
    print("\ntracing on vs off (p50 ratio; per round: median [min, max] ms added)")
    for kind, v in on_vs_off.items():
        spread = v["added_p50_per_round_ms"]
        low, high = spread["min"], spread["max"]
        print(f"{kind:<20}{v['ratio_p50']:>8.3f}x   {spread['median']:+.3f} [{low:+.3f}, {high:+.3f}]")
    print(f"\nspans exported with tracing on: {sink.spans}")
    share = flags_ns / (floor_ms * 1e6)
    print(
        f"off: the flag tests cost {flags_ns:.1f} ns per call, {share * 100:.5f} % of a direct call "
        f"({floor_ms:.3f} ms p50): not measurable at the millisecond scale"
    )


if __name__ == "__main__":
    main()
