"""Run the rule-based detector over the five bundled real series and print the tables of docs/patterns.md.

    .venv/bin/python -m services.pattern.report [--out table.md] [--tcn]

`--tcn` also trains the TCN with the default settings on all five series (the path of a training
job, in this process, torch on one thread) and prints its held-out table: per type precision,
recall, F1 and PR-AUC against the detector's labels, and its signals' follow-through beside the
rules' and the base rate (docs/models.md).

The same path as the service (`PatternDomain.detect_symbol` over the newest `history_bars` bars, with
the default settings): how many patterns of each type were confirmed, and on the held-out period how
often price then moved the pattern's way over the follow-through horizon, beside the base rate of every
bar of that period. Deterministic: a rerun prints the same numbers.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from services.pattern.catalogue import CATALOGUE
from services.pattern.detector import detect
from services.pattern.followthrough import FollowThrough, follow_through
from services.pattern.settings import PatternSettings
from services.training.sources import candles_from_ohlcv


def _ft(row: FollowThrough) -> str:
    if row.count == 0:
        return "0"
    if row.count < 2:
        return f"{row.count}: {row.hit_rate:.2f} (base {row.base_rate:.2f})"
    marker = ""
    if row.hit_low > row.base_rate:
        marker = " **above**"
    elif row.hit_high < row.base_rate:
        marker = " **below**"
    interval = f"[{row.hit_low:.2f}, {row.hit_high:.2f}]"
    return f"{row.count}: {row.hit_rate:.2f} {interval} vs {row.base_rate:.2f}{marker}"


def build(settings: PatternSettings) -> str:
    from services.data.samples import SAMPLES, load_frame

    counts: dict[str, dict[str, int]] = {}
    follow: dict[str, dict[str, FollowThrough]] = {}
    bars: dict[str, str] = {}
    elapsed: dict[str, float] = {}
    for spec in SAMPLES:
        name = f"{spec.symbol} {spec.timeframe.value}"
        candles = candles_from_ohlcv(load_frame(spec)).iloc[-settings.history_bars :].reset_index(drop=True)
        started = time.perf_counter()
        found = detect(candles)
        elapsed[name] = time.perf_counter() - started
        rows = follow_through(candles, found, horizon=settings.follow_horizon, holdout=settings.holdout)
        counts[name] = {s.slug: sum(1 for d in found if d.slug == s.slug) for s in CATALOGUE}
        follow[name] = {r.slug: r for r in rows}
        first = candles["time"].iloc[rows[0].period_start].date()
        bars[name] = f"{len(candles)} bars, held out from {first}"
    series = list(counts)
    lines = ["| pattern | direction | " + " | ".join(series) + " |", "|---|---|" + "---|" * len(series)]
    for s in CATALOGUE:
        lines.append(
            f"| {s.name} | {s.direction} | " + " | ".join(str(counts[n][s.slug]) for n in series) + " |"
        )
    lines.append("| detection time | | " + " | ".join(f"{elapsed[n] * 1000:.0f} ms" for n in series) + " |")
    lines += [
        "",
        f"Follow-through over {settings.follow_horizon} bars on the held-out last {settings.holdout:.0%} "
        "of each series: count: hit rate [Wilson 95%] vs base rate.",
        "",
    ]
    for n in series:
        lines += [
            f"**{n}** ({bars[n]})",
            "",
            "| pattern | follow-through | mean signed return [95%] |",
            "|---|---|---|",
        ]
        for s in CATALOGUE:
            row = follow[n][s.slug]
            mean = "" if math.isnan(row.mean_low) else (
                f"{row.mean_return * 1e4:+.0f} bp [{row.mean_low * 1e4:+.0f}, {row.mean_high * 1e4:+.0f}]"
                f" vs {row.base_mean_return * 1e4:+.0f}"
            )  # fmt: skip
            lines.append(f"| {s.name} | {_ft(row)} | {mean} |")
        lines.append("")
    return "\n".join(lines)


def _hit(row: dict[str, Any]) -> str:
    if not row.get("samples"):
        return "0"
    return f"{row['samples']}: {row['hit_rate']:.2f} [{row['hit_rate_low']:.2f}, {row['hit_rate_high']:.2f}]"


def _num(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def build_tcn(settings: PatternSettings) -> str:
    import torch

    from services.data.samples import SAMPLES, load_frame
    from services.pattern.catalogue import BY_SLUG
    from services.pattern.training import SeriesData, train_and_evaluate

    torch.set_num_threads(1)
    config = settings.tcn_config()
    data = []
    for spec in SAMPLES:
        candles = candles_from_ohlcv(load_frame(spec))
        if settings.train_bars:
            candles = candles.iloc[-settings.train_bars :].reset_index(drop=True)
        data.append(SeriesData(spec.symbol, spec.timeframe.value, candles))
    trained, series, ev, seconds = train_and_evaluate(data, config, follow_horizon=settings.follow_horizon)
    windows = sum(len(s.split.train) for s in series)
    lines = [
        f"TCN: window {config.window}, {config.levels} blocks x {config.channels} channels (receptive "
        f"field {config.receptive_field}), {config.max_steps} steps of {config.batch_size}; "
        f"{windows} training / {ev['validation_windows']} validation / {ev['test_windows']} test windows; "
        f"trained and evaluated in {seconds:.0f} s (CPU, 1 thread).",
        "",
        "| pattern | support | predicted | precision | recall | F1 | PR-AUC | TCN signals: hit rate | "
        "rules: hit rate | base rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ev["classes"]:
        tcn, rules = row["tcn_follow_through"], row["rules_follow_through"]
        lines.append(
            f"| {BY_SLUG[row['pattern_type']].name} | {row['support']} | {row['predicted']} | "
            f"{_num(row['precision'])} | {_num(row['recall'])} | {_num(row['f1'])} | {_num(row['pr_auc'])} | "
            f"{_hit(tcn)} | {_hit(rules)} | {_num(tcn['base_rate'])} |"
        )
    m = ev["macro"]
    lines.append(
        f"| **macro** | {m['support']} | {m['predicted']} | {_num(m['precision'])} | {_num(m['recall'])} | "
        f"{_num(m['f1'])} | {_num(m['pr_auc'])} | | | |"
    )
    lines += [
        "",
        f"Calibration (macro): Brier {m['brier']:.3f}, expected calibration error "
        f"{m['calibration_error']:.3f}. Final training loss {trained.final_loss:.3f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the tables here as well")
    parser.add_argument("--tcn", action="store_true", help="train the TCN and print its held-out table")
    args = parser.parse_args(argv)
    text = build(PatternSettings())
    if args.tcn:
        text += "\n\n" + build_tcn(PatternSettings())
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
