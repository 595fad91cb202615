"""Settings of the Data domain: a frozen dataclass built from the environment.

`FIELDS` maps each attribute to its variable and range (the database's are in
services/runtime/database_settings.py); the variables are listed in docs/configuration.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.data.models import Timeframe
from services.runtime.config import (
    URL_PATTERN,
    BoolVar,
    ChoiceVar,
    FloatVar,
    IntVar,
    TextVar,
    Var,
    check_fields,
    read_fields,
)
from services.runtime.database_settings import DatabaseSettings

_P = "KITRADING_DATA_"  # prefix of this service's own variables
_HOUR, _DAY = 3600.0, 86_400.0


@dataclass(frozen=True, slots=True)
class DataSettings:
    """Everything the Data domain needs to run; `FIELDS` names the variable of each attribute."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    easyinsight_api_url: str | None = None
    sync_default_timeframe: Timeframe = Timeframe.H1
    sync_page_limit: int = 1000
    sync_max_pages: int = 1000
    sync_timeout_s: float = 30.0
    sync_retries: int = 5
    sync_backoff_s: float = 0.5
    sync_backoff_max_s: float = 10.0
    sync_interval_s: float = 0.0
    market_event_k: float = 4.0
    market_event_window: int = 100
    import_samples_on_start: bool = True
    query_log_flush_s: float = 1.0
    query_log_buffer: int = 10_000
    query_log_retention_days: float = 30.0

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataSettings:
        """Read the settings from `env` (default `os.environ`); a bad value raises ConfigError naming it."""
        env = os.environ if env is None else env
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        values["easyinsight_api_url"] = (values["easyinsight_api_url"] or "").rstrip("/") or None
        return cls(
            database=DatabaseSettings.from_env(env),
            sync_default_timeframe=Timeframe[TIMEFRAME.read(defaults.sync_default_timeframe.name, env)],
            **values,
        )


TIMEFRAME = ChoiceVar(_P + "SYNC_TIMEFRAME", tuple(Timeframe.__members__))
#: Attribute -> its environment variable and range (attributes read as they are).
FIELDS: dict[str, Var] = {
    "easyinsight_api_url": TextVar("EASYINSIGHT_API_URL", "an http(s) URL", URL_PATTERN),
    "sync_page_limit": IntVar(_P + "SYNC_PAGE_LIMIT", 1, 100_000),
    "sync_max_pages": IntVar(_P + "SYNC_MAX_PAGES", 1, 1_000_000),
    "sync_timeout_s": FloatVar(_P + "SYNC_TIMEOUT_SECONDS", 0.1, _HOUR),
    "sync_retries": IntVar(_P + "SYNC_RETRIES", 0, 100),
    "sync_backoff_s": FloatVar(_P + "SYNC_BACKOFF_SECONDS", 0.0, _HOUR),
    "sync_backoff_max_s": FloatVar(_P + "SYNC_BACKOFF_MAX_SECONDS", 0.0, _HOUR),
    "sync_interval_s": FloatVar(_P + "SYNC_INTERVAL_SECONDS", 0.0, 30 * _DAY),
    "market_event_k": FloatVar(_P + "MARKET_EVENT_K", 0.1, 100.0),
    "market_event_window": IntVar(_P + "MARKET_EVENT_WINDOW", 2, 100_000),
    "import_samples_on_start": BoolVar(_P + "IMPORT_SAMPLES"),
    "query_log_flush_s": FloatVar(_P + "QUERY_LOG_FLUSH_SECONDS", 0.01, _HOUR),
    "query_log_buffer": IntVar(_P + "QUERY_LOG_BUFFER", 1, 10_000_000),
    "query_log_retention_days": FloatVar(_P + "QUERY_LOG_RETENTION_DAYS", 0.0, 36_500.0),
}
#: Every variable the Data settings read besides the database's.
VARIABLES: tuple[Var, ...] = (TIMEFRAME, *FIELDS.values())
