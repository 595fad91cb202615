"""Helpers for tests that run real services in-process on port 0 (a Data service with its own
database among them) and read their error details."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from kitrading import mesh
from kitrading.data.v1 import request_response_pb2 as data_rr
from kitrading.data.v1 import resources_pb2 as data_pb
from kitrading.data.v1 import service_pb2_grpc as data_grpc
from services.runtime.config import RuntimeSettings
from services.runtime.server import RunningServer, create_server


async def start_server(app: Any, name: str) -> RunningServer:
    """The service `name`'s app on the shared runtime, on a free port."""
    settings = RuntimeSettings.from_env(mesh.service(name), env={f"KITRADING_{name.upper()}_PORT": "0"})
    return await create_server(app, settings)


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes)
    reason, fields = "", []
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return reason, fields


async def fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error of a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def utc(ts: timestamp_pb2.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(ts.ToDatetime(), tz="UTC")


#: One symbol of a test Data service: (symbol, asset class, active, timeframe, candles).
SeriesRow = tuple[str, Any, bool, Any, Sequence[Any]]


@asynccontextmanager
async def data_service(postgres: Any, prefix: str, rows: Sequence[SeriesRow]) -> AsyncIterator[DataStack]:
    """A real Data service on port 0 with its own database, holding `rows` (candles of
    services.data.samples); the database is dropped afterwards."""
    from services.data import convert as data_cv
    from services.data.app import DataApp
    from tests.data.conftest import make_settings

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres.url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    server = await start_server(DataApp(make_settings(postgres.database_url(name))), "data")
    channel = grpc.aio.insecure_channel(server.target)
    stub = data_grpc.DataServiceStub(channel)
    try:
        for symbol, asset, active, timeframe, series in rows:
            await stub.CreateSymbol(
                data_rr.CreateSymbolRequest(
                    symbol=data_pb.Symbol(symbol=symbol, asset_class=asset, active=active)
                )
            )
            await stub.UpsertCandles(
                data_rr.UpsertCandlesRequest(
                    symbol=symbol, timeframe=timeframe, candles=[data_cv.candle_out(c) for c in series]
                )
            )
        yield DataStack(server.target, stub)
    finally:
        await channel.close()
        await server.stop(0)
        conn = await asyncpg.connect(postgres.url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@dataclass
class DataStack:
    target: str
    stub: data_grpc.DataServiceStub
