"""Trading calendars: which bar open times exist for a symbol, and the next `h` of them.

Models are trained on the *bar index* (0, 1, 2, ... with no gaps), never on wall-clock time, so a
weekend or a holiday is simply the step from one bar to the next. Only when a forecast is returned
are its `h` steps mapped back to wall-clock times, by walking the symbol's calendar forward from the
last observed bar and keeping the open bar times:

- FX (and commodities, approximately): 24x5, from Sunday 17:00 to Friday 17:00 New York time,
  which is Sunday 22:00 to Friday 22:00 UTC in northern winter and 21:00 to 21:00 UTC in summer
  (the bundled EURUSD data follows exactly this). Daily bars: Monday to Friday.
- Equities and indices: Monday to Friday (exchange holidays are not modelled); intraday bars inside
  the regular session 09:30-16:00 New York time.
- Crypto: 24x7.

All times are UTC; naive timestamps are taken to be UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from typing import ClassVar

import numpy as np
import pandas as pd

from services.runtime.errors import InvalidArgument

TIMEFRAMES: dict[str, pd.Timedelta] = {
    "M1": pd.Timedelta(minutes=1),
    "M5": pd.Timedelta(minutes=5),
    "M15": pd.Timedelta(minutes=15),
    "M30": pd.Timedelta(minutes=30),
    "H1": pd.Timedelta(hours=1),
    "H4": pd.Timedelta(hours=4),
    "D1": pd.Timedelta(days=1),
    "W1": pd.Timedelta(weeks=1),
}

# Season length (in bars) of the SeasonalNaive baseline per timeframe: one trading day for intraday
# bars (24 bars of FX H1 on the bar index is the same hour of the previous trading day), one trading
# week for daily bars.
SEASON_LENGTH: dict[str, int] = {"M1": 60, "M5": 12, "M15": 4, "M30": 48, "H1": 24, "H4": 6, "D1": 5, "W1": 4}

NEW_YORK = "America/New_York"


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """The bar size of a timeframe name (`H1`); InvalidArgument for unknown names."""
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise InvalidArgument(
            "timeframe", f"unknown timeframe {timeframe!r}; one of {sorted(TIMEFRAMES)}"
        ) from None


def to_utc(times: pd.DatetimeIndex | pd.Series) -> pd.DatetimeIndex:
    """Timestamps as a UTC DatetimeIndex (naive ones are taken to be UTC)."""
    index = pd.DatetimeIndex(times)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


@dataclass(frozen=True, slots=True)
class TradingCalendar:
    """Open bar times of one market.

    `weekly` decides whether intraday bar open times exist (see `is_open`); `daily_weekdays` lists
    the weekdays (Monday=0) that have a daily bar.
    """

    name: str
    tz: str = "UTC"
    # Intraday: (weekday, local time) from which the market is open, to which it is closed (weekly
    # session, FX style), or a daily session (equity style) when `session` is set.
    week_open: tuple[int, time] | None = None
    week_close: tuple[int, time] | None = None
    session: tuple[time, time] | None = None
    daily_weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)

    WEEKDAYS: ClassVar[tuple[int, ...]] = (0, 1, 2, 3, 4)

    def is_open(self, times: pd.DatetimeIndex, bar: pd.Timedelta) -> np.ndarray:
        """Boolean mask, shape (len(times),): which bar open times are trading bars."""
        utc = to_utc(times)
        if bar >= pd.Timedelta(weeks=1):
            return np.ones(len(utc), dtype=bool)
        if bar >= pd.Timedelta(days=1):
            return np.isin(utc.dayofweek, self.daily_weekdays)
        local = utc.tz_convert(self.tz)
        minutes = (local.hour * 60 + local.minute).to_numpy()
        weekday = local.dayofweek.to_numpy()
        if self.session is not None:
            start, end = (t.hour * 60 + t.minute for t in self.session)
            return np.isin(weekday, self.WEEKDAYS) & (minutes >= start) & (minutes < end)
        if self.week_open is None or self.week_close is None:
            return np.ones(len(utc), dtype=bool)
        # Minutes since Monday 00:00 local; the market is closed in [close, open) of the week.
        week_minutes = weekday * 1440 + minutes
        close = self.week_close[0] * 1440 + self.week_close[1].hour * 60 + self.week_close[1].minute
        open_ = self.week_open[0] * 1440 + self.week_open[1].hour * 60 + self.week_open[1].minute
        return ~((week_minutes >= close) & (week_minutes < open_))

    def next_bars(self, last: pd.Timestamp, bar: pd.Timedelta, n: int) -> pd.DatetimeIndex:
        """The `n` trading bar open times after `last`, shape (n,), UTC.

        Steps by `bar` from `last` and keeps open times; a weekend is skipped, not counted.
        """
        if n <= 0:
            return pd.DatetimeIndex([], tz="UTC")
        start = to_utc(pd.DatetimeIndex([last]))[0]
        found: list[pd.DatetimeIndex] = []
        count = 0
        chunk = max(2 * n, int(pd.Timedelta(days=4) / bar) + n)
        offset = 1
        while count < n:
            candidates = start + bar * np.arange(offset, offset + chunk)
            candidates = pd.DatetimeIndex(candidates)
            keep = candidates[self.is_open(candidates, bar)]
            found.append(keep)
            count += len(keep)
            offset += chunk
        times = found[0].append(found[1:]) if len(found) > 1 else found[0]
        return times[:n]


FX = TradingCalendar(
    "fx-24x5", tz=NEW_YORK, week_open=(6, time(17)), week_close=(4, time(17)), daily_weekdays=(0, 1, 2, 3, 4)
)
EQUITY = TradingCalendar(
    "equity-business-days", tz=NEW_YORK, session=(time(9, 30), time(16)), daily_weekdays=(0, 1, 2, 3, 4)
)
CRYPTO = TradingCalendar("crypto-24x7")

# Asset class (the proto enum's name without prefix) -> calendar.
CALENDARS: dict[str, TradingCalendar] = {
    "FX": FX,
    "COMMODITY": FX,
    "EQUITY": EQUITY,
    "INDEX": EQUITY,
    "CRYPTO": CRYPTO,
}


def calendar_for(asset_class: str) -> TradingCalendar:
    """The calendar of an asset class (`FX`, `EQUITY`, ...); unknown ones trade on business days."""
    return CALENDARS.get(asset_class.upper().removeprefix("ASSET_CLASS_"), EQUITY)


def future_times(asset_class: str, timeframe: str, last: pd.Timestamp, h: int) -> pd.DatetimeIndex:
    """The open times of the `h` bars after `last` on the symbol's calendar, shape (h,), UTC."""
    return calendar_for(asset_class).next_bars(last, timeframe_delta(timeframe), h)


CalendarLookup = Callable[[str], TradingCalendar]
