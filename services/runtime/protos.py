"""Protobuf helpers every servicer's convert module shares (well-known types, job states)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from kitrading.common.v1 import job_pb2
from services.runtime.jobs import JobState


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


def job_state_out(state: JobState | None) -> job_pb2.JobState.ValueType:
    """A job state as `kitrading.common.v1.JobState` (None: UNSPECIFIED)."""
    if state is None:
        return job_pb2.JOB_STATE_UNSPECIFIED
    return job_pb2.JobState.Value(f"JOB_STATE_{state.value}")


def job_state_in(value: int) -> JobState | None:
    """A request's job state filter; None when unset."""
    if value == job_pb2.JOB_STATE_UNSPECIFIED:
        return None
    return JobState(job_pb2.JobState.Name(value).removeprefix("JOB_STATE_"))  # type: ignore[arg-type]
