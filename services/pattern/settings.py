"""Pattern service settings: one typed dataclass, read once from the environment.

`FIELDS` maps each attribute to its variable and range (docs/configuration.md); built in code or
from the environment, a value out of range raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services.runtime.config import HOME, ChoiceVar, FloatVar, IntVar, Var, check_fields, read_fields


@dataclass(frozen=True, slots=True)
class PatternSettings:
    """Configuration of the pattern domain."""

    home: Path = Path(".kitrading")
    #: Series scanned when the request and the symbol name none.
    timeframe: str = "H1"
    #: Newest bars a detection reads (pivots need history before the scanned window).
    history_bars: int = 10_000
    #: Bars after a pattern that its follow-through return spans.
    follow_horizon: int = 24
    #: Share of a series' newest bars the follow-through figures are measured on.
    holdout: float = 0.3

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PatternSettings:
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        values["home"] = Path(values["home"])
        return replace(defaults, **values)


_P = "KITRADING_PATTERN_"
#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "home": HOME,
    "timeframe": ChoiceVar(_P + "TIMEFRAME", ("M15", "M30", "H1", "H4", "D1")),
    "history_bars": IntVar(_P + "HISTORY_BARS", 500, 1_000_000),
    "follow_horizon": IntVar(_P + "FOLLOW_HORIZON", 1, 1000),
    "holdout": FloatVar(_P + "HOLDOUT", 0.05, 0.9),
}
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
