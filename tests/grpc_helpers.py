"""Helpers for tests that run real services in-process on port 0 and read their error details."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from kitrading import mesh
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
