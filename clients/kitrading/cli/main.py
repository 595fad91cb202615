"""`kitrading`: the entry point (console script `kitrading.cli.main:main`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kitrading.cli import commands
from kitrading.cli.common import EXIT_ERROR, EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitrading",
        description="KI Trading Mesh: start it, check it, and call its services.",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="gateway or service address host:port (default: $KITRADING_TARGET, else localhost:3000)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="deadline of each call in seconds (default: 30)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in commands.modules():
        module.register(subparsers)
    return parser


def _describe(exc: Exception) -> str:
    from kitrading.client import KitradingError, UnauthenticatedError, UnavailableError

    if not isinstance(exc, KitradingError):
        return str(exc)
    text = str(exc)
    if exc.reason and exc.reason != exc.code.name:
        text += f" [reason {exc.reason}]"
    if exc.log_id and exc.log_id not in text:
        text += f" [log id {exc.log_id}]"
    if isinstance(exc, UnauthenticatedError):
        text += " (set KITRADING_API_KEY or KITRADING_API_KEY_FILE to a key from `kitrading keys create`)"
    if isinstance(exc, UnavailableError):
        text += " (is the mesh running? start it with `kitrading up`)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 unhealthy/failed check, 2 error)."""
    from kitrading.client import KitradingError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        status: int = args.handler(args)
    except KitradingError as exc:
        print(f"kitrading {args.command}: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    sys.exit(main())
