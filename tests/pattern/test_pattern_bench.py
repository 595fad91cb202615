"""The pattern serving bench in a tiny mode: the real stack (PostgreSQL, Data with every bundled data
set, the pattern service, Envoy) starts, the tiny TCN trains, every path answers, the RPC, the HTTP
JSON reply and the in-process domain list the same patterns, and the JSON result holds every figure
the report prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.pattern_serving import TARGET_RATIO, TARGET_SCAN, main

pytestmark = pytest.mark.slow


def test_tiny_run_measures_every_path_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pattern.json"
    result = main(["--calls", "2", "--rounds", "1", "--scan-rounds", "1", "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    a, b = result["a_detect"], result["b_scan"]
    assert a["same_patterns_rpc_http_in_process"] == {"rules": True, "tcn": True}
    assert a["model_version"] == {"rules": "rules-v1", "tcn": "tcn/v000001"} and a["bars"] == 5000
    engines = ("rules", "tcn")
    kinds = ("direct gRPC", "gateway gRPC", "gateway HTTP JSON", "in-process, in-memory candles")
    assert set(a["paths"]) == {
        "trivial direct gRPC",
        "trivial gateway gRPC",
        "trivial gateway HTTP JSON",
        "rules in-process, Data source over gRPC",
        *(f"{e} {k}" for e in engines for k in kinds),
    }
    assert all(p["n"] == 2 and 0 < p["p50_ms"] <= p["p99_ms"] for p in a["paths"].values())
    for name, t in a["target"].items():
        engine = name.split()[0]
        base = a["paths"][f"{engine} in-process, in-memory candles"]["p50_ms"]
        assert t["allowed_added_ms"] == pytest.approx((TARGET_RATIO - 1) * base, abs=1e-3)
        assert t["met"] == (t["ratio"] <= TARGET_RATIO)
    assert set(a["target"]) == {f"{e} {k}" for e in engines for k in ("gRPC", "HTTP JSON")}
    assert b["symbols"] == ["EURUSD", "GOOG", "SP500", "NASDAQ", "MSFT"] and b["same_patterns_everywhere"]
    assert b["scan_speedup"] > 0 and b["met"] == (b["scan_speedup"] >= TARGET_SCAN)
    assert set(result["targets_met"]) == {*(f"a_{k}" for k in a["target"]), "b_scan"}
    printed = capsys.readouterr().out
    assert "| tcn gateway HTTP JSON |" in printed and "| one ScanPatterns |" in printed
