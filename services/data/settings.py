"""Settings of the Data domain: a frozen dataclass built from the environment.

| env | field | default |
|---|---|---|
| (see services/runtime/database_settings.py) | `database` | embedded PostgreSQL |
| `EASYINSIGHT_API_URL` | `easyinsight_api_url` | unset: sync disabled |
| `KITRADING_DATA_SYNC_TIMEFRAME` | `sync_default_timeframe` | H1 |
| `KITRADING_DATA_SYNC_PAGE_LIMIT` | `sync_page_limit` (candles per request) | 1000 |
| `KITRADING_DATA_SYNC_MAX_PAGES` | `sync_max_pages` (per symbol and job) | 1000 |
| `KITRADING_DATA_SYNC_TIMEOUT_SECONDS` | `sync_timeout_s` (per HTTP request) | 30 |
| `KITRADING_DATA_SYNC_RETRIES` | `sync_retries` (after the first attempt) | 5 |
| `KITRADING_DATA_SYNC_BACKOFF_SECONDS` | `sync_backoff_s` (first retry delay, doubles) | 0.5 |
| `KITRADING_DATA_SYNC_BACKOFF_MAX_SECONDS` | `sync_backoff_max_s` | 10 |
| `KITRADING_DATA_SYNC_INTERVAL_SECONDS` | `sync_interval_s` (periodic sync; 0 off) | 0 |
| `KITRADING_DATA_MARKET_EVENT_K` | `market_event_k` (sigmas) | 4.0 |
| `KITRADING_DATA_MARKET_EVENT_WINDOW` | `market_event_window` (previous returns) | 100 |
| `KITRADING_DATA_IMPORT_SAMPLES` | `import_samples_on_start` | true |
| `KITRADING_DATA_QUERY_LOG_FLUSH_SECONDS` | `query_log_flush_s` | 1.0 |
| `KITRADING_DATA_QUERY_LOG_BUFFER` | `query_log_buffer` (rows kept while the db is down) | 10000 |
| `KITRADING_DATA_QUERY_LOG_RETENTION_DAYS` | `query_log_retention_days` (0: keep all) | 30 |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.data.models import Timeframe
from services.runtime.config import ConfigError, env_bool, env_float, env_int, env_str
from services.runtime.database_settings import DatabaseSettings

_P = "KITRADING_DATA_"  # prefix of this service's own variables


@dataclass(frozen=True, slots=True)
class DataSettings:
    """Everything the Data domain needs to run; see the module docstring for the env names."""

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
        if self.market_event_window < 2:
            raise ValueError("market_event_window must be >= 2")
        if self.market_event_k <= 0:
            raise ValueError("market_event_k must be > 0")
        if self.sync_page_limit < 1 or self.sync_max_pages < 1 or self.sync_retries < 0:
            raise ValueError("sync_page_limit and sync_max_pages must be >= 1, sync_retries >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataSettings:
        """Read the settings from `env` (default `os.environ`); a bad value raises ConfigError naming it."""
        env = os.environ if env is None else env
        timeframe = env_str("KITRADING_DATA_SYNC_TIMEFRAME", "H1", env).upper()
        if timeframe not in Timeframe.__members__:
            raise ConfigError(
                f"KITRADING_DATA_SYNC_TIMEFRAME must be one of "
                f"{', '.join(Timeframe.__members__)}, got {timeframe!r}"
            )
        return cls(
            database=DatabaseSettings.from_env(env),
            easyinsight_api_url=env_str("EASYINSIGHT_API_URL", "", env).rstrip("/") or None,
            sync_default_timeframe=Timeframe[timeframe],
            sync_page_limit=env_int(
                "KITRADING_DATA_SYNC_PAGE_LIMIT", 1000, minimum=1, maximum=100_000, env=env
            ),
            sync_max_pages=env_int(
                "KITRADING_DATA_SYNC_MAX_PAGES", 1000, minimum=1, maximum=1_000_000, env=env
            ),
            sync_timeout_s=env_float(_P + "SYNC_TIMEOUT_SECONDS", 30.0, minimum=0.1, env=env),
            sync_retries=env_int(_P + "SYNC_RETRIES", 5, minimum=0, maximum=100, env=env),
            sync_backoff_s=env_float(_P + "SYNC_BACKOFF_SECONDS", 0.5, minimum=0.0, env=env),
            sync_backoff_max_s=env_float(
                "KITRADING_DATA_SYNC_BACKOFF_MAX_SECONDS", 10.0, minimum=0.0, env=env
            ),
            sync_interval_s=env_float(_P + "SYNC_INTERVAL_SECONDS", 0.0, minimum=0.0, env=env),
            market_event_k=env_float(_P + "MARKET_EVENT_K", 4.0, minimum=0.1, env=env),
            market_event_window=env_int(
                "KITRADING_DATA_MARKET_EVENT_WINDOW", 100, minimum=2, maximum=100_000, env=env
            ),
            import_samples_on_start=env_bool(_P + "IMPORT_SAMPLES", True, env),
            query_log_flush_s=env_float(_P + "QUERY_LOG_FLUSH_SECONDS", 1.0, minimum=0.01, env=env),
            query_log_buffer=env_int(_P + "QUERY_LOG_BUFFER", 10_000, minimum=1, env=env),
            query_log_retention_days=env_float(
                "KITRADING_DATA_QUERY_LOG_RETENTION_DAYS", 30.0, minimum=0.0, env=env
            ),
        )
