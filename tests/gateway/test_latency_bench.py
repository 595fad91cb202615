"""The gateway latency bench's own parts: the C TCP relay (the floor of any hop) and its arithmetic."""

from __future__ import annotations

import shutil

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.gateway_latency import added_per_round, tcp_relay

HealthServer = tuple[int, health.HealthServicer]


def test_tcp_relay_carries_grpc_calls_and_their_errors(health_server: HealthServer) -> None:
    # `make test` needs a C compiler anyway (deploy/timescaledb.sh), so this runs everywhere it does.
    upstream, servicer = health_server
    servicer.set("probe", health_pb2.HealthCheckResponse.SERVING)
    with tcp_relay(upstream) as relay:
        assert relay is not None
        port, _pid = relay
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(50):  # one connection, many calls: the relay copies both ways as bytes arrive
                reply = stub.Check(health_pb2.HealthCheckRequest(service="probe"), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as error:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # A second connection gets its own upstream connection.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="probe"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tcp_relay_is_left_out_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with tcp_relay(1) as relay:
        assert relay is None


def test_added_per_round_pairs_each_round_with_the_direct_round_beside_it() -> None:
    samples = {
        "direct gRPC": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.5]],
        "gateway gRPC": [[1.25, 1.25, 9.0], [2.5, 2.5, 2.5], [1.5, 1.75, 1.75]],
    }
    assert added_per_round(samples, "gateway gRPC") == {"median": 0.25, "min": 0.25, "max": 0.5}
