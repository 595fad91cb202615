"""The event stream: replay then live with no gap and no duplicate under concurrent writers, filters,
delivery to another pool through LISTEN/NOTIFY, and paging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from services.data.models import Candle, CandlesIngested, Event, EventType, Symbol, Timeframe
from services.data.service import DataDomain
from tests.data.conftest import DomainFactory, add_symbol


async def _collect(stream: AsyncIterator[Event], until_symbol: str) -> list[Event]:
    """Events from `stream` up to and including the first one about `until_symbol`."""
    out: list[Event] = []

    async def run() -> None:
        async for event in stream:
            out.append(event)
            if event.symbol == until_symbol:
                return

    await asyncio.wait_for(run(), 30.0)
    return out


async def _all_ids(domain: DataDomain) -> list[int]:
    return [e.event_id for e in (await domain.list_events(page_size=1000)).events]


async def test_replay_then_live_without_gap_or_duplicate(domain: DataDomain, eurusd: list[Candle]) -> None:
    for name in ("S0", "S1", "S2", "S3"):
        await add_symbol(domain, name)
    prefix_ids = await _all_ids(domain)

    async def writer(name: str) -> None:
        for i in range(0, 600, 20):  # 30 upserts of 20 bars each, interleaved with other writers
            await domain.upsert_candles(name, Timeframe.H1, eurusd[i : i + 20])
            await domain.update_symbol(Symbol(name, display_name=str(i)), ["display_name"])

    # Watchers consume while four writers race: one replays everything, one resumes after the 2nd
    # event, one wants only new events. A final marker symbol ends the collection.
    from_start = domain.watch_events(from_beginning=True)
    resumed = domain.watch_events(after_event_id=prefix_ids[1])
    only_new = domain.watch_events()
    collectors = [asyncio.create_task(_collect(s, "END")) for s in (from_start, resumed, only_new)]
    await asyncio.sleep(0.2)  # let `only_new` pick its starting point before anything is written

    await asyncio.gather(*(writer(n) for n in ("S0", "S1", "S2", "S3")))
    await add_symbol(domain, "END")
    got_all, got_resumed, got_new = await asyncio.gather(*collectors)

    ids = await _all_ids(domain)
    assert len(ids) >= len(prefix_ids) + 4 * 30 * 2 + 1  # plus any market events
    assert ids == sorted(set(ids))
    assert [e.event_id for e in got_all] == ids
    assert [e.event_id for e in got_resumed] == ids[2:]
    assert [e.event_id for e in got_new] == ids[len(prefix_ids) :]
    for stream in (from_start, resumed, only_new):
        await stream.aclose()


async def test_live_events_reach_another_pool_by_notify(
    domain_factory: DomainFactory, eurusd: list[Candle]
) -> None:
    writer = await domain_factory()
    reader = await domain_factory()  # its own pool and LISTEN
    await add_symbol(writer, "EURUSD")
    await add_symbol(writer, "GOOG")

    stream = reader.watch_events(types=[EventType.CANDLES_INGESTED], symbols=["EURUSD"])
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.2)
    await writer.upsert_candles("GOOG", Timeframe.H1, eurusd[:5])  # filtered out by symbol
    await writer.update_symbol(Symbol("EURUSD", display_name="x"), ["display_name"])  # filtered by type
    started = time.perf_counter()
    await writer.upsert_candles("EURUSD", Timeframe.H1, eurusd[:10])
    event = await asyncio.wait_for(waiting, 5.0)
    latency = time.perf_counter() - started
    assert (event.type, event.symbol, event.timeframe) == (EventType.CANDLES_INGESTED, "EURUSD", Timeframe.H1)
    assert isinstance(event.details, CandlesIngested) and event.details.count == 10
    assert latency < 2.0  # woken by NOTIFY, not by the 10 s poll
    await stream.aclose()


async def test_list_events_pages_and_filters(domain: DataDomain, eurusd: list[Candle]) -> None:
    await add_symbol(domain, "EURUSD")
    await add_symbol(domain, "GOOG")
    for i in range(5):
        bar = eurusd[i]
        await domain.upsert_candles("EURUSD", Timeframe.H1, [bar])
        await domain.upsert_candles("GOOG", Timeframe.H1, [bar])
    seen: list[Event] = []
    after = 0
    while True:
        page = await domain.list_events(after_event_id=after, page_size=3, symbols=["EURUSD"])
        if not page.events:
            assert page.last_event_id == after
            break
        seen += page.events
        after = page.last_event_id
    assert [e.type for e in seen] == [EventType.SYMBOL_ADDED] + [EventType.CANDLES_INGESTED] * 5
    assert all(e.symbol == "EURUSD" for e in seen)
    goog = await domain.list_events(types=[EventType.SYMBOL_ADDED, EventType.SYMBOL_REMOVED])
    assert [e.symbol for e in goog.events] == ["EURUSD", "GOOG"]
    last = seen[-1].details
    assert isinstance(last, CandlesIngested) and last.last_time == eurusd[4].time
