"""Running a CLI command's handler in-process and reading its tables, as a user reads them."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Callable
from typing import TextIO

from kitrading.cli.main import parse_args


async def cli(handler: Callable[[argparse.Namespace, TextIO], int], argv: list[str]) -> tuple[int, str]:
    """Exit status and standard output of `kitrading <argv>` (the handler runs in a thread: it blocks)."""
    out = io.StringIO()
    args = parse_args(argv)
    status = await asyncio.to_thread(handler, args, out)
    return status, out.getvalue()


def table(text: str, header: str) -> list[str]:
    """The rows of the table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows
