"""Regime service commands: `regime` (current phase, segments, PNG plot), `score` (a trade signal),
`regime-model` (the model card with its walk-forward figures) and `train-regime` (live progress).

kitrading regime EURUSD --hindsight --plot eurusd-regimes.png
kitrading score EURUSD buy --time 2024-05-01T13:00
kitrading regime-model EURUSD
kitrading train-regime EURUSD --force --follow

Every figure of `regime` comes from filtered probabilities (a bar's label uses no later bar); only the
`--hindsight` segments (the Viterbi path) use later bars, and the output says so.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

import click
from google.protobuf import timestamp_pb2

from kitrading.cli.commands.forecast import (
    TIMEFRAMES,
    follow,
    job_line,
    plot_option,
    symbol_line,
    train_options,
)
from kitrading.cli.common import (
    EXIT_ERROR,
    Styled,
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
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.regime.v1 import request_response_pb2 as regime_rr
from kitrading.regime.v1 import resources_pb2 as regime_res

if TYPE_CHECKING:
    from kitrading.client import Client

#: Segments printed by `regime` unless --segments says otherwise (the newest ones).
DEFAULT_SEGMENTS = 12
#: Features printed by `score` unless --top says otherwise (largest contribution first).
DEFAULT_FEATURES = 8
#: Shading of each regime in `regime --plot`.
REGIME_COLORS = {
    regime_res.REGIME_BULL_TREND: "tab:green",
    regime_res.REGIME_BEAR_TREND: "tab:red",
    regime_res.REGIME_RANGE: "tab:blue",
    regime_res.REGIME_HIGH_VOLATILITY: "tab:orange",
}
UNITS = {"atr": regime_res.BARRIER_UNIT_ATR, "percent": regime_res.BARRIER_UNIT_PERCENT}
SIDES = {"buy": regime_res.SIGNAL_SIDE_BUY, "sell": regime_res.SIGNAL_SIDE_SELL}
NO_EDGE = "no edge in walk-forward evaluation: read the score as the base rate"
CANDLE_PAGE = 5000


def data_target_option(help: str) -> click.Option:
    return option("--data-target", metavar="HOST:PORT", default=None, help=help)


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "regime",
        run_regime,
        help="current market regime of a symbol, its probabilities and recent segments",
        description=(
            "Print a symbol's current regime (hidden Markov model), every regime's probability, the expected "
            "durations and the recent regime segments. Segments come from filtered probabilities (no bar "
            "uses a later one); --hindsight adds the Viterbi segments, which do use later bars. --plot saves "
            "the close price shaded by regime."
        ),
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default H1"),
            option("--lookback", type=int, default=0, help="bars to segment (default: the service's, 500)"),
            flag("--hindsight", help="also show the Viterbi (hindsight) segments"),
            option(
                "--segments",
                type=int,
                default=DEFAULT_SEGMENTS,
                help=f"newest segments to print ({DEFAULT_SEGMENTS}; 0: all)",
            ),
            plot_option("save the close price shaded by regime to this file"),
            data_target_option("Data service for the plot's prices (default: --target, e.g. the gateway)"),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "score",
        run_score,
        help="score a buy or sell signal in the current regime",
        description=(
            "Print the calibrated probability that a trade reaches its take-profit before its stop-loss "
            "within the horizon (after costs), its expected return, the regime, the model's trade setting, "
            "whether the model has an edge, and the features behind the score."
        ),
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            argument("side", type=choice(sorted(SIDES)), help="buy or sell"),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default: the model's"),
            option(
                "--time",
                metavar="ISO",
                default=None,
                help="entry bar, e.g. 2024-05-01T13:00 (UTC; default: the last)",
            ),
            option("--horizon", type=int, default=0, help="bars until exit (default: the model's)"),
            option("--take-profit", type=float, default=None, help="distance in --unit (model's)"),
            option("--stop-loss", type=float, default=None, help="distance in --unit (model's)"),
            option("--unit", type=choice(sorted(UNITS)), default=None, help="barrier unit (model's)"),
            option(
                "--top",
                type=int,
                default=DEFAULT_FEATURES,
                help=f"features to print ({DEFAULT_FEATURES}; 0: all)",
            ),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "regime-model",
        run_regime_model,
        help="the regime model card: HMM states and the scorer's walk-forward evaluation",
        description=(
            "Print a symbol's HMM (states, BIC per state count, convergence) and its signal scorer's "
            "walk-forward evaluation: AUC, Brier score and log loss against the base rate, the reliability "
            "table, the backtest after costs and the verdict."
        ),
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default H1"),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "train-regime",
        run_train_regime,
        help="train the regime models (live progress with --follow)",
        description=(
            "Start a regime training job (the HMM of each symbol, then its signal scorer) of the symbols "
            "named, or of every active symbol when none is; or follow an existing job (--job). With "
            "--follow, a progress bar follows the job's real training steps until it ends."
        ),
        params=[
            argument(
                "symbols", nargs=-1, metavar="[SYMBOL]...", help="symbols to train (default: all active)"
            ),
            option("--timeframe", type=choice(TIMEFRAMES), default=None, help="default H1"),
            *train_options("follow this job instead of starting one"),
        ],
    )


# -- shared ---------------------------------------------------------------------------------------


def regime_name(value: int) -> str:
    """`REGIME_BULL_TREND` -> `bull trend`."""
    return enum_label(regime_res.Regime.Name(value), "REGIME_").lower().replace("_", " ")  # type: ignore[arg-type]


def _frame(value: int) -> str:
    return enum_label(market_pb2.Timeframe.Name(value), "TIMEFRAME_")  # type: ignore[arg-type]


def _timeframe(name: str | None) -> market_pb2.Timeframe.ValueType:
    return market_pb2.TIMEFRAME_UNSPECIFIED if not name else market_pb2.Timeframe.Value(f"TIMEFRAME_{name}")


def _pct(value: float, digits: int = 3, *, sign: bool = True) -> str:
    return f"{100 * value:{'+' if sign else ''}.{digits}f}%"


def _seconds(value: timestamp_pb2.Timestamp) -> float:
    return value.seconds + value.nanos / 1e9


# -- regime ---------------------------------------------------------------------------------------


def segment_rows(segments: list[regime_res.RegimeSegment]) -> list[tuple[str, ...]]:
    return [
        (
            timestamp(s.start_time),
            timestamp(s.end_time),
            regime_name(s.regime),
            str(s.bars),
            f"{s.mean_probability:.2f}",
            _pct(s.mean_return),
            _pct(s.volatility, sign=False),
        )
        for s in segments
    ]


SEGMENT_HEADERS = (
    "start (UTC)",
    "end (UTC)",
    "regime",
    "bars",
    "mean p",
    "mean return/bar",
    "volatility/bar",
)


def _print_segments(title: str, segments: list[regime_res.RegimeSegment], shown: int, out: TextIO) -> None:
    newest = segments if shown <= 0 else segments[-shown:]
    count = f"the newest {len(newest)} of {len(segments)}" if len(newest) < len(segments) else "all of them"
    out.write(f"\n{title}; {count}, oldest first, log returns per bar:\n")
    print_table(SEGMENT_HEADERS, segment_rows(newest), out=out)


def print_regime(state: regime_res.RegimeState, *, shown: int, out: TextIO) -> None:
    bars = sum(s.bars for s in state.history)
    out.write(
        f"{state.symbol} {_frame(state.timeframe)} regime: {regime_name(state.regime)} "
        f"(probability {state.confidence:.2f}) since {timestamp(state.since_time)} UTC; "
        f"last candle {timestamp(state.last_candle_time)} UTC (model {state.model_version})\n\n"
    )
    durations = {d.regime: d.expected_bars for d in state.expected_durations}
    print_table(
        ("regime", "probability", "expected duration"),
        [
            (
                regime_name(p.regime),
                f"{p.probability:.3f}",
                f"{durations[p.regime]:.1f} bars" if p.regime in durations else "-",
            )
            for p in state.probabilities
        ],
        out=out,
    )
    _print_segments(
        f"Regime segments over the last {bars} bars, from filtered probabilities (each bar's label uses "
        "no later bar)",
        list(state.history),
        shown,
        out,
    )
    if state.hindsight_history:
        _print_segments(
            "HINDSIGHT segments: the Viterbi path over the window, which uses later bars (for charts, "
            "never for signals)",
            list(state.hindsight_history),
            shown,
            out,
        )
    out.flush()


def read_closes(client: Client, state: regime_res.RegimeState) -> list[tuple[float, float]]:
    """(POSIX seconds, close) of every candle the state's segments cover, oldest first."""
    if not state.history:
        return []
    request = data_rr.ListCandlesRequest(
        symbol=state.symbol, timeframe=state.timeframe, page_size=CANDLE_PAGE
    )
    request.start_time.CopyFrom(state.history[0].start_time)
    request.end_time.FromSeconds(state.history[-1].end_time.seconds + 1)  # exclusive: the last bar read
    closes: list[tuple[float, float]] = []
    while True:
        page = client.data.list_candles(request)
        closes.extend((_seconds(c.time), c.close) for c in page.candles)
        if not page.next_page_token:
            return closes
        request.page_token = page.next_page_token


def plot_regime(state: regime_res.RegimeState, closes: list[tuple[float, float]], path: str) -> None:
    """Save a PNG: the close price (`closes`: (POSIX seconds, close), oldest first) over the filtered
    regime segments, each shaded in its regime's colour."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    def when(seconds: float) -> float:
        return float(mdates.date2num(datetime.fromtimestamp(seconds, UTC)))

    segments = list(state.history)
    # a segment is shaded from its first bar to the next segment's first bar; the last one bar past its end
    step = 3600.0
    if len(closes) > 1:
        step = float(np.median(np.diff([t for t, _ in closes])))
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    try:
        for i, s in enumerate(segments):
            end = (
                _seconds(segments[i + 1].start_time) if i + 1 < len(segments) else _seconds(s.end_time) + step
            )
            ax.axvspan(
                when(_seconds(s.start_time)),
                when(end),
                color=REGIME_COLORS.get(s.regime, "0.6"),
                alpha=0.22,
                lw=0,
            )
        handles: list[object] = []
        if closes:
            (line,) = ax.plot(
                np.array([when(t) for t, _ in closes]),
                np.array([c for _, c in closes]),
                color="0.15",
                lw=1.1,
                label="close",
            )
            handles.append(line)
        seen = [r for r in REGIME_COLORS if any(s.regime == r for s in segments)]
        handles += [Patch(color=REGIME_COLORS[r], alpha=0.4, label=regime_name(r)) for r in seen]
        ax.set_title(
            f"{state.symbol} {_frame(state.timeframe)}: regimes from filtered probabilities "
            f"(model {state.model_version}); now {regime_name(state.regime)} ({state.confidence:.2f})"
        )
        ax.xaxis_date()
        ax.set_ylabel("close")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def run_regime(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = regime_rr.GetRegimeRequest(
        symbol=args.symbol.upper(),
        timeframe=_timeframe(args.timeframe),
        lookback=args.lookback,
        include_hindsight=args.hindsight,
    )
    closes: list[tuple[float, float]] = []
    note = ""
    with client_from(args) as client:
        state = client.regime.get_regime(request).state
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
                        closes = read_closes(data_client, state)
                else:
                    closes = read_closes(client, state)
            except KitradingError as exc:  # e.g. --target is the regime service alone
                hint = "" if args.data_target else "; name the Data service with --data-target"
                note = f" (no prices: {exc}{hint})"
    if args.json:
        print_json(message_dict(state), out=stream_out)
    else:
        print_regime(state, shown=args.segments, out=stream_out)
    if args.plot:
        plot_regime(state, closes, args.plot)
        stream = sys.stderr if args.json else stream_out
        stream.write(f"saved {args.plot}{note}\n")
        stream.flush()
    return 0


# -- score ----------------------------------------------------------------------------------------


def parse_time(text: str) -> timestamp_pb2.Timestamp:
    """`2024-05-01T13:00` (UTC unless it names an offset) -> Timestamp."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def barriers_text(barriers: regime_res.Barriers) -> str:
    if barriers.unit == regime_res.BARRIER_UNIT_PERCENT:
        return f"take-profit {barriers.take_profit:g}%, stop-loss {barriers.stop_loss:g}% of the entry price"
    unit = " ATR" if barriers.unit == regime_res.BARRIER_UNIT_ATR else ""
    return f"take-profit {barriers.take_profit:g}{unit}, stop-loss {barriers.stop_loss:g}{unit} (14-bar ATR)"


def print_score(reply: regime_rr.ScoreSignalResponse, *, top: int, out: TextIO) -> None:
    side = enum_label(regime_res.SignalSide.Name(reply.side), "SIGNAL_SIDE_").lower()
    features = list(reply.features) if top <= 0 else list(reply.features)[:top]
    edge = (
        "yes: the scorer beat the base rate in walk-forward evaluation "
        f"(kitrading regime-model {reply.symbol} has the figures)"
        if reply.edge
        else NO_EDGE
    )
    out.write(
        f"{reply.symbol} {_frame(reply.timeframe)} {side} at the bar of {timestamp(reply.signal_time)} UTC "
        f"(last candle {timestamp(reply.last_candle_time)} UTC, model {reply.model_version})\n"
    )
    rows = [
        ("probability", f"{reply.score:.3f} that take-profit is hit before stop-loss within the horizon"),
        ("expected return", f"{_pct(reply.expected_return)} of the entry price, after costs"),
        ("regime", f"{regime_name(reply.regime)} (probability {reply.regime_probability:.2f}, filtered)"),
        (
            "trade setting",
            f"horizon {reply.horizon} bars, {barriers_text(reply.barriers)}, "
            f"round-trip cost {_pct(reply.cost, sign=False)}",
        ),
        ("edge", edge),
    ]
    print_table(
        None,
        [
            (name, Styled(text, "green" if reply.edge else "yellow") if name == "edge" else text)
            for name, text in rows
        ],
        out=out,
        indent=2,
    )
    out.write(
        f"\nFeatures ({'top ' + str(len(features)) if top > 0 else 'all'}, largest contribution first; "
        "contributions in log-odds, positive raises the score):\n"
    )
    print_table(
        ("feature", "value", "contribution"),
        [(f.name, f"{f.value:.5g}", f"{f.contribution:+.4f}") for f in features],
        out=out,
    )


def run_score(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = regime_rr.ScoreSignalRequest(
        symbol=args.symbol.upper(),
        side=SIDES[args.side],
        timeframe=_timeframe(args.timeframe),
        horizon=args.horizon,
    )
    if args.time:
        try:
            request.time.CopyFrom(parse_time(args.time))
        except ValueError:
            print(
                f"kitrading score: --time {args.time!r} is not an ISO time (2024-05-01T13:00)",
                file=sys.stderr,
            )
            return EXIT_ERROR
    if args.take_profit is not None or args.stop_loss is not None or args.unit is not None:
        request.barriers.CopyFrom(
            regime_res.Barriers(
                unit=UNITS[args.unit] if args.unit else regime_res.BARRIER_UNIT_UNSPECIFIED,
                take_profit=args.take_profit or 0.0,
                stop_loss=args.stop_loss or 0.0,
            )
        )
    with client_from(args) as client:
        reply = client.regime.score_signal(request)
    if args.json:
        print_json(message_dict(reply), out=stream_out)
    else:
        print_score(reply, top=args.top, out=stream_out)
    return 0


# -- regime-model ---------------------------------------------------------------------------------


def _scores_rows(evaluation: regime_res.ScorerEvaluation) -> list[tuple[str, ...]]:
    cal, raw = evaluation.calibrated, evaluation.raw
    return [
        ("samples (out of fold)", str(cal.samples), str(raw.samples), "-"),
        ("positive rate", f"{cal.positive_rate:.3f}", f"{raw.positive_rate:.3f}", "-"),
        ("AUC", f"{cal.auc:.3f}", f"{raw.auc:.3f}", "0.500"),
        ("Brier score", f"{cal.brier:.4f}", f"{raw.brier:.4f}", f"{cal.brier_base:.4f}"),
        ("Brier skill", f"{cal.brier_skill:+.4f}", f"{raw.brier_skill:+.4f}", "0"),
        ("log loss", f"{cal.log_loss:.4f}", f"{raw.log_loss:.4f}", f"{cal.log_loss_base:.4f}"),
        ("log loss skill", f"{cal.log_loss_skill:+.4f}", f"{raw.log_loss_skill:+.4f}", "0"),
    ]


def print_model(reply: regime_rr.GetRegimeModelResponse, out: TextIO) -> None:
    m = reply.model
    out.write(
        f"{m.symbol} {_frame(m.timeframe)} regime model {m.model_version}, trained {timestamp(m.train_time)} "
        f"UTC on {m.training_bars} bars ({timestamp(m.data_start_time)} to {timestamp(m.data_end_time)})\n"
    )
    chosen = min(m.bic, key=lambda b: b.bic).n_states if m.bic else m.n_states
    how = "chosen by BIC" if chosen == m.n_states and m.bic else "configured"
    converged = (
        f"EM converged in {m.iterations} iterations"
        if m.converged
        else f"EM did NOT converge ({m.iterations} iterations)"
    )
    out.write(
        f"HMM: {m.n_states} hidden states ({how}), log likelihood {m.log_likelihood:.1f}, {converged}\n"
    )
    if m.bic:
        out.write(
            "BIC (lowest wins): "
            + ", ".join(
                f"{b.n_states} states {b.bic:.1f}{' (chosen)' if b.n_states == m.n_states else ''}"
                for b in m.bic
            )
            + "\n"
        )
    out.write("\n")
    print_table(
        ("state", "regime", "mean return/bar", "volatility/bar", "expected duration"),
        [
            (
                str(s.index),
                regime_name(s.regime),
                _pct(s.mean_return, 4),
                _pct(s.volatility, sign=False),
                f"{s.expected_duration_bars:.1f} bars",
            )
            for s in m.states
        ],
        out=out,
    )
    if not reply.HasField("scorer"):
        out.write("\nSignal scorer: not trained yet.\n")
        return
    sc, ev = reply.scorer, reply.scorer.evaluation
    out.write(
        f"\nSignal scorer (LightGBM) {sc.model_version}, trained {timestamp(sc.train_time)} UTC on "
        f"{sc.training_samples} signals, {len(sc.features)} features; trade: horizon {sc.horizon} bars, "
        f"{barriers_text(sc.barriers)}, round-trip cost {_pct(sc.cost, sign=False)}\n"
    )
    base = f" (base rate: {ev.base_predictor})" if ev.base_predictor else ""
    out.write(f"\nWalk-forward evaluation, out-of-fold, against the base rate{base}:\n")
    print_table(("metric", "calibrated", "raw", "base rate"), _scores_rows(ev), out=out)
    out.write("\nReliability (calibrated probabilities):\n")
    print_table(
        ("predicted", "mean predicted", "observed rate", "count"),
        [
            (
                f"[{b.low:.3f}, {b.high:.3f})",
                f"{b.mean_predicted:.3f}",
                f"{b.observed_rate:.3f}",
                str(b.count),
            )
            for b in ev.reliability
        ],
        out=out,
    )
    out.write(f"\nBacktest, walk-forward, after costs (signals taken above a score of {ev.threshold:.3f}):\n")
    print_table(
        (
            "strategy",
            "trades",
            "hit rate",
            "mean return",
            "total return",
            "sharpe/trade",
            "sharpe ann.",
            "max dd",
        ),
        [
            (
                b.strategy,
                str(b.trades),
                f"{b.hit_rate:.3f}",
                _pct(b.mean_return),
                _pct(b.total_return, 2),
                f"{b.sharpe_per_trade:+.3f}",
                f"{b.sharpe_annualised:+.2f}",
                _pct(b.max_drawdown, 2, sign=False),
            )
            for b in ev.backtest
        ],
        out=out,
    )
    out.write(f"\nVerdict: {ev.verdict}\n")
    out.write("Edge: yes, the calibrated score beat the base rate\n" if ev.edge else f"Edge: {NO_EDGE}\n")
    out.flush()


def run_regime_model(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = regime_rr.GetRegimeModelRequest(
        symbol=args.symbol.upper(),
        timeframe=_timeframe(args.timeframe),
    )
    with client_from(args) as client:
        reply = client.regime.get_regime_model(request)
    if args.json:
        print_json(message_dict(reply), out=stream_out)
    else:
        print_model(reply, stream_out)
    return 0


# -- train-regime ---------------------------------------------------------------------------------


def run_train_regime(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    if args.job and args.symbols:
        print("kitrading train-regime: name SYMBOLs or --job JOB_ID, not both", file=sys.stderr)
        return EXIT_ERROR
    with client_from(args) as client:
        if args.job:
            job_id = args.job
        else:
            job = client.regime.train_regime_models(
                regime_rr.TrainRegimeModelsRequest(
                    symbols=[s.upper() for s in args.symbols],
                    timeframe=_timeframe(args.timeframe),
                    force=args.force,
                    background=True,
                )
            ).job
            job_id = job.job_id
            if not args.follow:
                if args.json:
                    print_json(message_dict(job), out=stream_out)
                else:
                    stream_out.write(
                        f"{job_line(job)}\nfollow it with: kitrading train-regime --job {job_id} --follow\n"
                    )
                return 0
        if not args.follow:
            job = client.regime.get_training_job(regime_rr.GetTrainingJobRequest(job_id=job_id)).job
            if args.json:
                print_json(message_dict(job), out=stream_out)
            else:
                stream_out.write("\n".join([job_line(job), *(symbol_line(s) for s in job.symbols)]) + "\n")
            return 0
        return follow(
            client, job_id, as_json=args.json, out=stream_out, timeout=args.timeout, service="regime"
        )
