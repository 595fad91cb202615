"""What the API-key check and the rate limits add per call: the same gateway with and without them,
p50 side by side.

    .venv/bin/python -m bench.gateway_auth [--rounds 10] [--calls 300] [--json]

Three real Envoys from `gateway.run` (one worker each) in front of one upstream process (a gRPC server
answering every method with an empty message, and health SERVING), on free ports: `open` is the
loopback default without keys; `keyed` has API keys configured (jwt_authn verifies an HS256 key from
`x-api-key`, RBAC checks its scope) and rate limits off; `limited` is `keyed` with the per-key rate
limits on (`gateway.rate_limits`, buckets large enough that no call is refused: only their cost
shows). The same read (`GetSymbol`) is called sequentially over native gRPC and over HTTP JSON; the
paths are interleaved round by round so machine noise hits them alike, and each round's p50 is
compared with the round beside it (`keyed` with `open`, `limited` with `keyed`). A write over gRPC
(`UpdateSymbol` with a write key) shows the longer RBAC policy walk. No database, no service code:
only what the gateway does differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import httpx

from bench._mesh import free_port, wait_serving
from bench.gateway_latency import added_per_round, percentile, timed
from gateway.envoy_config import GatewaySettings
from gateway.keys import KeyStore
from gateway.rate_limits import RateLimitSettings
from gateway.run import start_envoy, stop_envoy, wait_until_ready, write_config
from kitrading.mesh import SERVICES

DATA = "kitrading.data.v1.DataService"
GET_SYMBOL = f"/{DATA}/GetSymbol"
UPDATE_SYMBOL = f"/{DATA}/UpdateSymbol"

UPSTREAM = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

class Empty(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")

server = grpc.server(futures.ThreadPoolExecutor(4))
servicer = health.HealthServicer()
for name in ("", sys.argv[2]):
    servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_generic_rpc_handlers((Empty(),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


@contextmanager
def upstream() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), DATA])
    try:
        wait_serving(f"127.0.0.1:{port}", DATA, timeout_s=30)
        yield port
    finally:
        process.kill()
        process.wait(5)


@contextmanager
def envoy(
    folder: Path,
    name: str,
    upstream_port: int,
    store: KeyStore | None,
    limits: RateLimitSettings,
    *,
    strict_json: bool = True,
) -> Iterator[int]:
    ports = {s.name: free_port() for s in SERVICES}
    ports["data"] = upstream_port
    settings = GatewaySettings(
        port=free_port(),
        admin_port=free_port(),
        service_ports=ports,
        reflection_port=None,
        api_keys=store.api_keys() if store is not None else None,
        rate_limits=limits,
        strict_json=strict_json,
    )
    path = write_config(folder / f"{name}.yaml", settings=settings)
    with (folder / f"{name}.log").open("wb") as log:
        process = start_envoy(path, concurrency=1, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(admin_port=settings.admin_port, process=process)
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{settings.port}/data/health").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the data cluster never became healthy")
            time.sleep(0.05)
        yield settings.port
    finally:
        stop_envoy(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kitrading-bench-auth-")))
        store = KeyStore.from_env({}, directory=folder / "secrets")
        _, read_key = store.create("read")
        _, write_key = store.create("write")
        store.revoke(store.create("read")[0].id)  # one revoked id, as a real store has
        data = stack.enter_context(upstream())
        off = RateLimitSettings(mode="off")
        # on, with buckets no run empties (each call still takes a token from two of them)
        on = RateLimitSettings(mode="on", calls_per_second=1_000_000, burst=1_000_000)
        ports = {
            "open": stack.enter_context(envoy(folder, "open", data, None, off)),
            "keyed": stack.enter_context(envoy(folder, "keyed", data, store, off)),
            "limited": stack.enter_context(envoy(folder, "limited", data, store, on)),
        }
        channels = {
            name: stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
            for name, port in ports.items()
        }
        http = {
            name: stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
            for name, port in ports.items()
        }

        def grpc_call(name: str, path: str, key: str | None) -> Callable[[], object]:
            method = channels[name].unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
            metadata = (("x-api-key", key),) if key else None
            return lambda: method(b"", timeout=5, metadata=metadata)

        def http_call(name: str, key: str | None) -> Callable[[], object]:
            headers = {"x-api-key": key} if key else {}

            def call() -> None:
                response = http[name].get("/api/v1/symbols/EURUSD", headers=headers)
                assert response.status_code == 200, response.text

            return call

        paths: dict[str, Callable[[], object]] = {
            "open gRPC read": grpc_call("open", GET_SYMBOL, None),
            "keyed gRPC read": grpc_call("keyed", GET_SYMBOL, read_key),
            "open gRPC write": grpc_call("open", UPDATE_SYMBOL, None),
            "keyed gRPC write": grpc_call("keyed", UPDATE_SYMBOL, write_key),
            "open HTTP JSON read": http_call("open", None),
            "keyed HTTP JSON read": http_call("keyed", read_key),
            "limited gRPC read": grpc_call("limited", GET_SYMBOL, read_key),
            "limited gRPC write": grpc_call("limited", UPDATE_SYMBOL, write_key),
            "limited HTTP JSON read": http_call("limited", read_key),
        }
        for call in paths.values():  # warm up: connections, jwt_authn's cache of verified keys
            timed(call, 50)
        samples: dict[str, list[list[float]]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, call in paths.items():
                samples[name].append(timed(call, args.calls))
    summary: dict[str, object] = {
        name: {
            "p50_ms": round(percentile([v for r in rounds for v in r], 50), 3),
            "p99_ms": round(percentile([v for r in rounds for v in r], 99), 3),
        }
        for name, rounds in samples.items()
    }
    for kind in ("gRPC read", "gRPC write", "HTTP JSON read"):
        summary[f"keys add, {kind} (p50, ms)"] = added_per_round(samples, f"keyed {kind}", f"open {kind}")
        summary[f"rate limits add, {kind} (p50, ms)"] = added_per_round(
            samples, f"limited {kind}", f"keyed {kind}"
        )
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for name, value in summary.items():
        print(f"{name:40} {value}")


if __name__ == "__main__":
    main()
