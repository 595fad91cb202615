"""Train the regime models on the bundled real data and print the tables of docs/models.md.

    .venv/bin/python -m services.regime.report [--out table.md]

The service's own path end to end (a training job in the worker process, evaluation stored with the
version) with the settings from the environment (defaults otherwise); seeds are fixed, so a rerun on
the same machine reproduces the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from services.data.samples import SAMPLES, load_candles
from services.regime.service import RegimeDomain
from services.regime.settings import RegimeSettings
from services.training.sources import InMemoryCandleSource, SymbolInfo


def _f(value: Any, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def tables(models: dict[str, dict[str, Any]]) -> str:
    """Markdown: the HMM states per symbol, the scorer against the base rate, the backtests."""
    states = [
        "| symbol | tf | states (BIC) | converged | regime | mean log return / bar | volatility / bar "
        "| expected stay (bars) |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    scores = [
        "| symbol | tf | signals tested | positive rate | AUC | Brier | Brier base | log loss "
        "| log loss base | edge |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    trades = [
        "| symbol | strategy | trades | hit rate | mean return / trade | Sharpe / trade | max drawdown |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for symbol, meta in models.items():
        hmm, ev, tf = meta["hmm"], meta["evaluation"], meta["timeframe"]
        for state, stay in zip(hmm["states"], hmm["expected_duration_bars"], strict=True):
            states.append(
                f"| {symbol} | {tf} | {hmm['n_states']} | {'yes' if hmm['converged'] else 'no'} | "
                f"{state['label']} | {state['mean_return']:+.2e} | {state['volatility']:.2e} | {stay:.1f} |"
            )
        cal = ev["scores_calibrated"]
        scores.append(
            f"| {symbol} | {tf} | {cal['n']} | {_f(cal['positive_rate'])} | {_f(cal['auc'])} | "
            f"{_f(cal['brier'], 4)} | {_f(cal['brier_base'], 4)} | {_f(cal['log_loss'], 4)} | "
            f"{_f(cal['log_loss_base'], 4)} | {'yes' if ev['edge'] else 'no'} |"
        )
        for row in ev["backtest"]:
            trades.append(
                f"| {symbol} | {row['strategy']} | {row['trades']} | {_f(row['hit_rate'])} | "
                f"{row['mean_return']:+.2e} | {_f(row['sharpe_per_trade'])} | {_f(row['max_drawdown'])} |"
            )
    return "\n".join(["\n".join(states), "", "\n".join(scores), "", "\n".join(trades)]) + "\n"


async def run(settings: RegimeSettings) -> tuple[dict[str, dict[str, Any]], float]:
    source = InMemoryCandleSource()
    for spec in SAMPLES:
        bars = load_candles([spec])[spec.symbol]
        frame = pd.DataFrame([asdict(c) for c in bars])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        source.put(SymbolInfo(spec.symbol, timeframe=spec.timeframe.name), spec.timeframe.name, frame)
    domain = RegimeDomain(settings, source)
    await domain.start(schedule=False, train_on_start=False)
    started = time.perf_counter()
    try:
        job = await domain.train(force=True, background=False)
        if job.state.value != "SUCCEEDED":
            raise SystemExit(f"training failed: {job.error}")
        return {
            i.key: (await domain.model(i.key))[0].metadata for i in job.items
        }, time.perf_counter() - started
    finally:
        await domain.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kitrading-regime-report-"))
    settings = replace(RegimeSettings.from_env(), home=home)
    try:
        models, seconds = asyncio.run(run(settings))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    s = settings
    states_text = s.n_states or "by BIC among 2..4"
    text = (
        f"HMM: states {states_text}, {s.restarts} restarts, {s.max_iter} iterations, volatility "
        f"window {s.vol_window}. Scorer: horizon {s.horizon} bars, target {s.take_profit} {s.barrier_unit}, "
        f"stop {s.stop_loss} {s.barrier_unit}, cost {s.cost} round trip, {s.folds} folds, embargo "
        f"{s.embargo}, {s.boosting_rounds} rounds, a buy and a sell every {s.signal_step} bars. "
        f"Trained in {seconds:.0f} s, one thread.\n\n" + tables(models)
    )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
