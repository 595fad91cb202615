"""What the command modules share: the SDK connection from the global flags, and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, TextIO

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

if TYPE_CHECKING:
    from kitrading.client import Client

#: What `register()` receives (`parser.add_subparsers()`).
Subparsers = argparse._SubParsersAction  # argparse has no public name for it
#: A command's handler: parsed args in, exit status out.
Handler = Callable[[argparse.Namespace], int]

#: Exit status of a failed call (a `KitradingError`), of bad usage, and of an interrupt.
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def client_from(args: argparse.Namespace, *, timeout: float | None = None) -> Client:
    """A client for the global `--target` / `--timeout` flags (`timeout` is the command's default)."""
    from kitrading.client import connect

    chosen = args.timeout if args.timeout is not None else timeout
    if chosen is None:
        return connect(args.target)
    return connect(args.target, timeout=chosen)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as the gateway's JSON has it (lowerCamelCase, enums by name)."""
    return json_format.MessageToDict(message)


def print_json(value: object, *, out: TextIO | None = None, indent: int | None = 2) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(value, indent=indent, sort_keys=False) + "\n")
    stream.flush()


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, out: TextIO | None = None
) -> None:
    """Left-aligned columns under upper-case headers."""
    stream = out or sys.stdout
    cells = [[str(h).upper() for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        stream.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    stream.flush()


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """`2024-05-01 13:00` (UTC), or `-` when unset."""
    if value.seconds == 0 and value.nanos == 0:
        return "-"
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M")


def enum_label(name: str, prefix: str) -> str:
    """`TIMEFRAME_H1` -> `H1`."""
    return name.removeprefix(prefix)
