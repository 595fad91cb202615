"""Command groups of the `kitrading` CLI, one module each, discovered by name.

A module here defines `register(cli: click.Group) -> None`, which adds its commands with
`kitrading.cli.common.add_command(cli, name, handler, params=[...])`; a handler takes the parsed
args and returns the exit status. Nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    """Every command module of this package, in name order."""
    found = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in found]
