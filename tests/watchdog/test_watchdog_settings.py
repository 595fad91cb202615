from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import ConfigError
from services.watchdog.settings import DEFAULT_TELEGRAM_API_BASE, Secret, WatchdogSettings

from .helpers import TOKEN


def test_defaults_match_the_users_deployment() -> None:
    s = WatchdogSettings.from_env({})
    assert s.check_interval_seconds == 30
    assert s.alert_cooldown_minutes == 15
    assert s.check_timeout == 10
    assert s.telegram.api_base == DEFAULT_TELEGRAM_API_BASE
    assert not s.telegram.enabled
    assert "TELEGRAM_BOT_TOKEN" in s.telegram.disabled_reason
    assert s.gateway_health_url is None


def test_reads_every_setting(tmp_path: Path) -> None:
    s = WatchdogSettings.from_env(
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_CHAT_IDS": " 1001, -1002 ,,",
            "KITRADING_TELEGRAM_API_BASE": "http://127.0.0.1:9/",
            "CHECK_INTERVAL_SECONDS": "5",
            "WATCHDOG_CHECK_TIMEOUT_SECONDS": "2",
            "ALERT_COOLDOWN_MINUTES": "1.5",
            "WATCHDOG_GATEWAY_HEALTH_URL": "http://127.0.0.1:3000/health",
            "KITRADING_HOME": str(tmp_path),
            "WATCHDOG_DISK_MIN_FREE_PERCENT": "3",
            "WATCHDOG_DISK_MIN_FREE_MB": "10",
            "TELEGRAM_PARSE_MODE": "none",
        }
    )
    assert s.telegram.enabled and s.telegram.chat_ids == ("1001", "-1002")
    assert s.telegram.api_base == "http://127.0.0.1:9"
    assert s.telegram.parse_mode is None
    assert (s.check_interval_seconds, s.check_timeout, s.alert_cooldown_seconds) == (5, 2, 90)
    assert s.home == tmp_path.resolve()
    assert s.disk_min_free_bytes == 10 * 1024**2
    assert s.gateway_health_url == "http://127.0.0.1:3000/health"


def test_token_from_secret_file_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    s = WatchdogSettings.from_env({"TELEGRAM_BOT_TOKEN_FILE": str(secret), "TELEGRAM_CHAT_IDS": "1"})
    assert s.telegram.bot_token == Secret(TOKEN)
    assert s.telegram.bot_token is not None and s.telegram.bot_token.reveal() == TOKEN
    for text in (repr(s), str(s), repr(s.telegram), str(s.telegram.bot_token), f"{s.telegram.bot_token!r}"):
        assert TOKEN not in text


def test_bad_values_name_the_variable_not_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHECK_INTERVAL_SECONDS"):
        WatchdogSettings.from_env({"CHECK_INTERVAL_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="TELEGRAM_PARSE_MODE"):
        WatchdogSettings.from_env({"TELEGRAM_PARSE_MODE": "MarkdownV2"})
    with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN_FILE") as info:
        WatchdogSettings.from_env({"TELEGRAM_BOT_TOKEN_FILE": str(tmp_path / "missing")})
    bad = TOKEN + "/x"
    with pytest.raises(ConfigError) as info:
        WatchdogSettings.from_env({"TELEGRAM_BOT_TOKEN": bad})
    assert TOKEN not in str(info.value)
