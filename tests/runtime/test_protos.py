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


def test_request_summary_is_bounded_and_never_raises() -> None:
    from google.protobuf import field_mask_pb2

    from kitrading.common.v1 import market_pb2
    from kitrading.data.v1 import request_response_pb2 as rr
    from kitrading.data.v1 import resources_pb2
    from services.runtime.protos import SUMMARY_CHARS, request_summary

    candles = [market_pb2.Candle(close=float(i)) for i in range(100_000)]
    request = rr.UpsertCandlesRequest(symbol="EURUSD", timeframe=market_pb2.TIMEFRAME_H1, candles=candles)
    summary = request_summary(request)
    assert summary["symbol"] == "EURUSD" and summary["timeframe"] == "TIMEFRAME_H1"
    assert summary["candles"] == {"count": 100_000, "first": {}}  # close 0.0 is the default
    strategy = resources_pb2.Strategy(strategy_id="s", description="x" * 10_000)
    strategy.parameters.update({"deep": {"er": {"and": {"deeper": {"still": 1}}}}})
    mask = field_mask_pb2.FieldMask(paths=["Display_Name"])  # no JSON name: MessageToDict raises
    summary = request_summary(rr.UpdateStrategyRequest(strategy=strategy, update_mask=mask))
    assert summary["updateMask"] == ["Display_Name"]
    assert len(summary["strategy"]["description"]) < SUMMARY_CHARS + 20
    assert "…" in str(summary["strategy"]["parameters"])  # nesting cut


def test_timestamp_fast_path_matches_protobuf() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    import pandas as pd
    from google.protobuf import timestamp_pb2

    from services.runtime.protos import timestamp

    for moment in (
        datetime(2020, 1, 1, 12, 30, 15, 123456, tzinfo=UTC),
        datetime(1960, 5, 5, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
        pd.Timestamp("2017-04-19 09:00:00+00:00"),
        datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=2))),
    ):
        expected = timestamp_pb2.Timestamp()
        expected.FromDatetime(moment)
        got = timestamp(moment)
        assert got is not None and (got.seconds, got.nanos) == (expected.seconds, expected.nanos), moment


def test_a_retry_hint_becomes_retry_info_and_retry_after() -> None:
    from google.rpc import error_details_pb2

    from services.runtime.errors import ResourceExhausted
    from services.runtime.status import status_for, trailing_metadata

    _, status = status_for(ResourceExhausted("full", reason="QUEUE", metadata={"retry_after_s": "0.2"}), "d")
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    assert ("retry-after", "1") in trailing_metadata(status)  # at least a second
    _, plain = status_for(ResourceExhausted("full", reason="QUEUE"), "d")
    assert [k for k, _ in trailing_metadata(plain)] == ["grpc-status-details-bin"]
