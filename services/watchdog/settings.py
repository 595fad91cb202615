"""Watchdog settings: one typed, frozen object read once from the environment.

Every value has a default that works on one machine; `FIELDS` and `TELEGRAM_FIELDS` give each
attribute's variable and range (docs/configuration.md lists them). The Telegram bot token is held in
a `Secret`, whose repr and str never show the value and which registers itself with the
structured-log redactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import (
    HOME,
    URL_PATTERN,
    ChoiceVar,
    ConfigError,
    FloatVar,
    IntVar,
    ListVar,
    SecretVar,
    TextVar,
    Var,
    check_fields,
    kitrading_home,
    read_fields,
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

    def __post_init__(self) -> None:
        check_fields(self, TELEGRAM_FIELDS)

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
    # The supervisor's state file (`kitrading up`: every child's pid and crash restarts); "" means
    # `$KITRADING_HOME/run/mesh.json`. Absent (compose, Kubernetes): restarts are not watched there.
    supervisor_state_file: str = ""
    telegram: TelegramSettings = field(default_factory=TelegramSettings)

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)
        if self.check_timeout_seconds == 0:
            raise ConfigError("WATCHDOG_CHECK_TIMEOUT_SECONDS must be > 0 (None: automatic)")

    @property
    def check_timeout(self) -> float:
        """Seconds one check may take."""
        if self.check_timeout_seconds is not None:
            return self.check_timeout_seconds
        return min(10.0, self.check_interval_seconds)

    @property
    def supervisor_state_path(self) -> Path:
        return (
            Path(self.supervisor_state_file)
            if self.supervisor_state_file
            else self.home / "run" / "mesh.json"
        )

    @property
    def alert_cooldown_seconds(self) -> float:
        return self.alert_cooldown_minutes * 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatchdogSettings:
        """Read the settings from `env` (default: os.environ); unset or empty values keep defaults.

        Raises `ConfigError` naming the variable for a malformed value.
        """
        t = read_fields(TelegramSettings(), TELEGRAM_FIELDS, env)
        token = t.pop("bot_token")
        if token and (any(ch.isspace() for ch in token) or "/" in token):
            # Never echo the value: it is (almost) the secret.
            raise ConfigError("TELEGRAM_BOT_TOKEN contains whitespace or '/'")
        t["api_base"] = t["api_base"].rstrip("/")
        t["parse_mode"] = "HTML" if t["parse_mode"] == "HTML" else None
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        return cls(
            **{
                **values,
                "check_timeout_seconds": values["check_timeout_seconds"] or None,  # 0: automatic
                "gateway_health_url": values["gateway_health_url"] or None,
                "home": kitrading_home(env),
            },
            disk_min_free_bytes=DISK_MIN_FREE_MB.read(defaults.disk_min_free_bytes // 1024**2, env) * 1024**2,
            telegram=TelegramSettings(bot_token=Secret(token) if token else None, **t),
        )


_URL = "an http(s) URL"
TOKEN = SecretVar("TELEGRAM_BOT_TOKEN")
#: TelegramSettings attribute -> its environment variable and range.
TELEGRAM_FIELDS: dict[str, Var] = {
    "bot_token": TOKEN,
    "chat_ids": ListVar(
        "TELEGRAM_CHAT_IDS", what="a chat id (an integer or @channel)", pattern=r"-?\d+|@\w+"
    ),
    "api_base": TextVar("KITRADING_TELEGRAM_API_BASE", _URL, URL_PATTERN),
    "parse_mode": ChoiceVar("TELEGRAM_PARSE_MODE", ("HTML", "none", "plain")),
    "request_timeout_seconds": FloatVar("TELEGRAM_TIMEOUT_SECONDS", 0.1, 600.0),
    "max_attempts": IntVar("TELEGRAM_MAX_ATTEMPTS", 1, 20),
    "backoff_initial_seconds": FloatVar("TELEGRAM_BACKOFF_SECONDS", 0.0, 600.0),
    "backoff_max_seconds": FloatVar("TELEGRAM_BACKOFF_MAX_SECONDS", 0.0, 3600.0),
    "max_retry_after_seconds": FloatVar("TELEGRAM_MAX_RETRY_AFTER_SECONDS", 0.0, 3600.0),
}
#: WatchdogSettings attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "check_interval_seconds": FloatVar("CHECK_INTERVAL_SECONDS", 0.01, 86_400.0),
    # 0 (or unset): min(10 s, the interval).
    "check_timeout_seconds": FloatVar("WATCHDOG_CHECK_TIMEOUT_SECONDS", 0.0, 600.0),
    "alert_cooldown_minutes": FloatVar("ALERT_COOLDOWN_MINUTES", 0.0, 10_080.0),
    "startup_grace_seconds": FloatVar("WATCHDOG_STARTUP_GRACE_SECONDS", 0.0, 3600.0),
    "gateway_health_url": TextVar("WATCHDOG_GATEWAY_HEALTH_URL", _URL, URL_PATTERN),
    "home": HOME,
    "disk_min_free_percent": FloatVar("WATCHDOG_DISK_MIN_FREE_PERCENT", 0.0, 100.0),
    "gpu_min_free_percent": FloatVar("WATCHDOG_GPU_MIN_FREE_PERCENT", 0.0, 100.0),
    "supervisor_state_file": TextVar("WATCHDOG_SUPERVISOR_STATE_FILE", "a file path"),
}
DISK_MIN_FREE_MB = IntVar("WATCHDOG_DISK_MIN_FREE_MB", 0, 1 << 30)  # -> disk_min_free_bytes
#: Every variable the watchdog settings read.
VARIABLES: tuple[Var, ...] = (*TELEGRAM_FIELDS.values(), *FIELDS.values(), DISK_MIN_FREE_MB)
