"""Trading calendars: future bar times skip weekends, and reproduce the real data's timestamps."""

from __future__ import annotations

import pandas as pd
import pytest

from services.forecast.calendar import CRYPTO, EQUITY, FX, calendar_for, future_times, timeframe_delta
from services.runtime.errors import InvalidArgument

H1 = pd.Timedelta(hours=1)
D1 = pd.Timedelta(days=1)


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_fx_hourly_skips_the_weekend_in_winter() -> None:
    # Friday 21:00 UTC is the last hourly bar (16:00 New York, EST); trading resumes Sunday 22:00 UTC.
    times = FX.next_bars(ts("2018-02-02 21:00"), H1, 3)
    assert list(times) == [ts("2018-02-04 22:00"), ts("2018-02-04 23:00"), ts("2018-02-05 00:00")]


def test_fx_hourly_follows_new_york_daylight_saving_time() -> None:
    # In summer (EDT) the week closes at 21:00 UTC and reopens on Sunday at 21:00 UTC.
    assert FX.next_bars(ts("2017-06-09 19:00"), H1, 2).tolist() == [
        ts("2017-06-09 20:00"),
        ts("2017-06-11 21:00"),
    ]


def test_fx_calendar_reproduces_the_bundled_eurusd_timestamps(eurusd: pd.DataFrame) -> None:
    times = pd.DatetimeIndex(eurusd["time"])
    # Every real bar is a calendar bar (but two odd Friday 17:00 New York bars of the broker)...
    assert (~FX.is_open(times, H1)).sum() <= 2
    # ...and every calendar bar in the range is a real bar, except Christmas and New Year.
    every_hour = pd.date_range(times[0], times[-1], freq="h")
    missing = every_hour[FX.is_open(every_hour, H1)].difference(times)
    assert set(missing.strftime("%m-%d")) <= {"12-24", "12-25", "12-31", "01-01"}
    assert ((times[1:] - times[:-1]) > pd.Timedelta(hours=24)).sum() >= 37  # the weekends


def test_equity_daily_skips_weekends_and_matches_goog(goog: pd.DataFrame) -> None:
    assert EQUITY.next_bars(ts("2013-03-01"), D1, 2).tolist() == [ts("2013-03-04"), ts("2013-03-05")]
    times = pd.DatetimeIndex(goog["time"])
    assert EQUITY.is_open(times, D1).all()
    every_day = pd.date_range(times[0], times[-1], freq="D")
    # Exchange holidays (about 9 a year) are not modelled; every other business day is a bar.
    assert len(every_day[EQUITY.is_open(every_day, D1)].difference(times)) < 10 * 9


def test_equity_intraday_session_and_crypto() -> None:
    # 15:30 New York (20:30 UTC in winter) is the last hourly bar; the next is 09:30 New York next day.
    assert EQUITY.next_bars(ts("2018-02-02 20:30"), H1, 1).tolist() == [ts("2018-02-05 14:30")]
    assert CRYPTO.next_bars(ts("2018-02-02 23:00"), H1, 2).tolist() == [
        ts("2018-02-03 00:00"),
        ts("2018-02-03 01:00"),
    ]


def test_lookup_and_long_horizons() -> None:
    assert calendar_for("ASSET_CLASS_FX") is FX
    assert calendar_for("index") is EQUITY
    times = future_times("FX", "H1", ts("2018-02-02 21:00"), 24 * 12)
    assert len(times) == 24 * 12 and times.is_monotonic_increasing
    assert FX.is_open(times, H1).all()
    assert not (times.dayofweek == 5).any()  # never a Saturday
    with pytest.raises(InvalidArgument):
        timeframe_delta("H2")
