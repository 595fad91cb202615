"""Telegram Bot API client: `sendMessage` with retries, and the token kept out of every text.

POST {api_base}/bot{token}/sendMessage with JSON {chat_id, text, parse_mode?}. Retried: network
errors, timeouts, 5xx, and 429 (waiting Telegram's `parameters.retry_after`); not retried: other 4xx
(bad token, unknown chat). The token is part of the URL, so every error text this module produces is
built without the URL and passed through `redact`, httpx's own request log lines are redacted by a
log filter, and no httpx exception (whose message and `.request` carry the URL) ever leaves here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.runtime.logging import redact as _redact_registered
from services.runtime.logging import register_secret
from services.watchdog.models import DeliveryOutcome, DeliveryStatus, utcnow
from services.watchdog.settings import Secret, TelegramSettings

log = logging.getLogger(__name__)

#: Telegram's limit for one message.
MAX_MESSAGE_CHARS = 4096

# Anything shaped like a bot token in a Bot API path, even one never registered.
_TOKEN_IN_PATH = re.compile(r"/bot[^/\s\"']+")
_TOKEN_SHAPE = re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{20,}\b")


def redact(text: str) -> str:
    """`text` with every registered secret and anything shaped like a bot token replaced by ***."""
    text = _redact_registered(text)
    text = _TOKEN_IN_PATH.sub("/bot***", text)
    return _TOKEN_SHAPE.sub("***", text)


class _RedactFilter(logging.Filter):
    """Rewrites a record's message with `redact` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_FILTER = _RedactFilter()
#: Loggers of the HTTP stack that may print a request URL (filters do not inherit to children).
_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def install_log_redaction() -> None:
    """Attach the redacting filter to the HTTP stack's loggers (idempotent)."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one `sendMessage` to one chat, after retries."""

    chat_id: str
    ok: bool
    attempts: int
    error: str | None = None
    message_id: int | None = None


class TelegramClient:
    """Sends messages through the Bot API. Create inside the event loop; `aclose()` when done."""

    def __init__(
        self,
        settings: TelegramSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if settings.bot_token is None:
            raise ValueError("TelegramClient needs a bot token")
        self.settings = settings
        self._token: Secret = settings.bot_token
        register_secret(self._token.reveal())
        install_log_redaction()
        self._sleep = sleep
        self._client = httpx.AsyncClient(transport=transport, timeout=settings.request_timeout_seconds)

    def __repr__(self) -> str:
        return f"TelegramClient(api_host={api_host(self.settings.api_base)!r}, token=***)"

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self) -> str:
        return f"{self.settings.api_base}/bot{self._token.reveal()}/sendMessage"

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_initial_seconds * (2 ** (attempt - 1))
        return min(self.settings.backoff_max_seconds, base) * random.uniform(0.8, 1.0)

    async def send_message(self, chat_id: str, text: str) -> SendResult:
        """Send `text` to one chat, retrying transient failures; never raises for a failed send."""
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text[:MAX_MESSAGE_CHARS]}
        if self.settings.parse_mode:
            payload["parse_mode"] = self.settings.parse_mode
        max_attempts = self.settings.max_attempts
        error = "not sent"
        for attempt in range(1, max_attempts + 1):
            wait, error, done = await self._attempt(payload, attempt)
            if done is not None:
                return SendResult(chat_id, True, attempt, message_id=done)
            if wait is None or attempt == max_attempts:
                return SendResult(chat_id, False, attempt, error=error)
            log.warning(
                "telegram sendMessage to chat %s failed (attempt %d/%d): %s; retrying in %.1f s",
                chat_id,
                attempt,
                max_attempts,
                error,
                wait,
            )
            await self._sleep(wait)
        return SendResult(chat_id, False, max_attempts, error=error)  # pragma: no cover (loop returns)

    async def _attempt(self, payload: dict[str, Any], attempt: int) -> tuple[float | None, str, int | None]:
        """One POST. Returns (seconds to wait before a retry or None for no retry, error, message id)."""
        try:
            response = await self._client.post(self._url(), json=payload)
        except httpx.TimeoutException as exc:
            return self._backoff(attempt), f"timeout ({type(exc).__name__})", None
        except httpx.HTTPError as exc:
            # str(exc) may hold the URL (and so the token): keep only what redact() leaves.
            return self._backoff(attempt), redact(f"{type(exc).__name__}: {exc}"), None
        body = _json(response)
        if response.status_code == 200 and body.get("ok") is True:
            result = body.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return None, "", int(message_id) if isinstance(message_id, int) else 0
        description = redact(str(body.get("description") or response.reason_phrase or "")).strip()
        error = f"HTTP {response.status_code}" + (f": {description[:300]}" if description else "")
        if response.status_code == 429:
            retry_after = _retry_after(body, response)
            if retry_after is None:
                return self._backoff(attempt), error, None
            if retry_after > self.settings.max_retry_after_seconds:
                return None, f"{error} (retry_after {retry_after:g} s is over the limit)", None
            return retry_after, error, None
        if response.status_code >= 500:
            return self._backoff(attempt), error, None
        return None, error, None

    async def broadcast(self, text: str, chat_ids: Sequence[str] | None = None) -> DeliveryOutcome:
        """Send `text` to every configured chat (concurrently) and summarise the outcome."""
        chats = list(chat_ids if chat_ids is not None else self.settings.chat_ids)
        if not chats:
            return DeliveryOutcome(DeliveryStatus.TELEGRAM_DISABLED, error="no chat ids configured")
        results = await asyncio.gather(*(self.send_message(chat, text) for chat in chats))
        attempts = sum(r.attempts for r in results)
        failed = [r for r in results if not r.ok]
        errors = "; ".join(f"chat {r.chat_id}: {r.error}" for r in failed) or None
        if not failed:
            return DeliveryOutcome(DeliveryStatus.SENT, attempts, None, utcnow())
        if len(failed) < len(results):
            return DeliveryOutcome(DeliveryStatus.PARTIAL, attempts, errors, utcnow())
        return DeliveryOutcome(DeliveryStatus.FAILED, attempts, errors, None)


def api_host(api_base: str) -> str:
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}" if parts.scheme else host


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(body: dict[str, Any], response: httpx.Response) -> float | None:
    parameters = body.get("parameters")
    if isinstance(parameters, dict):
        value = parameters.get("retry_after")
        if isinstance(value, int | float) and value >= 0:
            return float(value)
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    return None
