"""Rate limits at the real Envoy: one token bucket per client address (or per API key), a stricter one
for the calls that start work, 429 with Retry-After and a body naming the limit (gRPC:
RESOURCE_EXHAUSTED), health never limited, X-Forwarded-For never a new client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from gateway import rate_limits
from gateway.descriptors import Contracts
from gateway.envoy_config import GatewaySettings
from gateway.keys import KeyStore
from gateway.rate_limits import EXPENSIVE_METHODS, RateLimitSettings
from gateway.run import build_config
from services.runtime.config import ConfigError

from .conftest import Gateway, running_gateway
from .fake_data import DataMessages

# small limits, so a test reaches them in a few calls; the expensive bucket refills every 30 s
LIMITS = RateLimitSettings(mode="on", calls_per_second=5, burst=5, expensive_per_minute=2, expensive_burst=2)
LIST_SYMBOLS = "/kitrading.data.v1.DataService/ListSymbols"


# ---- settings ----


def test_defaults_and_the_environment() -> None:
    limits = RateLimitSettings.from_env({})
    assert (limits.mode, limits.calls_per_second, limits.burst) == ("auto", 100, 200)
    assert (limits.expensive_per_minute, limits.expensive_burst) == (20, 10)
    assert limits.expensive_retry_after_s == 3
    env = {
        rate_limits.MODE: "ON",
        rate_limits.CALLS_PER_SECOND: "7",
        rate_limits.BURST: "9",
        rate_limits.EXPENSIVE_PER_MINUTE: "4",
        rate_limits.EXPENSIVE_BURST: "1",
        rate_limits.CLIENTS: "50",
    }
    limits = RateLimitSettings.from_env(env)
    assert (limits.mode, limits.calls_per_second, limits.burst, limits.clients) == ("on", 7, 9, 50)
    assert (limits.expensive_per_minute, limits.expensive_burst, limits.expensive_retry_after_s) == (4, 1, 15)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (rate_limits.MODE, "sometimes"),
        (rate_limits.CALLS_PER_SECOND, "0"),
        (rate_limits.CALLS_PER_SECOND, "1.5"),
        (rate_limits.BURST, "-3"),
        (rate_limits.EXPENSIVE_PER_MINUTE, "5000"),
        (rate_limits.EXPENSIVE_BURST, "many"),
        (rate_limits.CLIENTS, "0"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        GatewaySettings.from_env({name: value})


def test_auto_limits_a_gateway_others_can_reach(tmp_path: Path) -> None:
    assert not GatewaySettings().rate_limited  # the embedded default: loopback, no keys
    assert GatewaySettings(listen_address="0.0.0.0", allow_unauthenticated=True).rate_limited
    store = KeyStore.from_env({}, directory=tmp_path)
    store.create("read")
    assert GatewaySettings(api_keys=store.api_keys()).rate_limited
    assert GatewaySettings(rate_limits=RateLimitSettings(mode="on")).rate_limited
    off = RateLimitSettings(mode="off")
    assert not GatewaySettings(
        listen_address="0.0.0.0", allow_unauthenticated=True, rate_limits=off
    ).rate_limited


def _filter_names(settings: GatewaySettings, descriptor_path: Path) -> list[str]:
    config = build_config(settings, descriptor_path=descriptor_path)
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_the_filters_sit_after_the_transcoder_and_before_the_router(descriptor_path: Path) -> None:
    names = _filter_names(GatewaySettings(rate_limits=LIMITS), descriptor_path)
    calls, expensive = names.index(rate_limits.CALLS_FILTER), names.index(rate_limits.EXPENSIVE_FILTER)
    assert names.index("envoy.filters.http.grpc_json_transcoder") < calls < expensive
    assert expensive < names.index("envoy.filters.http.router")
    assert rate_limits.CALLS_FILTER not in _filter_names(GatewaySettings(), descriptor_path)


def test_every_expensive_method_exists(contracts: Contracts) -> None:
    methods = {m.full_name for s in contracts.routed_services() for m in s.methods}
    assert methods >= EXPENSIVE_METHODS, sorted(EXPENSIVE_METHODS - methods)


# ---- a real Envoy, limits per client address ----


@pytest_asyncio.fixture(scope="module")
async def limited(
    contracts: Contracts, descriptor_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    log = tmp_path_factory.mktemp("envoy-rate-limits") / "envoy.log"
    async with running_gateway(contracts, descriptor_path, log, rate_limits=LIMITS) as running:
        yield running


async def _refilled() -> None:
    """Long enough for the calls bucket (5 a second) to be full again."""
    await asyncio.sleep(1.2)


async def test_reads_over_the_limit_are_429_with_retry_after(limited: Gateway) -> None:
    await _refilled()
    async with limited.client() as client:
        answers = [await client.get("/api/v1/symbols") for _ in range(8)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
        over = next(a for a in answers if a.status_code == 429)
        assert over.headers["retry-after"] == "1"
        body = over.json()
        assert body["code"] == 8, body
        assert "at most 5 calls a second per client address (5 at once); retry after 1 s" in body["message"]
        info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["reason"] == "RATE_LIMITED" and info["metadata"]["limit"] == "calls", info
        retry = next(d for d in body["details"] if d["@type"].endswith("RetryInfo"))
        assert retry["retryDelay"] == "1s"
        await _refilled()
        assert (await client.get("/api/v1/symbols")).status_code == 200  # the bucket refilled


async def test_x_forwarded_for_is_not_a_new_client(limited: Gateway) -> None:
    await _refilled()
    async with limited.client() as client:
        codes = [
            (await client.get("/api/v1/symbols", headers={"x-forwarded-for": f"203.0.113.{i}"})).status_code
            for i in range(10)
        ]
    assert codes.count(200) <= 6 and 429 in codes, codes  # 5 at once, maybe one refilled meanwhile


async def test_health_is_never_limited(limited: Gateway) -> None:
    """Probes (compose, Kubernetes, the watchdog) keep working while a client is limited; the docs
    pages and the dashboard's files count as calls."""
    await _refilled()
    async with limited.client() as client:
        pages = [(await client.get("/data/openapi.json")).status_code for _ in range(7)]
        health = [(await client.get("/data/health")).status_code for _ in range(20)]
    assert 429 in pages, pages
    assert health == [200] * 20, health


async def test_calls_that_start_work_have_a_stricter_limit(limited: Gateway) -> None:
    await _refilled()
    async with limited.client() as client:
        answers = []
        for _ in range(3):
            answers.append(await client.post("/api/v1/sync/start", json={}))
            await asyncio.sleep(0.25)  # well inside the calls bucket
        assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
        over = answers[2]
        assert over.headers["retry-after"] == "30"
        body = over.json()
        assert "/kitrading.data.v1.DataService/StartSync starts work" in body["message"], body
        assert (
            "at most 2 such calls a minute per client address (2 at once); retry after 30 s"
            in body["message"]
        )
        info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["metadata"]["limit"] == "expensive", info
        # reads still pass: the expensive bucket is the start-work calls' own
        assert (await client.get("/api/v1/symbols")).status_code == 200


async def test_native_grpc_over_the_limit_is_resource_exhausted(
    limited: Gateway, contracts: Contracts
) -> None:
    m = DataMessages(contracts)
    await _refilled()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        call = channel.unary_unary(
            LIST_SYMBOLS,
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=m.ListSymbolsResponse.FromString,
        )
        errors = []
        for _ in range(8):
            try:
                await call(m.ListSymbolsRequest(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc)
    assert errors and len(errors) <= 3, [e.code() for e in errors]
    assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "at most 5 calls a second per client address" in (errors[0].details() or "")


# ---- per API key ----


async def test_each_api_key_has_its_own_bucket(
    contracts: Contracts, descriptor_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = KeyStore.from_env({}, directory=tmp_path_factory.mktemp("secrets-rate"))
    first_record, first = store.create("read")
    _, second = store.create("read")
    log = tmp_path_factory.mktemp("envoy-rate-keys") / "envoy.log"
    async with (
        running_gateway(
            contracts, descriptor_path, log, api_keys=store.api_keys(), rate_limits=LIMITS
        ) as keyed,
        keyed.client() as client,
    ):
        started = time.monotonic()
        codes = [
            (await client.get("/api/v1/symbols", headers={"x-api-key": first})).status_code for _ in range(8)
        ]
        over = await client.get("/api/v1/symbols", headers={"x-api-key": first})
        other = await client.get("/api/v1/symbols", headers={"x-api-key": second})
        assert time.monotonic() - started < 1.0, "too slow to see the bucket empty"
    assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
    assert over.status_code == 429
    assert f"per API key {first_record.id}" in over.json()["message"]
    assert other.status_code == 200  # another key, another bucket
