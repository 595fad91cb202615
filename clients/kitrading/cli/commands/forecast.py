"""Forecast service commands: `train` (with a live progress bar) and `forecast` (table and PNG plot).

kitrading train --all --follow         # every active symbol, progress until the job ends
kitrading train EURUSD --force -f      # one symbol, even when its model is fresh
kitrading train --job 3f2a... -f       # follow a job that is already running
kitrading forecast EURUSD --horizon 24 --plot eurusd.png
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import TYPE_CHECKING, TextIO

import click

from kitrading.cli.common import (
    EXIT_ERROR,
    STATE_STYLES,
    add_command,
    argument,
    choice,
    client_from,
    enum_label,
    flag,
    json_flag,
    message_dict,
    option,
    print_json,
    print_table,
    timestamp,
)
from kitrading.cli.progress import JobProgress, job_state
from kitrading.common.v1 import job_pb2, market_pb2, training_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.forecast.v1 import request_response_pb2 as forecast_rr
from kitrading.forecast.v1 import resources_pb2 as forecast_res

if TYPE_CHECKING:
    from kitrading.client import Client

TIMEFRAMES = [
    enum_label(name, "TIMEFRAME_")
    for name in market_pb2.Timeframe.DESCRIPTOR.values_by_name
    if not name.endswith("UNSPECIFIED")
]
#: Bars of history drawn before the forecast in `--plot`.
DEFAULT_HISTORY = 120


def plot_option(help: str) -> click.Option:
    return option("--plot", metavar="PNG", type=click.Path(dir_okay=False), help=help)


def train_options(job_help: str) -> list[click.Parameter]:
    """--job, --force, --follow/-f and --json of every training command."""
    return [
        option("--job", metavar="JOB_ID", help=job_help),
        flag("--force", help="retrain models that are still fresh"),
        flag("--follow", "-f", help="show progress until the job ends"),
        json_flag("print JSON: the job (one document); with --follow one object per streamed event"),
    ]


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "train",
        run_train,
        help="train NHITS forecast models (live progress with --follow)",
        description=(
            "Start a training job of one symbol or of every active symbol (--all), or follow an existing "
            "job (--job). With --follow, a progress bar follows the job's real training steps until it ends."
        ),
        params=[
            argument("symbol", required=False, help="symbol to train, e.g. EURUSD"),
            flag("--all", help="train every active symbol"),
            *train_options("follow this job instead of starting one"),
        ],
    )
    add_command(
        cli,
        "forecast",
        run_forecast,
        help="forecast a symbol with 80% and 95% intervals",
        description="Print the NHITS forecast of a symbol with its intervals; --plot saves a chart.",
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            option("--horizon", type=int, default=24, help="future bars (default 24)"),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default: the model's series"),
            plot_option("save a chart of history and forecast to this file"),
            option(
                "--history",
                type=int,
                default=DEFAULT_HISTORY,
                help=f"bars of history in the plot ({DEFAULT_HISTORY})",
            ),
            json_flag(),
        ],
    )


# -- train ----------------------------------------------------------------------------------------


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def symbol_line(s: training_pb2.SymbolTrainingState) -> str:
    state = job_state(s.state)
    parts = [f"{s.key or s.symbol:<10} {state}"]
    if s.model_version:
        parts.append(f"model {s.model_version}")
    if s.state == job_pb2.JOB_STATE_SUCCEEDED:
        parts.append(
            f"{s.step} steps, loss {_loss(s.train_loss if s.HasField('train_loss') else None)}, "
            f"val {_loss(s.val_loss if s.HasField('val_loss') else None)}"
        )
    if s.error:
        parts.append(s.error)
    return "  ".join(parts)


def job_line(job: training_pb2.TrainingJob) -> str:
    trigger = enum_label(training_pb2.TrainingTrigger.Name(job.trigger), "TRAINING_TRIGGER_").lower()
    took = ""
    if job.HasField("start_time") and job.HasField("end_time"):
        took = f" in {job.end_time.ToDatetime().timestamp() - job.start_time.ToDatetime().timestamp():.1f}s"
    text = f"job {job.job_id} {job_state(job.state)}{took} ({len(job.symbols)} symbols, {trigger})"
    return text + (f": {job.error}" if job.error else "")


def follow(
    client: Client,
    job_id: str,
    *,
    as_json: bool,
    out: TextIO,
    timeout: float | None,
    service: str = "forecast",
) -> int:
    """Stream a training job of any model service (`forecast`, `regime`, `pattern`...) until it
    ends, as Rich progress bars (`JobProgress`) or, `as_json`, one JSON object per event; 0 when it
    SUCCEEDED, 1 otherwise."""
    messages = importlib.import_module(f"kitrading.{service}.v1.request_response_pb2")
    request = messages.WatchTrainingJobRequest(job_id=job_id)
    final: training_pb2.TrainingJob | None = None
    bars = None if as_json else JobProgress(out)
    with (
        getattr(client, service).watch_training_job(request, timeout=timeout) as stream,
        bars if bars is not None else contextlib.nullcontext(),
    ):
        try:
            for message in stream:
                event = message.event
                final = _ended(event) or final
                if bars is None:
                    print_json(message_dict(event), out=out, indent=None)
                elif event.HasField("snapshot"):
                    bars.snapshot(event.snapshot)
                elif event.HasField("step"):
                    bars.step(event.step)
                elif event.HasField("symbol_transition"):
                    bars.transition(event.symbol_transition, symbol_line(event.symbol_transition))
        except KeyboardInterrupt:
            again = "train" if service == "forecast" else f"train-{service}"
            hint = f"stopped following; the job goes on (kitrading {again} --job {job_id} -f)"
            if bars is not None:
                bars.line(hint, "yellow")
            else:
                print(hint, file=sys.stderr)
            raise
    if final is None:
        text, style = f"the stream of job {job_id} ended without a result", "red"
    else:
        text, style = job_line(final), STATE_STYLES.get(job_state(final.state), "")
    if bars is not None:
        bars.line(text, style)
    elif final is None:
        print(text, file=sys.stderr)
    return 0 if final is not None and final.state == job_pb2.JOB_STATE_SUCCEEDED else 1


def _ended(event: training_pb2.TrainingJobEvent) -> training_pb2.TrainingJob | None:
    """The job when `event` says it ended: its result, or a snapshot of a job that had ended."""
    if event.HasField("result"):
        return event.result
    if event.HasField("snapshot") and event.snapshot.state in _ENDED:
        return event.snapshot
    return None


_ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


def run_train(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    chosen = sum(bool(x) for x in (args.symbol, args.all, args.job))
    if chosen != 1:
        print("kitrading train: name a SYMBOL, or --all, or --job JOB_ID (exactly one)", file=sys.stderr)
        return EXIT_ERROR
    with client_from(args) as client:
        if args.job:
            job_id = args.job
        else:
            if args.all:
                job = client.forecast.train_all(
                    forecast_rr.TrainAllRequest(force=args.force, background=True)
                ).job
            else:
                job = client.forecast.train_symbol(
                    forecast_rr.TrainSymbolRequest(
                        symbol=args.symbol.upper(), force=args.force, background=True
                    )
                ).job
            job_id = job.job_id
            if not args.follow:
                if args.json:
                    print_json(message_dict(job), out=stream_out)
                else:
                    stream_out.write(
                        f"{job_line(job)}\nfollow it with: kitrading train --job {job_id} --follow\n"
                    )
                return 0
        if not args.follow:
            job = client.forecast.get_training_job(forecast_rr.GetTrainingJobRequest(job_id=job_id)).job
            if args.json:
                print_json(message_dict(job), out=stream_out)
            else:
                stream_out.write("\n".join([job_line(job), *(symbol_line(s) for s in job.symbols)]) + "\n")
            return 0
        return follow(client, job_id, as_json=args.json, out=stream_out, timeout=args.timeout)


# -- forecast -------------------------------------------------------------------------------------


def _interval(point: forecast_res.ForecastPoint, level: int) -> tuple[float, float] | None:
    found = next((i for i in point.intervals if i.level == level), None)
    return None if found is None else (found.lower, found.upper)


def forecast_rows(forecast: forecast_res.Forecast) -> list[tuple[str, ...]]:
    rows = []
    for p in forecast.points:
        cells = [timestamp(p.time), f"{p.value:.6g}"]
        for level in (80, 95):
            bounds = _interval(p, level)
            cells.append("-" if bounds is None else f"[{bounds[0]:.6g}, {bounds[1]:.6g}]")
        rows.append(tuple(cells))
    return rows


def plot_forecast(forecast: forecast_res.Forecast, history: list[tuple[float, float]], path: str) -> None:
    """Save a PNG: `history` ((POSIX seconds, close), oldest first), the forecast and its intervals."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def when(seconds: list[float]) -> np.ndarray:
        return np.array([np.datetime64(round(t), "s") for t in seconds])

    times = when([p.time.seconds + p.time.nanos / 1e9 for p in forecast.points])
    values = np.array([p.value for p in forecast.points])
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        line_times, line_values = times, values
        if history:
            ax.plot(
                when([t for t, _ in history]),
                np.array([c for _, c in history]),
                color="0.2",
                lw=1.2,
                label="close",
            )
            # the forecast line starts at the last close
            line_times = np.concatenate([when([history[-1][0]]), times])
            line_values = np.concatenate([[history[-1][1]], values])
        for level, alpha in ((95, 0.18), (80, 0.32)):
            bounds = [_interval(p, level) for p in forecast.points]
            if all(b is not None for b in bounds):
                lower = np.array([b[0] for b in bounds if b is not None])
                upper = np.array([b[1] for b in bounds if b is not None])
                ax.fill_between(
                    times, lower, upper, color="tab:blue", alpha=alpha, lw=0, label=f"{level}% interval"
                )
        ax.plot(line_times, line_values, color="tab:blue", lw=1.6, label="NHITS forecast")
        frame = enum_label(market_pb2.Timeframe.Name(forecast.timeframe), "TIMEFRAME_")
        ax.set_title(
            f"{forecast.symbol} {frame}: {forecast.horizon}-bar forecast (model {forecast.model_version})"
        )
        ax.set_ylabel("price")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def run_forecast(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = forecast_rr.GetForecastRequest(symbol=args.symbol.upper(), horizon=args.horizon)
    if args.timeframe:
        request.timeframe = market_pb2.Timeframe.Value(f"TIMEFRAME_{args.timeframe}")
    history: list[tuple[float, float]] = []
    note = ""
    with client_from(args) as client:
        forecast = client.forecast.get_forecast(request).forecast
        if args.plot and args.history > 0:
            from kitrading.client import KitradingError

            try:
                candles = client.data.list_candles(
                    data_rr.ListCandlesRequest(
                        symbol=forecast.symbol,
                        timeframe=forecast.timeframe,
                        page_size=min(args.history, 5000),
                        descending=True,
                    )
                ).candles
                history = [(c.time.seconds + c.time.nanos / 1e9, c.close) for c in reversed(candles)]
            except KitradingError as exc:  # e.g. --target is the forecast service alone
                note = f" (no history: {exc})"
    if args.json:
        print_json(message_dict(forecast), out=stream_out)
    else:
        frame = enum_label(market_pb2.Timeframe.Name(forecast.timeframe), "TIMEFRAME_")
        cached = ", cached" if forecast.cached else ""
        stream_out.write(
            f"{forecast.symbol} {frame} forecast, {forecast.horizon} bars after the candle of "
            f"{timestamp(forecast.last_candle_time)} UTC (model {forecast.model_version}{cached})\n"
        )
        print_table(
            ("time (UTC)", "forecast", "80% interval", "95% interval"),
            forecast_rows(forecast),
            out=stream_out,
        )
    if args.plot:
        plot_forecast(forecast, history, args.plot)
        stream = sys.stderr if args.json else stream_out
        stream.write(f"saved {args.plot}{note}\n")
        stream.flush()
    return 0
