"""Protobuf helpers every servicer's convert module shares (well-known types)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | str | Any | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime, a pandas Timestamp or an ISO string as a Timestamp; naive values are UTC.
    None (or "") stays None, so the field stays unset."""
    if value is None or (isinstance(value, str) and not value):
        return None
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, datetime) and value.tzinfo is not None:  # the hot path (pandas' too)
        ts.FromDatetime(value)
        return ts
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ts.FromDatetime(moment.astimezone(UTC))
    return ts
