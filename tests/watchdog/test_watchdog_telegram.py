"""The Bot API client against a local fake Telegram: payload, retries, 429, redaction."""

from __future__ import annotations

import logging
import time

import pytest

from services.watchdog.models import DeliveryStatus
from services.watchdog.telegram import TelegramClient, redact

from .fake_telegram import FakeTelegram
from .helpers import TOKEN, telegram_settings


async def test_send_message_is_a_bot_api_call(fake_telegram: FakeTelegram) -> None:
    client = TelegramClient(telegram_settings(fake_telegram))
    try:
        result = await client.send_message("1001", "<b>hi</b>")
    finally:
        await client.aclose()
    assert result.ok and result.attempts == 1 and result.message_id == 1
    [call] = fake_telegram.calls
    assert (call.token, call.method) == (TOKEN, "sendMessage")
    assert call.body == {"chat_id": "1001", "text": "<b>hi</b>", "parse_mode": "HTML"}


async def test_plain_text_mode_sends_no_parse_mode(fake_telegram: FakeTelegram) -> None:
    client = TelegramClient(telegram_settings(fake_telegram, parse_mode=None))
    try:
        assert (await client.send_message("1001", "plain")).ok
    finally:
        await client.aclose()
    assert "parse_mode" not in fake_telegram.calls[0].body


async def test_retries_server_errors_with_backoff(fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next(2, status=500)
    client = TelegramClient(telegram_settings(fake_telegram))
    try:
        result = await client.send_message("1001", "x")
    finally:
        await client.aclose()
    assert result.ok and result.attempts == 3
    assert [c.status for c in fake_telegram.calls] == [500, 500, 200]


async def test_gives_up_after_max_attempts(fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next(10, status=502)
    client = TelegramClient(telegram_settings(fake_telegram, max_attempts=3))
    try:
        result = await client.send_message("1001", "x")
    finally:
        await client.aclose()
    assert not result.ok and result.attempts == 3
    assert result.error is not None and result.error.startswith("HTTP 502")


async def test_honours_retry_after_of_429(fake_telegram: FakeTelegram) -> None:
    fake_telegram.rate_limit_next(1, retry_after=0.6)
    client = TelegramClient(telegram_settings(fake_telegram, backoff_initial_seconds=0.01))
    try:
        result = await client.send_message("1001", "x")
    finally:
        await client.aclose()
    assert result.ok and result.attempts == 2
    first, second = fake_telegram.calls
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.55


async def test_retry_after_over_the_limit_gives_up(fake_telegram: FakeTelegram) -> None:
    fake_telegram.rate_limit_next(1, retry_after=30)
    client = TelegramClient(telegram_settings(fake_telegram, max_retry_after_seconds=1))
    started = time.monotonic()
    try:
        result = await client.send_message("1001", "x")
    finally:
        await client.aclose()
    assert time.monotonic() - started < 1
    assert not result.ok and result.attempts == 1 and "retry_after 30" in (result.error or "")


async def test_client_errors_are_not_retried(fake_telegram: FakeTelegram) -> None:
    fake_telegram.tokens = {"999:other"}
    client = TelegramClient(telegram_settings(fake_telegram))
    try:
        result = await client.send_message("1001", "x")
    finally:
        await client.aclose()
    assert not result.ok and result.attempts == 1
    assert result.error == "HTTP 401: Unauthorized"


async def test_broadcast_reports_partial_delivery() -> None:
    with FakeTelegram(tokens={TOKEN}, chats={"1001"}) as tg:
        client = TelegramClient(telegram_settings(tg))
        try:
            outcome = await client.broadcast("x")
        finally:
            await client.aclose()
    assert outcome.status is DeliveryStatus.PARTIAL and outcome.attempts == 2
    assert outcome.error == "chat 1002: HTTP 400: Bad Request: chat not found"
    assert outcome.delivered_at is not None


async def test_token_never_in_logs_errors_or_reprs(
    fake_telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = telegram_settings(fake_telegram)
    client = TelegramClient(settings)
    fake_telegram.fail_next(1, status=500)
    try:
        assert (await client.send_message("1001", "ok")).ok  # httpx logs each request URL at INFO
    finally:
        await client.aclose()
    # Nothing listens on port 9: connection errors, whose httpx text may carry the URL.
    dead = TelegramClient(telegram_settings(fake_telegram, api_base="http://127.0.0.1:9", max_attempts=2))
    try:
        failed = await dead.send_message("1001", "x")
    finally:
        await dead.aclose()
    assert not failed.ok and failed.error
    assert "HTTP Request" in caplog.text and "/bot***/sendMessage" in caplog.text
    for text in (caplog.text, failed.error, repr(client), repr(settings), repr(failed)):
        assert TOKEN not in text
        assert TOKEN.split(":")[1] not in text


def test_redact_catches_unregistered_tokens() -> None:
    text = "POST https://api.telegram.org/bot42:secret/sendMessage and 987654321:ABCdefGHIjklMNOpqrSTUvwx"
    assert redact(text) == "POST https://api.telegram.org/bot***/sendMessage and ***"
