"""`bench.candles_bulk` runs end to end at a small scale (its figures are in docs/benchmarks.md)."""

from __future__ import annotations

from bench.candles_bulk import run


def test_the_bulk_candle_bench_measures_every_path_and_refuses_beyond_capacity() -> None:
    result = run(calls=2, rounds=1, concurrent=20, admission=2)
    sequential = result["sequential"]
    assert len(sequential) == 9
    assert all(figures["ms_per_page"] > 0 and figures["candles_per_s"] > 0 for figures in sequential.values())
    assert result["20 at once, direct gRPC, columns"]["codes"] == {"OK": 20}
    assert result["20 at once, direct gRPC, rows"]["codes"] == {"OK": 20}
    direct = result["40 at once, direct gRPC, columns, admission 2"]["codes"]
    assert set(direct) <= {"OK", "RESOURCE_EXHAUSTED"} and direct.get("OK")
    gateway = result["40 at once, JSON via gateway, columns, rate limits 2/s burst 5"]["codes"]
    assert set(gateway) == {"200", "429"}, gateway  # beyond the limit: refused, never an error
