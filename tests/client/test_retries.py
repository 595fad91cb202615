"""UNAVAILABLE is retried by the channel for GET-bound unary methods only."""

from __future__ import annotations

import json

import pytest

from kitrading.client import UnavailableError, connect, connect_async
from kitrading.client._generated import IDEMPOTENT_METHODS
from kitrading.client.client import channel_options, service_config
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as res

from .fake_data import ServerThread


def test_idempotent_methods_are_the_get_bound_unary_rpcs() -> None:
    data = {method for service, method in IDEMPOTENT_METHODS if service == "kitrading.data.v1.DataService"}
    assert {"ListSymbols", "GetSymbol", "ListCandles", "ListEvents"} <= data
    assert not data & {"CreateSymbol", "UpsertCandles", "ImportSamples", "DeleteSymbol", "StartSync"}
    assert "WatchEvents" not in data  # a stream, even though bound to GET


def test_service_config_json() -> None:
    options = dict(channel_options(retries=True))
    assert options["grpc.enable_retries"] == 1
    config = json.loads(options["grpc.service_config"])
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy == {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = config["methodConfig"][0]["name"]
    assert {"service": "kitrading.data.v1.DataService", "method": "ListSymbols"} in names
    assert service_config(retries=False) == {}
    assert dict(channel_options(retries=False))["grpc.enable_retries"] == 0


def test_get_method_is_retried_on_unavailable(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    servicer.fail_next["ListSymbols"] = 1
    with connect(data_server.target) as client:
        response = client.data.list_symbols()
    assert [s.symbol for s in response.symbols] == ["EURUSD"]
    assert servicer.calls["ListSymbols"] == 2


def test_retries_give_up_after_four_attempts(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    servicer.fail_next["ListSymbols"] = 10
    with connect(data_server.target) as client, pytest.raises(UnavailableError):
        client.data.list_symbols()
    assert servicer.calls["ListSymbols"] == 4


def test_post_method_is_not_retried(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    servicer.fail_next["CreateSymbol"] = 1
    with connect(data_server.target) as client:
        with pytest.raises(UnavailableError) as caught:
            client.data.create_symbol(rr.CreateSymbolRequest(symbol=res.Symbol(symbol="GOOG")))
        assert caught.value.message == "warming up"
        assert servicer.calls["CreateSymbol"] == 1
        assert client.data.create_symbol(
            rr.CreateSymbolRequest(symbol=res.Symbol(symbol="GOOG"))
        ).symbol.symbol == ("GOOG")


def test_no_retries_when_disabled(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    servicer.fail_next["ListSymbols"] = 1
    with connect(data_server.target, retries=False) as client, pytest.raises(UnavailableError):
        client.data.list_symbols()
    assert servicer.calls["ListSymbols"] == 1


async def test_async_get_method_is_retried(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    servicer.fail_next["GetSymbol"] = 2
    async with connect_async(data_server.target) as client:
        response = await client.data.get_symbol(rr.GetSymbolRequest(symbol="EURUSD"))
    assert response.symbol.symbol == "EURUSD"
    assert servicer.calls["GetSymbol"] == 3
