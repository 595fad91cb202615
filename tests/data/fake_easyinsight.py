"""A real HTTP/1.1 server on 127.0.0.1 speaking the EasyInsight candles format (docs/data.md).

It serves whatever candles the test puts in `series`, can fail the next N requests with a status
(`fail_next`), can take `delay_s` over each answer (a slow source, to stop a sync mid-way), and
records every request's query parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from services.data.models import Candle


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeEasyInsight:
    series: dict[tuple[str, str], list[Candle]] = field(default_factory=dict)
    fail_next: int = 0
    fail_status: int = 503
    requests: list[dict[str, str]] = field(default_factory=list)
    served: int = 0  # candles returned in 200 responses
    delay_s: float = 0.0
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on an ephemeral port; returns the base URL."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing we need
            _, target, _ = request_line.split(" ", 2)
            status, body = self._respond(target)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, target: str) -> tuple[int, object]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append(query)
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_status, {"error": "unavailable"}
        if url.path != "/api/v1/candles":
            return 404, {"error": "not found"}
        candles = self.series.get((query.get("symbol", ""), query.get("timeframe", "")))
        if candles is None:
            return 404, {"error": f"unknown symbol {query.get('symbol')}"}
        since = datetime.fromisoformat(query["since"]) if "since" in query else None
        newer = [c for c in candles if since is None or c.time > since]
        limit = int(query.get("limit", "1000"))
        page = newer[:limit]
        self.served += len(page)
        more = len(newer) > limit
        return 200, {
            "symbol": query["symbol"],
            "timeframe": query["timeframe"],
            "candles": [
                {
                    "time": _iso(c.time),
                    "open": c.open,
                    "high": c.high,
                    "low": c.low,
                    "close": c.close,
                    "volume": c.volume,
                }
                for c in page
            ],
            "next_since": _iso(page[-1].time) if more else None,
        }
