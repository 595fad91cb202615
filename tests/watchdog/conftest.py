from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from .fake_telegram import FakeTelegram
from .helpers import TOKEN, HealthServer


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(tokens={TOKEN}) as tg:
        yield tg


@pytest.fixture
async def health_server() -> AsyncIterator[HealthServer]:
    server = await HealthServer().start()
    yield server
    await server.stop()
