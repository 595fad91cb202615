"""The regime service end to end, as a new user meets it: `kitrading up` with data, regime and the
LLM analyst (Envoy in front, the embedded PostgreSQL, the bundled samples), everything over HTTP
through the gateway.

The regime service starts with no model, so it trains the five bundled symbols in the background
and says so; then the EURUSD regime, a scored buy signal with its reasons, the model card against
the base rate, a training followed live over SSE, a killed training that leaves the previous
version serving, and the analyst's answer grounded in the live regime and score.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.e2e

SAMPLES = {"EURUSD", "GOOG", "MSFT", "SP500", "NASDAQ"}
EXTRA_ENV = {
    "KITRADING_REGIME_BOOSTING_ROUNDS": "50",
    "KITRADING_REGIME_WORKER_IDLE_SECONDS": "600",
    "KITRADING_REGIME_SCHEDULE": "false",
}
STREAM_TIMEOUT = httpx.Timeout(180.0, connect=5.0)


def get(mesh: RunningMesh, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{mesh.gateway}{path}", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def post(mesh: RunningMesh, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{mesh.gateway}{path}", json=body, timeout=60)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data:"):
            message: dict[str, Any] = json.loads(line[5:])
            yield message["event"]


def worker_pids(mesh: RunningMesh) -> list[int]:
    pid = mesh.pid("regime")
    assert pid is not None
    return [
        p.pid
        for p in psutil.Process(pid).children(recursive=True)
        if "services.training.worker" in " ".join(p.cmdline())
    ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("regime-mesh"))
    running = start_mesh(home, ["data", "regime", "llm"], EXTRA_ENV)
    try:
        running.wait_healthy("data")
        running.wait_healthy("hmm")
        running.wait_healthy("llm")
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        print(running.log("regime")[-4000:])
        assert code == 0, f"kitrading up exited with {code}"


@pytest.fixture(scope="module")
def ready(mesh: RunningMesh) -> dict[str, Any]:
    """The status as first seen, after waiting for the first-start training to end."""
    first = get(mesh, "/api/v1/regime/status")
    deadline = time.monotonic() + 300
    while True:
        status = get(mesh, "/api/v1/regime/status")
        if status.get("ready") and not status.get("trainingJob"):
            return first
        assert time.monotonic() < deadline, f"first training never ended: {status}"
        time.sleep(1.0)


def test_health_and_first_start_status(mesh: RunningMesh, ready: dict[str, Any]) -> None:
    assert httpx.get(f"{mesh.gateway}/hmm/health", timeout=5).status_code == 200
    if not ready.get("ready"):  # seen before the first models: it said why
        waiting = "waiting for the data service" in ready["message"]
        assert waiting or "first start" in ready["message"], ready
        if not waiting:
            assert ready["trainingJob"]["trigger"] == "TRAINING_TRIGGER_FIRST_START"
    status = get(mesh, "/api/v1/regime/status")
    assert {m["symbol"] for m in status["models"]} == SAMPLES
    assert status["message"].startswith("serving 5 model(s)")


def test_eurusd_regime_with_probabilities(mesh: RunningMesh, ready: dict[str, Any]) -> None:
    seconds = []
    for _ in range(7):
        started = time.perf_counter()
        body = get(mesh, "/api/v1/regime/EURUSD")
        seconds.append(time.perf_counter() - started)
    state = body["state"]
    print(f"GET /api/v1/regime/EURUSD through the gateway: median {statistics.median(seconds) * 1000:.1f} ms")
    assert statistics.median(seconds) < 1.0  # the p50 target is measured by bench/regime_serving.py
    assert state["regime"].startswith("REGIME_") and state["timeframe"] == "TIMEFRAME_H1"
    assert abs(sum(p["probability"] for p in state["probabilities"]) - 1) < 1e-6
    assert state["history"][-1]["regime"] == state["regime"]
    assert state["transitions"] and state["expectedDurations"] and not state.get("hindsightHistory")
    hindsight = get(mesh, "/api/v1/regime/EURUSD", includeHindsight="true", lookback=200)["state"]
    assert sum(int(s["bars"]) for s in hindsight["hindsightHistory"]) == 200


def test_buy_signal_scored_with_its_reasons(mesh: RunningMesh, ready: dict[str, Any]) -> None:
    reply = post(mesh, "/api/v1/regime/score", {"symbol": "EURUSD", "side": "SIGNAL_SIDE_BUY"})
    assert reply.status_code == 200, reply.text
    score = reply.json()
    assert 0 < score["score"] < 1 and score["regime"].startswith("REGIME_")
    assert score["barriers"]["unit"] == "BARRIER_UNIT_ATR" and score["horizon"] == 24
    assert len(score["features"]) > 5 and all("contribution" in f for f in score["features"][:3])
    batch = post(
        mesh,
        "/api/v1/regime/score:batch",
        {"requests": [{"symbol": s, "side": "SIGNAL_SIDE_SELL"} for s in sorted(SAMPLES)]},
    )
    assert batch.status_code == 200, batch.text
    assert [r["symbol"] for r in batch.json()["responses"]] == sorted(SAMPLES)
    # bad input: 400 naming the field, 404 for an unknown symbol
    bad = post(mesh, "/api/v1/regime/score", {"symbol": "EURUSD", "side": "SIGNAL_SIDE_BUY", "horizon": 5})
    assert bad.status_code == 400 and "horizon" in bad.text, bad.text
    bad = post(mesh, "/api/v1/regime/score", {"symbol": "EURUSD"})
    assert bad.status_code == 400 and "side" in bad.text, bad.text
    missing = post(mesh, "/api/v1/regime/score", {"symbol": "NOPE", "side": "SIGNAL_SIDE_BUY"})
    assert missing.status_code == 404, missing.text


def test_model_card_against_the_base_rate(mesh: RunningMesh, ready: dict[str, Any]) -> None:
    body = get(mesh, "/api/v1/regime/EURUSD/model")
    evaluation = body["scorer"]["evaluation"]
    calibrated = evaluation["calibrated"]
    assert int(calibrated["samples"]) > 500 and 0 < calibrated["brierBase"] < 1
    assert evaluation["verdict"].startswith("edge" if evaluation.get("edge") else "no edge")
    assert len(evaluation["backtest"]) == 3 and evaluation["reliability"]
    assert body["model"]["states"] and body["model"]["bic"]


def test_training_over_sse_and_a_killed_one_keeps_the_previous_version(
    mesh: RunningMesh, ready: dict[str, Any]
) -> None:
    before = get(mesh, "/api/v1/regime/EURUSD")["state"]["modelVersion"]
    queued = post(mesh, "/api/v1/regime/train", {"symbols": ["GOOG"], "force": True, "background": True})
    assert queued.status_code == 200, queued.text
    job_id = queued.json()["job"]["jobId"]
    with (
        httpx.Client(timeout=STREAM_TIMEOUT) as client,
        client.stream("GET", f"{mesh.gateway}/api/v1/regime/training/jobs/{job_id}:watch") as response,
    ):
        assert response.status_code == 200
        events = list(sse_events(response.iter_lines()))
    assert "snapshot" in events[0] and "result" in events[-1]
    assert any("step" in e for e in events)
    assert events[-1]["result"]["state"] == "JOB_STATE_SUCCEEDED"

    queued = post(mesh, "/api/v1/regime/train", {"symbols": ["EURUSD"], "force": True, "background": True})
    job_id = queued.json()["job"]["jobId"]
    killed: list[int] = []
    with (
        httpx.Client(timeout=STREAM_TIMEOUT) as client,
        client.stream("GET", f"{mesh.gateway}/api/v1/regime/training/jobs/{job_id}:watch") as response,
    ):
        for event in sse_events(response.iter_lines()):
            if "step" in event and not killed:
                killed = worker_pids(mesh)
                assert len(killed) == 1, killed
                os.kill(killed[0], signal.SIGKILL)
            last = event
    assert last["result"]["state"] == "JOB_STATE_FAILED", last
    assert "exited" in last["result"]["symbols"][0]["error"]
    assert get(mesh, "/api/v1/regime/EURUSD")["state"]["modelVersion"] == before


def test_the_analyst_is_grounded_in_the_regime_and_the_score(
    mesh: RunningMesh, ready: dict[str, Any]
) -> None:
    regime = get(mesh, "/api/v1/regime/EURUSD")["state"]["regime"]
    reply = post(
        mesh, "/api/v1/analyze", {"symbol": "EURUSD", "question": "Should I buy EURUSD?", "maxTokens": 16}
    )
    assert reply.status_code == 200, reply.text
    context = reply.json()["context"]
    assert context["regime"]["regime"] == regime
    assert "regime" not in {u["source"] for u in context.get("unavailable", [])}
    assert [s["side"] for s in context["signalScores"]] == ["SIGNAL_SIDE_BUY"]
    done = mesh.cli("analyze", "EURUSD", "Should I sell?", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    name = regime.removeprefix("REGIME_").lower().replace("_", " ")
    assert f"regime    {name}" in done.stdout and "score     sell:" in done.stdout, done.stdout
