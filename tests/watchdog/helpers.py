"""Test helpers: real gRPC health servers, a probe that hangs, a store that can be down, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.watchdog.models import AlertKind, AlertPage, AlertRecord, HealthStatus, ProbeResult, TargetKind
from services.watchdog.settings import Secret, TelegramSettings, WatchdogSettings
from services.watchdog.store import MemoryAlertStore

from .fake_telegram import FakeTelegram

SERVICE = "kitrading.test.v1.TestService"
#: Shaped like a real bot token; must never show up in logs, errors or records.
TOKEN = "123456789:AAFakeTokenForTests-abcdefghijklmnop"
CHATS = ("1001", "1002")


def telegram_settings(telegram: FakeTelegram, **overrides: Any) -> TelegramSettings:
    options: dict[str, Any] = {
        "bot_token": Secret(TOKEN),
        "chat_ids": CHATS,
        "api_base": telegram.base_url,
        "request_timeout_seconds": 2.0,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    options.update(overrides)
    return TelegramSettings(**options)


def make_settings(
    home: Path,
    *,
    telegram: FakeTelegram | None = None,
    interval: float = 0.25,
    cooldown_minutes: float = 15.0,
    grace: float = 0.0,
    **telegram_overrides: Any,
) -> WatchdogSettings:
    return WatchdogSettings(
        check_interval_seconds=interval,
        alert_cooldown_minutes=cooldown_minutes,
        startup_grace_seconds=grace,
        home=home,
        disk_min_free_percent=0.0,
        disk_min_free_bytes=0,
        telegram=telegram_settings(telegram, **telegram_overrides) if telegram else TelegramSettings(),
    )


class HealthServer:
    """A grpc.aio server with only the standard health service, on 127.0.0.1 (port 0 by default)."""

    def __init__(self, service: str = SERVICE) -> None:
        self.service = service
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(
        self, port: int = 0, status: Any = health_pb2.HealthCheckResponse.SERVING
    ) -> HealthServer:
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        await self.health.set(self.service, status)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        return self

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(self.service, status)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None

    @property
    def target(self) -> tuple[str, str, str]:
        return ("svc", self.address, self.service)


class HangingProbe:
    """A target whose check never answers (a stuck service): the monitor must cut it off."""

    kind = TargetKind.GATEWAY

    def __init__(self, name: str = "hanging") -> None:
        self.name = name
        self.address = "nowhere:1"
        self.calls = 0

    async def check(self, time_limit: float) -> ProbeResult:
        self.calls += 1
        await asyncio.sleep(3600)
        return ProbeResult(HealthStatus.SERVING)  # pragma: no cover

    async def close(self) -> None:
        return None


class FlakyStore(MemoryAlertStore):
    """A memory store that fails every call while `down` is True (a database outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed_saves = 0

    async def save(self, record: AlertRecord) -> None:
        if self.down:
            self.failed_saves += 1
            raise ConnectionRefusedError("database is down")
        await super().save(record)

    async def list(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        if self.down:
            raise ConnectionRefusedError("database is down")
        return await super().list(page_size=page_size, page_token=page_token, target=target, kind=kind)


async def wait_until(predicate: Callable[[], Any], *, within: float = 5.0, step: float = 0.02) -> float:
    """Poll `predicate` until truthy; returns the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(step)
    return time.monotonic() - start
