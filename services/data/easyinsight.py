"""Client of the users' external market-data API (`EASYINSIGHT_API_URL`): HTTP with retries, parsing.

Wire format (documented in docs/data.md):

    GET {base}/api/v1/candles?symbol=EURUSD&timeframe=H1&since=2018-02-07T15:00:00Z&limit=1000

    200 {"symbol": "EURUSD", "timeframe": "H1",
         "candles": [{"time": "2018-02-07T16:00:00Z", "open": 1.2261, "high": 1.2275,
                      "low": 1.2255, "close": 1.2270, "volume": 1543.0}, ...],
         "next_since": "2018-02-07T20:00:00Z"}          # or null on the last page

`since` is exclusive (only bars with time > since) and omitted for the whole history; candles are
oldest first; `next_since` is passed as the next `since` until it is null. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff (bounded); other 4xx and malformed bodies
raise `SourceError` at once.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from services.data.ingest import as_utc
from services.data.models import Candle, Timeframe

CANDLES_PATH = "/api/v1/candles"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class SourceError(Exception):
    """The external API failed for good (after retries, or with an error that retrying cannot fix)."""


@dataclass(frozen=True, slots=True)
class CandlePage:
    """One response of the candles endpoint: bars oldest first and where to continue (None: done)."""

    candles: list[Candle]
    next_since: datetime | None


def redact_source(url: str) -> str:
    """The source URL without any user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise SourceError(f"{what} must be an ISO 8601 string")
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise SourceError(f"{what} is not ISO 8601: {value!r}") from exc


def _parse_number(item: dict[str, Any], key: str, index: int, default: float | None = None) -> float:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(f"candles[{index}].{key} must be a number")
    return float(value)


def parse_page(body: Any, symbol: str, timeframe: Timeframe) -> CandlePage:
    """Validate the JSON shape of one response (not the candle rules, which ingestion checks)."""
    if not isinstance(body, dict) or not isinstance(body.get("candles"), list):
        raise SourceError("response must be an object with a 'candles' list")
    if body.get("symbol") not in (None, symbol) or body.get("timeframe") not in (None, timeframe.value):
        raise SourceError(f"response is for {body.get('symbol')}/{body.get('timeframe')}, not {symbol}")
    candles = []
    for i, item in enumerate(body["candles"]):
        if not isinstance(item, dict):
            raise SourceError(f"candles[{i}] must be an object")
        candles.append(
            Candle(
                _parse_time(item.get("time"), f"candles[{i}].time"),
                _parse_number(item, "open", i),
                _parse_number(item, "high", i),
                _parse_number(item, "low", i),
                _parse_number(item, "close", i),
                _parse_number(item, "volume", i, 0.0),
            )
        )
    next_since = body.get("next_since")
    return CandlePage(candles, None if next_since is None else _parse_time(next_since, "next_since"))


class EasyInsightClient:
    """HTTP client of the candles endpoint with bounded exponential-backoff retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._retries = retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self.requests = 0  # attempts made, for tests and metrics

    async def close(self) -> None:
        await self._http.aclose()

    async def fetch_candles(
        self, symbol: str, timeframe: Timeframe, since: datetime | None, limit: int
    ) -> CandlePage:
        """One page of bars with time > `since` (all history when None), at most `limit`."""
        params: dict[str, str | int] = {"symbol": symbol, "timeframe": timeframe.value, "limit": limit}
        if since is not None:
            params["since"] = since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        response = await self._get(self._base + CANDLES_PATH, params)
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError("response is not JSON") from exc
        return parse_page(body, symbol, timeframe)

    async def _get(self, url: str, params: dict[str, str | int]) -> httpx.Response:
        last_error = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt))
            self.requests += 1
            try:
                response = await self._http.get(url, params=params)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise SourceError(f"HTTP {response.status_code} from {redact_source(self._base)}")
            return response
        raise SourceError(f"gave up after {self._retries + 1} attempts: {last_error}")

    def _delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): backoff * 2^(attempt-1), capped."""
        return float(min(self._backoff_max_s, self._backoff_s * math.pow(2, attempt - 1)))
