"""The asyncio client: concurrent calls with asyncio.gather, and an async event stream.

python clients/examples/async_quickstart.py [TARGET]
"""

from __future__ import annotations

import asyncio
import sys

from kitrading.client import AsyncClient, KitradingError, connect_async
from kitrading.common.v1.market_pb2 import TIMEFRAME_H1
from kitrading.data.v1.request_response_pb2 import (
    GetSymbolStatsRequest,
    ListCandlesRequest,
    ListCandlesResponse,
    ListSymbolsRequest,
    WatchEventsRequest,
)


async def latest_candles(client: AsyncClient, symbols: list[str]) -> dict[str, ListCandlesResponse]:
    """The newest 3 H1 candles of every symbol, fetched concurrently over one channel."""
    requests = [
        ListCandlesRequest(symbol=s, timeframe=TIMEFRAME_H1, page_size=3, descending=True) for s in symbols
    ]
    responses = await asyncio.gather(*(client.data.list_candles(r) for r in requests))
    return dict(zip(symbols, responses, strict=True))


async def main(target: str | None = None, *, events: int = 3) -> int:
    async with connect_async(target, timeout=10.0) as client:
        listed = await client.data.list_symbols(ListSymbolsRequest())
        names = [s.symbol for s in listed.symbols]
        for name, response in (await latest_candles(client, names)).items():
            print(name, [round(c.close, 5) for c in response.candles])

        try:
            stats = await client.data.get_symbol_stats(
                GetSymbolStatsRequest(symbol="NOPE", timeframe=TIMEFRAME_H1)
            )
            print(stats.change_percent)
        except KitradingError as exc:  # NotFoundError, InvalidArgumentError, UnimplementedError...
            print(f"stats failed: {type(exc).__name__}: {exc.message}")

        received = 0
        async with client.data.watch_events(WatchEventsRequest(from_beginning=True)) as stream:
            async for update in stream:  # AsyncIterator[WatchEventsResponse]
                print("event", update.event.event_id, update.event.symbol)
                received += 1
                if received >= events:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None)))
