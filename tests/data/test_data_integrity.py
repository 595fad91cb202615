"""Integrity under crashes, with a real Data service process and a real PostgreSQL:

- a sync killed mid-way (SIGKILL of the service) and rerun leaves every candle of the source exactly
  once, with no gap, and the killed job marked failed, never "running" forever;
- PostgreSQL crashing (immediate shutdown: no checkpoint, WAL recovery at the next start) while
  candles are being written loses none of the writes the service acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from bench._mesh import free_port
from kitrading.common.v1 import job_pb2, market_pb2
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2 as pb
from kitrading.data.v1 import service_pb2_grpc
from services.data.models import Candle
from tests.conftest import PostgresForTests
from tests.data.fake_easyinsight import FakeEasyInsight

SYMBOL = "EURUSD"


@contextmanager
def data_service(
    database_url: str, source_url: str, page_limit: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m services.data` on a free port against this test's database and the fake source."""
    port = free_port()
    env = {
        **os.environ,
        "KITRADING_DATABASE_URL": database_url,
        "KITRADING_DATA_PORT": str(port),
        "KITRADING_DATA_IMPORT_SAMPLES": "false",
        "KITRADING_DATA_SYNC_PAGE_LIMIT": str(page_limit),
        "EASYINSIGHT_API_URL": source_url,
        "KITRADING_METRICS": "false",
        "KITRADING_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.data"], env=env)
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _serving(target: str, timeout_s: float = 60.0) -> service_pb2_grpc.DataServiceStub:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.aio.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="kitrading.data.v1.DataService"), timeout=1
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return service_pb2_grpc.DataServiceStub(channel)
        except grpc.aio.AioRpcError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{target} never served"
        await asyncio.sleep(0.2)


async def _stored_times(database_url: str) -> list[object]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT time FROM data.candles WHERE symbol = $1 AND timeframe = 'H1' ORDER BY time",
            SYMBOL,
        )
    finally:
        await conn.close()
    return [r["time"] for r in rows]


async def test_a_sync_killed_mid_way_and_rerun_leaves_no_duplicate_and_no_gap(
    database_url: str, source: tuple[FakeEasyInsight, str], eurusd: list[Candle]
) -> None:
    fake, url = source
    series = eurusd[:3000]
    fake.series[(SYMBOL, "H1")] = series
    fake.delay_s = 0.15  # 15 pages of 200: about 2.5 s, so the kill lands mid-way
    with data_service(database_url, url, 200) as (process, target):
        stub = await _serving(target)
        await stub.CreateSymbol(
            rr.CreateSymbolRequest(symbol=pb.Symbol(symbol=SYMBOL, asset_class=market_pb2.ASSET_CLASS_FX)),
            timeout=10,
        )
        killed_job = (await stub.StartSync(rr.StartSyncRequest(symbols=[SYMBOL]), timeout=10)).job.job_id
        deadline = asyncio.get_running_loop().time() + 30
        while fake.served < 1000:
            assert asyncio.get_running_loop().time() < deadline, "the sync never got going"
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    partial = await _stored_times(database_url)
    assert 0 < len(partial) < len(series), len(partial)
    # what the killed sync wrote is the source's beginning, whole: no gap to leave behind
    assert partial == [c.time for c in series[: len(partial)]]

    with data_service(database_url, url, 200) as (_, target):
        stub = await _serving(target)
        old = (await stub.GetSyncJob(rr.GetSyncJobRequest(job_id=killed_job), timeout=10)).job
        assert old.state == job_pb2.JOB_STATE_FAILED and "interrupted" in old.error, old
        fake.delay_s = 0.0
        job_id = (await stub.StartSync(rr.StartSyncRequest(symbols=[SYMBOL]), timeout=10)).job.job_id
        while True:
            job = (await stub.GetSyncJob(rr.GetSyncJobRequest(job_id=job_id), timeout=10)).job
            if job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED):
                break
            await asyncio.sleep(0.1)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
        assert job.candles_upserted == len(series) - len(partial)  # only what was missing, from there on
    stored = await _stored_times(database_url)
    assert stored == [c.time for c in series]  # every candle once, in order, none missing


#: The writer, in a process of its own: this test process forks (PostgreSQL's pg_ctl) while it runs,
#: and a fork while gRPC threads are busy in the same process can crash the child. It upserts batches
#: of 20 H1 candles, hour `n` from `base` on, and prints `ack N` once the service acknowledged the
#: batch starting at N, `refused CODE` for a failed one; SIGTERM ends it.
WRITER = """
import signal, sys, time
from datetime import datetime, timedelta
import grpc
from google.protobuf import timestamp_pb2
from kitrading.common.v1 import market_pb2
from kitrading.data.v1 import request_response_pb2 as rr, service_pb2_grpc

target, symbol, base = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
stub = service_pb2_grpc.DataServiceStub(grpc.insecure_channel(target))
n = 0
while not stop:
    candles = []
    for i in range(n, n + 20):
        at = timestamp_pb2.Timestamp()
        at.FromDatetime(base + timedelta(hours=i))
        candles.append(market_pb2.Candle(time=at, open=1.0, high=1.01, low=0.99, close=1.0, volume=float(i)))
    request = rr.UpsertCandlesRequest(symbol=symbol, timeframe=market_pb2.TIMEFRAME_H1, candles=candles)
    try:
        stub.UpsertCandles(request, timeout=5)
        print("ack", n, flush=True)
    except grpc.RpcError as exc:
        print("refused", exc.code().name, flush=True)
        time.sleep(0.05)
    n += 20
"""


def _start_writer(target: str, base: datetime) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", WRITER, target, SYMBOL, base.isoformat()]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _crash(pgdata: Path) -> None:
    """SIGQUIT to the postmaster: PostgreSQL's immediate shutdown, its backends killed without a
    checkpoint, as a crash would leave it (the next start replays the WAL). Waits until it is gone."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGQUIT)
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"postmaster {pid} still running 15 s after SIGQUIT")


async def test_postgres_crashing_during_writes_loses_nothing_acknowledged(
    database_url: str, postgres: PostgresForTests, eurusd: list[Candle]
) -> None:
    if postgres.pgdata is None:
        pytest.skip("needs the embedded server")
    pgdata = postgres.pgdata
    base = eurusd[-1].time + timedelta(days=30)
    with data_service(database_url, "http://127.0.0.1:9", 1000) as (_, target):
        stub = await _serving(target)
        await stub.CreateSymbol(
            rr.CreateSymbolRequest(symbol=pb.Symbol(symbol=SYMBOL, asset_class=market_pb2.ASSET_CLASS_FX)),
            timeout=10,
        )
        writer = _start_writer(target, base)
        acknowledged: list[int] = []
        refused: list[str] = []
        assert writer.stdout is not None
        lines = writer.stdout

        def read_until(acks: int, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while len(acknowledged) < acks:
                assert time.monotonic() < deadline, f"only {len(acknowledged)} acks, refused {refused[-3:]}"
                word, value = lines.readline().split()
                (acknowledged.append(int(value)) if word == "ack" else refused.append(value))

        try:
            await asyncio.to_thread(read_until, 20, 60)  # 400 candles acknowledged
            try:
                await asyncio.to_thread(_crash, pgdata)
                await asyncio.sleep(1.0)  # writes meet the outage
            finally:
                await asyncio.to_thread(postgres.start)  # other tests share the server
            await asyncio.to_thread(read_until, len(acknowledged) + 10, 60)  # and resume after it
        finally:
            writer.terminate()
            rest, _ = writer.communicate(timeout=30)
        for line in rest.splitlines():
            word, value = line.split()
            (acknowledged.append(int(value)) if word == "ack" else refused.append(value))
    assert refused, "no write met the crash"
    assert set(refused) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, set(refused)
    stored = set(await _stored_times(database_url))
    missing = [n for n in acknowledged for i in range(n, n + 20) if base + timedelta(hours=i) not in stored]
    assert not missing, f"{len(missing)} acknowledged candles lost, first batches {missing[:5]}"
