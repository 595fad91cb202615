"""The blocking client against a real in-process DataService."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kitrading.client import (
    Client,
    FailedPreconditionError,
    HealthStatus,
    InternalError,
    InvalidArgumentError,
    KitradingError,
    NotFoundError,
    ServerStream,
    UnavailableError,
    UnimplementedError,
    _runtime,
    connect,
)
from kitrading.data.v1 import request_response_pb2 as rr

from .fake_data import FakeDataService, ServerThread


@pytest.fixture
def client(data_server: ServerThread) -> Iterator[Client]:
    with connect(data_server.target) as c:
        yield c


def test_unary_call_returns_the_typed_response(client: Client, servicer: FakeDataService) -> None:
    response = client.data.list_symbols(rr.ListSymbolsRequest(page_size=10))
    assert isinstance(response, rr.ListSymbolsResponse)
    assert [s.symbol for s in response.symbols] == ["EURUSD"]
    assert servicer.calls["ListSymbols"] == 1


def test_none_request_sends_an_empty_message(client: Client) -> None:
    assert client.data.import_samples().datasets[0].symbol == "EURUSD"


def test_default_timeout_and_metadata_reach_the_server(data_server: ServerThread) -> None:
    servicer = data_server.servicer
    with connect(data_server.target, timeout=7.0, metadata=[("x-team", "quant")]) as client:
        client.data.list_symbols(metadata=[("x-request-id", "r1")])
        assert servicer.last_metadata["x-team"] == "quant"
        assert servicer.last_metadata["x-request-id"] == "r1"
        assert servicer.last_time_remaining is not None and 5.0 < servicer.last_time_remaining < 7.5
        client.data.list_symbols(timeout=2.0)
        assert servicer.last_time_remaining is not None and servicer.last_time_remaining < 2.5


def test_invalid_argument_carries_field_violations(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.data.get_symbol(rr.GetSymbolRequest(symbol="eur/usd"))
    error = caught.value
    assert error.code.name == "INVALID_ARGUMENT"
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain == "kitrading.data"
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("symbol", "value does not match regex pattern `^[A-Z0-9][A-Z0-9._-]*$`")
    ]
    assert str(error).startswith("INVALID_ARGUMENT: invalid argument: symbol:")
    assert error.__cause__ is None and error.__suppress_context__


def test_not_found_carries_reason_and_metadata(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.data.get_symbol(rr.GetSymbolRequest(symbol="XAUUSD"))
    assert caught.value.reason == "SYMBOL_NOT_FOUND"
    assert caught.value.metadata == {"symbol": "XAUUSD"}
    assert caught.value.field_violations == []
    assert isinstance(caught.value, KitradingError)


def test_internal_error_has_the_log_id(client: Client) -> None:
    with pytest.raises(InternalError) as caught:
        client.data.get_symbol(rr.GetSymbolRequest(symbol="BOOM"))
    assert caught.value.log_id == "log-123"


def test_server_stream_iterates(client: Client, servicer: FakeDataService) -> None:
    stream = client.data.watch_events(rr.WatchEventsRequest(after_event_id=10))
    assert isinstance(stream, ServerStream)
    assert [r.event.event_id for r in stream] == [11, 12, 13]
    assert servicer.calls["WatchEvents"] == 1


def test_stream_error_is_raised_during_iteration(client: Client) -> None:
    received: list[int] = []
    with pytest.raises(FailedPreconditionError) as caught:
        for response in client.data.watch_events(rr.WatchEventsRequest(symbols=["FAIL"])):
            received.append(response.event.event_id)
    assert received == [1]
    assert caught.value.reason == "EVENTS_UNAVAILABLE"


def test_cancelling_a_stream_ends_iteration(client: Client, servicer: FakeDataService) -> None:
    received: list[int] = []
    with client.data.watch_events(rr.WatchEventsRequest(from_beginning=True)) as stream:
        for response in stream:
            received.append(response.event.event_id)
            if len(received) == 3:
                stream.cancel()
    assert received == [1, 2, 3]
    assert servicer.stream_cancelled.wait(5)


def test_health(client: Client) -> None:
    assert client.health("data") is HealthStatus.SERVING
    assert client.health("kitrading.data.v1.DataService") is HealthStatus.SERVING
    assert client.health("") is HealthStatus.SERVING
    assert client.health("forecast") is HealthStatus.SERVICE_UNKNOWN  # not served by this server


def test_every_registry_service_is_an_attribute(client: Client) -> None:
    from kitrading import mesh

    for info in mesh.SERVICES:
        service_client = getattr(client, info.name)
        assert info.grpc_service == service_client.SERVICE


def test_unreachable_target_raises_unavailable() -> None:
    from kitrading.client import UnavailableError

    with connect("127.0.0.1:1", timeout=2.0, retries=False) as client, pytest.raises(UnavailableError):
        client.data.list_symbols()


def test_health_falls_back_to_the_gateway_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway routes no grpc.health.v1 (UNIMPLEMENTED): its `/<prefix>/health` page answers."""
    import httpx

    server = ServerThread(with_health=False).start()
    asked: list[str] = []

    def fake_get(url: str, **kwargs: object) -> httpx.Response:
        asked.append(url)
        return httpx.Response(503 if "nhits" in url else 200)

    monkeypatch.setattr(httpx, "get", fake_get)
    try:
        with connect(server.target) as client:
            assert client.health("data") is HealthStatus.SERVING
            assert client.health("forecast") is HealthStatus.NOT_SERVING
            with pytest.raises(UnimplementedError):
                client.health("")  # no page for the whole server
    finally:
        server.stop()
    assert asked == [f"http://{server.target}/data/health", f"http://{server.target}/nhits/health"]


def test_a_broken_subscription_is_resumed_after_its_last_event(
    client: Client, servicer: FakeDataService, data_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_runtime, "RESUME_BACKOFF_S", (0.01, 0.02))
    servicer.break_streams = 2  # the service drains twice mid-stream (UNAVAILABLE, "resubscribe")
    stream = client.data.watch_events(rr.WatchEventsRequest(symbols=["EURUSD"], from_beginning=False))
    assert [r.event.event_id for r in stream] == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # no gap, no duplicate
    assert stream.resumes == 2
    assert [r.after_event_id for r in servicer.watch_requests] == [0, 3, 6]
    assert all(list(r.symbols) == ["EURUSD"] for r in servicer.watch_requests)  # the rest unchanged
    servicer.break_streams = 1
    # retries off: the break is raised
    with connect(data_server.target, retries=False) as plain, pytest.raises(UnavailableError):
        list(plain.data.watch_events(rr.WatchEventsRequest()))
    with pytest.raises(UnavailableError):  # a stream with a deadline is not resumed past it either
        servicer.break_streams = 1
        list(client.data.watch_events(rr.WatchEventsRequest(), timeout=30))


def test_a_subscription_that_stays_broken_gives_up(
    client: Client, servicer: FakeDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_runtime, "RESUME_BACKOFF_S", (0.01, 0.02))
    monkeypatch.setattr(_runtime, "RESUME_WITHIN_S", 0.3)
    servicer.fail_next["WatchEvents"] = 1000  # UNAVAILABLE before any event, every time
    with pytest.raises(UnavailableError):
        list(client.data.watch_events(rr.WatchEventsRequest()))
    assert 3 <= servicer.calls["WatchEvents"] < 1000
