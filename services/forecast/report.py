"""Train on the five bundled real series and print the walk-forward performance table (docs/models.md).

    .venv/bin/python -m services.forecast.report [--max-steps 300] [--out table.md]

Uses the service's own path end to end (a training job in the worker process, evaluation stored
with the version) with the default settings unless overridden; seeds are fixed (NHITS
random_seed=1, deterministic split), so a rerun on the same machine reproduces the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from services.forecast.service import ForecastDomain, ModelPerformance
from services.forecast.settings import ForecastSettings
from services.training.sources import InMemoryCandleSource, SymbolInfo, candles_from_ohlcv

MODELS = ("NHITS", "Naive", "SeasonalNaive", "AutoETS", "AutoTheta", "AutoARIMA")


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def table(rows: list[ModelPerformance]) -> str:
    """Markdown table: one line per (symbol, model)."""
    head = (
        "| symbol | timeframe | test windows x h | model | MAE | RMSE | MASE | MAE / Naive "
        "| (validation) | DM p vs NHITS | directional acc. | PT p | coverage 80% | coverage 95% "
        "| width 80% | width 95% | interval score 80% | interval score 95% |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for perf in rows:
        ev = perf.evaluation
        naive_mae = perf.models["Naive"]["mae"] or 0.0
        digits = 5 if naive_mae < 1 else 2
        for name in (n for n in MODELS if n in perf.models):
            m = perf.models[name]
            cells = [
                perf.symbol,
                perf.timeframe,
                f"{ev['windows']} x {ev['h']}",
                f"**{name}**" if name == "NHITS" else name,
                _fmt(m["mae"], digits),
                _fmt(m["rmse"], digits),
                _fmt(m["mase"], 2),
                _fmt(m["mae_vs_naive"], 3),
                _fmt(m.get("validation_mae_vs_naive"), 3),
                _fmt(m.get("dm_p_value_vs_nhits"), 3),
                _fmt(m["directional_accuracy"], 3),
                _fmt(m.get("directional_p_value"), 3),
                _fmt(m["coverage_80"], 3),
                _fmt(m["coverage_95"], 3),
                _fmt(m["width_80"], digits),
                _fmt(m["width_95"], digits),
                _fmt(m.get("interval_score_80"), digits),
                _fmt(m.get("interval_score_95"), digits),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def interval_table(rows: list[ModelPerformance]) -> str:
    """NHITS's test-window intervals under each calibration the evaluation scored."""
    head = (
        "| symbol | calibration | coverage 80% | coverage 95% | width 80% | width 95% "
        "| interval score 80% | interval score 95% |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for perf in rows:
        digits = 5 if (perf.models["Naive"]["mae"] or 0.0) < 1 else 2
        for method, m in perf.evaluation.get("interval_methods", {}).items():
            cells = [perf.symbol, method] + [
                _fmt(m[f"{key}_{level}"], 3 if key == "coverage" else digits)
                for key in ("coverage", "width", "interval_score")
                for level in (80, 95)
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


async def run(settings: ForecastSettings) -> tuple[list[ModelPerformance], float]:
    from services.data.samples import SAMPLES, load_frame

    source = InMemoryCandleSource()
    for spec in SAMPLES:  # the five bundled series
        tf = spec.timeframe.name
        info = SymbolInfo(spec.symbol, spec.asset_class.value, timeframe=tf)
        source.put(info, tf, candles_from_ohlcv(load_frame(spec)))
    domain = ForecastDomain(settings, source)
    await domain.start(schedule=False, warmup=False)
    started = time.perf_counter()
    try:
        job = await domain.jobs.train_all(force=True, background=False)
        if job.state.value != "SUCCEEDED":
            raise SystemExit(f"training failed: {job.error}")
        return await domain.performance(active_only=True), time.perf_counter() - started
    finally:
        await domain.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kitrading-report-"))
    settings = ForecastSettings.from_env()
    from dataclasses import replace

    settings = replace(settings, home=home)
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("input_size", args.input_size)) if v}
    settings = settings.with_nhits(**overrides)
    try:
        rows, seconds = asyncio.run(run(settings))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    cfg = settings.nhits
    text = (
        f"NHITS h={cfg.h} input_size={cfg.input_size} max_steps={cfg.max_steps} mlp_units={cfg.mlp_units} "
        f"scaler={cfg.scaler_type} seed={cfg.random_seed}; eval_windows={settings.eval_windows} "
        f"calibration_windows={settings.calibration_windows}; trained in {seconds:.0f} s on "
        f"{platform.machine()} CPU, {settings.worker_threads} thread; baselines "
        f"{', '.join(settings.baselines)} refitted on the last {settings.baseline_input_size} bars\n\n"
        + table(rows)
        + "\nNHITS intervals by calibration:\n\n"
        + interval_table(rows)
    )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
