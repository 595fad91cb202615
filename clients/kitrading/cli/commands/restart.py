"""`kitrading restart SERVICE`: restart one service of a running `kitrading up`, the others untouched.

A service with several instances (`kitrading up --replicas forecast=2`) is rolled one instance at a
time, each serving again before the next stops; `kitrading restart forecast-2` restarts one instance.

The launcher drains the service (SIGTERM: health NOT_SERVING first, in-flight calls finish within
its grace), starts it again with the code now on disk and answers once it serves. It talks to the
launcher's control socket, whose path the state file `$KITRADING_HOME/run/mesh.json` names.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from kitrading import mesh
from kitrading.cli.common import EXIT_ERROR, add_command, argument, json_flag, option, print_json


def complete_service(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names = [*(s.name for s in mesh.SERVICES), "gateway"]
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "restart",
        run,
        help="restart one service of a running `kitrading up` (drain, start the code on disk, wait)",
        description=(
            "Drain one service of the mesh that `kitrading up` runs, start it again with the code now "
            "on disk, and return once it serves. The other services are not touched. Exit status 1 "
            "when it does not serve again in time."
        ),
        params=[
            argument(
                "service",
                help="a service name (data, forecast, ...) or gateway",
                shell_complete=complete_service,
            ),
            option("--timeout", type=float, default=120.0, help="seconds to wait for it to serve (120)"),
            option(
                "--home",
                type=click.Path(file_okay=False),
                default=None,
                help="the mesh's KITRADING_HOME (default: $KITRADING_HOME)",
            ),
            json_flag("print the launcher's answer as JSON"),
        ],
    )


def _home(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("KITRADING_HOME") or ".kitrading").resolve()


def run(args: argparse.Namespace) -> int:
    state_file = _home(args.home) / "run" / "mesh.json"
    try:
        control = json.loads(state_file.read_text())["control"]
    except (OSError, ValueError, KeyError):
        print(
            f"kitrading restart: no running mesh found ({state_file}); start it with `kitrading up`",
            file=sys.stderr,
        )
        return EXIT_ERROR
    request = {"op": "restart", "service": args.service, "timeout_s": args.timeout}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(args.timeout + 30)
            conn.connect(control)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(conn.makefile("rb").readline() or b"{}")
    except (OSError, ValueError) as exc:
        print(f"kitrading restart: the mesh's control socket did not answer ({exc})", file=sys.stderr)
        return EXIT_ERROR
    if not reply.get("ok"):
        print(f"kitrading restart: {reply.get('error', 'no answer')}", file=sys.stderr)
        return 1
    if args.json:
        print_json(reply)
        return 0
    for done in reply.get("instances") or [reply]:  # a replicated service: each instance in turn
        print(
            f"{done['service']}: restarted (pid {done['old_pid']} -> {done['new_pid']}); stopped after "
            f"{done['stopped_s']:.2f} s, serving again after {done['serving_s']:.2f} s"
        )
    return 0
