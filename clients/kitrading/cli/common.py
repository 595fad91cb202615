"""What the command modules share: declaring commands (Click), the SDK connection from the global flags,
and output (Rich tables and colours, JSON).

A command's handler takes the parsed command line as one `argparse.Namespace` (global flags, its
groups' options and its own, plus `command` and `handler`) and returns its exit status, so it can be
called, and tested, without Click. Rich is imported only when something is drawn: `kitrading --help`
loads neither Rich nor the SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, TextIO

import click
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from kitrading.client import Client

#: A command's handler: parsed args in (and optionally the stream to print to), exit status out.
Handler = Callable[..., int]

#: Exit status of a failed call (a `KitradingError`), of bad usage, and of an interrupt.
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: Click settings of every command: `-h` as well as `--help`, help text up to 100 columns.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Width of output that is not a terminal (pipes, files, tests): wide enough that no table wraps.
PLAIN_WIDTH = 4096


# -- declaring commands ---------------------------------------------------------------------------


class CommandGroup(click.Group):
    """A Click group whose commands may have aliases (`train-patterns` / `train-pattern`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = {}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


def parsed_args(ctx: click.Context, handler: Handler) -> argparse.Namespace:
    """Every parameter from the root group down to this command (the innermost wins), the top-level
    command's name as typed (`command`) and the `handler`."""
    chain: list[click.Context] = []
    at: click.Context | None = ctx
    while at is not None:
        chain.append(at)
        at = at.parent
    values: dict[str, Any] = {}
    for level in reversed(chain):
        values.update({k: list(v) if isinstance(v, tuple) else v for k, v in level.params.items()})
    command = chain[-2].info_name if len(chain) > 1 else ctx.info_name
    return argparse.Namespace(**values, command=command, handler=handler)


def add_command(
    group: click.Group,
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str | None = None,
    params: Sequence[click.Parameter] = (),
    aliases: Sequence[str] = (),
) -> click.Command:
    """Add `name` to `group`: `help` is its line in the command list, `description` its --help text.
    Invoking it returns the parsed args (`parsed_args`); `main` runs the handler."""

    @click.pass_context
    def callback(ctx: click.Context, **_: object) -> argparse.Namespace:
        return parsed_args(ctx, handler)

    command = click.Command(
        name,
        callback=callback,
        params=list(params),
        help=description or help,
        short_help=help,
        context_settings=CONTEXT_SETTINGS,
    )
    group.add_command(command)
    if aliases and isinstance(group, CommandGroup):
        group.aliases.update(dict.fromkeys(aliases, name))
    return command


def add_group(
    parent: click.Group,
    name: str,
    *,
    help: str,
    description: str | None = None,
    params: Sequence[click.Parameter] = (),
) -> CommandGroup:
    """A group of subcommands (`rag add|query|...`); its own options (`params`) come before the task."""
    group = CommandGroup(
        name,
        params=list(params),
        help=description or help,
        short_help=help,
        context_settings=CONTEXT_SETTINGS,
        subcommand_metavar="TASK",
    )
    parent.add_command(group)
    return group


def option(*decls: str, **attrs: Any) -> click.Option:
    return click.Option(list(decls), **attrs)


def flag(*decls: str, help: str) -> click.Option:
    return click.Option(list(decls), is_flag=True, default=False, help=help)


def argument(name: str, **attrs: Any) -> click.Argument:
    return click.Argument([name], **attrs)


def json_flag(help: str = "print JSON (one document)") -> click.Option:
    return flag("--json", help=help)


class AnyCase(click.Choice[str]):
    """One of `choices` typed in any case (`h1` -> `H1`); help, errors and completion show them as
    written (all upper or all lower case)."""

    def __init__(self, choices: Sequence[str]) -> None:
        super().__init__(list(choices), case_sensitive=True)
        self.upper = all(c == c.upper() for c in choices)

    def normalize_choice(self, choice: object, ctx: click.Context | None) -> str:
        text = super().normalize_choice(choice, ctx)
        return text.upper() if self.upper else text.lower()

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        typed = incomplete.upper() if self.upper else incomplete.lower()
        return [CompletionItem(c) for c in self.choices if c.startswith(typed)]


def choice(values: Sequence[str]) -> click.Choice[str]:
    """One of `values`, in any case; the shell completes them."""
    return AnyCase(values)


# -- the SDK --------------------------------------------------------------------------------------


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


# -- output ---------------------------------------------------------------------------------------


def print_json(value: object, *, out: TextIO | None = None, indent: int | None = 2) -> None:
    """One JSON document (`indent=None`: on one line, as each line of a JSON-lines stream)."""
    stream = out or sys.stdout
    stream.write(json.dumps(value, indent=indent, sort_keys=False) + "\n")
    stream.flush()


def console(out: TextIO | None = None, *, stderr: bool = False) -> Console:
    """A Rich console on `out` (default: `sys.stdout`, or `sys.stderr`, as they are when it writes).

    On a terminal it colours and fits the terminal's width; elsewhere (pipes, files, tests) it writes
    plain text without wrapping. Rich honours NO_COLOR and FORCE_COLOR. Text is never read as markup."""
    from rich.console import Console

    made = Console(file=out, stderr=stderr, markup=False, emoji=False, highlight=False)
    if not made.is_terminal:
        made.width = PLAIN_WIDTH
    return made


def live(made: Console) -> bool:
    """Whether `made` can redraw in place (a terminal that is not dumb)."""
    return made.is_terminal and not made.is_dumb_terminal


def emit(renderable: RenderableType, made: Console) -> None:
    """Print `renderable`; as plain text without trailing blanks when `made` is not a terminal."""
    if made.is_terminal:
        made.print(renderable)
        return
    with made.capture() as captured:
        made.print(renderable)
    made.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    made.file.flush()


@dataclass(frozen=True, slots=True)
class Styled:
    """A table cell with a Rich style (`green`, `bold red`...): coloured on a terminal only."""

    text: str
    style: str


#: Colours of the states the commands print (health, job and key states, results).
STATE_STYLES = {
    "SERVING": "green",
    "succeeded": "green",
    "active": "green",
    "added": "green",
    "bullish": "green",
    "running": "yellow",
    "queued": "yellow",
    "cancelled": "yellow",
    "already there": "dim",
    "-": "dim",
    "NOT_SERVING": "red",
    "SERVICE_UNKNOWN": "red",
    "UNREACHABLE": "red",
    "failed": "red",
    "revoked": "red",
    "bearish": "red",
}


def state(text: str) -> Styled | str:
    """`text` in the colour of the state it names (`STATE_STYLES`; `HTTP 503` red), else as it is."""
    style = STATE_STYLES.get(text) or ("red" if text.startswith("HTTP ") else None)
    return Styled(text, style) if style else text


def print_table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[object]],
    *,
    out: TextIO | None = None,
    indent: int = 0,
) -> None:
    """Left-aligned columns two spaces apart under upper-case headers (none with `headers=None`), as
    a Rich table: fitted to a terminal, plain and unwrapped elsewhere. Cells are text or `Styled`."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    width = len(headers) if headers is not None else max((len(r) for r in rows), default=0)
    table = Table(
        box=None,
        show_header=headers is not None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
    )
    for header in headers if headers is not None else [""] * width:
        table.add_column(str(header).upper())
    for row in rows:
        table.add_row(*(Text(c.text, style=c.style) if isinstance(c, Styled) else Text(str(c)) for c in row))
    made = console(out)
    emit(Padding(table, (0, 0, 0, indent), expand=False) if indent else table, made)


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """`2024-05-01 13:00` (UTC), or `-` when unset."""
    if value.seconds == 0 and value.nanos == 0:
        return "-"
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M")


def enum_label(name: str, prefix: str) -> str:
    """`TIMEFRAME_H1` -> `H1`."""
    return name.removeprefix(prefix)
