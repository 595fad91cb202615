"""Data service commands: `symbols`, `candles`, `events`, `data import-samples`."""

from __future__ import annotations

import argparse
import json

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
    print_table,
    timestamp,
)
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import resources_pb2 as data_res

TIMEFRAMES = [
    enum_label(name, "TIMEFRAME_")
    for name in market_pb2.Timeframe.DESCRIPTOR.values_by_name
    if not name.endswith("UNSPECIFIED")
]
#: `kitrading data import-samples` reads and writes a few hundred thousand candles.
IMPORT_TIMEOUT = 600.0


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "symbols",
        list_symbols,
        help="list symbols",
        description="List every symbol.",
        params=[flag("--active-only", help="only active symbols"), json_flag()],
    )
    add_command(
        cli,
        "candles",
        list_candles,
        help="show the latest candles of a symbol",
        description="Show the latest candles of a symbol, oldest first.",
        params=[
            argument("symbol", help="symbol, e.g. EURUSD"),
            option("--timeframe", type=choice(TIMEFRAMES), default="H1", help="default H1"),
            option("--limit", type=int, default=10, help="number of candles (default 10)"),
            json_flag(),
        ],
    )
    add_command(
        cli,
        "events",
        list_events,
        help="list or follow the data event stream",
        description="List persisted events, or with --follow stream them as they happen (Ctrl-C stops).",
        params=[
            flag("--follow", "-f", help="stream new events"),
            option("--after", type=int, default=0, help="only events after this id"),
            option("--limit", type=int, default=None, help="stop after this many events"),
            option("--symbol", multiple=True, help="only this symbol (repeatable)"),
            json_flag("print JSON (one document; with --follow one object per line)"),
        ],
    )
    data = add_group(cli, "data", help="data service maintenance", description="Data service tasks.")
    add_command(
        data,
        "import-samples",
        import_samples,
        help="import the bundled real market data (idempotent)",
        description="Import the bundled real market data into the data service (safe to repeat).",
        params=[json_flag()],
    )


def _series(symbol: data_res.Symbol) -> str:
    return " ".join(
        f"{enum_label(market_pb2.Timeframe.Name(s.timeframe), 'TIMEFRAME_')}:{s.count}" for s in symbol.series
    )


def list_symbols(args: argparse.Namespace) -> int:
    found: list[data_res.Symbol] = []
    with client_from(args) as client:
        request = data_rr.ListSymbolsRequest(page_size=1000, active_only=args.active_only)
        while True:
            page = client.data.list_symbols(request)
            found.extend(page.symbols)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    if args.json:
        print_json({"symbols": [message_dict(s) for s in found]})
        return 0
    rows = [
        (
            s.symbol,
            s.display_name,
            enum_label(market_pb2.AssetClass.Name(s.asset_class), "ASSET_CLASS_"),
            "yes" if s.active else "no",
            _series(s) or "-",
        )
        for s in found
    ]
    print_table(("symbol", "name", "class", "active", "candles"), rows)
    if not found:
        print("no symbols yet: import the bundled data with `kitrading data import-samples`")
    return 0


def list_candles(args: argparse.Namespace) -> int:
    request = data_rr.ListCandlesRequest(
        symbol=args.symbol.upper(),
        timeframe=market_pb2.Timeframe.Value(f"TIMEFRAME_{args.timeframe}"),
        page_size=args.limit,
        descending=True,
    )
    with client_from(args) as client:
        response = client.data.list_candles(request)
    candles = list(reversed(response.candles))
    if args.json:
        print_json({"candles": [message_dict(c) for c in candles]})
        return 0
    rows = [
        (
            timestamp(c.time),
            f"{c.open:.5g}",
            f"{c.high:.5g}",
            f"{c.low:.5g}",
            f"{c.close:.5g}",
            f"{c.volume:g}",
        )
        for c in candles
    ]
    print_table(("time", "open", "high", "low", "close", "volume"), rows)
    return 0


def _event_line(event: data_res.Event) -> str:
    kind = enum_label(data_res.EventType.Name(event.type), "EVENT_TYPE_")
    timeframe = (
        enum_label(market_pb2.Timeframe.Name(event.timeframe), "TIMEFRAME_") if event.timeframe else "-"
    )
    parts = [str(event.event_id), timestamp(event.create_time), kind, event.symbol or "-", timeframe]
    which = event.WhichOneof("details")
    if which:
        details = message_dict(getattr(event, which))
        parts.append(json.dumps(details, separators=(",", ":")))
    return "  ".join(parts)


def _print_event(event: data_res.Event, *, as_json: bool) -> None:
    if as_json:
        print_json(message_dict(event), indent=None)
    else:
        print(_event_line(event), flush=True)


def list_events(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        if not args.follow:
            request = data_rr.ListEventsRequest(
                after_event_id=args.after, page_size=args.limit or 100, symbols=args.symbol
            )
            events = client.data.list_events(request).events
            if args.json:
                print_json({"events": [message_dict(e) for e in events]})
                return 0
            for event in events:
                _print_event(event, as_json=False)
            return 0
        request_watch = data_rr.WatchEventsRequest(after_event_id=args.after, symbols=args.symbol)
        seen = 0
        with client.data.watch_events(request_watch) as stream:
            try:
                for response in stream:
                    _print_event(response.event, as_json=args.json)
                    seen += 1
                    if args.limit is not None and seen >= args.limit:
                        break
            except KeyboardInterrupt:
                pass
    return 0


def import_samples(args: argparse.Namespace) -> int:
    with client_from(args, timeout=IMPORT_TIMEOUT) as client:
        response = client.data.import_samples()
    if args.json:
        print_json(message_dict(response))
        return 0
    rows = [
        (d.symbol, enum_label(market_pb2.Timeframe.Name(d.timeframe), "TIMEFRAME_"), d.package, d.candles)
        for d in response.datasets
    ]
    print_table(("symbol", "timeframe", "package", "candles"), rows)
    return 0
