"""Model version commands of the three trained services: `versions` (a table of stored versions with
their figures) and `rollback` (serve an older, or a newer, stored version; no restart).

kitrading versions forecast EURUSD      # NHITS versions: steps, losses
kitrading versions pattern              # TCN versions: macro F1 against the detector
kitrading versions regime GOOG          # HMM + scorer versions: AUC, Brier against the base rate
kitrading rollback regime GOOG          # serve the version before the current one
kitrading rollback pattern --version v000002
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

import click

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
    timestamp,
)
from kitrading.common.v1 import market_pb2
from kitrading.forecast.v1 import request_response_pb2 as forecast_rr
from kitrading.pattern.v1 import request_response_pb2 as pattern_rr
from kitrading.regime.v1 import request_response_pb2 as regime_rr

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from kitrading.client import Client

#: The services whose models are versioned in the shared registry; pattern's one TCN has no symbol.
MODELS = ("forecast", "pattern", "regime")
PER_SYMBOL = ("forecast", "regime")


def register(cli: click.Group) -> None:
    model = argument("model", type=choice(MODELS), metavar="{forecast|pattern|regime}")
    symbol = argument("symbol", required=False, help="symbol (forecast and regime models are per symbol)")
    add_command(
        cli,
        "versions",
        run_versions,
        help="list a model's stored versions with their figures",
        description=(
            "List the stored versions of a forecast or regime model (per symbol) or of the pattern TCN, "
            "newest first, with the figures each was published with; ACTIVE marks the one served."
        ),
        params=[
            model,
            symbol,
            option("--limit", type=int, default=20, help="versions to show (default 20)"),
            json_flag("print JSON: the versions (one document)"),
        ],
    )
    add_command(
        cli,
        "rollback",
        run_rollback,
        help="serve another stored version of a model (default: the one before the current)",
        description=(
            "Make a stored version the one the service answers with, at once and without a restart: by "
            "default the version published before the current one, or --version (also a newer one)."
        ),
        params=[
            model,
            symbol,
            option("--version", metavar="vNNNNNN", default="", help="the version to serve"),
            json_flag("print JSON: the version now served"),
        ],
    )


def _symbol(args: argparse.Namespace, err: TextIO) -> str | None:
    """The upper-cased symbol, "" for pattern, or None (after a usage message) when it is wrong."""
    model, symbol = args.model.lower(), (args.symbol or "").upper()
    if model in PER_SYMBOL and not symbol:
        err.write(
            f"kitrading {args.command}: {model} models are per symbol: give one, "
            f"e.g. `kitrading {args.command} {model} EURUSD`\n"
        )
        return None
    if model == "pattern" and symbol:
        err.write(
            f"kitrading {args.command}: the pattern TCN is one model for every symbol: give no symbol\n"
        )
        return None
    return symbol


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _frame(value: market_pb2.Timeframe.ValueType) -> str:
    return enum_label(market_pb2.Timeframe.Name(value), "TIMEFRAME_")


def _active(flag: bool) -> str:
    return "active" if flag else ""


def _rows(model: str, items: Sequence[Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    if model == "forecast":
        return ("version", "", "timeframe", "created (UTC)", "steps", "train loss", "val loss", "job"), [
            (
                v.version,
                _active(v.active),
                _frame(v.timeframe),
                timestamp(v.create_time),
                str(v.steps),
                _fmt(v.train_loss if v.HasField("train_loss") else None, 4),
                _fmt(v.val_loss if v.HasField("val_loss") else None, 4),
                v.job_id,
            )
            for v in items
        ]
    if model == "pattern":
        return (
            "version",
            "",
            "created (UTC)",
            "trigger",
            "steps",
            "macro F1",
            "precision",
            "recall",
            "series",
        ), [
            (
                m.version,
                _active(m.active),
                timestamp(m.create_time),
                m.trigger,
                str(m.steps),
                _fmt(m.macro.f1),
                _fmt(m.macro.precision),
                _fmt(m.macro.recall),
                ", ".join(s.symbol for s in m.series),
            )
            for m in items
        ]
    return ("version", "", "timeframe", "created (UTC)", "states", "bars", "AUC", "Brier", "base", "edge"), [
        (
            v.model_version,
            _active(v.active),
            _frame(v.timeframe),
            timestamp(v.create_time),
            str(v.n_states),
            str(v.training_bars),
            _fmt(v.scores.auc),
            _fmt(v.scores.brier, 4),
            _fmt(v.scores.brier_base, 4),
            "yes" if v.edge else "no",
        )
        for v in items
    ]


def _list(client: Client, model: str, symbol: str, limit: int) -> list[Any]:
    """Up to `limit` versions, newest first, following the pages."""
    items: list[Any] = []
    token = ""
    while len(items) < limit:
        size = min(limit - len(items), 1000)
        reply: Any
        if model == "forecast":
            reply = client.forecast.list_model_versions(
                forecast_rr.ListModelVersionsRequest(symbol=symbol, page_size=size, page_token=token)
            )
            items.extend(reply.versions)
        elif model == "pattern":
            reply = client.pattern.list_pattern_model_versions(
                pattern_rr.ListPatternModelVersionsRequest(page_size=size, page_token=token)
            )
            items.extend(reply.models)
        else:
            reply = client.regime.list_regime_model_versions(
                regime_rr.ListRegimeModelVersionsRequest(symbol=symbol, page_size=size, page_token=token)
            )
            items.extend(reply.versions)
        token = reply.next_page_token
        if not token:
            break
    return items


def run_versions(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    symbol = _symbol(args, sys.stderr)
    if symbol is None:
        return EXIT_ERROR
    model = args.model.lower()
    if args.limit < 1:
        sys.stderr.write("kitrading versions: --limit must be at least 1\n")
        return EXIT_ERROR
    with client_from(args) as client:
        items = _list(client, model, symbol, args.limit)
    if args.json:
        print_json([message_dict(i) for i in items], out=stream_out)
        return 0
    what = f"{model} {symbol}".strip()
    if not items:
        stream_out.write(f"no stored {what} model yet: train one first\n")
        return 0
    headers, rows = _rows(model, items)
    print_table(headers, rows, out=stream_out)
    return 0


def run_rollback(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream_out = out or sys.stdout
    symbol = _symbol(args, sys.stderr)
    if symbol is None:
        return EXIT_ERROR
    model = args.model.lower()
    served: Message
    with client_from(args) as client:
        if model == "forecast":
            served = client.forecast.rollback_model_version(
                forecast_rr.RollbackModelVersionRequest(symbol=symbol, version=args.version)
            ).version
            name = served.version
        elif model == "pattern":
            served = client.pattern.rollback_pattern_model(
                pattern_rr.RollbackPatternModelRequest(version=args.version)
            ).model
            name = served.version
        else:
            served = client.regime.rollback_regime_model(
                regime_rr.RollbackRegimeModelRequest(symbol=symbol, version=args.version)
            ).version
            name = served.model_version
    if args.json:
        print_json(message_dict(served), out=stream_out)
    else:
        stream_out.write(f"{model} {symbol + ' ' if symbol else ''}now serves {name}\n")
    return 0
