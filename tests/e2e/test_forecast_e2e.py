"""Issue 3 end to end: the forecast service behind `kitrading up --only data,forecast` (Envoy included),
used as the users do: HTTP JSON through the gateway, an SSE progress stream, the CLI; then the
training worker is killed with SIGKILL mid-run and serving goes on with the previous model.

Small NHITS settings (EXTRA_ENV) keep the five bundled symbols' training to seconds each; the retrain
scheduler is off so only the jobs started here run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from services.forecast.calendar import FX
from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.e2e

SAMPLES = {"EURUSD", "GOOG", "MSFT", "SP500", "NASDAQ"}
STEPS = 100
EXTRA_ENV = {
    "NHITS_MAX_STEPS": str(STEPS),
    "KITRADING_FORECAST_MODEL_SCOPE": "symbol",  # the step counts below are per symbol
    "NHITS_INPUT_SIZE": "72",
    "NHITS_MLP_UNITS": "32",
    "NHITS_VAL_CHECK_STEPS": "25",
    "KITRADING_FORECAST_EVAL_WINDOWS": "6",
    "KITRADING_FORECAST_CALIBRATION_WINDOWS": "60",
    "KITRADING_FORECAST_WORKER_IDLE_SECONDS": "600",
    "KITRADING_FORECAST_SCHEDULE": "false",
    "NHITS_USE_GPU": "false",
}
STREAM_TIMEOUT = httpx.Timeout(180.0, connect=5.0)


@dataclass
class Sse:
    """One SSE stream read to its end: (seconds since the request, the event JSON)."""

    status: int
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e[kind]) for t, e in self.events if kind in e]


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data:"):
            message: dict[str, Any] = json.loads(line[5:])
            yield message["event"]


def get(mesh: RunningMesh, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{mesh.gateway}{path}", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def post(mesh: RunningMesh, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.post(f"{mesh.gateway}{path}", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def worker_pids(mesh: RunningMesh) -> list[int]:
    """The training worker: a child of the forecast service process (`python -m services.training.worker`)."""
    pid = mesh.pid("forecast")
    assert pid is not None
    return [
        p.pid
        for p in psutil.Process(pid).children(recursive=True)
        if "services.training.worker" in " ".join(p.cmdline())
    ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("forecast-mesh"))
    running = start_mesh(home, ["data", "forecast"], EXTRA_ENV)
    try:
        running.wait_healthy("data")
        running.wait_healthy("nhits")
        # the bundled samples are imported on first start, in the background of Data's readiness
        deadline = time.monotonic() + 120
        while True:
            symbols = httpx.get(f"{running.gateway}/api/v1/symbols", timeout=5).json().get("symbols", [])
            imported = {
                s["symbol"] for s in symbols if any(int(x.get("count", 0)) > 0 for x in s.get("series", []))
            }
            if imported >= SAMPLES:
                break
            assert time.monotonic() < deadline, f"samples never imported: {symbols}"
            time.sleep(0.5)
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        print(running.log("forecast")[-4000:])
        assert code == 0, f"kitrading up exited with {code}"


@pytest.fixture(scope="module")
def train_all(mesh: RunningMesh) -> dict[str, Any]:
    """`POST /api/v1/forecast/train-all?force=true&background=true`, its SSE stream read live, the
    progress endpoint polled during the run and the CLI following the same job."""
    started = time.perf_counter()
    queued = post(mesh, "/api/v1/forecast/train-all", force="true", background="true")["job"]
    returned_after = time.perf_counter() - started
    job_id = queued["jobId"]
    cli = subprocess.Popen(
        mesh.cli_argv("train", "--job", job_id, "-f"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=mesh.env,
    )
    progress: list[dict[str, Any]] = []
    with httpx.Client(timeout=STREAM_TIMEOUT) as client:
        sent = time.perf_counter()
        with client.stream("GET", f"{mesh.gateway}/api/v1/forecast/training/jobs/{job_id}:watch") as response:
            sse = Sse(response.status_code)
            assert response.status_code == 200, response.read().decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(response.iter_lines()):
                sse.events.append((time.perf_counter() - sent, event))
                if "step" in event and len(progress) < 3 and len(sse.of("step")) % 5 == 1:
                    progress.append(get(mesh, "/api/v1/forecast/training/progress"))
    out, err = cli.communicate(timeout=120)
    return {
        "queued": queued,
        "returned_after": returned_after,
        "sse": sse,
        "progress": progress,
        "cli": (cli.returncode, out, err),
    }


def test_train_all_over_http_streams_live_progress(mesh: RunningMesh, train_all: dict[str, Any]) -> None:
    queued = train_all["queued"]
    assert train_all["returned_after"] < 5, "background=true must return at once"
    assert (
        queued["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING")
        and queued["force"]
        and queued["background"]
    )
    assert {s["symbol"] for s in queued["symbols"]} == SAMPLES

    sse: Sse = train_all["sse"]
    kinds = [next(iter(e)) for _, e in sse.events if next(iter(e)) not in ("sequence", "time")]
    events = [e for _, e in sse.events]
    first_kind = next(k for k in ("snapshot", "step", "symbolTransition", "result") if k in events[0])
    assert first_kind == "snapshot" and "result" in events[-1], kinds
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    result = events[-1]["result"]
    assert result["state"] == "JOB_STATE_SUCCEEDED", result.get("error")
    assert {s["symbol"]: s["state"] for s in result["symbols"]} == dict.fromkeys(
        SAMPLES, "JOB_STATE_SUCCEEDED"
    )
    assert all(s["modelVersion"] == "v000001" for s in result["symbols"])
    assert result["step"] == result["maxSteps"] == 5 * STEPS

    # real optimiser steps, arriving one by one while the job runs (not in one burst at the end)
    steps = sse.of("step")
    assert len(steps) >= 10, len(steps)
    times = [t for t, _ in steps]
    instants = 1 + sum(1 for a, b in itertools.pairwise(times) if b - a > 0.02)
    assert instants >= 10, f"step events arrived in bursts: {times}"
    assert times[-1] - times[0] > 2.0
    job_steps = [int(s.get("jobStep", 0)) for _, s in steps]
    assert job_steps == sorted(job_steps) and job_steps[-1] == 5 * STEPS
    assert all(s["symbol"] in SAMPLES and 0 < int(s["step"]) <= STEPS for _, s in steps)
    assert sse.of("step")[0][0] < sse.of("result")[0][0]

    # the progress endpoint, asked mid-run
    progress = train_all["progress"]
    assert progress, "no progress sample was taken"
    mid = progress[0]
    assert mid["training"] is True
    active = mid["activeJobs"][0]
    assert active["jobId"] == queued["jobId"] and active["state"] == "JOB_STATE_RUNNING"
    assert active["currentSymbol"] in SAMPLES and int(active.get("step", 0)) > 0
    after = get(mesh, "/api/v1/forecast/training/progress")
    assert after.get("training", False) is False and not after.get("activeJobs")
    assert after["latestJob"]["jobId"] == queued["jobId"]

    # the CLI followed the same job over the gateway (native gRPC stream) with a progress bar
    code, out, err = train_all["cli"]
    assert code == 0, err + out
    lines = out.splitlines()
    bars = [line for line in lines if "%" in line and " step" in line]  # the Rich rows, printed plain
    assert len(bars) >= 3 and "100%" in bars[-1], out
    assert sum(" succeeded " in line and "model v000001" in line for line in lines) == 5, out
    assert lines[-1].startswith(f"job {queued['jobId']} succeeded in "), out


def test_forecast_eurusd_24h_with_intervals(mesh: RunningMesh, train_all: dict[str, Any]) -> None:
    body = get(mesh, "/api/v1/forecast/EURUSD", horizon=24)["forecast"]
    assert body["symbol"] == "EURUSD" and body["timeframe"] == "TIMEFRAME_H1" and body["horizon"] == 24
    assert body["method"] == "FORECAST_METHOD_NHITS" and body["modelVersion"] == "v000001"
    last = pd.Timestamp(body["lastCandleTime"])
    latest = get(mesh, "/api/v1/symbols/EURUSD/candles:latest", timeframe="TIMEFRAME_H1")["candle"]
    assert last == pd.Timestamp(latest["time"])
    points = body["points"]
    times = [pd.Timestamp(p["time"]) for p in points]
    assert times == list(FX.next_bars(last, pd.Timedelta(hours=1), 24))  # the FX 24x5 calendar
    close = float(latest["close"])
    for p in points:
        bands = {i["level"]: (i["lower"], i["upper"]) for i in p["intervals"]}
        assert list(bands) == [80, 95]
        assert bands[95][0] < bands[80][0] < p["value"] < bands[80][1] < bands[95][1]
        assert abs(p["value"] / close - 1) < 0.05

    too_far = httpx.get(f"{mesh.gateway}/api/v1/forecast/EURUSD", params={"horizon": 25}, timeout=10)
    assert too_far.status_code == 400, too_far.text
    violations = [
        v["field"] for d in too_far.json()["details"] if "fieldViolations" in d for v in d["fieldViolations"]
    ]
    assert violations == ["horizon"], too_far.text
    unknown = httpx.get(f"{mesh.gateway}/api/v1/forecast/NOPE", timeout=10)
    assert unknown.status_code == 404 and "NOPE" in unknown.json()["message"]


def test_cli_forecast_prints_intervals_and_plots(
    mesh: RunningMesh, train_all: dict[str, Any], tmp_path: Path
) -> None:
    png = tmp_path / "eurusd.png"
    done = mesh.cli("forecast", "EURUSD", "--horizon", "24", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert "EURUSD H1 forecast, 24 bars" in done.stdout and "model v000001" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("20")]
    assert len(rows) == 24 and all(row.count("[") == 2 for row in rows), done.stdout
    assert f"saved {png}\n" in done.stdout  # with history from the Data service
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


def test_performance_table_vs_baselines(mesh: RunningMesh, train_all: dict[str, Any]) -> None:
    rows = get(mesh, "/api/v1/forecast/performance")["performances"]
    assert sorted(r["symbol"] for r in rows) == sorted(SAMPLES)
    for row in rows:
        assert row["modelVersion"] == "v000001" and row["horizon"] == 24 and row["samples"] == 6 * 24
        methods = [m["method"] for m in row["metrics"]]
        assert methods == [
            "FORECAST_METHOD_NHITS",
            "FORECAST_METHOD_NAIVE",
            "FORECAST_METHOD_SEASONAL_NAIVE",
            "FORECAST_METHOD_AUTO_ETS",
            "FORECAST_METHOD_AUTO_THETA",
        ]
        nhits = row["metrics"][0]
        assert all(m["mae"] > 0 and m["rmse"] >= m["mae"] and m["mase"] > 0 for m in row["metrics"])
        assert [c["level"] for c in nhits["intervalCoverage"]] == [80, 95]
    metrics = get(mesh, "/nhits/api/v1/system/metrics")["metrics"]
    assert metrics["cpuCount"] >= 1 and int(metrics["processMemoryBytes"]) > 0
    prometheus = httpx.get(
        f"http://127.0.0.1:{mesh.env['KITRADING_FORECAST_METRICS_PORT']}/metrics", timeout=10
    )
    assert 'kitrading_training_jobs_active{service="forecast"} 0.0' in prometheus.text


def test_killed_worker_fails_the_job_and_serving_keeps_the_previous_model(
    mesh: RunningMesh, train_all: dict[str, Any]
) -> None:
    before = get(mesh, "/api/v1/forecast/EURUSD", horizon=24)["forecast"]
    versions_before = [v["version"] for v in get(mesh, "/api/v1/forecast/EURUSD/versions")["versions"]]
    assert before["modelVersion"] == "v000001" and versions_before == ["v000001"]

    job = post(mesh, "/api/v1/forecast/EURUSD/train", force="true", background="true")["job"]
    killed: list[int] = []
    killed_at_step = 0
    with (
        httpx.Client(timeout=STREAM_TIMEOUT) as client,
        client.stream(
            "GET", f"{mesh.gateway}/api/v1/forecast/training/jobs/{job['jobId']}:watch"
        ) as response,
    ):
        assert response.status_code == 200
        events = []
        for event in sse_events(response.iter_lines()):
            events.append(event)
            if "step" in event and not killed:
                killed_at_step = int(event["step"]["step"])
                killed = worker_pids(mesh)
                assert len(killed) == 1, killed
                os.kill(killed[0], signal.SIGKILL)  # mid-training: kill -9 the worker
    assert 0 < killed_at_step < STEPS
    result = events[-1]["result"]
    assert result["state"] == "JOB_STATE_FAILED", result
    symbol = result["symbols"][0]
    assert symbol["state"] == "JOB_STATE_FAILED" and "exited" in symbol["error"] and "-9" in symbol["error"]
    assert "EURUSD" in result["error"]
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE

    # serving goes on with the previous version; no partial version anywhere
    after = get(mesh, "/api/v1/forecast/EURUSD", horizon=24)["forecast"]
    assert after["modelVersion"] == before["modelVersion"] == "v000001"
    assert [p["value"] for p in after["points"]] == [p["value"] for p in before["points"]]
    versions = get(mesh, "/api/v1/forecast/EURUSD/versions")["versions"]
    assert [(v["version"], v.get("active", False)) for v in versions] == [("v000001", True)]
    folder = mesh.home / "models" / "forecast" / "EURUSD"
    assert sorted(p.name for p in folder.iterdir()) == ["current", "v000001"]
    job_now = get(mesh, f"/api/v1/forecast/training/jobs/{job['jobId']}")["job"]
    assert job_now["state"] == "JOB_STATE_FAILED"
    assert httpx.get(f"{mesh.gateway}/nhits/health", timeout=5).status_code == 200
