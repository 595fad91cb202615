"""Replicas on `kitrading up`: one child per instance on its own ports, a restart that rolls them one
at a time (a real Supervisor with real child processes), the CLI's `--replicas` and `status` rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kitrading import mesh
from kitrading.cli.commands.status import running_instances
from kitrading.cli.commands.up import replicas_env
from services.launcher.control import handle, instances_of, lease_holder
from services.launcher.mesh import build_children, instances
from services.launcher.supervisor import Child, Supervisor
from services.runtime.config import REPLICATED_DRAIN_DELAY_S, RuntimeSettings
from services.runtime.leases import FileLease, lease_path
from tests.runtime.test_app import until


def test_one_child_per_instance_on_its_own_ports(tmp_path: Path) -> None:
    env = {"KITRADING_FORECAST_REPLICAS": "3", "KITRADING_FORECAST_PORT": "4002"}
    services = [mesh.service("data"), mesh.service("forecast")]
    children = {c.name: c for c in build_children(services, tmp_path, dict(env), gateway=False)}
    assert list(children) == ["data", "forecast", "forecast-2", "forecast-3"]
    assert [children[n].port for n in children] == [3001, 4002, 4102, 4202]
    first, third = children["forecast"].env, children["forecast-3"].env
    assert first["KITRADING_FORECAST_PORT"] == "4002" and first["KITRADING_INSTANCE"] == "forecast"
    assert third["KITRADING_FORECAST_PORT"] == "4202" and third["KITRADING_FORECAST_METRICS_PORT"] == "10202"
    assert third["KITRADING_INSTANCE"] == "forecast-3"
    assert children["forecast-3"].log_path == tmp_path / "logs" / "forecast-3.log"
    assert instances(services, env)["forecast-2"] == (mesh.service("forecast"), 4102)


def test_a_service_that_runs_once_says_why() -> None:
    with pytest.raises(ValueError, match="rag runs one instance only"):
        instances([mesh.service("rag")], {"KITRADING_RAG_REPLICAS": "2"})


def test_replicas_option_of_kitrading_up() -> None:
    assert replicas_env("forecast=2, llm=3") == {
        "KITRADING_FORECAST_REPLICAS": "2",
        "KITRADING_LLM_REPLICAS": "3",
    }
    for bad, message in (
        ("forecast", "expected SERVICE=N"),
        ("nope=2", "unknown service 'nope'"),
        ("watchdog=2", "watchdog runs one instance only"),
        ("forecast=9", "1..8"),
    ):
        with pytest.raises(ValueError, match=message):
            replicas_env(bad)


def _sleeper(tmp_path: Path, name: str) -> Child:
    argv = [sys.executable, "-c", "import time; time.sleep(120)"]
    return Child(name, argv, {}, tmp_path / f"{name}.log")


async def test_restart_rolls_the_instances_one_at_a_time(tmp_path: Path) -> None:
    names = ["forecast", "forecast-2", "forecast-10", "data", "forecastx"]
    supervisor = Supervisor([_sleeper(tmp_path, n) for n in names], state_file=tmp_path / "mesh.json")
    assert instances_of(supervisor, "forecast") == ["forecast", "forecast-2", "forecast-10"]
    assert instances_of(supervisor, "forecast-2") == ["forecast-2"]
    await supervisor.start()
    try:
        await until(lambda: all(supervisor.children[n].pid is not None for n in names))
        before = {n: supervisor.children[n].pid for n in names}
        seen: list[tuple[str, dict[str, int | None]]] = []

        def ready(name: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:  # while one restarts, the others run untouched
                seen.append((name, {n: supervisor.children[n].pid for n in names}))
                return True

            return check

        reply = await handle(supervisor, ready, {"op": "restart", "service": "forecast", "timeout_s": 30})
        assert reply["ok"] and [r["service"] for r in reply["instances"]] == [
            "forecast",
            "forecast-2",
            "forecast-10",
        ]
        (first, at_first), (second, at_second), (_, at_third) = seen
        assert first == "forecast" and at_first["forecast-2"] == before["forecast-2"]  # not yet
        assert second == "forecast-2" and at_second["forecast-10"] == before["forecast-10"]
        assert at_second["forecast"] == at_third["forecast"] != before["forecast"]  # restarted once
        for name in ("data", "forecastx"):
            assert supervisor.children[name].pid == before[name], "the others are not touched"
        assert all(supervisor.children[n].planned_restarts == 1 for n in names[:3])
    finally:
        await supervisor.stop()


def test_status_reads_the_instances_from_the_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITRADING_HOME", str(tmp_path))
    assert running_instances() == {}
    state = {
        "supervisor_pid": os.getpid(),
        "children": {
            "forecast-2": {"pid": 2, "port": 3102},
            "forecast": {"pid": 1, "port": 3002},
            "data": {"pid": 3, "port": 3001},
            "gateway": {"pid": 4, "port": None},
        },
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mesh.json").write_text(json.dumps(state))
    assert running_instances() == {
        "forecast": [("forecast", 3002), ("forecast-2", 3102)],
        "data": [("data", 3001)],
    }
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    state["supervisor_pid"] = int(dead.stdout)  # a launcher that is gone left its state file
    (tmp_path / "run" / "mesh.json").write_text(json.dumps(state))
    assert running_instances() == {}


async def test_the_lease_holder_is_rolled_last(tmp_path: Path) -> None:
    names = ["forecast", "forecast-2", "forecast-3"]
    supervisor = Supervisor([_sleeper(tmp_path, n) for n in names], state_file=tmp_path / "mesh.json")
    holder = FileLease(lease_path(tmp_path, "forecast"), instance="forecast-2")
    assert holder.try_acquire()
    await supervisor.start()
    try:
        await until(lambda: all(supervisor.children[n].pid is not None for n in names))
        reply = await handle(
            supervisor,
            lambda name: None,
            {"op": "restart", "service": "forecast", "timeout_s": 30},
            lease_holder(tmp_path),
        )
        assert [r["service"] for r in reply["instances"]] == ["forecast", "forecast-3", "forecast-2"]
    finally:
        holder.release()
        await supervisor.stop()


def test_only_an_instance_of_a_replicated_service_waits_before_it_drains() -> None:
    forecast = mesh.service("forecast")
    assert RuntimeSettings.from_env(forecast, env={}).drain_delay_s == 0.0  # alone: no one to hand to
    replicated = {"KITRADING_FORECAST_REPLICAS": "2"}
    assert RuntimeSettings.from_env(forecast, env=replicated).drain_delay_s == REPLICATED_DRAIN_DELAY_S
    both = {**replicated, "KITRADING_DRAIN_DELAY_SECONDS": "4"}
    assert RuntimeSettings.from_env(forecast, env=both).drain_delay_s == 4.0
    assert (
        RuntimeSettings.from_env(
            mesh.service("data"), env={"KITRADING_DRAIN_DELAY_SECONDS": "5"}
        ).drain_delay_s
        == 5.0
    )
