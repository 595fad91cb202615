"""Candles on real EURUSD data: validation and atomicity, idempotent upsert, range pages, stats, and
market events computed on upsert from the stored history."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from kitrading.common.v1 import market_pb2
from services.data import convert as cv
from services.data.models import Candle, CandleColumns, EventType, MarketEvent, Timeframe
from services.data.service import DataDomain
from services.data.storage import columns_from_copy, copy_literal
from services.runtime.errors import InvalidArgument, NotFound
from tests.data.conftest import DomainFactory, add_symbol

H1 = Timeframe.H1


async def test_bad_candle_rejects_the_whole_batch(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain)
    batch = list(eurusd[:50])
    batch[37] = replace(batch[37], high=batch[37].low - 0.001)
    with pytest.raises(InvalidArgument) as err:
        await domain.upsert_candles("EURUSD", H1, batch)
    assert err.value.violations[0].field == "candles[37].high"
    with pytest.raises(NotFound):
        await domain.get_latest_candle("EURUSD", H1)
    assert (await domain.list_events()).events[-1].type is EventType.SYMBOL_ADDED  # nothing else written
    with pytest.raises(NotFound):
        await domain.upsert_candles("NOPE", H1, eurusd[:5])


@pytest.mark.parametrize(
    ("timeframe", "shift", "reason"),
    [
        (H1, timedelta(minutes=17), "grid"),  # an H1 candle at hh:17
        (Timeframe.D1, timedelta(hours=5), "grid"),
        (Timeframe.M5, timedelta(minutes=2), "grid"),
        (H1, None, "future"),  # year 2999
        (H1, None, "early"),  # before 1970
    ],
)
async def test_candle_times_off_the_grid_or_out_of_range_are_rejected(
    domain: DataDomain, eurusd: list[Candle], timeframe: Timeframe, shift: timedelta | None, reason: str
) -> None:
    await add_symbol(domain)
    start = pd.Timestamp("2017-04-20", tz="UTC").to_pydatetime()
    step = timeframe.duration
    batch = [replace(c, time=start + i * step) for i, c in enumerate(eurusd[:5])]
    if reason == "grid":
        assert shift is not None
        batch[3] = replace(batch[3], time=batch[3].time + shift)
    elif reason == "future":
        batch[3] = replace(batch[3], time=batch[3].time.replace(year=2999))
    else:
        batch[3] = replace(batch[3], time=batch[3].time.replace(year=1969))
    with pytest.raises(InvalidArgument) as err:
        await domain.upsert_candles("EURUSD", timeframe, batch)
    assert [v.field for v in err.value.violations] == ["candles[3].time"]
    with pytest.raises(NotFound):
        await domain.get_latest_candle("EURUSD", timeframe)
    assert (await domain.upsert_candles("EURUSD", timeframe, batch[:3])).upserted == 3  # on the grid


async def test_the_current_bar_and_a_small_clock_skew_are_accepted(domain: DataDomain) -> None:
    await add_symbol(domain)
    now = pd.Timestamp.now(tz="UTC").floor("h").to_pydatetime()
    bar = Candle(time=now, open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0)
    assert (await domain.upsert_candles("EURUSD", H1, [bar])).upserted == 1


async def test_upsert_is_idempotent_and_tracks_coverage(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain)
    first = await domain.upsert_candles("EURUSD", H1, eurusd[:3000])
    assert (first.upserted, first.last_time) == (3000, eurusd[2999].time)
    again = await domain.upsert_candles("EURUSD", H1, list(reversed(eurusd[:3000])))
    assert again.upserted == 0  # nothing changed
    corrected = replace(eurusd[10], close=eurusd[10].close + 0.0001, high=eurusd[10].high + 0.0001)
    overlap = await domain.upsert_candles("EURUSD", H1, [corrected, *eurusd[2990:5000]])
    assert overlap.upserted == 1 + 2000

    symbol = await domain.get_symbol("EURUSD")
    (series,) = symbol.series
    assert (series.timeframe, series.count) == (H1, 5000)
    assert (series.first_time, series.last_time) == (eurusd[0].time, eurusd[-1].time)
    assert (await domain.get_latest_candle("EURUSD", H1)) == eurusd[-1]
    page = await domain.list_candles("EURUSD", H1, start_time=eurusd[10].time, page_size=1)
    assert page.items == (corrected,)

    ingested = [e for e in (await domain.list_events()).events if e.type is EventType.CANDLES_INGESTED]
    assert [e.details.count for e in ingested] == [3000, 2001]  # type: ignore[union-attr]


async def test_range_pages_ascending_and_descending(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain)
    await domain.upsert_candles("EURUSD", H1, eurusd)
    start, end = eurusd[100].time, eurusd[1100].time  # [start, end): 1000 bars
    for descending in (False, True):
        got: list[Candle] = []
        token = ""
        while True:
            page = await domain.list_candles(
                "EURUSD",
                H1,
                start_time=start,
                end_time=end,
                page_size=300,
                page_token=token,
                descending=descending,
            )
            got += page.items
            token = page.next_page_token
            if not token:
                break
        expected = eurusd[100:1100]
        assert got == (list(reversed(expected)) if descending else expected)

    everything = await domain.list_candles("EURUSD", H1, page_size=5000)
    assert len(everything.items) == 5000 and everything.next_page_token == ""
    assert (await domain.list_candles("EURUSD", Timeframe.D1)).items == ()
    with pytest.raises(InvalidArgument):
        await domain.list_candles("EURUSD", H1, start_time=end, end_time=start)
    with pytest.raises(NotFound):
        await domain.list_candles("NOPE", H1)


def _as_rows(columns: CandleColumns) -> list[Candle]:
    return [
        Candle(columns.time_at(i), o, h, lo, c, v)
        for i, (o, h, lo, c, v) in enumerate(
            zip(columns.opens, columns.highs, columns.lows, columns.closes, columns.volumes, strict=True)
        )
    ]


async def test_the_column_form_is_the_row_form_page_for_page(
    domain: DataDomain, eurusd: list[Candle]
) -> None:
    await add_symbol(domain)
    await domain.upsert_candles("EURUSD", H1, eurusd)
    start, end = eurusd[100].time, eurusd[1100].time
    for descending in (False, True):
        got: list[Candle] = []
        token = ""
        for page_number in range(10):  # alternate the forms: one token serves both
            kwargs = dict(
                start_time=start, end_time=end, page_size=300, page_token=token, descending=descending
            )
            if page_number % 2:
                rows = await domain.list_candles("EURUSD", H1, **kwargs)  # type: ignore[arg-type]
                got += rows.items
                token = rows.next_page_token
            else:
                columns = await domain.list_candle_columns("EURUSD", H1, **kwargs)  # type: ignore[arg-type]
                assert len(columns.columns.opens) == len(columns.columns) <= 300
                same = await domain.list_candles("EURUSD", H1, **kwargs)  # type: ignore[arg-type]
                assert _as_rows(columns.columns) == list(same.items)
                assert columns.next_page_token == same.next_page_token
                got += _as_rows(columns.columns)
                token = columns.next_page_token
            if not token:
                break
        expected = eurusd[100:1100]
        assert got == (list(reversed(expected)) if descending else expected)

    everything = await domain.list_candle_columns("EURUSD", H1, page_size=5000)
    assert len(everything.columns) == 5000 and everything.next_page_token == ""
    assert everything.columns.times_unix_micros.tolist() == [
        round(c.time.timestamp()) * 1_000_000 for c in eurusd[:5000]
    ]
    assert _as_rows(everything.columns) == eurusd[:5000]
    empty = await domain.list_candle_columns("EURUSD", Timeframe.D1)
    assert len(empty.columns) == 0 and empty.next_page_token == ""
    with pytest.raises(InvalidArgument):
        await domain.list_candle_columns("EURUSD", H1, start_time=end, end_time=start)
    with pytest.raises(NotFound):
        await domain.list_candle_columns("NOPE", H1)


def test_copy_literals_take_only_values_that_cannot_carry_sql() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert copy_literal(moment) == "'2024-01-02T03:04:05.000006+00:00'::timestamptz"
    assert (
        copy_literal(5001) == "5001" and copy_literal("BRK.B") == "'BRK.B'" and copy_literal("H1") == "'H1'"
    )
    for bad in (
        "EURUSD'; DROP TABLE data.candles; --",
        "a b",
        "",
        "x" * 65,
        "é",
        moment.replace(tzinfo=None),
        True,
        1.5,
        None,
    ):
        with pytest.raises(ValueError):
            copy_literal(bad)


def test_a_binary_copy_of_another_layout_is_refused_not_misread() -> None:
    row = struct.pack(">hiq", 6, 8, 0) + b"".join(struct.pack(">id", 8, 1.5) for _ in range(5))
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    good = header + row * 3 + b"\xff\xff"
    columns = columns_from_copy(good)
    assert (
        columns.times_unix_micros.tolist() == [946_684_800_000_000] * 3
        and columns.closes.tolist() == [1.5] * 3
    )
    assert columns_from_copy(header + b"\xff\xff").opens.tolist() == []
    with_oids = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 1 << 16, 0) + row + b"\xff\xff"
    numeric = struct.pack(">hiq", 6, 8, 0) + struct.pack(">i", 10) + b"0" * 10 + row[14:-12]
    for bad in (
        good[:-2],
        b"COPY" + good[4:],
        with_oids,
        header + row[:-1] + b"\xff\xff",
        header + numeric + b"\xff\xff",
    ):
        with pytest.raises(ValueError, match="COPY"):
            columns_from_copy(bad)


async def test_stats_on_stored_data(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain)
    with pytest.raises(NotFound):
        await domain.get_symbol_stats("EURUSD", H1)
    await domain.upsert_candles("EURUSD", H1, eurusd)
    stats = await domain.get_symbol_stats("EURUSD", H1, lookback=500)
    close = pd.Series([c.close for c in eurusd[-500:]])
    assert stats.bars == 500 and stats.last_candle == eurusd[-1]
    assert stats.volatility == pytest.approx(np.log(close).diff().std())
    assert stats.change_percent == pytest.approx((close.iloc[-1] / close.iloc[0] - 1) * 100)
    assert stats.recent_candles == tuple(eurusd[-24:])
    assert (await domain.get_symbol_stats("EURUSD", H1)).bars == 100


async def test_market_events_on_upsert_use_stored_history(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain)
    split = 3000
    await domain.upsert_candles("EURUSD", H1, eurusd[:split])
    before = (await domain.list_events()).last_event_id
    await domain.upsert_candles("EURUSD", H1, eurusd[split:])
    await domain.upsert_candles("EURUSD", H1, eurusd[split:])  # re-sent: no new market events

    closes = pd.Series([c.close for c in eurusd])
    returns = np.log(closes).diff()
    z = returns / returns.rolling(100).std().shift(1)
    fired = z[(z.abs() > 4.0) & (z.index >= split)]
    page = await domain.list_events(after_event_id=before, types=[EventType.MARKET_EVENT], page_size=1000)
    details = [e.details for e in page.events]
    assert all(isinstance(d, MarketEvent) for d in details)
    assert [d.time for d in details] == [eurusd[i].time for i in fired.index]  # type: ignore[union-attr]
    assert [d.z_score for d in details] == pytest.approx(list(fired.values))  # type: ignore[union-attr]
    assert len(details) >= 5


async def test_market_event_threshold_is_a_setting(
    domain_factory: DomainFactory, eurusd: list[Candle]
) -> None:
    domain = await domain_factory(market_event_k=50.0)
    await add_symbol(domain)
    await domain.upsert_candles("EURUSD", H1, eurusd[:200])
    spike = Candle(eurusd[199].time + timedelta(hours=1), 1.0, 1.5, 0.99, 1.4, 1)  # +15 % in an hour
    await domain.upsert_candles("EURUSD", H1, [spike])
    page = await domain.list_events(types=[EventType.MARKET_EVENT])
    (event,) = page.events
    assert isinstance(event.details, MarketEvent)
    assert event.details.time == spike.time and event.details.z_score > 50


def test_the_column_encoder_writes_what_protobuf_itself_writes() -> None:
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 5000):
        prices = [rng.normal(0, 1e6, n) for _ in range(4)]
        volumes = np.zeros(n) if n % 2 else rng.uniform(0, 1e9, n)
        times = rng.integers(-(2**62), 2**62, n)
        columns = CandleColumns(times, prices[0], prices[1], prices[2], prices[3], volumes)
        ours = cv.candle_columns_out(columns)
        theirs = market_pb2.CandleColumns(
            times_unix_micros=columns.times_unix_micros.tolist(),
            opens=columns.opens.tolist(),
            highs=columns.highs.tolist(),
            lows=columns.lows.tolist(),
            closes=columns.closes.tolist(),
            volumes=columns.volumes.tolist(),
        )
        assert ours == theirs
        assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    special = CandleColumns(
        np.array([0]),
        np.array([np.inf]),
        np.array([-0.0]),
        np.array([1e-308]),
        np.array([np.nan]),
        np.array([5e-324]),
    )
    got = cv.candle_columns_out(special)
    assert list(got.opens) == [np.inf] and str(got.highs[0]) == "-0.0" and got.lows[0] == 1e-308
    assert np.isnan(got.closes[0]) and got.volumes[0] == 5e-324
