"""Service-to-service channels reach every instance of a replicated service: the target lists them
and `mesh_channel` balances round robin (two real gRPC servers on port 0 behind one channel)."""

from __future__ import annotations

import grpc
import pytest

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import service_pb2_grpc
from services.runtime.addresses import service_target
from services.runtime.channels import mesh_channel
from services.runtime.config import ConfigError
from tests.runtime.test_server import FakeDomainServicer


def test_a_replicated_service_is_every_instance() -> None:
    env = {"KITRADING_EMBEDDER_PORT": "4005", "KITRADING_EMBEDDER_REPLICAS": "3"}
    assert service_target("embedder", env) == "127.0.0.1:4005"  # one address unless asked
    assert (
        service_target("embedder", env, instances=True) == "ipv4:127.0.0.1:4005,127.0.0.1:4105,127.0.0.1:4205"
    )
    assert service_target("embedder", {**env, "KITRADING_EMBEDDER_HOST": "::1"}, instances=True) == (
        "ipv6:[::1]:4005,[::1]:4105,[::1]:4205"
    )
    named = {**env, "KITRADING_EMBEDDER_HOST": "embedder"}  # its resolver lists the instances
    assert service_target("embedder", named, instances=True) == "embedder:4005"
    assert service_target("data", {}, instances=True) == "127.0.0.1:3001"
    # one instance only (kitrading up refuses more, saying why): not read here
    assert service_target("data", {"KITRADING_DATA_REPLICAS": "2"}, instances=True) == "127.0.0.1:3001"
    with pytest.raises(ConfigError, match="KITRADING_EMBEDDER_REPLICAS"):
        service_target("embedder", {"KITRADING_EMBEDDER_REPLICAS": "9"}, instances=True)


class Counting(FakeDomainServicer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: object) -> rr.GetSymbolResponse:
        self.calls += 1
        return await super().GetSymbol(request, context)


async def test_mesh_channel_balances_over_the_instances() -> None:
    servers, servicers, ports = [], [], []
    for _ in range(2):
        server = grpc.aio.server()
        servicer = Counting()  # type: ignore[abstract]  # partial on purpose
        service_pb2_grpc.add_DataServiceServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        servicers.append(servicer)
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        async with mesh_channel(target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            for _ in range(20):
                await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
        # round robin, not the first address only (the first calls go to whichever connected first)
        assert sum(s.calls for s in servicers) == 20 and min(s.calls for s in servicers) >= 7
        before = servicers[1].calls
        await servers[0].stop(0)  # one instance gone: the other takes every call
        async with mesh_channel(target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            for _ in range(5):
                await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
        assert servicers[1].calls == before + 5
    finally:
        for server in servers:
            await server.stop(0)
