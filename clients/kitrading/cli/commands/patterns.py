"""Pattern service commands: `patterns` (table and PNG chart with the key points), `pattern-model` (the
TCN's model card against the rule-based detector) and `train-patterns` (live progress).

kitrading patterns EURUSD --lookback 500 --engine both --plot eurusd-patterns.png
kitrading pattern-model
kitrading train-patterns --follow

Every pattern carries what followed its type historically on held-out bars (hit rate in its direction
over the next N bars, with its 95% interval and count) beside the unconditional base rate: a pattern is
not a promise, and the table says how much of one it has been.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

import click

from kitrading.cli.commands.forecast import (
    TIMEFRAMES,
    follow,
    job_line,
    plot_option,
    symbol_line,
    train_options,
)
from kitrading.cli.commands.regime import CANDLE_PAGE, _frame, _seconds, _timeframe, data_target_option
from kitrading.cli.common import (
    EXIT_ERROR,
    add_command,
    argument,
    choice,
    client_from,
    enum_label,
    json_flag,
    message_dict,
    option,
    print_json,
    print_table,
    state,
    timestamp,
)
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.pattern.v1 import request_response_pb2 as pattern_rr
from kitrading.pattern.v1 import resources_pb2 as pattern_res

if TYPE_CHECKING:
    from kitrading.client import Client

ENGINES = {
    "rules": pattern_res.PATTERN_ENGINE_CHOICE_RULES,
    "tcn": pattern_res.PATTERN_ENGINE_CHOICE_TCN,
    "both": pattern_res.PATTERN_ENGINE_CHOICE_BOTH,
}
#: Line and marker colour of a pattern's key points in `patterns --plot`, by direction.
DIRECTION_COLORS = {
    pattern_res.PATTERN_DIRECTION_BULLISH: "tab:green",
    pattern_res.PATTERN_DIRECTION_BEARISH: "tab:red",
    pattern_res.PATTERN_DIRECTION_NEUTRAL: "tab:blue",
}
#: Patterns whose key points `patterns --plot` marks unless --marks says otherwise (most confident).
DEFAULT_MARKS = 12
#: Line style of a pattern in the plot, by the engine that found it.
ENGINE_STYLES = {pattern_res.PATTERN_ENGINE_RULES: "-", pattern_res.PATTERN_ENGINE_TCN: "--"}


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "patterns",
        run_patterns,
        help="chart patterns found in a symbol's recent candles, with their historical follow-through",
        description=(
            "Print the chart patterns confirmed in a symbol's newest candles (most confident first): type, "
            "direction, confidence, start and end bar, the engine that found it (rules or tcn), and what "
            "followed the type on held-out bars against the base rate. --plot saves the candles with each "
            "pattern's key points marked."
        ),
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default: the symbol's"),
            option("--lookback", type=int, default=0, help="bars to scan (default: the service's, 200)"),
            option(
                "--engine",
                type=choice(sorted(ENGINES)),
                default=None,
                help="rules (default), tcn (the rules answer until a TCN is published), or both",
            ),
            option(
                "--min-confidence",
                type=float,
                default=0.0,
                help="drop patterns below this (default: 0.5 for rules)",
            ),
            plot_option("save the candles with the patterns marked to this file"),
            option(
                "--marks",
                type=int,
                default=DEFAULT_MARKS,
                help=f"most confident patterns marked in the plot ({DEFAULT_MARKS}; 0: all)",
            ),
            data_target_option("Data service for the plot's candles (default: --target, e.g. the gateway)"),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "pattern-model",
        run_pattern_model,
        help="the pattern TCN's model card: held-out scores against the rule-based detector",
        description=(
            "Print the training status and the TCN's model card: the series it trained on and, per pattern "
            "type on the held-out test period, precision, recall, F1 and PR-AUC against the detector's "
            "labels, calibration, and the follow-through of the TCN's and the rules' signals beside the base "
            "rate."
        ),
        params=[
            option("--version", default="", help="a published version, e.g. v000002 (default: served)"),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "train-patterns",
        run_train_patterns,
        # `follow` names `train-pattern` in its hint when interrupted: both spellings work
        aliases=["train-pattern"],
        help="train the pattern TCN (live progress with --follow)",
        description=(
            "Start a training job of the pattern TCN on the candles of the symbols named, or of every "
            "active symbol when none is; or show an existing job (--job). With --follow, a progress bar "
            "follows the job's real training steps until it ends."
        ),
        params=[
            argument(
                "symbols", nargs=-1, metavar="[SYMBOL]...", help="symbols to train on (default: all active)"
            ),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default: each symbol's"),
            option(
                "--max-steps",
                type=int,
                default=0,
                help="optimiser steps (default: the service's; it refuses others)",
            ),
            *train_options("show or follow this job instead of starting one"),
        ],
    )


# -- shared ---------------------------------------------------------------------------------------


def type_name(slug: str) -> str:
    """`head_and_shoulders` -> `head and shoulders`."""
    return slug.replace("_", " ")


def direction_name(value: int) -> str:
    return enum_label(pattern_res.PatternDirection.Name(value), "PATTERN_DIRECTION_").lower()  # type: ignore[arg-type]


def engine_name(value: int) -> str:
    return enum_label(pattern_res.PatternEngine.Name(value), "PATTERN_ENGINE_").lower()  # type: ignore[arg-type]


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def follow_text(ft: pattern_res.FollowThrough) -> str:
    """`0.56 [0.44, 0.67] n=61 vs base 0.51`: the hit rate with its interval and count, then the base
    rate of every bar of the same period."""
    if ft.samples == 0 or math.isnan(ft.hit_rate):
        return f"- (n=0) vs base {_rate(ft.base_rate)}"
    return (
        f"{ft.hit_rate:.2f} [{_rate(ft.hit_rate_low)}, {_rate(ft.hit_rate_high)}] n={ft.samples} "
        f"vs base {_rate(ft.base_rate)}"
    )


# -- patterns -------------------------------------------------------------------------------------


PATTERN_HEADERS = (
    "type",
    "direction",
    "confidence",
    "start (UTC)",
    "end (UTC)",
    "engine",
    "follow-through hit rate vs base rate",
)


def pattern_rows(detection: pattern_res.PatternDetection) -> list[tuple[object, ...]]:
    return [
        (
            type_name(p.pattern_type),
            state(direction_name(p.direction)),
            f"{p.confidence:.2f}",
            timestamp(p.start_time),
            timestamp(p.end_time),
            engine_name(p.engine),
            follow_text(p.follow_through) if p.HasField("follow_through") else "-",
        )
        for p in detection.patterns
    ]


def print_patterns(detection: pattern_res.PatternDetection, out: TextIO) -> None:
    d = detection
    out.write(
        f"{d.symbol} {_frame(d.timeframe)}: {len(d.patterns)} patterns confirmed in the last {d.bars} bars "
        f"({timestamp(d.window_start_time)} to {timestamp(d.window_end_time)} UTC), "
        f"engine {engine_name(d.engine)} (model {d.model_version})\n"
    )
    if d.engine_note:
        out.write(f"{d.engine_note}\n")
    if not d.patterns:
        out.flush()
        return
    out.write("\n")
    print_table(PATTERN_HEADERS, pattern_rows(d), out=out)
    horizon = next((p.follow_through.horizon_bars for p in d.patterns if p.HasField("follow_through")), 0)
    if horizon:
        out.write(
            f"\nFollow-through: the share of the type's past patterns on held-out bars after which price "
            f"moved in the pattern's direction over the next {horizon} bars (95% interval, count), beside "
            "the share of all bars of the same period (the base rate). Not a promise.\n"
        )
    out.flush()


def read_candles(
    client: Client, detection: pattern_res.PatternDetection
) -> list[tuple[float, float, float, float, float]]:
    """(POSIX seconds, open, high, low, close) of every candle from the earliest pattern start (or the
    window start) to the window's last bar, oldest first."""
    if not detection.HasField("window_end_time"):
        return []
    starts = [_seconds(p.start_time) for p in detection.patterns]
    first = min([_seconds(detection.window_start_time), *starts])
    request = data_rr.ListCandlesRequest(
        symbol=detection.symbol, timeframe=detection.timeframe, page_size=CANDLE_PAGE
    )
    request.start_time.FromNanoseconds(round(first * 1e9))
    request.end_time.FromSeconds(detection.window_end_time.seconds + 1)  # exclusive: the last bar read
    candles: list[tuple[float, float, float, float, float]] = []
    while True:
        page = client.data.list_candles(request)
        candles.extend((_seconds(c.time), c.open, c.high, c.low, c.close) for c in page.candles)
        if not page.next_page_token:
            return candles
        request.page_token = page.next_page_token


def plot_patterns(
    detection: pattern_res.PatternDetection,
    candles: list[tuple[float, float, float, float, float]],
    path: str,
    *,
    marks: int = DEFAULT_MARKS,
) -> None:
    """Save a PNG: the candles (`candles`: (POSIX seconds, open, high, low, close), oldest first) on a
    bar axis (no weekend gaps), and the key points of the `marks` most confident patterns (0: all)
    joined by a line coloured by direction (dashed: the TCN's), the last point labelled with the type."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = list(detection.patterns) if marks <= 0 else list(detection.patterns)[:marks]
    # the x axis is the bar index; without candles, the key points' own times make the axis
    times = np.array(
        [c[0] for c in candles]
        if candles
        else sorted({_seconds(k.time) for p in shown for k in p.key_points})
    )

    def bar(seconds: float) -> float:
        return float(max(0, int(np.searchsorted(times, seconds + 1e-6)) - 1))

    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        if candles:
            x = np.arange(len(candles), dtype=float)
            o, h, lo, c = (np.array([row[i] for row in candles]) for i in range(1, 5))
            up = c >= o
            ax.vlines(x, lo, h, color="0.35", lw=0.6, zorder=1)
            for mask, color in ((up, "0.9"), (~up, "0.3")):
                ax.bar(
                    x[mask],
                    np.maximum(np.abs(c - o)[mask], 1e-12),
                    0.7,
                    np.minimum(o, c)[mask],
                    color=color,
                    edgecolor="0.3",
                    lw=0.4,
                    zorder=2,
                )
        for p in reversed(shown):  # the most confident drawn last, on top
            if not p.key_points:
                continue
            color = DIRECTION_COLORS.get(p.direction, "0.5")
            xs = [bar(_seconds(k.time)) for k in p.key_points]
            ys = [k.price for k in p.key_points]
            ax.plot(xs, ys, ENGINE_STYLES.get(p.engine, "-"), color=color, lw=1.3, marker="o", ms=4, zorder=3)
            ax.annotate(
                f"{type_name(p.pattern_type)} {p.confidence:.2f}",
                (xs[-1], ys[-1]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )
        if len(times):
            ticks = np.unique(np.linspace(0, len(times) - 1, min(8, len(times))).round().astype(int))
            ax.set_xticks(ticks)
            ax.set_xticklabels(
                [datetime.fromtimestamp(float(times[i]), UTC).strftime("%Y-%m-%d %H:%M") for i in ticks],
                rotation=30,
                ha="right",
                fontsize=8,
            )
        handles = [
            Line2D([], [], color=color, marker="o", ms=4, label=direction_name(direction))
            for direction, color in DIRECTION_COLORS.items()
            if any(p.direction == direction for p in shown)
        ]
        if any(p.engine == pattern_res.PATTERN_ENGINE_TCN for p in shown):
            handles.append(Line2D([], [], color="0.4", ls="--", label="found by the TCN"))
        which = (
            f"the {len(shown)} most confident of {len(detection.patterns)} patterns"
            if len(shown) < len(detection.patterns)
            else f"{len(shown)} patterns"
        )
        ax.set_title(
            f"{detection.symbol} {_frame(detection.timeframe)}: {which} in the last {detection.bars} bars, "
            f"engine {engine_name(detection.engine)} (model {detection.model_version})",
            fontsize=10,
        )
        ax.set_xlabel("bar (UTC open time)")
        ax.set_ylabel("price")
        ax.grid(alpha=0.3)
        if handles:
            ax.legend(handles=handles, loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def run_patterns(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = pattern_rr.DetectSymbolPatternsRequest(
        symbol=args.symbol.upper(),
        timeframe=_timeframe(args.timeframe),
        lookback=args.lookback,
        min_confidence=args.min_confidence,
        engine=ENGINES[args.engine] if args.engine else pattern_res.PATTERN_ENGINE_CHOICE_UNSPECIFIED,
    )
    candles: list[tuple[float, float, float, float, float]] = []
    note = ""
    with client_from(args) as client:
        detection = client.pattern.detect_symbol_patterns(request).detection
        if args.plot:
            from kitrading.client import KitradingError, connect

            try:
                if args.data_target:
                    data_client = (
                        connect(args.data_target)
                        if args.timeout is None
                        else connect(args.data_target, timeout=args.timeout)
                    )
                    with data_client:
                        candles = read_candles(data_client, detection)
                else:
                    candles = read_candles(client, detection)
            except KitradingError as exc:  # e.g. --target is the pattern service alone
                hint = "" if args.data_target else "; name the Data service with --data-target"
                note = f" (no candles: {exc}{hint})"
    if args.json:
        print_json(message_dict(detection), out=stream_out)
    else:
        print_patterns(detection, stream_out)
    if args.plot:
        plot_patterns(detection, candles, args.plot, marks=args.marks)
        stream = sys.stderr if args.json else stream_out
        stream.write(f"saved {args.plot}{note}\n")
        stream.flush()
    return 0


# -- pattern-model --------------------------------------------------------------------------------


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def class_rows(model: pattern_res.PatternModel) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in [*model.classes, model.macro]:
        rows.append(
            (
                type_name(c.pattern_type),
                str(c.support),
                str(c.predicted),
                _num(c.precision),
                _num(c.recall),
                _num(c.f1),
                _num(c.pr_auc),
                _num(c.threshold),
                _num(c.brier, 3),
                _num(c.calibration_error, 3),
                follow_text(c.tcn_follow_through) if c.HasField("tcn_follow_through") else "-",
                follow_text(c.rules_follow_through) if c.HasField("rules_follow_through") else "-",
            )
        )
    return rows


CLASS_HEADERS = (
    "type",
    "support",
    "flagged",
    "precision",
    "recall",
    "f1",
    "pr-auc",
    "threshold",
    "brier",
    "ece",
    "tcn follow-through vs base",
    "rules follow-through vs base",
)


def print_pattern_model(reply: pattern_rr.GetPatternModelResponse, out: TextIO) -> None:
    out.write(f"Pattern TCN: {reply.status_message}\n")
    if reply.HasField("job"):
        out.write(f"{job_line(reply.job)}\n")
    if not reply.HasField("model"):
        out.write("No model card yet: the rule-based detector answers every detection.\n")
        out.flush()
        return
    m = reply.model
    out.write(
        f"\nModel {m.version}, trained {timestamp(m.create_time)} UTC on {m.device} in "
        f"{m.training_seconds:.1f}s ({m.steps} steps, {m.trigger}, job {m.job_id})\n"
        f"Network: {m.levels} levels of dilated causal residual blocks, {m.channels} channels, kernel "
        f"{m.kernel_size}, receptive field {m.receptive_field_bars} bars; windows of {m.window_bars} bars, "
        f"label tolerance {m.label_tolerance_bars} bars, embargo {m.embargo_bars} bars\n"
    )
    if m.label_definition:
        out.write(f"Labels: {m.label_definition}\n")
    if m.split_definition:
        out.write(f"Split: {m.split_definition}\n")
    out.write("\n")
    print_table(
        (
            "series",
            "bars",
            "first (UTC)",
            "test from (UTC)",
            "last (UTC)",
            "train/val/test windows",
            "labels",
        ),
        [
            (
                f"{s.symbol} {_frame(s.timeframe)}",
                str(s.bars),
                timestamp(s.first_time),
                timestamp(s.test_start_time),
                timestamp(s.last_time),
                f"{s.train_windows}/{s.validation_windows}/{s.test_windows}",
                str(s.detections),
            )
            for s in m.series
        ],
        out=out,
    )
    out.write(
        "\nHeld-out test period, the TCN against the rule-based detector's labels (threshold chosen on the "
        "validation windows; brier and ece: calibration of its probability); follow-through of each "
        "engine's signals beside the base rate:\n"
    )
    print_table(CLASS_HEADERS, class_rows(m), out=out)
    out.flush()


def run_pattern_model(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    with client_from(args) as client:
        reply = client.pattern.get_pattern_model(pattern_rr.GetPatternModelRequest(version=args.version))
    if args.json:
        print_json(message_dict(reply), out=stream_out)
    else:
        print_pattern_model(reply, stream_out)
    return 0


# -- train-patterns -------------------------------------------------------------------------------


def run_train_patterns(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    if args.job and args.symbols:
        print("kitrading train-patterns: name SYMBOLs or --job JOB_ID, not both", file=sys.stderr)
        return EXIT_ERROR
    with client_from(args) as client:
        if args.job:
            job_id = args.job
        else:
            job = client.pattern.train_pattern_model(
                pattern_rr.TrainPatternModelRequest(
                    symbols=[s.upper() for s in args.symbols],
                    timeframe=_timeframe(args.timeframe),
                    force=args.force,
                    background=True,
                    max_steps=args.max_steps,
                )
            ).job
            job_id = job.job_id
            if not args.follow:
                if args.json:
                    print_json(message_dict(job), out=stream_out)
                else:
                    stream_out.write(
                        f"{job_line(job)}\nfollow it with: kitrading train-patterns --job {job_id} --follow\n"
                    )
                return 0
        if not args.follow:
            job = client.pattern.get_training_job(pattern_rr.GetTrainingJobRequest(job_id=job_id)).job
            if args.json:
                print_json(message_dict(job), out=stream_out)
            else:
                stream_out.write("\n".join([job_line(job), *(symbol_line(s) for s in job.symbols)]) + "\n")
            return 0
        return follow(
            client, job_id, as_json=args.json, out=stream_out, timeout=args.timeout, service="pattern"
        )
