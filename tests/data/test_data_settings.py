"""Settings from the environment, database resolution, and that passwords never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.data.models import Timeframe
from services.data.settings import DataSettings
from services.runtime.database_settings import DatabaseSettings, redact_url, resolve_database_url


def test_defaults_use_embedded_database() -> None:
    settings = DataSettings.from_env({})
    assert settings.database.embedded
    assert settings.database.embedded_pgdata == (Path(".kitrading") / "postgres").absolute()
    assert settings.easyinsight_api_url is None
    assert (settings.market_event_k, settings.market_event_window) == (4.0, 100)
    assert settings.sync_default_timeframe is Timeframe.H1
    assert settings.import_samples_on_start


def test_env_overrides() -> None:
    settings = DataSettings.from_env(
        {
            "KITRADING_HOME": "/srv/kit",
            "EASYINSIGHT_API_URL": "http://easy:8000/",
            "KITRADING_DATA_MARKET_EVENT_K": "3.5",
            "KITRADING_DATA_MARKET_EVENT_WINDOW": "50",
            "KITRADING_DATA_IMPORT_SAMPLES": "false",
            "KITRADING_DATA_SYNC_TIMEFRAME": "d1",
        }
    )
    assert settings.easyinsight_api_url == "http://easy:8000"
    assert (settings.market_event_k, settings.market_event_window) == (3.5, 50)
    assert not settings.import_samples_on_start
    assert settings.sync_default_timeframe is Timeframe.D1
    assert settings.database.embedded_pgdata == Path("/srv/kit/postgres")


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        DataSettings.from_env({"KITRADING_DATA_IMPORT_SAMPLES": "maybe"})
    with pytest.raises(ValueError):
        DataSettings(market_event_window=1)


async def test_timescale_env_with_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr:t/@pw\n")
    settings = DatabaseSettings.from_env(
        {
            "TIMESCALE_HOST": "tsdb",
            "TIMESCALE_PORT": "6543",
            "TIMESCALE_DB": "market",
            "TIMESCALE_USER": "kit",
            "TIMESCALE_PASSWORD": "ignored-when-file-given",
            "TIMESCALE_PASSWORD_FILE": str(secret),
        }
    )
    assert not settings.embedded
    assert settings.password == "s3cr:t/@pw"
    url = await resolve_database_url(settings)
    assert url == "postgresql://kit:s3cr%3At%2F%40pw@tsdb:6543/market"
    assert "s3cr" not in repr(settings)
    assert "s3cr" not in settings.describe()
    assert redact_url(url) == "postgresql://kit:***@tsdb:6543/market"


async def test_database_url_wins() -> None:
    settings = DatabaseSettings.from_env(
        {"KITRADING_DATABASE_URL": "postgresql://a:b@h/db", "TIMESCALE_HOST": "other"}
    )
    assert await resolve_database_url(settings) == "postgresql://a:b@h/db"
    assert "b@" not in settings.describe()
