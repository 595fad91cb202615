"""Issue 2 end to end: `kitrading up` (Envoy included) serving the Data service to curl-like HTTP,
native gRPC, grpcurl, the SDK and the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import service_pb2_grpc
from tests.e2e.mesh import RunningMesh, grpcurl_path, start_mesh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("mesh"))
    running = start_mesh(home, ["data"])
    try:
        running.wait_healthy("data")
        # the bundled samples are imported on first start, in the background of readiness
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            symbols = httpx.get(f"{running.gateway}/api/v1/symbols", timeout=5).json().get("symbols", [])
            if {"EURUSD", "GOOG", "MSFT", "SP500", "NASDAQ"} <= {s["symbol"] for s in symbols}:
                break
            time.sleep(0.5)
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        assert code == 0, f"kitrading up exited with {code}"


def test_http_json_through_gateway(up: RunningMesh) -> None:
    listed = httpx.get(f"{up.gateway}/api/v1/symbols", params={"pageSize": 2}).json()
    assert len(listed["symbols"]) == 2 and listed["nextPageToken"]
    candles = httpx.get(
        f"{up.gateway}/api/v1/symbols/EURUSD/candles", params={"timeframe": "TIMEFRAME_H1", "pageSize": 5}
    ).json()
    assert len(candles["candles"]) == 5
    assert {"time", "open", "high", "low", "close"} <= set(candles["candles"][0])
    created = httpx.post(
        f"{up.gateway}/api/v1/symbols", json={"symbol": "BTCUSD", "assetClass": "ASSET_CLASS_CRYPTO"}
    )
    assert created.status_code == 200, created.text
    duplicate = httpx.post(f"{up.gateway}/api/v1/symbols", json={"symbol": "BTCUSD"})
    assert duplicate.status_code == 409
    strategies = httpx.get(f"{up.gateway}/api/v1/strategies")
    assert strategies.status_code == 200
    logs = httpx.get(f"{up.gateway}/api/v1/query-logs", params={"pageSize": 5}).json()
    assert logs["queryLogs"], "every Data call is recorded"
    sync = httpx.get(f"{up.gateway}/api/v1/sync/status").json()
    assert sync["sourceConfigured"] is False


def test_bad_input_is_http_400_naming_the_field(up: RunningMesh) -> None:
    bad_symbol = httpx.get(f"{up.gateway}/api/v1/symbols/eur%20usd")
    assert bad_symbol.status_code == 400
    assert "symbol" in bad_symbol.text
    assert "Traceback" not in bad_symbol.text
    too_big = httpx.get(f"{up.gateway}/api/v1/symbols", params={"pageSize": 5000})
    assert too_big.status_code == 400
    assert "page_size" in too_big.text or "pageSize" in too_big.text
    unknown = httpx.get(f"{up.gateway}/api/v1/symbols/NOPE")
    assert unknown.status_code == 404
    unknown_param = httpx.get(f"{up.gateway}/api/v1/symbols", params={"bogus": "1"})
    assert unknown_param.status_code == 400


def test_native_grpc_through_gateway(up: RunningMesh) -> None:
    with grpc.insecure_channel(up.gateway_target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        reply = stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10)
        assert reply.symbol.symbol == "EURUSD"
        assert any(s.count > 0 for s in reply.symbol.series)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetSymbol(rr.GetSymbolRequest(symbol="bad symbol"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def grpcurl(*args: str) -> str:
    done = subprocess.run(
        [grpcurl_path(), "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_via_reflection(up: RunningMesh) -> None:
    for target in (up.gateway_target, up.target("data")):
        listed = grpcurl(target, "list")
        assert "kitrading.data.v1.DataService" in listed
    described = grpcurl(up.gateway_target, "describe", "kitrading.data.v1.DataService")
    assert "rpc ListSymbols" in described
    out = grpcurl("-d", '{"symbol": "GOOG"}', up.gateway_target, "kitrading.data.v1.DataService/GetSymbol")
    assert json.loads(out)["symbol"]["symbol"] == "GOOG"


def test_health_and_docs(up: RunningMesh) -> None:
    health = httpx.get(f"{up.gateway}/data/health")
    assert health.status_code == 200
    docs = httpx.get(f"{up.gateway}/data/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert 'data-url="/data/openapi.json"' in docs.text  # Swagger UI over the document below
    spec = httpx.get(f"{up.gateway}/data/openapi.json").json()
    assert "/api/v1/symbols" in spec["paths"]
    # a service that is not running answers 503 at once, the others keep serving
    start = time.monotonic()
    assert httpx.get(f"{up.gateway}/nhits/health").status_code == 503
    assert httpx.get(f"{up.gateway}/api/v1/forecast/EURUSD", params={"horizon": 24}).status_code == 503
    assert time.monotonic() - start < 1.0


def test_event_stream_arrives_incrementally_over_sse(up: RunningMesh) -> None:
    last = httpx.get(f"{up.gateway}/api/v1/events", params={"afterEventId": 0, "pageSize": 1000}).json()
    after = int(last.get("lastEventId", 0))
    while True:  # page to the end
        page = httpx.get(
            f"{up.gateway}/api/v1/events", params={"afterEventId": after, "pageSize": 1000}
        ).json()
        if not page.get("events"):
            break
        after = int(page["lastEventId"])
    arrivals: list[tuple[float, dict[str, object]]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=30)) as client,
        client.stream("GET", f"{up.gateway}/api/v1/events:watch", params={"afterEventId": after}) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for i in range(3):
            httpx.post(f"{up.gateway}/api/v1/symbols", json={"symbol": f"SSE{i}"}).raise_for_status()
            for line in lines:
                if line.startswith("data:"):
                    arrivals.append((time.monotonic(), json.loads(line[5:])))
                    break
            time.sleep(0.3)
    symbols = [a[1]["event"]["symbol"] for a in arrivals]  # type: ignore[index]
    assert symbols == ["SSE0", "SSE1", "SSE2"]
    assert arrivals[-1][0] - arrivals[0][0] >= 0.5, "events arrived one by one, not in one batch"


def test_sdk_and_cli(up: RunningMesh) -> None:
    from kitrading.client import InvalidArgumentError, connect

    with connect(up.gateway_target) as client:
        page = client.data.list_symbols(rr.ListSymbolsRequest(page_size=100))
        assert "EURUSD" in {s.symbol for s in page.symbols}
        with pytest.raises(InvalidArgumentError) as info:
            client.data.get_symbol(rr.GetSymbolRequest(symbol="x y"))
        assert [v.field for v in info.value.field_violations] == ["symbol"]
    out = up.cli("symbols", timeout_s=60)
    assert out.returncode == 0, out.stderr
    assert "EURUSD" in out.stdout
    status = up.cli("status", via_gateway=False, timeout_s=60)
    assert "data" in status.stdout and "SERVING" in status.stdout


def test_metrics_endpoint(up: RunningMesh) -> None:
    port = up.env["KITRADING_DATA_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "kitrading_rpc_requests_total" in text
    assert "kitrading_rpc_latency_seconds_bucket" in text
