"""The regime serving bench in a tiny mode: the real stack (PostgreSQL, Data, regime, Envoy) starts,
the regime service trains at first start, every path answers, the in-process paths serve the same
model version and scores as the service, and the JSON result holds every figure the report prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.regime_serving import main

pytestmark = pytest.mark.slow


def test_tiny_run_measures_every_path_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "regime.json"
    argv = ["--calls", "3", "--rounds", "1", "--signals", "20", "--score-rounds", "1", "--bars", "1500"]
    result = main([*argv, "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    a, b = result["a_get_regime"], result["b_scoring"]
    assert a["same_model_and_regime"] and a["bars"] == 1500
    assert a["regime"].startswith("REGIME_") and a["model_version"]
    assert set(a["paths"]) == {
        "trivial direct gRPC",
        "trivial gateway gRPC",
        "trivial gateway HTTP JSON",
        "GetRegime direct gRPC",
        "GetRegime gateway gRPC",
        "GetRegime gateway HTTP JSON",
        "in-process, in-memory candles",
        "in-process, Data source over gRPC",
    }
    assert all(p["n"] == 3 and 0 < p["p50_ms"] <= p["p99_ms"] for p in a["paths"].values())
    for kind in ("gRPC", "HTTP JSON"):
        t = a["target"][kind]
        assert t["allowed_ms"] == pytest.approx(t["trivial_added_p50_ms"] + 0.5, abs=1e-3)
        assert t["met"] == (t["added_p50_ms"] <= t["allowed_ms"])
        assert t["met_whole_trivial_call"] == (t["added_p50_ms"] <= t["allowed_whole_trivial_call_ms"])
    assert set(a["gateway_over_direct_p50_ms"]["gRPC"]) == {"median", "min", "max"}
    assert b["signals"] == 20 and b["same_scores_everywhere"]
    assert b["batch_speedup"] > 0 and b["met"] == (b["batch_speedup"] >= 20)
    assert set(result["targets_met"]) == {
        "a_gateway_grpc",
        "a_gateway_http_json",
        "a_gateway_grpc_whole_trivial_call",
        "a_gateway_http_json_whole_trivial_call",
        "b_batch",
    }
    printed = capsys.readouterr().out
    assert "| GetRegime gateway HTTP JSON |" in printed and "one batch of 20" in printed
