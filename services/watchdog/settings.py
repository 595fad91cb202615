"""Watchdog settings: one typed, frozen object read once from the environment.

Every value has a default that works on one machine; see docs/watchdog.md for the table. The Telegram
bot token is held in a `Secret`, whose repr and str never show the value and which registers itself
with the structured-log redactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import (
    ConfigError,
    env_float,
    env_int,
    env_list,
    env_secret,
    env_str,
    kitrading_home,
)
from services.runtime.logging import register_secret

DEFAULT_TELEGRAM_API_BASE = "https://api.telegram.org"


class Secret:
    """A string that must never be shown: repr/str print `***`, equality compares the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)  # structured logs replace it with *** from now on

    def reveal(self) -> str:
        """The secret itself; only for the one place that must send it (the Bot API URL)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """Where and how alerts go to Telegram. Off when there is no token or no chat id."""

    bot_token: Secret | None = field(default=None, repr=False)
    chat_ids: tuple[str, ...] = ()
    api_base: str = DEFAULT_TELEGRAM_API_BASE
    # "HTML" or None for plain text; messages are formatted (and escaped) to match.
    parse_mode: str | None = "HTML"
    request_timeout_seconds: float = 10.0
    # Attempts per chat, the first included; 429 and 5xx and network errors are retried.
    max_attempts: int = 4
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    # A 429 asking to wait longer than this gives up instead of blocking delivery.
    max_retry_after_seconds: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.bot_token) and bool(self.chat_ids)

    @property
    def disabled_reason(self) -> str:
        if not self.bot_token:
            return "no bot token configured (TELEGRAM_BOT_TOKEN or TELEGRAM_BOT_TOKEN_FILE)"
        if not self.chat_ids:
            return "no chat ids configured (TELEGRAM_CHAT_IDS)"
        return ""


@dataclass(frozen=True, slots=True)
class WatchdogSettings:
    """Check loop, alert policy and resource thresholds."""

    check_interval_seconds: float = 30.0
    # Per-check limit; None means min(10 s, the interval). A hanging target is UNREACHABLE after it.
    check_timeout_seconds: float | None = None
    alert_cooldown_minutes: float = 15.0
    # Targets never seen SERVING since the watchdog started do not alert during this window
    # (services still starting). A target that was SERVING and then fails alerts at once.
    startup_grace_seconds: float = 60.0
    # Gateway health URL (HTTP GET, 2xx = SERVING); None: the gateway is not checked.
    gateway_health_url: str | None = None
    # Disk under KITRADING_HOME: NOT_SERVING below either threshold.
    home: Path = field(default_factory=lambda: Path(".kitrading").resolve())
    disk_min_free_percent: float = 10.0
    disk_min_free_bytes: int = 1024**3
    # GPU memory: NOT_SERVING when less than this share is free (only where pynvml finds a GPU).
    gpu_min_free_percent: float = 5.0
    telegram: TelegramSettings = field(default_factory=TelegramSettings)

    def __post_init__(self) -> None:
        if self.check_interval_seconds <= 0:
            raise ConfigError("CHECK_INTERVAL_SECONDS must be > 0")
        if self.check_timeout_seconds is not None and self.check_timeout_seconds <= 0:
            raise ConfigError("WATCHDOG_CHECK_TIMEOUT_SECONDS must be > 0")
        if self.alert_cooldown_minutes < 0:
            raise ConfigError("ALERT_COOLDOWN_MINUTES must be >= 0")
        if self.telegram.max_attempts < 1:
            raise ConfigError("TELEGRAM_MAX_ATTEMPTS must be >= 1")

    @property
    def check_timeout(self) -> float:
        """Seconds one check may take."""
        if self.check_timeout_seconds is not None:
            return self.check_timeout_seconds
        return min(10.0, self.check_interval_seconds)

    @property
    def alert_cooldown_seconds(self) -> float:
        return self.alert_cooldown_minutes * 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatchdogSettings:
        """Read the settings from `env` (default: os.environ); unset or empty values keep defaults.

        Raises `ConfigError` naming the variable for a malformed value.
        """
        d = cls()
        token = env_secret("TELEGRAM_BOT_TOKEN", env)
        if token and (any(ch.isspace() for ch in token) or "/" in token):
            # Never echo the value: it is (almost) the secret.
            raise ConfigError("TELEGRAM_BOT_TOKEN contains whitespace or '/'")
        chat_ids = tuple(env_list("TELEGRAM_CHAT_IDS", env))
        for chat_id in chat_ids:
            if any(ch.isspace() for ch in chat_id):
                raise ConfigError(f"TELEGRAM_CHAT_IDS has an invalid chat id {chat_id!r}")
        parse_mode = env_str("TELEGRAM_PARSE_MODE", "HTML", env).strip()
        if parse_mode.lower() not in {"html", "none", "plain"}:
            raise ConfigError(f"TELEGRAM_PARSE_MODE must be HTML or none, got {parse_mode!r}")
        telegram = TelegramSettings(
            bot_token=Secret(token) if token else None,
            chat_ids=chat_ids,
            api_base=env_str("KITRADING_TELEGRAM_API_BASE", DEFAULT_TELEGRAM_API_BASE, env)
            .strip()
            .rstrip("/"),
            parse_mode="HTML" if parse_mode.lower() == "html" else None,
            request_timeout_seconds=env_float("TELEGRAM_TIMEOUT_SECONDS", 10.0, minimum=0.1, env=env),
            max_attempts=env_int("TELEGRAM_MAX_ATTEMPTS", 4, minimum=1, maximum=20, env=env),
            max_retry_after_seconds=env_float("TELEGRAM_MAX_RETRY_AFTER_SECONDS", 60.0, minimum=0.0, env=env),
        )
        timeout = env_float("WATCHDOG_CHECK_TIMEOUT_SECONDS", 0.0, minimum=0.0, env=env)
        return cls(
            check_interval_seconds=env_float(
                "CHECK_INTERVAL_SECONDS", d.check_interval_seconds, minimum=0.01, env=env
            ),
            check_timeout_seconds=timeout or None,
            alert_cooldown_minutes=env_float(
                "ALERT_COOLDOWN_MINUTES", d.alert_cooldown_minutes, minimum=0.0, env=env
            ),
            startup_grace_seconds=env_float(
                "WATCHDOG_STARTUP_GRACE_SECONDS", d.startup_grace_seconds, minimum=0.0, env=env
            ),
            gateway_health_url=env_str("WATCHDOG_GATEWAY_HEALTH_URL", "", env).strip() or None,
            home=kitrading_home(env),
            disk_min_free_percent=env_float(
                "WATCHDOG_DISK_MIN_FREE_PERCENT", d.disk_min_free_percent, minimum=0.0, maximum=100.0, env=env
            ),
            disk_min_free_bytes=env_int(
                "WATCHDOG_DISK_MIN_FREE_MB", d.disk_min_free_bytes // 1024**2, minimum=0, env=env
            )
            * 1024**2,
            gpu_min_free_percent=env_float(
                "WATCHDOG_GPU_MIN_FREE_PERCENT", d.gpu_min_free_percent, minimum=0.0, maximum=100.0, env=env
            ),
            telegram=telegram,
        )
