"""Fault isolation end to end: the real mesh (`kitrading up` with every implemented service, Envoy,
the embedded PostgreSQL), the watchdog checking every second and alerting a fake Telegram.

For each implemented service (the watchdog last) the test kills the process with SIGKILL while a
client thread keeps calling the OTHER services through the gateway, and measures:

- detection: kill -> the DOWN alert reaching the fake Telegram (at most two check intervals);
- isolation: failed calls to the other services (must be 0) and their worst latency;
- the gateway: the dead service's route answers 503 at once (< 1 s), never hangs;
- restart: kill -> a new pid in `$KITRADING_HOME/run/mesh.json` (< 5 s);
- serving: kill -> `/<prefix>/health` 200 again, with its state reloaded; then the RECOVERED alert.

Then the database: `pg_ctl stop -m fast` on the embedded server. The data service must report
NOT_SERVING, the watchdog alert for `database`, and everything recover by itself (the launcher's
`keep_database_running`); rag, whose searches read their passages from the database, goes
NOT_SERVING with it once its pool notices, and every other service must keep answering. So that
the outage lasts long enough to be observed, the test holds pgserver's start lock until both were
seen (the keeper waits on that lock), then lets go.

Every figure is printed as a Markdown table (docs/reliability.md keeps the latest run), and written
as JSON to `$KITRADING_RELIABILITY_JSON` when that is set. `KITRADING_KEEP_FAULT_HOME=1` keeps the
mesh's home (logs of every service) for a look after the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitrading import mesh
from services.runtime.embedded import _pgserver
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.watchdog.fake_telegram import Call, FakeTelegram

pytestmark = pytest.mark.e2e

INTERVAL = 1.0
TOKEN = "987654321:AAFaultIsolationFakeToken-abcdefghij"
CHAT = "4242"
SERVICES = [s for s in mesh.SERVICES if s.implemented]
#: The watchdog last: it is the one that sees the others die.
KILL_ORDER = sorted((s.name for s in SERVICES), key=lambda name: name == "watchdog")
#: One cheap GET per service through the gateway; a service not listed is called at its health URL.
CALLS = {
    "data": "/api/v1/symbols?pageSize=5",
    "forecast": "/api/v1/forecast/training/progress",
    "pattern": "/api/v1/patterns/types",
    "regime": "/api/v1/regime/status",
    "embedder": "/api/v1/embeddings/info",
    "rag": "/api/v1/rag/status",
    "llm": "/api/v1/llm/status",
    "watchdog": "/watchdog/api/v1/status",
}
SAMPLE_SYMBOLS = {"EURUSD", "GOOG", "MSFT"}
#: Services whose every answer needs the database: their health follows their pool's, so they
#: are NOT_SERVING (the gateway's 503) while it is away and must come back by themselves after.
#: The database outage's isolation figure counts the calls to every other service.
DATABASE_BOUND = frozenset({"data", "rag"})
RESULTS: dict[str, dict[str, Any]] = {}


def call_path(name: str) -> str:
    return CALLS.get(name) or f"/{mesh.service(name).prefix}/health"


# ---- the client that keeps calling ----


@dataclass
class Reply:
    service: str
    at: float
    status: int
    latency: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Traffic:
    """Calls every service not in `skip` through the gateway, one round every `period` seconds."""

    gateway: str
    period: float = 0.1
    skip: frozenset[str] = frozenset()
    replies: list[Reply] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(base_url=self.gateway, timeout=10.0) as client:
            while not self._stop.is_set():
                for service in [s.name for s in SERVICES if s.name not in self.skip]:
                    start = time.monotonic()
                    try:
                        reply = Reply(service, start, client.get(call_path(service)).status_code, 0.0)
                    except httpx.HTTPError as exc:
                        reply = Reply(service, start, 0, 0.0, f"{type(exc).__name__}: {exc}")
                    reply.latency = time.monotonic() - start
                    with self._lock:
                        self.replies.append(reply)
                self._stop.wait(self.period)

    def since(
        self, start: float, end: float | None = None, *, services: set[str] | None = None
    ) -> list[Reply]:
        with self._lock:
            return [
                r
                for r in self.replies
                if r.at >= start
                and (end is None or r.at <= end)
                and (services is None or r.service in services)
            ]

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Env:
    mesh: RunningMesh
    telegram: FakeTelegram
    traffic: Traffic
    client: httpx.Client

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def alert(self, name: str, kind: str, after: float) -> Call | None:
        marker = f"<b>{name}</b> is " if kind == "DOWN" else f"<b>{name}</b> recovered"
        return next((c for c in self.telegram.delivered if c.at >= after and marker in c.text), None)


def wait(predicate: Callable[[], Any], within: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(step)


def status_json(env: Env) -> dict[str, Any]:
    reply = env.get("/watchdog/api/v1/status")
    return reply.json()["status"] if reply.status_code == 200 else {}


def calm(env: Env) -> bool:
    """Every service healthy at the gateway, and the watchdog sees every target fine."""
    for s in SERVICES:
        if env.get(f"/{s.prefix}/health").status_code != 200:
            return False
    targets = status_json(env).get("targets", [])
    names = {t["name"] for t in targets}
    expected = {s.name for s in SERVICES if s.name != "watchdog"} | {"gateway", "database", "disk"}
    fine = {"TARGET_STATUS_SERVING", "TARGET_STATUS_UNSPECIFIED"}  # UNSPECIFIED: not applicable (GPU)
    return expected <= names and all(t["status"] in fine for t in targets)


def state_reloaded(env: Env, name: str) -> bool:
    if name == "data":
        reply = env.get("/api/v1/symbols", pageSize=100)
        return reply.status_code == 200 and {s["symbol"] for s in reply.json()["symbols"]} >= SAMPLE_SYMBOLS
    if name == "llm":
        reply = env.get("/api/v1/llm/status")
        return reply.status_code == 200 and reply.json().get("loaded") is True
    if name == "rag":
        return env.get("/api/v1/rag/status").status_code == 200
    if name == "watchdog":
        reply = env.get("/watchdog/api/v1/alerts/history", pageSize=1000)
        # the history of the earlier kills was kept in PostgreSQL across the restart
        return reply.status_code == 200 and len(reply.json().get("alerts", [])) >= 2
    return env.get(f"/{mesh.service(name).prefix}/health").status_code == 200


def grpc_serving(target: str, service: str) -> bool:
    """The process's own gRPC health answer, not the gateway's view of it."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---- the mesh ----


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    # Not under pytest's basetemp (kept at mode 0700 by every pytest session): the embedded
    # server's own system user must reach its data directory when the launcher restarts it.
    home = Path(tempfile.mkdtemp(prefix="kitrading-fault-"))
    with FakeTelegram(tokens={TOKEN}) as telegram:
        running = start_mesh(
            home,
            [s.name for s in SERVICES],
            {
                "CHECK_INTERVAL_SECONDS": str(INTERVAL),
                "ALERT_COOLDOWN_MINUTES": "0",
                "WATCHDOG_STARTUP_GRACE_SECONDS": "2",
                "WATCHDOG_DISK_MIN_FREE_PERCENT": "0",
                "WATCHDOG_DISK_MIN_FREE_MB": "0",
                "TELEGRAM_BOT_TOKEN": TOKEN,
                "TELEGRAM_CHAT_IDS": CHAT,
                "KITRADING_TELEGRAM_API_BASE": telegram.base_url,
                "TELEGRAM_TIMEOUT_SECONDS": "2",
                # forecast trains every symbol at start (in its low-priority worker) while the
                # faults are injected: isolation is proven under training load, kept short here
                "NHITS_MAX_STEPS": "30",
                "KITRADING_REGIME_RESTARTS": "1",
                "KITRADING_REGIME_BOOSTING_ROUNDS": "50",
                "KITRADING_PATTERN_MAX_STEPS": "30",
            },
        )
        traffic = Traffic(running.gateway)
        thread = threading.Thread(target=traffic.run, name="traffic", daemon=True)
        try:
            started = time.monotonic()
            for s in SERVICES:
                running.wait_healthy(s.prefix, timeout_s=240)
            with httpx.Client(base_url=running.gateway, timeout=10.0) as client:
                e = Env(running, telegram, traffic, client)
                wait(
                    lambda: all(state_reloaded(e, s.name) for s in SERVICES if s.name != "watchdog"),
                    120,
                    "state",
                )
                wait(lambda: calm(e), 60, "watchdog sees every target SERVING", step=0.2)
                RESULTS["_startup"] = {"seconds": round(time.monotonic() - started, 1)}
                thread.start()
                time.sleep(1.0)
                baseline = traffic.since(0)
                assert baseline and all(r.ok for r in baseline), [r for r in baseline if not r.ok][:5]
                yield e
        finally:
            traffic.stop()
            if thread.is_alive():
                thread.join(15)
            code = running.stop()
            print((home / "up.log").read_text(errors="replace")[-2000:])
            report()
            if not os.environ.get("KITRADING_KEEP_FAULT_HOME"):
                shutil.rmtree(home, ignore_errors=True)
        assert code == 0, f"kitrading up exited with {code}"


def report() -> None:
    rows = [(k, v) for k, v in RESULTS.items() if not k.startswith("_")]
    if not rows:
        return
    lines = [
        "| killed | DOWN alert | gateway 503 (first / worst) | restarted (new pid) | serving again "
        "| RECOVERED alert | calls to the others (failed) | worst latency of the others |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        cells = [
            name,
            _s(r, "down_alert_s"),
            f"{_s(r, 'gateway_503_first_s')} / {_s(r, 'gateway_503_worst_s')}",
            _s(r, "restart_s"),
            _s(r, "serving_s"),
            _s(r, "recovered_alert_s"),
            f"{r.get('other_calls', '-')} ({r.get('other_failed', '-')})",
            _s(r, "other_worst_latency_s"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    db = RESULTS.get("_database")
    if db:
        cells = [
            f"pg_ctl stop -m fast ({_s(db, 'pg_ctl_stop_s')})",
            _s(db, "data_not_serving_s"),
            _s(db, "down_alert_s"),
            _s(db, "held_down_s"),
            _s(db, "db_restarted_after_release_s"),
            f"{_s(db, 'data_healthy_after_release_s')} / {_s(db, 'data_serving_after_release_s')}",
            _s(db, "recovered_alert_after_release_s"),
            _s(db, "rag_serving_after_release_s"),
            f"{db.get('other_calls', '-')} ({db.get('other_failed', '-')})",
        ]
        lines += [
            "",
            "| database stopped | data NOT_SERVING | DOWN alert | held down | PostgreSQL back after release "
            "| data healthy / answering after release | RECOVERED alert after release "
            "| rag answering after release | calls to the others, not data or rag (failed) |",
            "|---|---|---|---|---|---|---|---|---|",
            "| " + " | ".join(cells) + " |",
        ]
    startup = RESULTS.get("_startup", {}).get("seconds")
    print(f"\nfault isolation (mesh started in {startup} s):\n" + "\n".join(lines))
    out = os.environ.get("KITRADING_RELIABILITY_JSON")
    if out:
        Path(out).write_text(json.dumps(RESULTS, indent=2))


def _s(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.2f} s"


# ---- the faults ----


@pytest.mark.parametrize("name", KILL_ORDER)
def test_kill_one_service(env: Env, name: str) -> None:
    info = mesh.service(name)
    wait(lambda: calm(env), 60, "calm before the kill", step=0.2)
    others = {s.name for s in SERVICES} - {name}
    env.traffic.skip = frozenset({name})
    old_pid = env.mesh.pid(name)
    assert old_pid is not None
    time.sleep(0.5)  # the client is calling the others only

    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    wait(lambda: gone(old_pid), 5, "the process is gone")

    # The gateway: the dead service's route answers 503 at once, until the service serves again.
    dead_replies: list[tuple[int, float]] = []
    new_pid: int | None = None
    restart_s = serving_s = None
    deadline = killed + 120
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            code = env.get(call_path(name)).status_code
        except httpx.HTTPError:
            code = 0
        dead_replies.append((code, time.monotonic() - start))
        if restart_s is None:
            pid = env.mesh.pid(name)
            if pid is not None and pid != old_pid:
                new_pid, restart_s = pid, time.monotonic() - killed
        # Serving: the new process says SERVING and a call through the gateway succeeds. (Envoy's own
        # `/<prefix>/health` lags by up to one health-check interval, so it is not the measure.)
        if restart_s is not None and code == 200 and grpc_serving(env.mesh.target(name), info.grpc_service):
            serving_s = time.monotonic() - killed
            break
        time.sleep(0.05)
    assert new_pid is not None and restart_s is not None, "the launcher did not restart it"
    assert serving_s is not None, f"{name} did not serve again; log:\n{env.mesh.log(name)[-3000:]}"
    wait(lambda: state_reloaded(env, name), 60, f"{name} state reloaded", step=0.2)
    reloaded_s = time.monotonic() - killed

    down = recovered = None
    if name != "watchdog":
        down = wait(lambda: env.alert(name, "DOWN", killed), 10, f"DOWN alert for {name}")
        recovered = wait(lambda: env.alert(name, "RECOVERED", killed), 15, f"RECOVERED alert for {name}")
    wait(lambda: calm(env), 60, "calm after the restart", step=0.2)
    during = env.traffic.since(killed, time.monotonic(), services=others)
    env.traffic.skip = frozenset()

    failed = [r for r in during if not r.ok]
    first_code, first_latency = dead_replies[0]
    refused = [latency for code, latency in dead_replies if code == 503]
    RESULTS[name] = {
        "down_alert_s": None if down is None else down.at - killed,
        "gateway_503_first_s": first_latency,
        "gateway_503_worst_s": max(refused) if refused else None,
        "restart_s": restart_s,
        "serving_s": serving_s,
        "state_reloaded_s": reloaded_s,
        "recovered_alert_s": None if recovered is None else recovered.at - killed,
        "other_calls": len(during),
        "other_failed": len(failed),
        "other_worst_latency_s": max((r.latency for r in during), default=0.0),
        "new_pid": new_pid,
    }
    print(f"\n{name}: {RESULTS[name]}")
    assert not failed, f"calls to the other services failed: {failed[:5]}"
    assert len(during) >= 10, "the client kept calling the others"
    if name in CALLS:  # a health URL (services without a call here) may show Envoy's last view first
        assert first_code == 503 and first_latency < 1.0, (first_code, first_latency)
    assert refused and max(refused) < 1.0, f"a 503 took {max(refused or [0]):.2f} s"
    assert all(code in (200, 503) for code, _ in dead_replies), sorted({c for c, _ in dead_replies})
    assert restart_s < 5.0, f"restarted after {restart_s:.2f} s"
    if down is not None:
        assert down.at - killed <= 2 * INTERVAL, f"DOWN alert after {down.at - killed:.2f} s"
        assert TOKEN not in down.text


def test_database_outage(env: Env) -> None:
    wait(lambda: calm(env), 60, "calm before the outage", step=0.2)
    pgdata = env.mesh.home / "postgres"
    pgserver = _pgserver()
    user = "pgserver" if os.geteuid() == 0 else None
    others = {s.name for s in SERVICES} - DATABASE_BOUND
    env.traffic.skip = DATABASE_BOUND
    result: dict[str, Any] = {}

    with pgserver.PostgresServer._lock:  # the launcher's keeper cannot restart it while we hold this
        stopped = time.monotonic()
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        result["pg_ctl_stop_s"] = time.monotonic() - stopped
        data_503 = down = None
        deadline = stopped + 30
        while (data_503 is None or down is None) and time.monotonic() < deadline:
            env.get("/api/v1/symbols")  # a query makes the data service notice at once
            if data_503 is None and env.get("/data/health").status_code == 503:
                data_503 = time.monotonic() - stopped
            down = down or env.alert("database", "DOWN", stopped)
            time.sleep(0.05)
        released = time.monotonic()
    assert data_503 is not None, "the data service never reported NOT_SERVING"
    assert down is not None, "no alert for the database"
    result.update(data_not_serving_s=data_503, down_alert_s=down.at - stopped, held_down_s=released - stopped)

    postmaster = pgdata / "postmaster.pid"
    wait(postmaster.exists, 15, "the launcher restarts PostgreSQL", step=0.05)
    result["db_restarted_after_release_s"] = time.monotonic() - released
    wait(lambda: env.get("/data/health").status_code == 200, 30, "data healthy again", step=0.05)
    result["data_healthy_after_release_s"] = time.monotonic() - released
    # Envoy's `/data/health` may say 200 a moment before its router sends calls to data again.
    wait(lambda: state_reloaded(env, "data"), 30, "data answering again", step=0.05)
    result["data_serving_after_release_s"] = time.monotonic() - released
    recovered = wait(
        lambda: env.alert("database", "RECOVERED", stopped), 15, "RECOVERED alert for the database"
    )
    result["recovered_alert_after_release_s"] = recovered.at - released
    for name in sorted(DATABASE_BOUND - {"data"}):
        wait(partial(state_reloaded, env, name), 30, f"{name} answering again", step=0.05)
        result[f"{name}_serving_after_release_s"] = time.monotonic() - released
    wait(lambda: calm(env), 60, "calm after the outage", step=0.2)
    during = env.traffic.since(stopped, time.monotonic(), services=others)
    env.traffic.skip = frozenset()
    failed = [r for r in during if not r.ok]
    result.update(other_calls=len(during), other_failed=len(failed))
    result["other_worst_latency_s"] = max((r.latency for r in during), default=0.0)
    RESULTS["_database"] = result
    print(f"\ndatabase: {result}")
    assert not failed, f"calls to the other services failed: {failed[:5]}"
    assert result["down_alert_s"] <= 2 * INTERVAL + 1.0
    assert result["db_restarted_after_release_s"] < 10.0


def test_planned_restart_of_one_service_the_others_never_notice(env: Env) -> None:
    """`kitrading restart forecast` (the users' update of one service) while the client calls every
    service through the gateway: no failed call to any other; forecast's own gap measured."""
    wait(lambda: calm(env), 60, "calm before the restart", step=0.2)
    others = {s.name for s in SERVICES} - {"forecast"}
    before = env.mesh.pid("forecast")
    began = time.monotonic()
    result = env.mesh.cli("restart", "forecast", "--home", str(env.mesh.home), via_gateway=False)
    took = time.monotonic() - began
    wait(lambda: calm(env), 60, "calm after the restart", step=0.2)
    assert result.returncode == 0, result.stderr
    assert env.mesh.pid("forecast") != before
    during = env.traffic.since(began, time.monotonic(), services=others)
    own = env.traffic.since(began, time.monotonic(), services={"forecast"})
    failed = [r for r in during if not r.ok]
    own_failed = [r for r in own if not r.ok]
    RESULTS["_planned_restart"] = {
        "restart_s": took,
        "other_calls": len(during),
        "other_failed": len(failed),
        "own_calls": len(own),
        "own_failed": len(own_failed),
        "own_gap_s": (max(r.at for r in own_failed) - min(r.at for r in own_failed)) if own_failed else 0.0,
    }
    print(f"\nplanned restart of forecast: {RESULTS['_planned_restart']} ({result.stdout.strip()})")
    assert not failed, f"calls to the other services failed: {failed[:5]}"
    assert len({r.service for r in during}) == len(others), "the client called every other service"
