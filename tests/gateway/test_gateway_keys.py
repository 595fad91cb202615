"""API keys at the real Envoy: jwt_authn verifies the key, RBAC checks its scope, for JSON/HTTP, SSE,
native gRPC and grpc-web alike; a missing, wrong, forged, expired or revoked key is 401 /
UNAUTHENTICATED, a weak scope 403 / PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from gateway.descriptors import Contracts
from gateway.keys import ISSUER, KeyStore, mint

from .conftest import Gateway, running_gateway
from .fake_data import DataMessages

LIST_SYMBOLS = "/kitrading.data.v1.DataService/ListSymbols"
UPDATE_SYMBOL = "/kitrading.data.v1.DataService/UpdateSymbol"
WATCH_EVENTS = "/kitrading.data.v1.DataService/WatchEvents"


@dataclass
class Keys:
    read: str
    write: str
    admin: str
    expired: str
    revoked: str
    revoked_id: str
    forged: str
    read_id: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyStore, Keys]:
    store = KeyStore.from_env({}, directory=tmp_path_factory.mktemp("secrets"))
    read_record, read = store.create("read", name="dashboard")
    _, write = store.create("write")
    _, admin = store.create("admin")
    _, expired = store.create("write", expires_in_s=60, now=time.time() - 3600)
    revoked_record, revoked = store.create("write")
    store.revoke(revoked_record.id)
    forged = mint(secrets.token_bytes(32), {"iss": ISSUER, "jti": "k_000000000000", "scope": "admin"})
    return store, Keys(read, write, admin, expired, revoked, revoked_record.id, forged, read_record.id)


@pytest_asyncio.fixture(scope="module")
async def keyed(
    contracts: Contracts,
    descriptor_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    keys: tuple[KeyStore, Keys],
) -> AsyncIterator[Gateway]:
    store, _ = keys
    log = tmp_path_factory.mktemp("envoy-keys") / "envoy.log"
    async with running_gateway(
        contracts, descriptor_path, log, listen_address="0.0.0.0", api_keys=store.api_keys()
    ) as running:
        yield running


def _key(token: str) -> dict[str, str]:
    return {"x-api-key": token}


# ---- JSON/HTTP ----


async def test_a_read_without_a_key_is_401(keyed: Gateway) -> None:
    async with keyed.client() as client:
        response = await client.get("/api/v1/symbols")
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == 16
    assert "x-api-key" in body["message"] and "kitrading keys create" in body["message"]
    assert body["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("which", ["garbage", "forged", "expired", "revoked"])
async def test_a_wrong_key_is_401(keyed: Gateway, keys: tuple[KeyStore, Keys], which: str) -> None:
    _, k = keys
    token = {"garbage": "not-a-key", "forged": k.forged, "expired": k.expired, "revoked": k.revoked}[which]
    async with keyed.client() as client:
        response = await client.get("/api/v1/symbols", headers=_key(token))
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == 16
    if which == "revoked":
        assert body["details"][0]["reason"] == "API_KEY_REVOKED"
        assert k.revoked_id in body["message"] and "revoked" in body["message"]
    elif which == "expired":
        assert "expired" in body["message"].lower()


async def test_a_read_key_reads_and_may_not_write(keyed: Gateway, keys: tuple[KeyStore, Keys]) -> None:
    _, k = keys
    async with keyed.client() as client:
        ok = await client.get("/api/v1/symbols", headers=_key(k.read))
        bearer = await client.get("/api/v1/symbols", headers={"authorization": f"Bearer {k.read}"})
        write = await client.patch(
            "/api/v1/symbols/ZZA",
            params={"updateMask": "displayName"},
            json={"displayName": "x"},
            headers=_key(k.read),
        )
    assert ok.status_code == 200, ok.text
    assert [s["symbol"] for s in ok.json()["symbols"]] == ["EURUSD", "GBPUSD", "GOOG"]
    assert bearer.status_code == 200, bearer.text
    assert write.status_code == 403, write.text
    body = write.json()
    assert body["code"] == 7
    assert body["details"][0]["reason"] == "API_KEY_SCOPE"
    assert body["details"][0]["metadata"] == {"keyId": k.read_id, "scope": "read", "required": "write"}
    assert "needs scope write" in body["message"] and k.read_id in body["message"]


@pytest.mark.parametrize("scope", ["write", "admin"])
async def test_a_write_or_admin_key_writes(keyed: Gateway, keys: tuple[KeyStore, Keys], scope: str) -> None:
    _, k = keys
    token = k.write if scope == "write" else k.admin
    async with keyed.client() as client:
        response = await client.patch(
            "/api/v1/symbols/ZZA",
            params={"updateMask": "displayName"},
            json={"displayName": "x"},
            headers=_key(token),
        )
        read = await client.get("/api/v1/symbols", headers=_key(token))
    assert response.status_code == 200, response.text
    assert response.json()["symbol"]["symbol"] == "ZZA"
    assert read.status_code == 200


async def test_health_and_docs_need_no_key(keyed: Gateway) -> None:
    async with keyed.client() as client:
        pages = ("/data/docs", "/data/openapi.json", "/docs", "/docs/ui/swagger-ui-bundle.js", "/")
        for path in ("/data/health", "/gateway/health", *pages):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/data/")).status_code == 302


async def test_sse_stream_needs_a_key(keyed: Gateway, keys: tuple[KeyStore, Keys]) -> None:
    _, k = keys
    async with keyed.client() as client:
        refused = await client.get("/api/v1/events:watch?afterEventId=10")
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == 16
        events = []
        async with client.stream(
            "GET", "/api/v1/events:watch?afterEventId=10", headers=_key(k.read)
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            buffer = ""
            async for chunk in response.aiter_text():
                buffer += chunk
            events = [json.loads(b.removeprefix("data: ")) for b in buffer.split("\n\n") if b.strip()]
    assert [e["event"]["eventId"] for e in events] == ["11", "12", "13"]


async def test_the_token_stays_out_of_the_log_and_the_key_id_is_in_it(
    keyed: Gateway, keys: tuple[KeyStore, Keys]
) -> None:
    _, k = keys
    async with keyed.client() as client:
        # a client's own key-id header is dropped: the log names the key that was verified
        response = await client.get(
            "/api/v1/symbols", headers={**_key(k.read), "x-kitrading-key-id": "k_spoofed00000"}
        )
    assert response.status_code == 200
    deadline = time.monotonic() + 15  # Envoy flushes its access log every few seconds
    while True:
        text = keyed.log.read_text()
        if k.read_id in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for token in (k.read, k.write, k.admin, k.revoked, k.forged):
        assert token not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert k.read_id in [e.get("key_id") for e in entries]
    assert "k_spoofed00000" not in text


# ---- native gRPC ----


async def test_native_grpc_needs_a_key_of_the_scope(
    keyed: Gateway, contracts: Contracts, keys: tuple[KeyStore, Keys]
) -> None:
    _, k = keys
    m = DataMessages(contracts)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.port}") as channel:
        list_symbols = channel.unary_unary(
            LIST_SYMBOLS,
            request_serializer=m.ListSymbolsRequest.SerializeToString,
            response_deserializer=m.ListSymbolsResponse.FromString,
        )
        update = channel.unary_unary(
            UPDATE_SYMBOL,
            request_serializer=m.UpdateSymbolRequest.SerializeToString,
            response_deserializer=m.UpdateSymbolResponse.FromString,
        )
        cases = [(None, grpc.StatusCode.UNAUTHENTICATED), (k.forged, grpc.StatusCode.UNAUTHENTICATED)]
        cases += [(k.expired, grpc.StatusCode.UNAUTHENTICATED), (k.revoked, grpc.StatusCode.UNAUTHENTICATED)]
        for token, code in cases:
            metadata = None if token is None else (("x-api-key", token),)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await list_symbols(m.ListSymbolsRequest(), timeout=5, metadata=metadata)
            assert error.value.code() == code, (token, error.value.details())
        assert "API key" in (error.value.details() or "")
        response = await list_symbols(
            m.ListSymbolsRequest(prefix="G"), timeout=5, metadata=(("x-api-key", k.read),)
        )
        assert [s.symbol for s in response.symbols] == ["GBPUSD", "GOOG"]

        request = m.UpdateSymbolRequest()
        request.symbol.symbol = "ZZA"
        with pytest.raises(grpc.aio.AioRpcError) as weak:
            await update(request, timeout=5, metadata=(("x-api-key", k.read),))
        assert weak.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs scope write" in (weak.value.details() or "")
        updated = await update(request, timeout=5, metadata=(("x-api-key", k.write),))
        assert updated.symbol.symbol == "ZZA"

        watch = channel.unary_stream(
            WATCH_EVENTS,
            request_serializer=m.WatchEventsRequest.SerializeToString,
            response_deserializer=m.WatchEventsResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as stream_error:
            [item async for item in watch(m.WatchEventsRequest(), timeout=10)]
        assert stream_error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ids = [
            item.event.event_id
            async for item in watch(m.WatchEventsRequest(), timeout=10, metadata=(("x-api-key", k.read),))
        ]
        assert ids == [1, 2, 3]


# ---- grpc-web ----


def _grpc_web_status(response_headers: dict[str, str], content: bytes) -> str:
    """grpc-status of a grpc-web answer: a trailers frame, or a header (trailers-only)."""
    if "grpc-status" in response_headers:
        return response_headers["grpc-status"]
    while content:
        flags, length = struct.unpack(">BI", content[:5])
        if flags & 0x80:
            for line in content[5 : 5 + length].decode().split("\r\n"):
                if line.lower().startswith("grpc-status:"):
                    return line.split(":", 1)[1].strip()
        content = content[5 + length :]
    return ""


async def test_grpc_web_needs_a_key_of_the_scope(
    keyed: Gateway, contracts: Contracts, keys: tuple[KeyStore, Keys]
) -> None:
    _, k = keys
    m = DataMessages(contracts)
    web = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "accept": "application/grpc-web+proto",
    }

    def frame(payload: bytes) -> bytes:
        return struct.pack(">BI", 0, len(payload)) + payload

    read_body = frame(m.ListSymbolsRequest(page_size=1).SerializeToString())
    update_request = m.UpdateSymbolRequest()
    update_request.symbol.symbol = "ZZA"
    update_body = frame(update_request.SerializeToString())
    async with keyed.client() as client:
        cases = [
            (LIST_SYMBOLS, read_body, None, "16"),
            (LIST_SYMBOLS, read_body, k.revoked, "16"),
            (LIST_SYMBOLS, read_body, k.read, "0"),
            (UPDATE_SYMBOL, update_body, k.read, "7"),
            (UPDATE_SYMBOL, update_body, k.write, "0"),
        ]
        for path, body, token, expected in cases:
            headers = dict(web) if token is None else {**web, **_key(token)}
            response = await client.post(path, content=body, headers=headers)
            # Envoy's own answers keep their HTTP status (401 / 403) beside grpc-status in the headers
            http_status = {"0": 200, "16": 401, "7": 403}[expected]
            assert response.status_code == http_status, (path, token, response.status_code, response.text)
            assert _grpc_web_status(dict(response.headers), response.content) == expected, (path, token)
            if expected != "0":
                assert "API key" in response.headers["grpc-message"]
