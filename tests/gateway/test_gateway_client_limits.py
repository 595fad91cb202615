"""The gateway's limits against careless or slow clients, set from their variables, on a real Envoy:
request header size (431), the time to send the headers (slow clients: the connection is closed)
and the request body size (413)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.descriptors import Contracts
from gateway.envoy_config import LIMIT_FIELDS, GatewaySettings
from gateway.run import build_config
from services.runtime.config import ConfigError, read_fields

from .conftest import Gateway, running_gateway

ENV = {
    "KITRADING_GATEWAY_MAX_REQUEST_BODY_BYTES": "65536",
    "KITRADING_GATEWAY_MAX_REQUEST_HEADERS_KB": "8",
    "KITRADING_GATEWAY_REQUEST_HEADERS_TIMEOUT_S": "1",
    "KITRADING_GATEWAY_REQUEST_IDLE_TIMEOUT_S": "120",
    "KITRADING_GATEWAY_STREAM_IDLE_TIMEOUT_S": "900",
}


@pytest_asyncio.fixture(scope="module")
async def limited(
    contracts: Contracts, descriptor_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    log = tmp_path_factory.mktemp("envoy-limits") / "envoy.log"
    limits = read_fields(GatewaySettings(), LIMIT_FIELDS, ENV)
    async with running_gateway(contracts, descriptor_path, log, **limits) as running:
        yield running


def test_the_limits_come_from_their_variables_into_envoys_config(descriptor_path: Path) -> None:
    settings = GatewaySettings.from_env(ENV)
    assert settings.max_request_body_bytes == 65536 and settings.max_request_headers_kb == 8
    assert settings.request_headers_timeout_s == 1.0 and settings.stream_idle_timeout_s == 900.0
    text = json.dumps(build_config(settings, descriptor_path=descriptor_path, embed_descriptors=False))
    assert '"max_request_headers_kb": 8' in text and '"request_headers_timeout": "1s"' in text
    assert GatewaySettings.from_env({}).max_request_headers_kb == 60  # unset: the defaults
    with pytest.raises(ConfigError, match="KITRADING_GATEWAY_MAX_REQUEST_HEADERS_KB"):
        GatewaySettings.from_env({"KITRADING_GATEWAY_MAX_REQUEST_HEADERS_KB": "9000"})
    with pytest.raises(ConfigError, match="KITRADING_GATEWAY_REQUEST_HEADERS_TIMEOUT_S"):
        GatewaySettings(request_headers_timeout_s=0)


async def _exchange(gateway: Gateway, raw: bytes, timeout_s: float = 10) -> tuple[int | None, bytes]:
    """Send `raw`; the status of the answer (None: the connection closed without one) and the head."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(65536), timeout_s)
    finally:
        writer.close()
    return (int(head.split()[1]) if head.startswith(b"HTTP/") else None), head


async def test_headers_over_the_limit_are_431_and_under_it_pass(limited: Gateway) -> None:
    def request(header_bytes: int) -> bytes:
        return f"GET /data/health HTTP/1.1\r\nhost: gw\r\nx-padding: {'a' * header_bytes}\r\n\r\n".encode()

    status, head = await _exchange(limited, request(4 * 1024))
    assert status == 200, head
    status, head = await _exchange(limited, request(10 * 1024))
    assert status == 431, head


async def test_a_client_too_slow_with_its_headers_is_cut_off(limited: Gateway) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, head = await _exchange(limited, b"GET /data/health HTTP/1.1\r\nhost: gw\r\n")  # never ends
    waited = loop.time() - start
    assert status in (None, 408), head
    assert 0.8 <= waited < 5, waited


async def test_a_body_over_the_configured_limit_is_413(limited: Gateway) -> None:
    head_only = (
        "PATCH /api/v1/symbols/EURUSD?updateMask=displayName HTTP/1.1\r\nhost: gw\r\n"
        "content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    )
    status, head = await _exchange(limited, head_only.encode() + b'{"displayName": "')
    assert status == 413, head
    assert b"REQUEST_TOO_LARGE" in head and b"65536" in head
