"""LLM analyst commands: `analyze` (the grounded answer, streamed token by token) and `llm status`."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import click

from kitrading.cli.common import (
    add_command,
    add_group,
    argument,
    choice,
    client_from,
    enum_label,
    flag,
    json_flag,
    message_dict,
    option,
    print_json,
    timestamp,
)
from kitrading.common.v1 import market_pb2
from kitrading.llm.v1 import request_response_pb2 as llm_rr
from kitrading.llm.v1 import resources_pb2 as llm_res
from kitrading.regime.v1 import resources_pb2 as regime_res

TIMEFRAMES = [
    enum_label(name, "TIMEFRAME_")
    for name in market_pb2.Timeframe.DESCRIPTOR.values_by_name
    if not name.endswith("UNSPECIFIED")
]
#: Deadline of a whole answer with --no-stream (a long answer on a small CPU takes minutes).
ANALYZE_TIMEOUT = 600.0


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "analyze",
        run_analyze,
        help="ask the LLM analyst about a symbol",
        description=(
            "Ask the LLM analyst a question about a symbol. The figures it gathered (candles, forecast, "
            "regime, patterns, knowledge base) are printed first, then the answer as it is written."
        ),
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            argument("question", help='e.g. "Should I buy or sell?"'),
            option(
                "--timeframe", type=choice(TIMEFRAMES), default=None, help="default H1 (D1 without H1 data)"
            ),
            option("--max-tokens", type=int, default=None, help="answer length limit (service default)"),
            option("--temperature", type=float, default=None, help="0-2 (service default)"),
            flag("--no-stream", help="wait for the whole answer (unary call)"),
            json_flag("print JSON: one object per streamed message (with --no-stream one document)"),
        ],
    )
    llm = add_group(cli, "llm", help="LLM analyst state", description="LLM analyst tasks.")
    add_command(
        llm,
        "status",
        run_status,
        help="engine, model, queue and speed",
        description="Show the LLM engine, model and load.",
        params=[json_flag()],
    )


def _request(args: argparse.Namespace) -> llm_rr.AnalyzeStreamRequest:
    request = llm_rr.AnalyzeStreamRequest(symbol=args.symbol.upper(), question=args.question)
    if args.timeframe:
        request.timeframe = market_pb2.Timeframe.Value(f"TIMEFRAME_{args.timeframe}")
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    if args.temperature is not None:
        request.temperature = args.temperature
    return request


def _label(enum: Any, value: int, prefix: str) -> str:
    """`(market_pb2.Timeframe, 5, "TIMEFRAME_")` -> `H1`."""
    return enum_label(enum.Name(value), prefix)


def context_lines(context: llm_res.AnalysisContext) -> list[str]:
    """The gathered figures, one line per source."""
    frame = _label(market_pb2.Timeframe, context.timeframe, "TIMEFRAME_")
    lines = [f"{context.symbol} {frame} (gathered in {context.gather_ms:.0f} ms)"]
    if context.HasField("candle_stats"):
        s = context.candle_stats
        lines.append(
            f"  candles   last close {s.last_candle.close:.6g} at {timestamp(s.last_candle.time)}, "
            f"change {s.change_percent:+.2f}% over {s.bars} bars, high {s.high:.6g}, low {s.low:.6g}"
        )
    if context.HasField("forecast") and context.forecast.points:
        f = context.forecast
        last = f.points[-1]
        bands = " ".join(f"{i.level}% [{i.lower:.6g}, {i.upper:.6g}]" for i in last.intervals)
        lines.append(
            f"  forecast  +{len(f.points)} bars: {last.value:.6g} {bands} (model {f.model_version or '-'})"
        )
    if context.HasField("regime"):
        r = context.regime
        name = _label(regime_res.Regime, r.regime, "REGIME_").lower().replace("_", " ")
        lines.append(f"  regime    {name} ({r.confidence * 100:.0f}%)")
    for sc in context.signal_scores:
        side = _label(regime_res.SignalSide, sc.side, "SIGNAL_SIDE_").lower()
        edge = "" if sc.edge else ", no edge over the base rate in walk-forward tests"
        lines.append(
            f"  score     {side}: {sc.score * 100:.0f}% to reach its target first "
            f"within {sc.horizon} bars{edge}"
        )
    if context.HasField("pattern_detection"):
        found = ", ".join(
            f"{p.pattern_type} ({p.confidence * 100:.0f}%)" for p in context.pattern_detection.patterns
        )
        lines.append(f"  patterns  {found or 'none detected'}")
    for i, passage in enumerate(context.passages, 1):
        lines.append(
            f"  passage {i} {passage.title or passage.document_id} [{passage.document_id}] "
            f"(score {passage.score:.2f})"
        )
    for u in context.unavailable:
        source = _label(llm_res.ContextSource, u.source, "CONTEXT_SOURCE_").lower()
        lines.append(f"  missing   {source}: {u.code} {u.reason}")
    return lines


def completion_line(c: llm_res.AnalysisCompletion) -> str:
    reason = _label(llm_res.FinishReason, c.finish_reason, "FINISH_REASON_").lower()
    return (
        f"[{reason}; {c.completion_tokens} tokens, {c.tokens_per_second:.1f} tokens/s, first token "
        f"{c.time_to_first_token_ms:.0f} ms, total {c.total_ms:.0f} ms; {c.model}]"
    )


def run_analyze(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    request = _request(args)
    if args.no_stream:
        with client_from(args, timeout=ANALYZE_TIMEOUT) as client:
            unary = llm_rr.AnalyzeRequest()
            unary.ParseFromString(request.SerializeToString())  # the two requests share their fields
            response = client.llm.analyze(unary)
        if args.json:
            print_json(message_dict(response), out=stream_out)
            return 0
        stream_out.write("\n".join([*context_lines(response.context), "", response.answer.strip(), ""]))
        stream_out.write(completion_line(response.completion) + "\n")
        return 0
    with client_from(args) as client, client.llm.analyze_stream(request, timeout=args.timeout) as stream:
        for message in stream:
            if args.json:
                print_json(message_dict(message), out=stream_out, indent=None)
                continue
            kind = message.WhichOneof("event")
            if kind == "context":
                stream_out.write("\n".join([*context_lines(message.context), "", ""]))
            elif kind == "token":
                stream_out.write(message.token.text)
            elif kind == "completion":
                stream_out.write("\n" + completion_line(message.completion) + "\n")
            stream_out.flush()
    return 0


def run_status(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        status = client.llm.get_llm_status()
    if args.json:
        print_json(message_dict(status))
        return 0
    engine = _label(llm_res.LlmEngine, status.engine, "LLM_ENGINE_").lower()
    where = f" at {status.base_url}" if status.base_url else ""
    print(f"engine   {engine}{where}")
    print(f"model    {status.model} ({'loaded' if status.loaded else 'not loaded'})")
    print(
        f"load     {status.active_requests}/{status.max_concurrent} answering, {status.queue_depth} waiting"
    )
    print(f"speed    {status.recent_tokens_per_second:.1f} tokens/s (recent answers)")
    if status.HasField("gpu_budget"):
        print(gpu_line(status.gpu_budget))
    return 0


def gpu_line(gpu: llm_res.GpuBudget) -> str:
    """`gpu      budget 40.00 GiB (50% of 80.00 GiB), holds 39.34 GiB; 75/81 layers on the GPU ...`."""
    gib = float(1 << 30)
    if gpu.total_bytes == 0:  # nothing to budget: the engine does not use the GPU
        return f"gpu      {gpu.detail}"
    held = f"holds {gpu.used_bytes / gib:.2f} GiB" if gpu.used_measured else "not loaded yet"
    share = f"{gpu.fraction:.0%} of {gpu.total_bytes / gib:.2f} GiB"
    return f"gpu      budget {gpu.budget_bytes / gib:.2f} GiB ({share}), {held}; {gpu.detail}"
