"""Symbols and strategies: CRUD, field masks, pagination, errors and events (real PostgreSQL)."""

from __future__ import annotations

import pytest

from services.data.models import AssetClass, EventType, Strategy, Symbol, Timeframe
from services.data.service import DataDomain
from services.runtime.errors import AlreadyExists, InvalidArgument, NotFound
from tests.data.conftest import add_symbol


async def test_symbol_crud_and_events(domain: DataDomain) -> None:
    created = await add_symbol(domain, "EURUSD", display_name="Euro", description="d", source="manual")
    assert created.create_time is not None and created.active
    with pytest.raises(AlreadyExists):
        await add_symbol(domain, "EURUSD")

    got = await domain.get_symbol("EURUSD")
    assert (got.display_name, got.asset_class, got.source) == ("Euro", AssetClass.FX, "manual")

    # Only the masked field changes.
    updated = await domain.update_symbol(
        Symbol("EURUSD", display_name="EUR/USD", active=False), ["display_name"]
    )
    assert (updated.display_name, updated.active, updated.description) == ("EUR/USD", True, "d")
    assert updated.update_time is not None and created.update_time is not None
    assert updated.update_time >= created.update_time
    # Empty mask: every mutable field.
    updated = await domain.update_symbol(Symbol("EURUSD", display_name="X", asset_class=None, active=False))
    assert (updated.display_name, updated.asset_class, updated.active, updated.source) == (
        "X",
        None,
        False,
        "",
    )

    with pytest.raises(InvalidArgument) as err:
        await domain.update_symbol(Symbol("EURUSD"), ["create_time"])
    assert err.value.violations[0].field == "update_mask"
    with pytest.raises(NotFound):
        await domain.update_symbol(Symbol("NOPE"), ["active"])
    with pytest.raises(NotFound):
        await domain.get_symbol("NOPE")

    assert await domain.delete_symbol("EURUSD") == 0
    with pytest.raises(NotFound):
        await domain.delete_symbol("EURUSD")

    events = (await domain.list_events()).events
    assert [(e.type, e.symbol) for e in events] == [
        (EventType.SYMBOL_ADDED, "EURUSD"),
        (EventType.SYMBOL_UPDATED, "EURUSD"),
        (EventType.SYMBOL_UPDATED, "EURUSD"),
        (EventType.SYMBOL_REMOVED, "EURUSD"),
    ]


async def test_list_symbols_filters_and_pages(domain: DataDomain) -> None:
    names = [f"FX{i:02d}" for i in range(7)] + ["GOOG", "MSFT", "SP500"]
    for name in names:
        asset = AssetClass.FX if name.startswith("FX") else AssetClass.EQUITY
        await add_symbol(domain, name, asset_class=asset, active=name != "FX03")

    seen: list[str] = []
    token = ""
    while True:
        page = await domain.list_symbols(
            page_size=3, page_token=token, asset_class=AssetClass.FX, active_only=True
        )
        assert page.total_size == 6
        seen += [s.symbol for s in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [n for n in names if n.startswith("FX") and n != "FX03"]

    page = await domain.list_symbols(prefix="MS")
    assert [s.symbol for s in page.items] == ["MSFT"] and page.next_page_token == ""

    first = await domain.list_symbols(page_size=2)
    with pytest.raises(InvalidArgument) as err:  # token of another filter
        await domain.list_symbols(page_size=2, page_token=first.next_page_token, prefix="FX")
    assert err.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        await domain.list_symbols(page_token="garbage!")
    with pytest.raises(InvalidArgument):
        await domain.list_symbols(page_size=1001)


async def test_strategy_crud_and_pages(domain: DataDomain) -> None:
    strategy = Strategy(
        "ma-crossover",
        display_name="MA crossover",
        symbols=("EURUSD", "GOOG"),
        timeframe=Timeframe.H1,
        parameters={"fast": 10, "slow": 50, "filters": {"atr": 1.5}},
    )
    created = await domain.create_strategy(strategy)
    assert created.parameters == strategy.parameters and created.symbols == ("EURUSD", "GOOG")
    with pytest.raises(AlreadyExists):
        await domain.create_strategy(strategy)

    updated = await domain.update_strategy(
        Strategy("ma-crossover", parameters={"fast": 5}, active=False), ["parameters", "active"]
    )
    assert updated.parameters == {"fast": 5} and not updated.active
    assert updated.timeframe is Timeframe.H1 and updated.display_name == "MA crossover"

    for i in range(4):
        await domain.create_strategy(Strategy(f"s-{i}"))
    page = await domain.list_strategies(page_size=3)
    assert [s.strategy_id for s in page.items] == ["ma-crossover", "s-0", "s-1"] and page.total_size == 5
    page = await domain.list_strategies(page_size=3, page_token=page.next_page_token)
    assert [s.strategy_id for s in page.items] == ["s-2", "s-3"] and page.next_page_token == ""
    assert (await domain.list_strategies(active_only=True)).total_size == 4

    await domain.delete_strategy("ma-crossover")
    with pytest.raises(NotFound):
        await domain.get_strategy("ma-crossover")
    with pytest.raises(NotFound):
        await domain.delete_strategy("ma-crossover")
