"""Bundled real market data: what is imported, idempotency, first-start behaviour, speed."""

from __future__ import annotations

import time

import pandas as pd

from services.data.models import AssetClass, EventType, Timeframe
from services.data.samples import SAMPLES, load_frame
from services.data.service import DataDomain
from tests.data.conftest import DomainFactory, add_symbol

EXPECTED = {
    ("EURUSD", Timeframe.H1, "backtesting"): 5000,
    ("GOOG", Timeframe.D1, "backtesting"): 2148,
    ("SP500", Timeframe.D1, "arch"): 5031,
    ("NASDAQ", Timeframe.D1, "arch"): 5031,
    ("MSFT", Timeframe.D1, "pmdarima"): 7983,
}


def test_files_read_equal_the_official_loaders() -> None:
    import arch.data.nasdaq
    import arch.data.sp500
    import backtesting.test
    import pmdarima.datasets

    msft = pmdarima.datasets.load_msft()
    msft = msft.set_index(pd.to_datetime(msft.pop("Date")))
    official = {
        "EURUSD": backtesting.test.EURUSD,
        "GOOG": backtesting.test.GOOG,
        "SP500": arch.data.sp500.load(),
        "NASDAQ": arch.data.nasdaq.load(),
        "MSFT": msft,
    }
    for spec in SAMPLES:
        ours, theirs = load_frame(spec), official[spec.symbol]
        columns = ["Open", "High", "Low", "Close", "Volume"]
        pd.testing.assert_frame_equal(ours[columns], theirs[columns], check_names=False, check_freq=False)


async def test_import_is_complete_fast_and_idempotent(domain: DataDomain) -> None:
    started = time.perf_counter()
    datasets = await domain.import_samples()
    elapsed = time.perf_counter() - started
    print(f"\nsample import: {sum(d.candles for d in datasets)} candles in {elapsed:.2f} s")
    assert {(d.symbol, d.timeframe, d.package): d.candles for d in datasets} == EXPECTED
    assert elapsed < 10

    for (name, timeframe, package), count in EXPECTED.items():
        symbol = await domain.get_symbol(name)
        assert symbol.source == f"sample:{package}"
        (series,) = symbol.series
        assert (series.timeframe, series.count) == (timeframe, count)
    assert (await domain.get_symbol("SP500")).asset_class is AssetClass.INDEX

    events = (await domain.list_events(page_size=1000)).events
    kinds = [e.type for e in events]
    assert kinds.count(EventType.SYMBOL_ADDED) == 5 and kinds.count(EventType.CANDLES_INGESTED) == 5
    assert EventType.MARKET_EVENT not in kinds  # history does not fire market events

    again = await domain.import_samples()
    assert again == datasets
    assert (await domain.list_events(after_event_id=events[-1].event_id)).events == ()


async def test_first_start_imports_once_and_respects_user_symbols(domain_factory: DomainFactory) -> None:
    first = await domain_factory(import_samples_on_start=False)
    await add_symbol(first, "MSFT", asset_class=AssetClass.EQUITY, source="manual")

    second = await domain_factory(import_samples_on_start=True)
    names = {s.symbol for s in (await second.list_symbols()).items}
    assert names == {"EURUSD", "GOOG", "SP500", "NASDAQ", "MSFT"}
    assert (await second.get_symbol("MSFT")).series == ()  # the user's MSFT was left alone

    await second.delete_symbol("GOOG")
    third = await domain_factory(import_samples_on_start=True)
    assert "GOOG" not in {s.symbol for s in (await third.list_symbols()).items}  # not re-added on restart
    datasets = await third.import_samples()  # an explicit import brings it back
    assert {d.symbol for d in datasets} == {"EURUSD", "GOOG", "SP500", "NASDAQ"}
