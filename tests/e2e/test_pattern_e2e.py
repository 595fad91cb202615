"""The pattern service end to end, as a new user meets it: `kitrading up` with data, pattern and the LLM
analyst (Envoy in front, the embedded PostgreSQL, the bundled samples), everything over HTTP through
the gateway.

The rules engine needs no training: the catalogue, the EURUSD detection with key points and
follow-through against the base rate, a scan of every symbol, caller-given candles and their
validation (400 naming the field), and the analyst's answer grounded in the live patterns. The TCN
(a tiny configuration, so it trains in seconds): the first start trains one in the background, a
training started over HTTP is followed live over SSE, its model card compares it with the rules and
the TCN answers detection when asked.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.e2e

SAMPLES = ["EURUSD", "GOOG", "MSFT", "NASDAQ", "SP500"]
#: A TCN that trains in seconds on this machine (the default one takes about a minute).
TINY_TCN = {
    "KITRADING_PATTERN_WINDOW": "32",
    "KITRADING_PATTERN_CHANNELS": "8",
    "KITRADING_PATTERN_LEVELS": "3",
    "KITRADING_PATTERN_MAX_STEPS": "20",
    "KITRADING_PATTERN_BATCH_SIZE": "32",
    "KITRADING_PATTERN_TRAIN_BARS": "1500",
    "KITRADING_PATTERN_USE_GPU": "false",
}


def get(mesh: RunningMesh, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{mesh.gateway}{path}", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    # Not under pytest's basetemp (kept at mode 0700 by every pytest session): the embedded
    # server's own system user must reach its data directory.
    home = Path(tempfile.mkdtemp(prefix="kitrading-pattern-"))
    running = start_mesh(home, ["data", "pattern", "llm"], TINY_TCN)
    try:
        running.wait_healthy("data")
        running.wait_healthy("tcn")
        running.wait_healthy("llm")
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        print(running.log("pattern")[-4000:])
        assert code == 0, f"kitrading up exited with {code}"


def test_health_and_the_catalogue(mesh: RunningMesh) -> None:
    assert httpx.get(f"{mesh.gateway}/tcn/health", timeout=10).status_code == 200
    types = get(mesh, "/api/v1/patterns/types")["patternTypes"]
    assert len(types) == 13
    by_slug = {t["patternType"]: t for t in types}
    assert by_slug["double_top"]["displayName"] == "Double top"
    assert by_slug["double_top"]["direction"] == "PATTERN_DIRECTION_BEARISH"
    assert all(t["description"] for t in types)
    page = get(mesh, "/api/v1/patterns/types", pageSize=5)
    assert len(page["patternTypes"]) == 5 and page["nextPageToken"]


def test_eurusd_patterns_with_key_points_and_follow_through(mesh: RunningMesh) -> None:
    detection = get(mesh, "/api/v1/patterns/EURUSD", lookback=500)["detection"]
    assert detection["symbol"] == "EURUSD" and detection["timeframe"] == "TIMEFRAME_H1"
    assert detection["engine"] == "PATTERN_ENGINE_RULES" and detection["engineNote"]
    assert detection["patterns"], "500 bars of EURUSD hold patterns"
    for p in detection["patterns"]:
        assert p["keyPoints"] and p["startTime"] <= p["endTime"]
        ft = p["followThrough"]
        assert ft["horizonBars"] == 24 and 0 <= ft["baseRate"] <= 1
    daily = get(mesh, "/api/v1/patterns/GOOG")["detection"]
    assert daily["timeframe"] == "TIMEFRAME_D1"  # the symbol's own series
    missing = httpx.get(f"{mesh.gateway}/api/v1/patterns/NOPE", timeout=10)
    assert missing.status_code == 404, missing.text


def test_scan_every_symbol(mesh: RunningMesh) -> None:
    scan = get(mesh, "/api/v1/patterns:scan")
    assert sorted(d["symbol"] for d in scan["detections"]) == SAMPLES
    assert not scan.get("errors")


def test_caller_candles_and_a_clear_400(mesh: RunningMesh) -> None:
    page = get(mesh, "/api/v1/symbols/EURUSD/candles", timeframe="TIMEFRAME_H1", pageSize=400)
    candles = page["candles"]
    assert len(candles) == 400
    ok = httpx.post(f"{mesh.gateway}/api/v1/patterns:detect", json={"candles": candles}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["detection"]["bars"] == 400
    broken = [dict(c) for c in candles]
    broken[17]["high"] = float(broken[17]["low"]) - 1
    bad = httpx.post(f"{mesh.gateway}/api/v1/patterns:detect", json={"candles": broken}, timeout=30)
    assert bad.status_code == 400, bad.text
    assert "candles[17]" in bad.text and "Traceback" not in bad.text


def test_a_training_over_http_is_followed_on_sse_and_then_served(mesh: RunningMesh) -> None:
    reply = httpx.post(
        f"{mesh.gateway}/api/v1/patterns/train", json={"force": True, "background": True}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    job_id = reply.json()["job"]["jobId"]
    events: list[dict[str, Any]] = []
    with httpx.Client(timeout=httpx.Timeout(180.0, connect=5.0)) as client:
        url = f"{mesh.gateway}/api/v1/patterns/training/jobs/{job_id}:watch"
        with client.stream("GET", url) as response:
            assert response.status_code == 200, response.read().decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:])["event"])
    assert "snapshot" in events[0]
    last = events[-1].get("result") or events[-1]["snapshot"]
    assert last["state"] == "JOB_STATE_SUCCEEDED", last
    card = get(mesh, "/api/v1/patterns/model")
    assert card["ready"] and card["model"]["version"].startswith("v")
    model = card["model"]
    assert len(model["classes"]) == 13 and model["macro"]["patternType"] == "macro"
    assert {s["symbol"] for s in model["series"]} == set(SAMPLES)
    assert all("rulesFollowThrough" in c for c in model["classes"])
    tcn = get(mesh, "/api/v1/patterns/EURUSD", engine="PATTERN_ENGINE_CHOICE_TCN")["detection"]
    assert tcn["engine"] == "PATTERN_ENGINE_TCN" and tcn["modelVersion"] == f"tcn/{model['version']}"
    assert all(p["engine"] == "PATTERN_ENGINE_TCN" and p["keyPoints"] for p in tcn.get("patterns", []))
    bad = httpx.post(f"{mesh.gateway}/api/v1/patterns/train", json={"maxSteps": 7}, timeout=30)
    assert bad.status_code == 400 and "max_steps" in bad.text, bad.text


def test_the_analyst_is_grounded_in_the_live_patterns(mesh: RunningMesh) -> None:
    body = {"symbol": "EURUSD", "question": "Which chart patterns matter now?", "maxTokens": 8}
    with (
        httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client,
        client.stream("POST", f"{mesh.gateway}/api/v1/analyze:stream", json=body) as response,
    ):
        assert response.status_code == 200
        context = next(
            json.loads(line[5:])["context"]
            for line in response.iter_lines()
            if line.startswith("data:") and '"context"' in line
        )
    sources = {u["source"] for u in context["unavailable"]}
    assert "CONTEXT_SOURCE_PATTERNS" not in sources, context["unavailable"]
    assert context["patternDetection"]["symbol"] == "EURUSD"
