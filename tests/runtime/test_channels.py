"""Service-to-service channels (`services.runtime.channels`): reads retried on UNAVAILABLE within
the deadline, writes never; a real grpc.aio server on port 0 that fails on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.runtime.channels import mesh_channel


class Flaky(service_pb2_grpc.DataServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method (a service restarting)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    async def _maybe_fail(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    async def GetSymbol(
        self, request: rr.GetSymbolRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetSymbolResponse:
        await self._maybe_fail("GetSymbol", context)
        return rr.GetSymbolResponse(symbol=pb.Symbol(symbol=request.symbol))

    async def CreateSymbol(
        self, request: rr.CreateSymbolRequest, context: grpc.aio.ServicerContext
    ) -> rr.CreateSymbolResponse:
        await self._maybe_fail("CreateSymbol", context)
        return rr.CreateSymbolResponse(symbol=request.symbol)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, Flaky]]:
    servicer = Flaky(failures=2)  # type: ignore[abstract]  # a partial servicer on purpose
    server = grpc.aio.server()
    service_pb2_grpc.add_DataServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


async def test_a_read_is_retried_through_a_restart_a_write_is_not(flaky: tuple[str, Flaky]) -> None:
    target, servicer = flaky
    async with mesh_channel(target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        reply = await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10)
        assert reply.symbol.symbol == "EURUSD" and servicer.calls["GetSymbol"] == 3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateSymbol(rr.CreateSymbolRequest(symbol=pb.Symbol(symbol="X")), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls["CreateSymbol"] == 1


async def test_without_retries_one_attempt(flaky: tuple[str, Flaky]) -> None:
    target, servicer = flaky
    async with mesh_channel(target, retries=False) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=10)
        assert servicer.calls["GetSymbol"] == 1
