"""What the gateway's strict-JSON check (`gateway.strict_json`) adds to a JSON write: the same gateway
with `KITRADING_GATEWAY_STRICT_JSON` on and off, p50 side by side.

    .venv/bin/python -m bench.gateway_strict_json [--rounds 10] [--calls 200] [--json]

Two real Envoys from `gateway.run` (one worker each) in front of one upstream process that answers
every method with an empty message (bench.gateway_auth's), so only the gateway's work differs: a
small `PATCH /api/v1/symbols/EURUSD` body (the common write) and `candles:upsert` bodies of 1,000
and 20,000 candles (about 0.1 and 2 MB, the largest JSON bodies users send). Rounds interleave the
two gateways and each round's p50 is compared with the round beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.gateway_auth import envoy, upstream
from bench.gateway_latency import added_per_round, percentile, timed
from gateway.rate_limits import RateLimitSettings


def candles(n: int) -> bytes:
    rows = [
        {
            "time": f"2024-01-{1 + (i // 1440) % 28:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
            "open": 1.1 + i * 1e-6,
            "high": 1.2,
            "low": 1.0,
            "close": 1.15,
            "volume": 100 + i,
        }
        for i in range(n)
    ]
    return json.dumps({"timeframe": "TIMEFRAME_M1", "candles": rows}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    bodies = {
        "small PATCH": ("PATCH", "/api/v1/symbols/EURUSD", json.dumps({"displayName": "Euro"}).encode()),
        "upsert 1000 candles": ("POST", "/api/v1/symbols/EURUSD/candles:upsert", candles(1000)),
        "upsert 20000 candles": ("POST", "/api/v1/symbols/EURUSD/candles:upsert", candles(20000)),
    }
    off = RateLimitSettings(mode="off")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kitrading-bench-strict-")))
        data = stack.enter_context(upstream())
        ports = {
            "strict": stack.enter_context(envoy(folder, "strict", data, None, off, strict_json=True)),
            "lenient": stack.enter_context(envoy(folder, "lenient", data, None, off, strict_json=False)),
        }
        http = {
            name: stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
            for name, port in ports.items()
        }

        def call(gateway: str, verb: str, path: str, body: bytes) -> Callable[[], object]:
            def send() -> None:
                response = http[gateway].request(
                    verb, path, content=body, headers={"content-type": "application/json"}
                )
                assert response.status_code == 200, response.text

            return send

        paths: dict[str, Callable[[], object]] = {}
        for label, (verb, path, body) in bodies.items():
            for gateway in ports:
                paths[f"{gateway} {label}"] = call(gateway, verb, path, body)
        sizes = {label: len(body) for label, (_, _, body) in bodies.items()}
        for name, fn in paths.items():
            timed(fn, 5 if "20000" in name else 20)
        samples: dict[str, list[list[float]]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, fn in paths.items():
                n = max(5, args.calls // 20) if "20000" in name else args.calls
                samples[name].append(timed(fn, n))
    summary: dict[str, object] = {
        name: round(percentile([v for r in rounds for v in r], 50), 3) for name, rounds in samples.items()
    }
    for label in bodies:
        summary[f"strict JSON adds, {label} ({sizes[label]} bytes; p50, ms)"] = added_per_round(
            samples, f"strict {label}", f"lenient {label}"
        )
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for name, value in summary.items():
        print(f"{name:60} {value}")


if __name__ == "__main__":
    main()
