"""`kitrading up`: start the whole mesh (every implemented service and the gateway) in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

import click
from click.shell_completion import CompletionItem

from kitrading import mesh
from kitrading.cli.common import EXIT_ERROR, add_command, flag, option


def complete_services(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of `--only data,fore<TAB>`: the service names after the last comma."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [CompletionItem(prefix + s.name) for s in mesh.SERVICES if s.name.startswith(last)]


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "up",
        run,
        help="start the mesh (Ctrl-C stops it)",
        description="Start every implemented service and the Envoy gateway; Ctrl-C stops them all.",
        params=[
            option(
                "--only",
                default="",
                help=f"comma-separated services to start ({', '.join(s.name for s in mesh.SERVICES)})",
                shell_complete=complete_services,
            ),
            flag("--no-gateway", help="do not start the Envoy gateway"),
        ],
    )


def run(args: argparse.Namespace) -> int:
    only = [name.strip() for name in args.only.split(",") if name.strip()] or None
    for name in only or ():
        try:
            mesh.service(name)
        except KeyError as exc:
            print(f"kitrading up: {exc.args[0]}", file=sys.stderr)
            return EXIT_ERROR
    try:
        from services.launcher.mesh import run_mesh
        from services.runtime.config import ConfigError
    except ImportError as exc:
        print(
            f"kitrading up: the server code is not installed ({exc}); run it from a checkout with `make up`",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        asyncio.run(run_mesh(only, gateway=not args.no_gateway))
    except ConfigError as exc:  # a setting that stops the start: say which, no traceback
        print(f"kitrading up: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
