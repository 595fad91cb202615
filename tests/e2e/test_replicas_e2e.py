"""Two forecast instances behind the gateway (`KITRADING_FORECAST_REPLICAS=2` on `kitrading up`): one
holds the lease and alone trains; `kitrading restart forecast` rolls them one at a time while a client
keeps calling forecast and data through the gateway, and no read fails (real launcher, Envoy, the
embedded PostgreSQL, real processes; the figures are printed and kept in docs/reliability.md)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading import mesh as registry
from kitrading.forecast.v1 import request_response_pb2 as frr
from kitrading.forecast.v1 import service_pb2_grpc as forecast_grpc
from kitrading.mesh import INSTANCE_PORT_STEP
from tests.e2e.mesh import RunningMesh, Traffic, start_mesh

pytestmark = pytest.mark.e2e

FORECAST = registry.service("forecast")
#: Reads every instance answers (retried by the gateway on another instance when one drains).
READS = {"forecast": "/api/v1/forecast/performance", "data": "/api/v1/symbols?pageSize=5"}
#: A read only the lease holder answers: it waits out the hand-over (measured, not required to be 0).
LEADER_READ = "/api/v1/forecast/training/progress"


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_pair() -> int:
    """A free port whose second instance's port (+ INSTANCE_PORT_STEP) is free too."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + INSTANCE_PORT_STEP < 65536 and _bindable(port + INSTANCE_PORT_STEP):
            return port
    raise AssertionError("no free pair of ports")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("replicas-mesh"))
    env = {
        "KITRADING_FORECAST_REPLICAS": "2",
        "KITRADING_FORECAST_PORT": str(port_pair()),
        "KITRADING_FORECAST_METRICS_PORT": str(port_pair()),
        "NHITS_AUTO_RETRAIN_DAYS": "0",  # no scheduled training in the background of the test
        "NHITS_MAX_STEPS": "5",
    }
    running = start_mesh(home, ["data", "forecast"], env)
    running.ports["forecast"] = int(env["KITRADING_FORECAST_PORT"])
    try:
        running.wait_healthy("data")
        running.wait_healthy("nhits")
        for port in instance_ports(running):
            wait_serving(port)
        gateway_reaches_the_leader(running)
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        for name in ("forecast", "forecast-2"):
            print(f"--- {name}\n{running.log(name)[-2500:]}")
        assert code == 0, f"kitrading up exited with {code}"


def instance_ports(mesh: RunningMesh) -> list[int]:
    first = mesh.ports["forecast"]
    return [first, first + INSTANCE_PORT_STEP]


def health(port: int, name: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=2
            )
        except grpc.RpcError:
            return -1
    return int(reply.status)


def wait_serving(port: int, within: float = 180.0) -> None:
    deadline = time.monotonic() + within
    while health(port, FORECAST.grpc_service) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, f"forecast on {port} does not serve"
        time.sleep(0.2)


def leaders(mesh: RunningMesh) -> list[int]:
    serving = health_pb2.HealthCheckResponse.SERVING
    return [p for p in instance_ports(mesh) if health(p, FORECAST.leader_health_name) == serving]


def one_leader(mesh: RunningMesh, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while len(found := leaders(mesh)) != 1:
        assert time.monotonic() < deadline, f"leaders: {found}"
        time.sleep(0.1)
    return found[0]


def train_all(mesh: RunningMesh) -> httpx.Response:
    return httpx.post(f"{mesh.gateway}/api/v1/forecast/train-all", params={"background": "true"}, timeout=30)


def cancel(mesh: RunningMesh, job_id: str) -> httpx.Response:
    return httpx.post(f"{mesh.gateway}/api/v1/forecast/training/jobs/{job_id}:cancel", json={}, timeout=30)


def gateway_reaches_the_leader(mesh: RunningMesh, within: float = 20.0) -> None:
    """Until the gateway's health check of the leader cluster has seen the holder (every 1 s)."""
    deadline = time.monotonic() + within
    while httpx.get(f"{mesh.gateway}{LEADER_READ}", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the gateway never reached the lease holder"
        time.sleep(0.1)


def test_two_instances_one_of_them_trains(mesh: RunningMesh) -> None:
    leader = one_leader(mesh)
    (other,) = [p for p in instance_ports(mesh) if p != leader]
    with grpc.insecure_channel(f"127.0.0.1:{other}") as channel:
        stub = forecast_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.TrainAll(frr.TrainAllRequest(background=True), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "training and schedules run on forecast" in (refused.value.details() or "")
        stub.ListModelPerformance(frr.ListModelPerformanceRequest(), timeout=10)  # reads: served
    # through the gateway the training reaches the lease holder, and so does every call about its job
    queued = train_all(mesh)
    assert queued.status_code == 200, queued.text
    job_id = queued.json()["job"]["jobId"]
    for _ in range(5):  # whichever instance the balancer would pick, the job is found
        found = httpx.get(f"{mesh.gateway}/api/v1/forecast/training/jobs/{job_id}", timeout=10)
        assert found.status_code == 200, found.text
    cancelled = cancel(mesh, job_id)
    assert cancelled.status_code == 200, cancelled.text
    with grpc.insecure_channel(f"127.0.0.1:{leader}") as channel:
        jobs = forecast_grpc.ForecastServiceStub(channel).ListTrainingJobs(
            frr.ListTrainingJobsRequest(), timeout=10
        )
    assert [j.job_id for j in jobs.jobs] == [job_id], "the holder ran it"
    status = mesh.cli("status", "--no-gateway", via_gateway=False)
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:] if line.strip()}
    assert {"forecast", "forecast-2"} <= set(rows), status.stdout
    assert sorted(rows[n][-1] for n in ("forecast", "forecast-2")) == ["no", "yes"], status.stdout


def test_rolling_restart_of_two_instances_fails_no_read(mesh: RunningMesh) -> None:
    holder = "forecast" if one_leader(mesh) == instance_ports(mesh)[0] else "forecast-2"
    before = {name: mesh.pid(name) for name in ("forecast", "forecast-2", "data")}
    traffic = Traffic(mesh.gateway, {**READS, "leader": LEADER_READ}, pause_s=0.02)
    traffic.start()
    time.sleep(1.0)
    began = time.monotonic()
    result = mesh.cli("restart", "forecast", "--home", str(mesh.home), via_gateway=False, timeout_s=600)
    took = time.monotonic() - began
    leader = one_leader(mesh, within=15)
    time.sleep(2.0)
    traffic.done.set()
    traffic.join(10)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rolled = [line.split(":")[0] for line in lines]
    assert sorted(rolled) == ["forecast", "forecast-2"], result.stdout
    assert rolled[-1] == holder, "the lease holder is restarted last: its lease moves once"
    after = {name: mesh.pid(name) for name in before}
    assert after["forecast"] != before["forecast"] and after["forecast-2"] != before["forecast-2"]
    assert after["data"] == before["data"]
    by_name: dict[str, list[tuple[float, int]]] = {}
    for name, at, status in traffic.replies:
        if at >= began:
            by_name.setdefault(name, []).append((at, status))
    for name in READS:
        failed = [(round(at - began, 2), s) for at, s in by_name[name] if s != 200]
        assert by_name[name], name
        assert not failed, f"{name}: {len(failed)} failed of {len(by_name[name])}: {failed[:10]}"
    handover = [at for at, status in by_name["leader"] if status != 200]
    gap = (max(handover) - min(handover)) if handover else 0.0
    print(
        f"\nrolled forecast (2 instances) in {took:.2f} s: {result.stdout.strip()}; "
        + "; ".join(f"{name}: {len(by_name[name])} reads, 0 failed" for name in READS)
        + f"; leader-only read: {len(handover)} of {len(by_name['leader'])} answered 503 over {gap:.2f} s "
        f"(the lease's hand-over); the lease is now on port {leader}"
    )
    gateway_reaches_the_leader(mesh)
    queued = train_all(mesh)
    assert queued.status_code == 200, queued.text  # the new holder trains
    job_id = queued.json()["job"]["jobId"]
    cancel(mesh, job_id)
