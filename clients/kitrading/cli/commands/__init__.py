"""Command groups of the `kitrading` CLI, one module each, discovered by name.

A module here defines `register(subparsers: Subparsers) -> None`, which adds its subcommands and sets
`handler=<function(args) -> int>` on each (see `kitrading.cli.common`). Nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    """Every command module of this package, in name order."""
    found = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in found]
