"""`services.runtime.protos.timestamp`, the one datetime -> Timestamp every convert module uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from services.data import convert as data_cv
from services.runtime.protos import timestamp
from services.watchdog import convert as watchdog_cv

MOMENT = datetime(2026, 12, 2, 19, 26, 10, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        MOMENT,
        MOMENT.astimezone(timezone(timedelta(hours=2))),  # another zone, the same instant
        MOMENT.replace(tzinfo=None),  # naive is UTC
        pd.Timestamp(MOMENT),
        "2026-12-02T19:26:10.123456+00:00",
        "2026-12-02T21:26:10.123456+02:00",
        "2026-12-02T19:26:10.123456",
    ],
)
def test_every_form_of_one_instant_is_the_same_timestamp(value: object) -> None:
    ts = timestamp(value)
    assert ts is not None and ts.ToDatetime(tzinfo=UTC) == MOMENT


@pytest.mark.parametrize("value", [None, ""])
def test_nothing_stays_unset(value: object) -> None:
    assert timestamp(value) is None


def test_data_and_watchdog_use_the_runtime_helper() -> None:
    assert data_cv.timestamp is timestamp
    assert watchdog_cv.timestamp is timestamp
