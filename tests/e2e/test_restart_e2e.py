"""`kitrading restart SERVICE` against a running `kitrading up` (data and watchdog, Envoy in front),
while a client keeps calling both through the gateway: the restarted service comes back as a new
process with the code on disk, serving; the other service sees no failed call; the restarted one's
own outage is measured and printed."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.mesh import RunningMesh, Traffic, start_mesh

pytestmark = pytest.mark.e2e

CALLS = {"data": "/api/v1/symbols?pageSize=5", "watchdog": "/watchdog/api/v1/status"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("restart-mesh"))
    running = start_mesh(home, ["data", "watchdog"], {})
    try:
        running.wait_healthy("data")
        running.wait_healthy("watchdog")
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-3000:])
        assert code == 0, f"kitrading up exited with {code}"


def gateway_sees_it(mesh: RunningMesh, service: str, within: float = 20.0) -> float:
    """Seconds until the gateway routes to `service` again (its 1 s health check must see it back)."""
    began = time.monotonic()
    prefix = "watchdog" if service == "watchdog" else service
    while httpx.get(f"{mesh.gateway}/{prefix}/health", timeout=5).status_code != 200:
        assert time.monotonic() - began < within, f"the gateway does not route to {service} again"
        time.sleep(0.1)
    return time.monotonic() - began


@pytest.mark.parametrize(("restarted", "other"), [("watchdog", "data"), ("data", "watchdog")])
def test_restart_one_service_the_other_never_notices(mesh: RunningMesh, restarted: str, other: str) -> None:
    for name in CALLS:  # the previous case's restart is fully over
        gateway_sees_it(mesh, name)
    before = mesh.pid(restarted)
    traffic = Traffic(mesh.gateway, CALLS)
    traffic.start()
    time.sleep(1.0)
    began = time.monotonic()
    result = mesh.cli("restart", restarted, "--home", str(mesh.home), via_gateway=False)
    took = time.monotonic() - began
    routed = gateway_sees_it(mesh, restarted) + took
    routed_at = time.monotonic()
    time.sleep(2.0)
    traffic.done.set()
    traffic.join(10)
    assert result.returncode == 0, result.stderr
    assert f"{restarted}: restarted (pid {before} -> " in result.stdout, result.stdout
    after = mesh.pid(restarted)
    assert after is not None and after != before
    assert mesh.state()["children"][restarted]["restarts"] == 0  # a restart asked for is not a crash
    assert mesh.state()["children"][restarted]["planned_restarts"] >= 1
    others = [r for r in traffic.replies if r[0] == other]
    assert others and all(status == 200 for _, _, status in others), [r for r in others if r[2] != 200][:5]
    own = [(t, status) for name, t, status in traffic.replies if name == restarted and t >= began]
    failed = [t for t, status in own if status != 200]
    outage = (max(failed) - min(failed)) if failed else 0.0
    print(
        f"\n{restarted} restarted in {took:.2f} s ({result.stdout.strip()}), routed again by the gateway "
        f"after {routed:.2f} s; its own failed calls: {len(failed)} of {len(own)} over {outage:.2f} s; "
        f"{other}: {len(others)} calls, 0 failed"
    )
    # once routed again it serves: every call from 1 s after the gateway's health check saw it back
    # (one CI run had a 503 within 0.5 s of it; the replies and access log lines below tell why next time)
    after_routing = [(round(t - routed_at, 2), status) for t, status in own if t >= routed_at]
    settled = [status for t, status in own if t >= routed_at + 1.0]
    access = [line for line in mesh.log("gateway").splitlines() if re.search(r'"status": ?"?503', line)]
    assert settled and all(status == 200 for status in settled), (
        f"serving again through the gateway: replies after routing {after_routing}; "
        f"503s in the access log: {access[-5:]}; {restarted} log: {mesh.log(restarted)[-1500:]}"
    )
    if any(status != 200 for _, status in after_routing):
        print(f"{restarted}: failed calls right after routing: {after_routing}")


def test_unknown_service_and_no_mesh(mesh: RunningMesh, tmp_path: Path) -> None:
    unknown = mesh.cli("restart", "nope", "--home", str(mesh.home), via_gateway=False)
    assert unknown.returncode == 1 and "unknown service 'nope'" in unknown.stderr
    nothing = mesh.cli("restart", "data", "--home", str(tmp_path), via_gateway=False)
    assert nothing.returncode == 2 and "no running mesh" in nothing.stderr
