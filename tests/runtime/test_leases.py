"""The lease of once-only work: one holder among the instances of a service, handed over when it stops
or dies (real flock, real servers on port 0, a real child process killed with SIGKILL)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading import mesh
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import service_pb2_grpc
from services.runtime import app as app_module
from services.runtime.app import ServiceAppBase
from services.runtime.leases import FileLease, lease_path
from services.runtime.server import RunningServer, create_server
from tests.runtime.test_app import until
from tests.runtime.test_server import FakeDomainServicer, details, settings

#: The fake Data servicer with GetSymbol as its once-only method.
SERVICE = dataclasses.replace(mesh.service("data"), leader_methods=("GetSymbol",))


class Leading(ServiceAppBase):
    def __init__(self, path: Path) -> None:
        super().__init__("leadsvc", service_pb2_grpc.add_DataServiceServicer_to_server)
        self.servicer = FakeDomainServicer()  # type: ignore[abstract]  # partial on purpose
        self.path = path
        self.led = 0

    def lease_path(self) -> Path:
        return self.path

    async def on_lead(self) -> None:
        self.led += 1


def test_one_holder_at_a_time_and_the_file_names_it(tmp_path: Path) -> None:
    path = lease_path(tmp_path, "forecast")
    first, second = FileLease(path, instance="forecast"), FileLease(path, instance="forecast-2")
    assert first.try_acquire() and first.held
    assert first.try_acquire()  # again: still held, no second lock
    assert not second.try_acquire() and not second.held  # same process, another open file: refused
    assert second.holder() == f"forecast (pid {os.getpid()})"
    first.release()
    assert not first.held and second.holder() is None  # emptied on release
    assert second.try_acquire()
    assert first.holder() == f"forecast-2 (pid {os.getpid()})"
    second.release()


def test_a_killed_holder_leaves_no_lease_behind(tmp_path: Path) -> None:
    path = lease_path(tmp_path, "regime")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from services.runtime.leases import FileLease; "
            "lease = FileLease(Path(sys.argv[1]), instance='regime'); assert lease.try_acquire(); "
            "print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        ours = FileLease(path, instance="regime-2")
        assert not ours.try_acquire()
        assert ours.holder() == f"regime (pid {holder.pid})"
        holder.send_signal(signal.SIGKILL)  # no chance to clean up
        holder.wait(10)
        assert ours.try_acquire(), "the kernel dropped the dead process's lock"
        ours.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


async def _leader_health(server: RunningServer) -> int:
    async with grpc.aio.insecure_channel(server.target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE.leader_health_name), timeout=5
        )
    return int(reply.status)


async def test_only_the_holder_answers_the_once_only_methods_and_the_lease_moves_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "LEASE_POLL_S", 0.05)
    path = lease_path(tmp_path, "leadsvc")
    first, second = Leading(path), Leading(path)
    monkeypatch.setenv("KITRADING_INSTANCE", "leadsvc")
    one = await create_server(first, settings(service=SERVICE))
    monkeypatch.setenv("KITRADING_INSTANCE", "leadsvc-2")
    two = await create_server(second, settings(service=SERVICE))
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        assert first.led == 1 and first.is_leader()
        assert second.led == 0 and not second.is_leader()
        await until(lambda: one.leading is True and two.leading is False)
        assert await _leader_health(one) == serving
        assert await _leader_health(two) == health_pb2.HealthCheckResponse.NOT_SERVING
        async with grpc.aio.insecure_channel(two.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # not run: safe to send again
            assert f"leadsvc (pid {os.getpid()})" in (refused.value.details() or "")
            (info,) = [d for d in details(refused.value) if isinstance(d, error_details_pb2.ErrorInfo)]
            assert info.reason == "NOT_LEADER"
            events = stub.WatchEvents(rr.WatchEventsRequest(), timeout=5)  # not once-only: served
            assert len([e async for e in events]) == 3
            async with grpc.aio.insecure_channel(one.target) as leader_channel:
                leader = service_pb2_grpc.DataServiceStub(leader_channel)
                assert (await leader.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol

            await one.stop(0)  # the holder drains and exits: the other takes over within a poll
            await until(lambda: second.led == 1 and second.is_leader())
            await until(lambda: two.leading is True)
            assert await _leader_health(two) == serving
            assert (await stub.GetSymbol(rr.GetSymbolRequest(symbol="EURUSD"), timeout=5)).symbol
            assert FileLease(path, instance="x").holder() == f"leadsvc-2 (pid {os.getpid()})"
    finally:
        for server in (one, two):
            if not server.draining:
                await server.stop(0)
    assert not second.is_leader()
    assert FileLease(path, instance="x").try_acquire(), "released at stop"


async def test_a_service_without_once_only_work_always_leads(tmp_path: Path) -> None:
    from tests.runtime.test_app import Plain

    app = Plain()
    server = await create_server(app, settings())
    try:
        assert app.is_leader() and app.leader() is None
    finally:
        await server.stop(0)
