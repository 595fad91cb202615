"""`kitrading`: the entry point (console script `kitrading.cli.main:main`).

Click parses the command line (help, usage errors, shell completion) and hands back the parsed args;
`main` runs the command's handler outside Click, so a failed call becomes one line on stderr and an
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import click

from kitrading.cli import commands
from kitrading.cli.common import CONTEXT_SETTINGS, EXIT_ERROR, EXIT_INTERRUPTED, CommandGroup, option

PROG = "kitrading"
COMPLETION = (
    'Shell completion: eval "$(_KITRADING_COMPLETE=bash_source kitrading)" in ~/.bashrc '
    "(zsh_source, fish_source for those shells; docs/cli.md)."
)


@functools.cache
def build_cli() -> click.Group:
    """The `kitrading` group with every command module's commands."""
    cli = CommandGroup(
        PROG,
        help="KI Trading Mesh: start it, check it, and call its services.",
        epilog=COMPLETION,
        params=[
            option(
                "--target",
                metavar="HOST:PORT",
                default=None,
                help="gateway or service address (default: $KITRADING_TARGET, else localhost:3000)",
            ),
            option(
                "--timeout", type=float, default=None, help="deadline of each call in seconds (default: 30)"
            ),
        ],
        context_settings=CONTEXT_SETTINGS,
        subcommand_metavar="COMMAND [ARGS]...",
    )
    for module in commands.modules():
        module.register(cli)
    return cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (`sys.argv[1:]` by default) with its `handler`. Like argparse, it raises
    SystemExit after --help (0), a usage error (2, the message on stderr) or shell completion."""
    cli = build_cli()
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False
        )
    except click.exceptions.NoArgsIsHelpError as exc:  # `kitrading` or `kitrading rag` alone
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.UsageError as exc:  # usage, then `kitrading candles: Missing argument 'SYMBOL'.`
        path = PROG
        if exc.ctx is not None:
            path = exc.ctx.command_path
            click.echo(f"{exc.ctx.get_usage()}\nTry '{path} -h' for help.", err=True)
        click.echo(f"{path}: {exc.format_message()}", err=True)
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        click.echo(f"{PROG}: {exc.format_message()}", err=True)
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        raise SystemExit(EXIT_INTERRUPTED) from None
    if not isinstance(result, argparse.Namespace):  # --help: Click printed it
        raise SystemExit(result if isinstance(result, int) else 0)
    return result


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
    """Run one command; returns the exit status (0 ok, 1 unhealthy/failed check, 2 error, 130
    interrupted)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help, usage errors, shell completion
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    from kitrading.client import KitradingError

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
