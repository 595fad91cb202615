"""Train on the five bundled real series and print the walk-forward performance table (docs/models.md).

    .venv/bin/python -m services.forecast.report [--max-steps 300] [--scope symbol|global|both] [--out t.md]

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


def scope_table(symbol_rows: list[ModelPerformance], global_rows: list[ModelPerformance]) -> str:
    """Per series: the per-symbol NHITS beside the global one on the same test windows."""
    head = (
        "| symbol | timeframe | global model's series | NHITS | MAE | MASE | MAE / Naive | DM p global vs "
        "symbol | coverage 80% | coverage 95% | width 80% | interval score 80% | interval score 95% "
        "| training s |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    by_symbol = {p.symbol: p for p in symbol_rows}
    lines = []
    for glob in global_rows:
        own = by_symbol.get(glob.symbol)
        digits = 5 if (glob.models["Naive"]["mae"] or 0.0) < 1 else 2
        members = len(glob.global_model.get("symbols", ()))
        for label, perf in (("per symbol", own), ("global", glob)):
            if perf is None:
                continue
            m = perf.models["NHITS"]
            dm = glob.models["NHITS"].get("dm_p_value_vs_symbol_nhits") if label == "global" else None
            cells = [
                glob.symbol,
                glob.timeframe,
                str(members),
                f"**{label}**" if label == "global" else label,
                _fmt(m["mae"], digits),
                _fmt(m["mase"], 2),
                _fmt(m["mae_vs_naive"], 3),
                _fmt(dm, 3) if label == "global" else "",
                _fmt(m["coverage_80"], 3),
                _fmt(m["coverage_95"], 3),
                _fmt(m["width_80"], digits),
                _fmt(m.get("interval_score_80"), digits),
                _fmt(m.get("interval_score_95"), digits),
                _fmt(perf.training.get("duration_s"), 1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def training_times(symbol_rows: list[ModelPerformance], global_rows: list[ModelPerformance]) -> str:
    """Training seconds per timeframe: the sum of the per-symbol models' vs the one global model's
    (fit only; evaluation and publishing excluded), and their ratio."""
    lines = [
        "| timeframe | series | per-symbol training s (sum) | global training s | global / per-symbol |",
        "|---|---:|---:|---:|---:|",
    ]
    for tf in sorted({p.timeframe for p in global_rows}):
        own = [float(p.training.get("duration_s") or 0.0) for p in symbol_rows if p.timeframe == tf]
        glob = [p for p in global_rows if p.timeframe == tf]
        g = float(glob[0].training.get("duration_s") or 0.0)
        ratio = g / sum(own) if sum(own) else float("nan")
        lines.append(f"| {tf} | {len(glob)} | {sum(own):.1f} | {g:.1f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def bundled_source() -> InMemoryCandleSource:
    from services.data.samples import SAMPLES, load_frame

    source = InMemoryCandleSource()
    for spec in SAMPLES:  # the five bundled series
        tf = spec.timeframe.name
        info = SymbolInfo(spec.symbol, spec.asset_class.value, timeframe=tf)
        source.put(info, tf, candles_from_ohlcv(load_frame(spec)))
    return source


async def run(settings: ForecastSettings, scopes: tuple[str, ...] = ("symbol",)) -> dict[str, Any]:
    """Train-all once per scope (in order, same registry: a global version is compared with the
    per-symbol one before it); {scope: (current rows after it, job seconds)}."""
    domain = ForecastDomain(settings, bundled_source())
    await domain.start(schedule=False, warmup=False)
    out: dict[str, Any] = {}
    try:
        for scope in scopes:
            started = time.perf_counter()
            job = await domain.train_all(force=True, background=False, scope=scope)
            if job.state.value != "SUCCEEDED":
                raise SystemExit(f"training failed: {job.error}")
            out[scope] = (await domain.performance(active_only=True), time.perf_counter() - started)
        return out
    finally:
        await domain.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--input-size", type=int)
    parser.add_argument(
        "--scope",
        choices=("symbol", "global", "both"),
        default="symbol",
        help="per-symbol NHITS, one global NHITS per timeframe, or both compared on the same windows",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kitrading-report-"))
    settings = ForecastSettings.from_env()
    from dataclasses import replace

    settings = replace(settings, home=home)
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("input_size", args.input_size)) if v}
    settings = settings.with_nhits(**overrides)
    scopes = ("symbol", "global") if args.scope == "both" else (args.scope,)
    try:
        results = asyncio.run(run(settings, scopes))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    cfg = settings.nhits
    text = ""
    for scope, (rows, seconds) in results.items():
        text += (
            f"[{scope}] NHITS h={cfg.h} input_size={cfg.input_size} max_steps={cfg.max_steps} "
            f"mlp_units={cfg.mlp_units} scaler={cfg.scaler_type} seed={cfg.random_seed}; "
            f"eval_windows={settings.eval_windows} calibration_windows={settings.calibration_windows}; "
            f"train-all in {seconds:.0f} s on {platform.machine()} CPU, {settings.worker_threads} thread; "
            f"baselines {', '.join(settings.baselines)} refitted on the last "
            f"{settings.baseline_input_size} bars\n\n"
            + table(rows)
            + "\nNHITS intervals by calibration:\n\n"
            + interval_table(rows)
            + "\n"
        )
    if len(results) == 2:
        symbol_rows, global_rows = results["symbol"][0], results["global"][0]
        text += (
            "Per-symbol vs global NHITS on the same windows:\n\n"
            + scope_table(symbol_rows, global_rows)
            + "\nTraining time:\n\n"
            + training_times(symbol_rows, global_rows)
        )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
