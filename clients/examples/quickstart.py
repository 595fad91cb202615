"""List symbols, read candles and handle a bad request with the typed SDK.

python clients/examples/quickstart.py            # the gateway on localhost:3000
python clients/examples/quickstart.py localhost:3001   # or one service, or $KITRADING_TARGET
"""

from __future__ import annotations

import sys

from kitrading.client import InvalidArgumentError, NotFoundError, connect
from kitrading.common.v1.market_pb2 import TIMEFRAME_H1
from kitrading.data.v1.request_response_pb2 import GetSymbolRequest, ListCandlesRequest, ListSymbolsRequest
from kitrading.data.v1.resources_pb2 import Symbol


def main(target: str | None = None) -> int:
    with connect(target, timeout=10.0) as client:
        # Every RPC is a method: typed request in, typed response out.
        symbols: list[Symbol] = list(client.data.list_symbols(ListSymbolsRequest(page_size=100)).symbols)
        if not symbols:
            print("no symbols yet: run `kitrading data import-samples`")
            return 1
        for symbol in symbols:
            print(f"{symbol.symbol:<10} {symbol.display_name}")

        # The newest 5 H1 candles of the first symbol, oldest first.
        first = symbols[0].symbol
        request = ListCandlesRequest(symbol=first, timeframe=TIMEFRAME_H1, page_size=5, descending=True)
        for candle in reversed(client.data.list_candles(request).candles):
            print(f"{first} {candle.time.ToJsonString()} close={candle.close:.5f}")

        # Bad input raises InvalidArgumentError with one violation per bad field.
        try:
            client.data.get_symbol(GetSymbolRequest(symbol="eur/usd"))
        except InvalidArgumentError as exc:
            for violation in exc.field_violations:
                print(f"rejected: {violation.field}: {violation.description} (reason {exc.reason})")
        except NotFoundError as exc:
            print(f"not found: {exc.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
