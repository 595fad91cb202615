"""Query logs: recording is cheap and never fails; listing is newest first, filterable, paged."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.data.service import DataDomain
from services.runtime.errors import InvalidArgument

PREFIX = "/kitrading.data.v1.DataService/"


async def test_record_then_list(domain: DataDomain) -> None:
    started = time.perf_counter()
    for i in range(300):
        method = "ListCandles" if i % 3 else "GetSymbol"
        domain.record_query(PREFIX + method, f'{{"i": {i}}}', 1.5 + i, i, "OK" if i % 10 else "NOT_FOUND")
    per_call_us = (time.perf_counter() - started) / 300 * 1e6
    assert per_call_us < 200  # buffered: no I/O on the caller's path

    page = await domain.list_query_logs(page_size=10)
    assert [q.parameters for q in page.items] == [f'{{"i": {i}}}' for i in range(299, 289, -1)]
    newest = page.items[0]
    assert (newest.method, newest.duration_ms, newest.rows, newest.code) == (
        PREFIX + "ListCandles",
        300.5,
        299,
        "OK",
    )

    short: list[str] = []
    token = ""
    while True:
        page = await domain.list_query_logs(page_size=40, page_token=token, method="GetSymbol")
        short += [q.parameters for q in page.items]
        token = page.next_page_token
        if not token:
            break
    assert short == [f'{{"i": {i}}}' for i in range(297, -1, -3)]
    full = await domain.list_query_logs(method=PREFIX + "GetSymbol", page_size=1000)
    assert len(full.items) == 100
    with pytest.raises(InvalidArgument):
        await domain.list_query_logs(page_token=token or "x", method="ListCandles")


async def test_background_flush_and_bad_input_never_raise(domain: DataDomain) -> None:
    domain.record_query(PREFIX + "GetSymbol", "{}", "not a number", 1, "OK")  # type: ignore[arg-type]
    domain.record_query(PREFIX + "GetSymbol", "{}", 2.0, 1, "OK")
    count = 0
    deadline = time.monotonic() + 5
    while count == 0 and time.monotonic() < deadline:  # written by the background task, not by a list
        await asyncio.sleep(0.02)
        count = await domain.pool.fetchval("SELECT count(*) FROM data.query_logs")
    assert count == 1
