"""Fixtures of the Data domain tests: a started `DataDomain` on a fresh database, real sample candles."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from services.data.models import AssetClass, Candle, Symbol
from services.data.samples import SAMPLES, load_candles
from services.data.service import DataDomain
from services.data.settings import DataSettings
from services.runtime.database_settings import DatabaseSettings
from tests.data.fake_easyinsight import FakeEasyInsight

os.environ.setdefault("OMP_NUM_THREADS", "1")

DomainFactory = Callable[..., Awaitable[DataDomain]]


def make_settings(url: str, **overrides: Any) -> DataSettings:
    """Settings for tests: the given database, no sample import at start, fast flushes and retries."""
    base = DataSettings(
        database=DatabaseSettings(url=url, pool_max_size=5),
        import_samples_on_start=False,
        query_log_flush_s=0.05,
        sync_backoff_s=0.01,
        sync_backoff_max_s=0.05,
        sync_timeout_s=5.0,
    )
    return replace(base, **overrides)


@pytest.fixture
async def domain_factory(database_url: str) -> AsyncIterator[DomainFactory]:
    """`await factory(**settings_overrides)` -> a started domain on this test's database (closed after)."""
    started: list[DataDomain] = []

    async def factory(**overrides: Any) -> DataDomain:
        domain = DataDomain.create(make_settings(database_url, **overrides))
        await domain.start()
        started.append(domain)
        return domain

    yield factory
    for domain in reversed(started):
        await domain.close()


@pytest.fixture
async def domain(domain_factory: DomainFactory) -> DataDomain:
    return await domain_factory()


@pytest.fixture
async def source() -> AsyncIterator[tuple[FakeEasyInsight, str]]:
    """A local server speaking the users' market-data API (`tests/data/fake_easyinsight.py`), its URL."""
    fake = FakeEasyInsight()
    url = await fake.start()
    yield fake, url
    await fake.close()


@pytest.fixture(scope="session")
def sample_candles() -> dict[str, list[Candle]]:
    """The real bundled data sets, by symbol (EURUSD H1, GOOG/SP500/NASDAQ/MSFT D1)."""
    return load_candles(SAMPLES)


@pytest.fixture
def eurusd(sample_candles: dict[str, list[Candle]]) -> list[Candle]:
    return sample_candles["EURUSD"]


async def add_symbol(domain: DataDomain, name: str = "EURUSD", **fields: Any) -> Symbol:
    fields.setdefault("asset_class", AssetClass.FX)
    return await domain.create_symbol(Symbol(name, **fields))
