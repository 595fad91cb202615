"""Sync from a real local HTTP server serving real EURUSD/GOOG candles in the EasyInsight format."""

from __future__ import annotations

import pytest

from services.data.models import AssetClass, Candle, EventType, SyncFinished, Timeframe
from services.data.service import DataDomain
from services.runtime.errors import FailedPrecondition, NotFound
from services.runtime.jobs import JobState
from tests.data.conftest import DomainFactory, add_symbol
from tests.data.fake_easyinsight import FakeEasyInsight

H1 = Timeframe.H1


async def test_not_configured(domain: DataDomain) -> None:
    status = await domain.get_sync_status()
    assert not status.source_configured and status.latest_job is None and not status.running
    with pytest.raises(FailedPrecondition):
        await domain.start_sync()


async def test_incremental_sync_with_retries(
    domain_factory: DomainFactory, source: tuple[FakeEasyInsight, str], eurusd: list[Candle]
) -> None:
    fake, url = source
    domain = await domain_factory(easyinsight_api_url=url, sync_page_limit=700)
    await add_symbol(domain, "EURUSD")
    fake.series[("EURUSD", "H1")] = eurusd[:3000]
    fake.fail_next = 3  # the first three requests get 503

    job = await domain.start_sync(["EURUSD"])
    assert job.state is JobState.QUEUED and job.timeframe is H1
    job = await domain.wait_sync_job(job.job_id)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.state.terminal and not JobState.RUNNING.terminal
    assert (job.candles_upserted, job.symbols_done, job.symbols_failed) == (3000, 1, 0)
    assert job.results[0].state is JobState.SUCCEEDED and job.results[0].candles_upserted == 3000
    assert job.start_time and job.end_time and job.end_time >= job.start_time
    assert len(fake.requests) == 3 + 5  # 3 failures, then pages of 700, 700, 700, 700, 200
    assert "since" not in fake.requests[0]
    assert (await domain.get_latest_candle("EURUSD", H1)) == eurusd[2999]

    # The source grows; a second sync asks only for what is newer than the last stored bar.
    fake.series[("EURUSD", "H1")] = eurusd
    fake.requests.clear()
    fake.served = 0
    second = await domain.wait_sync_job((await domain.start_sync(["EURUSD"])).job_id)
    assert second.state is JobState.SUCCEEDED and second.candles_upserted == 2000
    assert fake.served == 2000
    assert fake.requests[0]["since"] == eurusd[2999].time.isoformat().replace("+00:00", "Z")
    assert (await domain.get_symbol("EURUSD")).series[0].count == 5000

    status = await domain.get_sync_status()
    assert status.source_configured and status.source_url == url and not status.running
    assert status.latest_job is not None and status.latest_job.job_id == second.job_id

    page = await domain.list_sync_jobs(page_size=1)
    assert [j.job_id for j in page.items] == [second.job_id]
    page = await domain.list_sync_jobs(page_size=1, page_token=page.next_page_token)
    assert [j.job_id for j in page.items] == [job.job_id] and page.next_page_token == ""

    finished = (await domain.list_events(types=[EventType.SYNC_FINISHED])).events
    assert [e.details for e in finished] == [
        SyncFinished(job.job_id, JobState.SUCCEEDED, 3000),
        SyncFinished(second.job_id, JobState.SUCCEEDED, 2000),
    ]


async def test_per_symbol_failures_and_gave_up(
    domain_factory: DomainFactory,
    source: tuple[FakeEasyInsight, str],
    sample_candles: dict[str, list[Candle]],
) -> None:
    fake, url = source
    domain = await domain_factory(easyinsight_api_url=url, sync_retries=2)
    await add_symbol(domain, "GOOG", asset_class=AssetClass.EQUITY)
    await add_symbol(domain, "UNKNOWN1")
    await add_symbol(domain, "OFF", active=False)
    fake.series[("GOOG", "D1")] = sample_candles["GOOG"]

    job = await domain.wait_sync_job((await domain.start_sync(timeframe=Timeframe.D1)).job_id)
    assert job.symbols == ("GOOG", "UNKNOWN1")  # every active symbol
    assert job.state is JobState.FAILED and job.symbols_done == 1 and job.symbols_failed == 1
    by_symbol = {r.symbol: r for r in job.results}
    assert by_symbol["GOOG"].candles_upserted == 2148
    assert "HTTP 404" in by_symbol["UNKNOWN1"].error

    fake.fail_next = 10  # more than 1 + 2 retries
    job = await domain.wait_sync_job((await domain.start_sync(["GOOG"], Timeframe.D1, full=True)).job_id)
    assert job.state is JobState.FAILED and "gave up after 3 attempts: HTTP 503" in job.results[0].error

    with pytest.raises(NotFound):
        await domain.start_sync(["NOPE"])
    with pytest.raises(NotFound):
        await domain.get_sync_job("nope")
