"""The real Envoy, configured by `gateway.build_config`, in front of real grpc.aio servers."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import struct
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from gateway.descriptors import Contracts
from gateway.docs import DOCS_CSP, swagger_ui

from .conftest import Gateway
from .fake_data import EVENT_GAP_S, DataMessages

LIST_SYMBOLS = "/kitrading.data.v1.DataService/ListSymbols"
WATCH_EVENTS = "/kitrading.data.v1.DataService/WatchEvents"


# ---- JSON/HTTP transcoding ----


async def test_json_call_is_transcoded(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/symbols", params={"pageSize": 2})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert [s["symbol"] for s in body["symbols"]] == ["EURUSD", "GBPUSD"]
    first = body["symbols"][0]
    # proto3 JSON names, primitives at their default still printed, enums as names.
    assert first["displayName"] == "eurusd"
    assert first["description"] == ""
    assert first["assetClass"] == "ASSET_CLASS_UNSPECIFIED"
    assert body["totalSize"] == 2


async def test_query_accepts_proto_field_names_too(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/symbols", params={"page_size": 1})
    assert response.status_code == 200
    assert len(response.json()["symbols"]) == 1


async def test_unknown_query_parameter_is_rejected(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/symbols", params={"bogus": "1"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    assert "bogus" in body["message"]
    assert body["details"][0]["reason"] == "INVALID_REQUEST"


async def test_unknown_path_is_rejected(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 5
    assert body["details"][0]["reason"] == "UNKNOWN_PATH"


async def test_invalid_argument_is_400_with_field_violations(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/symbols", params={"prefix": "!x"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == "prefix"


async def test_server_stream_arrives_incrementally_as_sse(gateway: Gateway) -> None:
    arrivals: list[float] = []
    events: list[dict[str, object]] = []
    buffer = ""
    async with (
        gateway.client() as client,
        client.stream("GET", "/api/v1/events:watch?afterEventId=10") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                assert block.startswith("data: ")
                events.append(json.loads(block.removeprefix("data: ")))
                arrivals.append(time.monotonic())
    assert [e["event"]["eventId"] for e in events] == ["11", "12", "13"]  # type: ignore[index]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > EVENT_GAP_S * 0.6 for gap in gaps), gaps


async def test_unimplemented_service_answers_503_json(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/api/v1/llm/status")
    assert response.status_code == 503
    assert response.json()["code"] == 14


# ---- native gRPC and grpc-web on the same port ----


async def test_native_grpc_passes_through(gateway: Gateway, contracts: Contracts) -> None:
    m = DataMessages(contracts)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        list_symbols = channel.unary_unary(
            LIST_SYMBOLS,
            request_serializer=m.ListSymbolsRequest.SerializeToString,
            response_deserializer=m.ListSymbolsResponse.FromString,
        )
        response = await list_symbols(m.ListSymbolsRequest(prefix="G"), timeout=5)
        assert [s.symbol for s in response.symbols] == ["GBPUSD", "GOOG"]

        watch = channel.unary_stream(
            WATCH_EVENTS,
            request_serializer=m.WatchEventsRequest.SerializeToString,
            response_deserializer=m.WatchEventsResponse.FromString,
        )
        ids = [item.event.event_id async for item in watch(m.WatchEventsRequest(), timeout=10)]
        assert ids == [1, 2, 3]

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await list_symbols(m.ListSymbolsRequest(prefix="!"), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_native_grpc_to_dead_or_unknown_service(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        for path, code in (
            ("/kitrading.llm.v1.LlmService/GetLlmStatus", grpc.StatusCode.UNAVAILABLE),
            ("/no.such.Service/Method", grpc.StatusCode.UNIMPLEMENTED),
        ):
            call = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(b"", timeout=5)
            assert error.value.code() == code, path


def _grpc_web_frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _grpc_web_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        frames.append((flags, data[5 : 5 + length]))
        data = data[5 + length :]
    return frames


async def test_grpc_web_passes_through(gateway: Gateway, contracts: Contracts) -> None:
    m = DataMessages(contracts)
    request = m.ListSymbolsRequest(page_size=1).SerializeToString()
    async with gateway.client() as client:
        response = await client.post(
            LIST_SYMBOLS,
            content=_grpc_web_frame(request),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "accept": "application/grpc-web+proto",
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/grpc-web")
    frames = _grpc_web_frames(response.content)
    message = next(payload for flags, payload in frames if flags == 0)
    trailers = next(payload for flags, payload in frames if flags & 0x80).decode()
    assert [s.symbol for s in m.ListSymbolsResponse.FromString(message).symbols] == ["EURUSD"]
    assert "grpc-status:0" in trailers.replace(" ", "")


# ---- health ----


async def test_health_of_a_serving_service(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/data/health")
    assert response.status_code == 200
    assert response.json() == {
        "service": "data",
        "grpcService": "kitrading.data.v1.DataService",
        "status": "SERVING",
    }


async def test_health_of_a_service_that_never_started(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/llm/health")
        gateway_health = await client.get("/gateway/health")
    assert response.status_code == 503
    assert response.json()["status"] == "NOT_SERVING"
    assert gateway_health.status_code == 200


async def test_health_turns_503_at_once_when_a_service_stops(gateway: Gateway) -> None:
    async with gateway.client() as client:
        assert (await client.get("/watchdog/health")).status_code == 200
        # NOT_SERVING reported by the service itself...
        await gateway.watchdog_health.set(
            "kitrading.watchdog.v1.WatchdogService", health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await _until_status(client, "/watchdog/health", 503, within_s=3.0)
        await gateway.watchdog_health.set(
            "kitrading.watchdog.v1.WatchdogService", health_pb2.HealthCheckResponse.SERVING
        )
        await _until_status(client, "/watchdog/health", 200, within_s=3.0)
        # ... and the process gone.
        await gateway.watchdog_server.stop(0)
        elapsed = await _until_status(client, "/watchdog/health", 503, within_s=3.0)
        assert elapsed < 2.5
        # Requests fail fast too (panic threshold 0): no waiting for a dead host.
        started = time.monotonic()
        response = await client.get("/watchdog/api/v1/status")
        assert response.status_code == 503
        assert time.monotonic() - started < 1.0
        # The other services keep serving.
        assert (await client.get("/data/health")).status_code == 200


async def _until_status(client: object, path: str, status: int, *, within_s: float) -> float:
    started = time.monotonic()
    while True:
        response = await client.get(path)  # type: ignore[attr-defined]
        if response.status_code == status:
            return time.monotonic() - started
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{path} still {response.status_code} after {within_s} s")
        await asyncio.sleep(0.05)


# ---- docs, OpenAPI, index, admin ----


async def test_docs_page_is_swagger_ui(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/data/docs")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == DOCS_CSP
        text = response.text
        assert text.startswith("<!doctype html>")
        assert 'data-url="/data/openapi.json"' in text
        # Swagger UI's files from the swagger-ui-bundle package, whole (1 MB over the 4 KiB default)
        bundle = await client.get("/docs/ui/swagger-ui-bundle.js")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
        assert bundle.headers["x-content-type-options"] == "nosniff"
        files = swagger_ui()
        assert files is not None
        assert bundle.text == files[0]["swagger-ui-bundle.js"]
        css = await client.get("/docs/ui/swagger-ui.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"


async def test_docs_aliases_redirect(gateway: Gateway) -> None:
    async with gateway.client() as client:
        for alias in ("/data", "/data/", "/data/docs/"):
            response = await client.get(alias)
            assert response.status_code == 302, alias
            assert response.headers["location"].endswith("/data/docs")


async def test_openapi_document(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/data/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert {"get", "post"} <= set(spec["paths"]["/api/v1/symbols"])
    assert spec["paths"]["/api/v1/events:watch"]["get"]["x-streaming"] == "server"


async def test_index_lists_every_service(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/docs")
        assert (await client.get("/docs/")).headers["location"].endswith("/docs")
    assert response.status_code == 200
    for prefix in ("data", "nhits", "llm", "watchdog"):
        assert f"/{prefix}/health" in response.text
    assert "/data/openapi.json" in response.text  # the dropdown's documents


async def test_dashboard_and_its_files(gateway: Gateway) -> None:
    """`/` is the dashboard; its modules, stylesheet and the chart library with their own types."""
    async with gateway.client() as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script type="module" src="/ui/app.js">' in page.text
        config = re.search(r'<script id="mesh-config" type="application/json">(.*?)</script>', page.text)
        assert config is not None
        mesh = json.loads(config.group(1))
        assert {"data", "forecast", "llm", "watchdog"} <= {s["name"] for s in mesh["services"]}
        expected = {
            "/ui/app.js": "text/javascript; charset=utf-8",
            "/ui/api.js": "text/javascript; charset=utf-8",
            "/ui/app.css": "text/css; charset=utf-8",
            "/ui/vendor/lightweight-charts.js": "text/javascript; charset=utf-8",
        }
        for path, content_type in expected.items():
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == content_type, path
            assert response.headers["x-content-type-options"] == "nosniff", path
        charts = (await client.get("/ui/vendor/lightweight-charts.js")).text
        assert "TradingView Lightweight Charts" in charts and "window.LightweightCharts" in charts
        assert mesh["charts"].startswith("lightweight-charts 2.1, library v4.")
        assert (await client.get("/dashboard")).headers["location"].endswith("/")


async def test_admin_is_not_on_the_gateway_port(gateway: Gateway) -> None:
    async with gateway.client() as client:
        assert (await client.get("/stats")).status_code == 404
        admin = await client.get(
            f"http://127.0.0.1:{gateway.admin_port}/stats?filter=cluster.data.health_check.success"
        )
    assert admin.status_code == 200


def test_access_log_is_json_lines(gateway: Gateway) -> None:
    lines = [line for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    assert lines, "no access log lines"
    entry = json.loads(lines[-1])
    assert {"method", "path", "status", "duration_ms", "cluster"} <= set(entry)


# ---- updates: the resource named in the path is the one changed ----


@pytest.mark.parametrize(
    ("path", "body", "id_field", "resource"),
    [
        ("/api/v1/symbols/ZZA", {"symbol": "ZZB", "displayName": "x"}, "symbol", "symbol"),
        (
            "/api/v1/strategies/alpha",
            {"strategy_id": "beta", "displayName": "x"},
            "strategyId",
            "strategy",
        ),
    ],
)
async def test_patch_with_a_different_id_in_the_body_is_400(
    gateway: Gateway, path: str, body: dict[str, str], id_field: str, resource: str
) -> None:
    async with gateway.client() as client:
        response = await client.patch(path, params={"updateMask": "displayName"}, json=body)
    assert response.status_code == 400, response.text


async def test_patch_with_the_json_name_of_the_id_in_the_body_changes_the_path_resource(
    gateway: Gateway,
) -> None:
    """Envoy's collision check matches the proto name (`strategy_id`); the JSON name (`strategyId`) in
    the body is overridden by the path, so the resource named in the path is still the one changed."""
    body = {"strategyId": "beta", "displayName": "x"}
    async with gateway.client() as client:
        response = await client.patch(
            "/api/v1/strategies/alpha", params={"updateMask": "displayName"}, json=body
        )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert response.json()["strategy"]["strategyId"] == "alpha"


async def test_patch_with_the_same_id_in_the_body(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.patch(
            "/api/v1/symbols/ZZA", params={"updateMask": "displayName"}, json={"symbol": "ZZA"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["symbol"]["symbol"] == "ZZA"


@pytest.mark.parametrize(
    ("path", "id_field", "resource", "expected"),
    [
        ("/api/v1/symbols/ZZA", "symbol", "symbol", "ZZA"),
        ("/api/v1/strategies/alpha", "strategyId", "strategy", "alpha"),
    ],
)
async def test_patch_changes_the_resource_named_in_the_path(
    gateway: Gateway, path: str, id_field: str, resource: str, expected: str
) -> None:
    async with gateway.client() as client:
        response = await client.patch(path, params={"updateMask": "displayName"}, json={"displayName": "x"})
    assert response.status_code == 200, response.text
    assert response.json()[resource][id_field] == expected


async def test_a_body_needs_a_json_content_type(gateway: Gateway) -> None:
    """A web page can send a cross-site `text/plain` POST without a preflight: a body that is not
    declared JSON (or gRPC) is 415 before it reaches a service."""
    path = "/api/v1/symbols/EURUSD"
    body = json.dumps({"displayName": "x"})
    async with gateway.client() as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            response = await client.patch(
                path,
                params={"updateMask": "displayName"},
                content=body,
                headers={"content-type": content_type},
            )
            assert response.status_code == 415, (content_type, response.text)
            error = response.json()
            assert error["code"] == 3 and "application/json" in error["message"]
            assert error["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"
        bare = await client.patch(path, params={"updateMask": "displayName"}, content=body)
        assert bare.status_code == 415, bare.text  # no content type at all
        ok = await client.patch(
            path,
            params={"updateMask": "displayName"},
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 200, ok.text
        assert (await client.get("/api/v1/symbols")).status_code == 200  # reads need no content type
        empty = await client.patch(path, params={"updateMask": "displayName"})
        assert empty.status_code == 200, empty.text  # no body: nothing to declare


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"displayName": "x", "colour": "red"}, "colour", "is not a field"),
        ({"active": "yes"}, "active", "must be true or false"),
        ({"active": 1}, "active", "must be true or false"),
        ({"series": [{"timeframe": "TIMEFRAME_H1", "bogus": 1}]}, "series[0].bogus", "is not a field"),
        ({"\\u0061ctive": "no"}, "active", "must be true or false"),  # an escaped key is the same key
        ({"createTime": "2024-01-01T00:00:00Z", "extra": {"a": [1, {"b": 2}]}}, "extra", "is not a field"),
    ],
)
async def test_strict_json_unknown_fields_and_non_bool_bools_are_400_naming_the_field(
    gateway: Gateway, body: dict[str, object], field: str, why: str
) -> None:
    """Envoy's transcoder would drop the unknown field (or take "yes" for true) and go on: the
    gateway's strict-JSON filter refuses the body first, as unknown query parameters are refused."""
    text = json.dumps(body).replace("\\\\u0061", "\\u0061")
    async with gateway.client() as client:
        response = await client.patch(
            "/api/v1/symbols/EURUSD",
            params={"updateMask": "displayName"},
            content=text,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 3 and f"field {field} {why}" in error["message"], error
    assert "UpdateSymbol" in error["message"] and error["details"][0]["reason"] == "INVALID_REQUEST"


async def test_strict_json_accepts_what_proto3_json_allows(gateway: Gateway) -> None:
    """Proto names and JSON names, nulls, nested messages, well-known types, escapes in values, and
    a body that is not JSON at all is left to the transcoder's own 400."""
    bodies: list[dict[str, object]] = [
        {"displayName": "x"},
        {"display_name": "x", "active": False},
        {"active": None, "description": 'a "quoted" {brace} [and] \\u00e9', "series": []},
        {"series": [{"timeframe": "TIMEFRAME_H1", "count": "12", "firstTime": "2024-01-01T00:00:00Z"}]},
    ]
    async with gateway.client() as client:
        for body in bodies:
            response = await client.patch(
                "/api/v1/symbols/EURUSD", params={"updateMask": "displayName"}, json=body
            )
            assert response.status_code == 200, (body, response.text)
        broken = await client.patch(
            "/api/v1/symbols/EURUSD",
            params={"updateMask": "displayName"},
            content=b'{"displayName": ',
            headers={"content-type": "application/json"},
        )
        assert broken.status_code == 400 and "UpdateSymbol" not in broken.json()["message"], broken.text


async def test_strict_json_reads_a_big_body_to_its_last_element(gateway: Gateway) -> None:
    """A 2 MB upload (20,000 candles) is checked to its end, within the body limit (the listener's
    buffer limit is raised to it: Envoy's 1 MiB default would have answered 413)."""
    rows = [
        {
            "time": f"2024-01-01T00:{i % 60:02d}:00Z",
            "open": 1.1,
            "high": 1.2,
            "low": 1.0,
            "close": 1.15,
            "volume": i,
        }
        for i in range(20_000)
    ]
    path = "/api/v1/symbols/EURUSD/candles:upsert"
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30.0) as client:
        whole = await client.post(path, json={"timeframe": "TIMEFRAME_M1", "candles": rows})
        assert whole.status_code not in (400, 413), whole.text  # past the check (the fake has no upsert)
        rows[-1]["bogus"] = True
        bad = await client.post(path, json={"timeframe": "TIMEFRAME_M1", "candles": rows})
    assert bad.status_code == 400, bad.text
    assert "field candles[19999].bogus is not a field" in bad.json()["message"], bad.text


async def test_a_header_name_grpc_cannot_carry_is_400_naming_it(gateway: Gateway) -> None:
    """HTTP allows `!#$%&'*+^`|~` in a header name, gRPC metadata does not: Envoy forwarded such a
    header and the service's gRPC stack refused the call as INTERNAL, a 500 (found by the contract
    fuzzer). The gateway answers 400 and names the header; ordinary headers pass."""
    async with gateway.client() as client:
        for name in ("x*v", "a'b", "q`z", "x|y", "#dnu7~l", "c$d"):
            response = await client.get("/api/v1/symbols/EURUSD", headers={name: "1"})
            assert response.status_code == 400, (name, response.text)
            error = response.json()
            assert error["code"] == 3 and error["message"].startswith(f"header {name} is not"), error
            assert error["details"][0]["reason"] == "INVALID_REQUEST"
        posted = await client.post("/api/v1/symbols", json={}, headers={"x*v": "1"})
        assert posted.status_code == 400, posted.text
        fine = await client.get(
            "/api/v1/symbols/EURUSD", headers={"x-request-id": "r1", "x_under.dot-9": "1", "X-Upper": "u"}
        )
        assert fine.status_code == 200, fine.text


async def test_a_path_envoy_cannot_normalise_is_400_saying_why(gateway: Gateway) -> None:
    """An encoded NUL (`%00`) in the path fails Envoy's path normalisation: it answered 400 with an
    empty message (found by the hostile-HTTP e2e); now the message says what is wrong."""
    async with gateway.client() as client:
        for path in ("/api/v1/symbols/%00", "/api/v1/symbols/EUR%00USD/candles"):
            response = await client.get(path)
            assert response.status_code == 400, (path, response.text)
            error = response.json()
            assert error["code"] == 3 and "encoded NUL byte" in error["message"], error
            assert error["details"][0]["reason"] == "INVALID_PATH"
        fine = await client.get("/api/v1/symbols/EURUSD", params={"q": "%00"})  # a query is not the path
        assert fine.status_code != 400 or "encoded NUL" not in fine.text


async def test_a_url_over_the_limit_is_414_not_a_retryable_429(gateway: Gateway) -> None:
    """A 20 KB path reached the service's gRPC server, whose metadata limit answered
    RESOURCE_EXHAUSTED: a 429 (clients retry it) naming internal headers. The gateway says 414."""
    async with gateway.client() as client:
        for path, params in (
            ("/api/v1/symbols/" + "A" * 20_000, None),
            ("/api/v1/symbols", {"prefix": "A" * 9_000}),
        ):
            response = await client.get(path, params=params)
            assert response.status_code == 414, response.text[:300]
            error = response.json()
            assert error["code"] == 3 and "at most 8192 are accepted" in error["message"], error
            assert error["details"][0]["reason"] == "URI_TOO_LONG" and "x-envoy" not in response.text
        fine = await client.get("/api/v1/symbols/" + "A" * 3_000)
        assert fine.status_code != 414, fine.text[:200]


async def test_a_wrong_method_is_405_with_allow(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.put("/api/v1/symbols", json={})
        assert response.status_code == 405, response.text
        assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
        body = response.json()
        assert body["details"][0]["reason"] == "METHOD_NOT_ALLOWED" and "PUT" in body["message"]
        one = await client.post("/api/v1/symbols/EURUSD/candles", json={})
        assert one.status_code == 405, one.text
        assert "GET" in one.headers["allow"]
        # an unknown path stays 404
        assert (await client.put("/api/v1/no-such-thing", json={})).status_code == 404
        # the docs pages are GET (and HEAD) only
        for path in ("/data/docs", "/data/openapi.json", "/", "/docs", "/ui/app.js"):
            deleted = await client.delete(path)
            assert deleted.status_code == 405, (path, deleted.text)
            assert deleted.headers["allow"] == "GET, HEAD"
        assert (await client.get("/data/docs")).status_code == 200
        assert (await client.head("/data/docs")).status_code == 200


async def test_a_body_over_the_limit_is_413_not_a_retryable_429(gateway: Gateway) -> None:
    """Past the gateway's limit (8 MiB) a declared body is refused by Envoy before it is read; it used
    to reach the service's gRPC limit and come back RESOURCE_EXHAUSTED, 429, which clients retry."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    size = 9 * 1024 * 1024
    writer.write(
        f"PATCH /api/v1/symbols/EURUSD?updateMask=displayName HTTP/1.1\r\nhost: {host}\r\n"
        f'content-type: application/json\r\ncontent-length: {size}\r\n\r\n{{"displayName": "'.encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split()[1])
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    writer.close()
    assert status == 413, head
    assert body["details"][0]["reason"] == "REQUEST_TOO_LARGE" and "8388608" in body["message"]


async def test_reads_are_retried_on_unavailable_writes_are_not(
    gateway: Gateway, contracts: Contracts
) -> None:
    """A read (a GET-bound unary RPC) that meets UNAVAILABLE, as during a restart, is tried again by
    the gateway within a bounded budget; a write is never sent twice."""
    async with gateway.client() as client:
        read = await client.get("/api/v1/symbols/FLAKYR")
        assert read.status_code == 200, read.text
        assert read.json()["symbol"]["displayName"] == "attempt 2"  # the first attempt failed
        down = await client.get("/api/v1/symbols/DOWN")
        assert down.status_code == 503  # retried, still down: the client is told so
        path = "/api/v1/symbols/FLAKYW"
        write = await client.patch(path, params={"updateMask": "displayName"}, json={"displayName": "x"})
        assert write.status_code == 503, write.text  # not retried
        again = await client.patch(path, params={"updateMask": "displayName"}, json={"displayName": "x"})
        assert again.json()["symbol"]["displayName"] == "attempt 2"  # the first request made one attempt
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        m = DataMessages(contracts)
        get_symbol = channel.unary_unary(
            "/kitrading.data.v1.DataService/GetSymbol",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=m.GetSymbolResponse.FromString,
        )
        reply = await get_symbol(m.GetSymbolRequest(symbol="FLAKYG"), timeout=5)
        assert reply.symbol.display_name == "attempt 2"  # native gRPC through the gateway too


async def test_a_full_queue_is_429_with_retry_after(gateway: Gateway) -> None:
    """The runtime's RESOURCE_EXHAUSTED with `retry_after_s` (training queue, LLM waiting room) is
    429 with the HTTP `Retry-After` header (whole seconds, rounded up) and a google.rpc.RetryInfo."""
    async with gateway.client() as client:
        response = await client.get("/api/v1/symbols/BUSY")
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "7"
    kinds = [d["@type"] for d in response.json()["details"]]
    assert "type.googleapis.com/google.rpc.RetryInfo" in kinds, kinds
    retry = next(d for d in response.json()["details"] if d["@type"].endswith("RetryInfo"))
    assert retry["retryDelay"] == "7s"
