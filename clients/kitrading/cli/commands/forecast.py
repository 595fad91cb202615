"""Forecast service commands: `train` (with a live progress bar) and `forecast` (table and PNG plot).

kitrading train --all --follow         # every active symbol, progress until the job ends
kitrading train EURUSD --force -f      # one symbol, even when its model is fresh
kitrading train --job 3f2a... -f       # follow a job that is already running
kitrading forecast EURUSD --horizon 24 --plot eurusd.png
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import TYPE_CHECKING, TextIO

from kitrading.cli.common import (
    EXIT_ERROR,
    Subparsers,
    client_from,
    enum_label,
    message_dict,
    print_json,
    print_table,
    timestamp,
)
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
#: A progress line at most this often when the output is not a terminal (logs, pipes).
PLAIN_PROGRESS_EVERY_S = 0.5
BAR_WIDTH = 24
#: Bars of history drawn before the forecast in `--plot`.
DEFAULT_HISTORY = 120


def register(subparsers: Subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train NHITS forecast models (live progress with --follow)",
        description=(
            "Start a training job of one symbol or of every active symbol (--all), or follow an existing "
            "job (--job). With --follow, a progress bar follows the job's real training steps until it ends."
        ),
    )
    train.add_argument("symbol", nargs="?", help="symbol to train, e.g. EURUSD")
    train.add_argument("--all", action="store_true", help="train every active symbol")
    train.add_argument("--job", metavar="JOB_ID", help="follow this job instead of starting one")
    train.add_argument("--force", action="store_true", help="retrain models that are still fresh")
    train.add_argument("--follow", "-f", action="store_true", help="show progress until the job ends")
    train.add_argument("--json", action="store_true", help="print JSON (one object per streamed event)")
    train.set_defaults(handler=run_train)

    forecast = subparsers.add_parser(
        "forecast",
        help="forecast a symbol with 80%% and 95%% intervals",
        description="Print the NHITS forecast of a symbol with its intervals; --plot saves a chart.",
    )
    forecast.add_argument("symbol", help="symbol, e.g. EURUSD")
    forecast.add_argument("--horizon", type=int, default=24, help="future bars (default 24)")
    forecast.add_argument(
        "--timeframe", type=str.upper, choices=TIMEFRAMES, default=None, help="default: the model's series"
    )
    forecast.add_argument("--plot", metavar="PNG", help="save a chart of history and forecast to this file")
    forecast.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        help=f"bars of history in the plot ({DEFAULT_HISTORY})",
    )
    forecast.add_argument("--json", action="store_true", help="print JSON")
    forecast.set_defaults(handler=run_forecast)


# -- train ----------------------------------------------------------------------------------------


def _state(value: int) -> str:
    return enum_label(job_pb2.JobState.Name(value), "JOB_STATE_").lower()  # type: ignore[arg-type]


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


class ProgressBar:
    """One progress line: redrawn in place on a terminal, printed now and then elsewhere."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.last_plain = 0.0
        self.drawn = False

    def update(self, step: training_pb2.TrainingStep, *, force: bool = False) -> None:
        total = max(step.job_max_steps, 1)
        done = min(step.job_step, total)
        filled = round(BAR_WIDTH * done / total)
        eta = f"  eta {step.eta_seconds:.0f}s" if step.HasField("eta_seconds") else ""
        val = f"  val {step.val_loss:.4g}" if step.HasField("val_loss") else ""
        text = (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * done / total:3.0f}%  "
            f"{step.key or step.symbol} step {step.step}/{step.max_steps}  loss {step.train_loss:.4g}{val}  "
            f"job {done}/{total}{eta}"
        )
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            now = time.monotonic()
            if not force and now - self.last_plain < PLAIN_PROGRESS_EVERY_S and step.step < step.max_steps:
                return
            self.last_plain = now
            self.out.write(text + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        """A permanent line above the bar."""
        if self.tty and self.drawn:
            self.out.write("\r\x1b[2K")
            self.drawn = False
        self.out.write(text + "\n")
        self.out.flush()


def symbol_line(s: training_pb2.SymbolTrainingState) -> str:
    state = _state(s.state)
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
    text = f"job {job.job_id} {_state(job.state)}{took} ({len(job.symbols)} symbols, {trigger})"
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
    ends; 0 when it SUCCEEDED, 1 otherwise."""
    bar = ProgressBar(out, tty=out.isatty())
    final: training_pb2.TrainingJob | None = None
    messages = importlib.import_module(f"kitrading.{service}.v1.request_response_pb2")
    request = messages.WatchTrainingJobRequest(job_id=job_id)
    with getattr(client, service).watch_training_job(request, timeout=timeout) as stream:
        try:
            for message in stream:
                event = message.event
                if as_json:
                    print_json(message_dict(event), out=out, indent=None)
                kind = event.WhichOneof("event")
                if kind == "snapshot":
                    job = event.snapshot
                    if not as_json:
                        names = ", ".join(s.key or s.symbol for s in job.symbols) or "nothing to train"
                        bar.line(f"job {job.job_id} {_state(job.state)}: {names}")
                    if job.state in _ENDED:
                        final = job
                elif kind == "step" and not as_json:
                    bar.update(event.step)
                elif kind == "symbol_transition" and not as_json:
                    bar.line(symbol_line(event.symbol_transition))
                elif kind == "result":
                    final = event.result
        except KeyboardInterrupt:
            again = "train" if service == "forecast" else f"train-{service}"
            bar.line(f"stopped following; the job goes on (kitrading {again} --job {job_id} -f)")
            raise
    if final is None:
        bar.line(f"the stream of job {job_id} ended without a result")
        return 1
    if not as_json:
        bar.line(job_line(final))
    return 0 if final.state == job_pb2.JOB_STATE_SUCCEEDED else 1


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
