"""The shared runtime on a real grpc.aio server (port 0): health, reflection, validation, errors, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from kitrading import mesh
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2, service_pb2_grpc
from services.runtime.config import ConfigError, RuntimeSettings
from services.runtime.errors import NotFound
from services.runtime.interceptor import Observer, RpcRecord
from services.runtime.server import RunningServer, create_server


class FakeDomainServicer(service_pb2_grpc.DataServiceServicer):
    """A servicer that exercises the runtime; no storage behind it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: object) -> rr.GetSymbolResponse:
        if request.symbol == "BOOM":
            raise RuntimeError("secret internal detail")
        if request.symbol == "SLOW":
            await self.release.wait()
        if request.symbol != "EURUSD":
            raise NotFound(f"symbol {request.symbol} not found", reason="SYMBOL_NOT_FOUND")
        return rr.GetSymbolResponse(symbol=resources_pb2.Symbol(symbol="EURUSD"))

    async def WatchEvents(
        self, request: rr.WatchEventsRequest, context: object
    ) -> AsyncIterator[rr.WatchEventsResponse]:
        for i in range(3):
            yield rr.WatchEventsResponse(event=resources_pb2.Event(event_id=i + 1))
        if request.from_beginning:  # "forever": until the server goes away
            await asyncio.Event().wait()


class App:
    def __init__(self) -> None:
        self.servicer = FakeDomainServicer()  # type: ignore[abstract]  # a partial servicer on purpose
        self.ready = True
        self.records: list[RpcRecord] = []
        self.stopped = False

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_DataServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def is_ready(self) -> bool:
        return self.ready

    @property
    def observers(self) -> Sequence[Observer]:
        return [self.records.append]


def settings(**overrides: object) -> RuntimeSettings:
    base = RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "0"})
    values = {f: getattr(base, f) for f in base.__dataclass_fields__}
    values.update(overrides)
    return RuntimeSettings(**values)


@pytest.fixture
async def running() -> AsyncIterator[tuple[RunningServer, App]]:
    app = App()
    server = await create_server(
        app, settings(max_concurrent_unary=2, grace_seconds=1.0, admission_wait_ms=200)
    )
    yield server, app
    await server.stop(0)


async def test_health_serving_then_not_serving(running: tuple[RunningServer, App]) -> None:
    server, app = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "kitrading.data.v1.DataService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        app.ready = False
        await asyncio.sleep(0.8)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="kitrading.data.v1.DataService"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        alive = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert alive.status == health_pb2.HealthCheckResponse.SERVING  # no restart for a dependency outage


async def test_reflection_lists_services_v1alpha_and_v1(running: tuple[RunningServer, App]) -> None:
    server, _ = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        for method in (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ):
            call = channel.stream_stream(
                method,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            stream = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            reply = await stream.read()
            names = {s.name for s in reply.list_services_response.service}
            assert "kitrading.data.v1.DataService" in names
            assert "grpc.health.v1.Health" in names
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        stream = stub.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="kitrading.data.v1.DataService"
                    )
                ]
            )
        )
        reply = await stream.read()
        assert reply.file_descriptor_response.file_descriptor_proto


async def call_error(server: RunningServer, request: rr.GetSymbolRequest) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSymbol(request, timeout=5)
        return info.value


def details(error: grpc.aio.AioRpcError) -> list[object]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes)
    from google.rpc import status_pb2

    status = status_pb2.Status.FromString(raw)
    out: list[object] = []
    for item in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if item.Is(cls.DESCRIPTOR):
                msg = cls()
                item.Unpack(msg)
                out.append(msg)
    return out


async def last_record(app: App, short_method: str, count: int) -> RpcRecord:
    """The newest record once there are more than `count`: observers run just after the status is
    sent, so the client can see the answer a moment before the record exists."""
    for _ in range(200):
        if len(app.records) > count and app.records[-1].short_method == short_method:
            return app.records[-1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {short_method} record after {count} earlier ones")


async def test_invalid_argument_names_the_field(running: tuple[RunningServer, App]) -> None:
    server, app = running
    before = len(app.records)
    error = await call_error(server, rr.GetSymbolRequest(symbol="eur usd"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    infos = details(error)
    bad = next(d for d in infos if isinstance(d, error_details_pb2.BadRequest))
    assert bad.field_violations[0].field == "symbol"
    assert "regex" in bad.field_violations[0].description
    assert (await last_record(app, "GetSymbol", before)).code == "INVALID_ARGUMENT"


async def test_domain_error_maps_to_code_with_reason(running: tuple[RunningServer, App]) -> None:
    server, _ = running
    error = await call_error(server, rr.GetSymbolRequest(symbol="GBPUSD"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = next(d for d in details(error) if isinstance(d, error_details_pb2.ErrorInfo))
    assert info.reason == "SYMBOL_NOT_FOUND"
    assert info.domain == "kitrading.data"


async def test_unknown_failure_is_internal_without_details_leak(running: tuple[RunningServer, App]) -> None:
    server, _ = running
    error = await call_error(server, rr.GetSymbolRequest(symbol="BOOM"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "")
    assert "Traceback" not in (error.details() or "")
    assert "log id" in (error.details() or "")
    assert rpc_status.from_call(error) is not None


async def test_concurrency_limit_answers_resource_exhausted(running: tuple[RunningServer, App]) -> None:
    server, app = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        slow = [asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"))) for _ in range(2)]
        await asyncio.sleep(0.3)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        app.servicer.release.set()
        for call in slow:
            with pytest.raises(grpc.aio.AioRpcError):
                await call  # SLOW is then not found
        reply = await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
        assert reply.symbol.symbol == "EURUSD"


async def test_calls_over_the_limit_wait_for_a_slot_then_are_served_in_order() -> None:
    app = App()
    server = await create_server(app, settings(max_concurrent_unary=2, admission_wait_ms=5000))
    interceptor = server.interceptor
    assert interceptor is not None
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            slow = [
                asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"))) for _ in range(2)
            ]
            await asyncio.sleep(0.3)
            finished: list[int] = []

            async def queued(index: int) -> None:
                await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10)
                finished.append(index)

            waiting = []
            for index in range(4):
                waiting.append(asyncio.ensure_future(queued(index)))
                await asyncio.sleep(0.05)  # a known arrival order
            gone = asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10))
            await asyncio.sleep(0.3)
            assert interceptor.unary_in_flight == 2 and len(interceptor._waiting) == 5
            gone.cancel()  # a caller that leaves the queue takes nothing with it
            await asyncio.sleep(0.2)
            app.servicer.release.set()
            await asyncio.gather(*waiting)  # none refused: the slots passed on
            assert finished == [0, 1, 2, 3]
            for call in slow:
                with pytest.raises(grpc.aio.AioRpcError):
                    await call  # SLOW is then not found
            await _slots_free(server)
            assert not interceptor._waiting
    finally:
        await server.stop(0)


async def test_the_wait_for_a_slot_is_bounded_by_the_setting_and_the_deadline() -> None:
    app = App()
    server = await create_server(app, settings(max_concurrent_unary=1, admission_wait_ms=400))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            hold = asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW")))
            await asyncio.sleep(0.3)
            loop = asyncio.get_running_loop()
            for timeout, limit_s in ((10.0, 0.4), (0.1, 0.1)):
                start = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=timeout)
                waited = loop.time() - start
                assert limit_s * 0.9 <= waited < limit_s + 0.5, waited
                assert info.value.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if timeout == 10.0:
                    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "none freed within 0.4 s" in (info.value.details() or "")
            app.servicer.release.set()
            with pytest.raises(grpc.aio.AioRpcError):
                await hold
            await _slots_free(server)
            assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol.symbol
    finally:
        await server.stop(0)


async def test_stream_and_observers(running: tuple[RunningServer, App]) -> None:
    server, app = running
    before = len(app.records)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        ids = [r.event.event_id async for r in stub.WatchEvents(rr.WatchEventsRequest())]
    assert ids == [1, 2, 3]
    record = await last_record(app, "WatchEvents", before)
    assert record.short_method == "WatchEvents"
    assert record.messages_sent == 3
    assert record.code == "OK"


async def test_drain_finishes_in_flight_calls() -> None:
    app = App()
    server = await create_server(app, settings(grace_seconds=5.0))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"), timeout=10))
        await asyncio.sleep(0.2)
        stopper = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.2)
        health = health_pb2_grpc.HealthStub(channel)
        assert server.serving is False
        app.servicer.release.set()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await in_flight
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # it ran to completion, not cut
        await stopper
        del health
    assert app.stopped


def test_config_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="KITRADING_DATA_PORT"):
        RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "abc"})
    with pytest.raises(ConfigError, match="KITRADING_GRACE_SECONDS"):
        RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_GRACE_SECONDS": "-1"})


async def some_record(app: App) -> None:
    """Observers run just after the status is sent: under load the record comes a moment later."""
    for _ in range(300):
        if app.records:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no RPC record within 3 s")


async def test_stop_with_an_open_stream_does_not_crash() -> None:
    """Regression: reading the peer after teardown crashed grpc's C core (the process died)."""
    app = App()
    server = await create_server(app, settings(grace_seconds=0.3))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        stream = stub.WatchEvents(rr.WatchEventsRequest(from_beginning=True))
        for _ in range(3):
            await stream.read()
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError):
            await stream.read()
    await some_record(app)
    assert app.records[-1].short_method == "WatchEvents"
    assert app.records[-1].code in {"CANCELLED", "UNAVAILABLE"}


async def test_drain_ends_subscriptions_at_once() -> None:
    """A `Watch*` stream must not hold shutdown for the whole grace period: it ends with UNAVAILABLE."""
    app = App()
    server = await create_server(app, settings(grace_seconds=10.0))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        stream = stub.WatchEvents(rr.WatchEventsRequest(from_beginning=True))
        for _ in range(3):
            await stream.read()
        started = asyncio.get_running_loop().time()
        await server.stop()
        assert asyncio.get_running_loop().time() - started < 3.0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await some_record(app)
    assert app.records[-1].code == "UNAVAILABLE"


async def test_nul_bytes_in_any_string_are_invalid_argument_naming_the_field(
    running: tuple[RunningServer, App],
) -> None:
    """PostgreSQL text cannot hold NUL: caught at the boundary for every service, never a 500."""
    server, _ = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        strategy = resources_pb2.Strategy(strategy_id="s1", description="a\x00b", symbols=["EURUSD", "X\x00"])
        strategy.parameters.update({"outer": {"inner": ["ok", "bad\x00"]}})
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateStrategy(rr.CreateStrategyRequest(strategy=strategy), timeout=5)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = next(d for d in details(error) if isinstance(d, error_details_pb2.BadRequest))
    fields = [v.field for v in bad.field_violations]
    assert fields == [
        "strategy.description",
        "strategy.symbols[1]",
        'strategy.parameters["outer"]["inner"][1]',
    ], fields
    assert all("NUL" in v.description for v in bad.field_violations)
    error = await call_error(server, rr.GetSymbolRequest(symbol="EUR\x00"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_undecodable_bytes_are_invalid_argument_without_internal_names(
    running: tuple[RunningServer, App],
) -> None:
    server, app = running
    before = len(app.records)
    async with grpc.aio.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/kitrading.data.v1.DataService/GetSymbol")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # a length far beyond the bytes sent
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    message = error.details() or ""
    assert "kitrading.data.v1.GetSymbolRequest" in message
    assert "DecodeError" not in message and "google.protobuf" not in message
    bad = next(d for d in details(error) if isinstance(d, error_details_pb2.BadRequest))
    assert bad.field_violations[0].field == "request"
    assert (await last_record(app, "GetSymbol", before)).code == "INVALID_ARGUMENT"


# ---- hostile gRPC clients: a clear status each, the service's slots freed afterwards ----


async def _slots_free(server: RunningServer) -> None:
    interceptor = server.interceptor
    assert interceptor is not None
    for _ in range(100):
        if interceptor.unary_in_flight == 0 and interceptor.streams_in_flight == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"slots held: {interceptor.unary_in_flight} unary, {interceptor.streams_in_flight} streams"
    )


async def test_a_message_over_the_size_limit_is_refused_and_the_server_serves_on() -> None:
    app = App()
    server = await create_server(app, settings(max_message_bytes=64 * 1024))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetSymbol(rr.GetSymbolRequest(symbol="E" * 100_000), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
            assert "larger than max" in (info.value.details() or "")
            assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol.symbol
        await _slots_free(server)
    finally:
        await server.stop(0)


async def test_a_deadline_expiring_at_once_or_in_the_handler_is_deadline_exceeded(
    running: tuple[RunningServer, App],
) -> None:
    """(A 1 us deadline on a call the server answers at once is not a test: gRPC's timers have
    millisecond slack and the answer can win, as it did once in CI. The handler waits here.)"""
    server, _ = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"), timeout=0.000001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as slow:  # expires while the handler waits
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"), timeout=0.2)
        assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _slots_free(server)
        assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol.symbol


async def test_clients_cancelling_mid_call_and_mid_stream_free_their_slots(
    running: tuple[RunningServer, App],
) -> None:
    server, _ = running  # 2 unary slots
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        for _ in range(5):  # more cancelled calls than slots: each must give its slot back
            calls = [stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW")) for _ in range(2)]
            await asyncio.sleep(0.1)
            for call in calls:
                call.cancel()
            await _slots_free(server)
        streams = [stub.WatchEvents(rr.WatchEventsRequest(from_beginning=True)) for _ in range(20)]
        for stream in streams:
            assert (await stream.read()).event.event_id == 1
        for stream in streams:
            stream.cancel()
        await _slots_free(server)
        assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol.symbol


async def test_hundreds_of_concurrent_calls_get_a_status_each_and_free_every_slot() -> None:
    app = App()
    server = await create_server(app, settings(max_concurrent_unary=64))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            slow = [
                asyncio.ensure_future(stub.GetSymbol(rr.GetSymbolRequest(symbol="SLOW"), timeout=30))
                for _ in range(64)
            ]
            await asyncio.sleep(0.3)
            over = await asyncio.gather(
                *(stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10) for _ in range(400)),
                return_exceptions=True,
            )
            codes = {e.code() for e in over if isinstance(e, grpc.aio.AioRpcError)}
            assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert all(isinstance(e, grpc.aio.AioRpcError) for e in over)  # all 64 slots were held
            app.servicer.release.set()
            done = await asyncio.gather(*slow, return_exceptions=True)
            assert {e.code() for e in done if isinstance(e, grpc.aio.AioRpcError)} == {
                grpc.StatusCode.NOT_FOUND
            }
            await _slots_free(server)
            served = await asyncio.gather(
                *(stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10) for _ in range(300))
            )
            assert len(served) == 300
    finally:
        await server.stop(0)


async def test_metadata_as_large_as_the_gateway_lets_through_is_accepted(
    running: tuple[RunningServer, App],
) -> None:
    """gRPC's default 16 KiB hard limit answered a call carrying a 20 KB URL (x-envoy-original-path
    from the gateway) RESOURCE_EXHAUSTED, a retryable 429 naming internal headers."""
    server, _ = running
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        metadata = (("x-envoy-original-path", "/api/v1/symbols/" + "A" * 60_000), ("cookie", "c" * 60_000))
        reply = await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5, metadata=metadata)
        assert reply.symbol.symbol == "EURUSD"
