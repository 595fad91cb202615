"""Protobuf helpers every servicer's convert module shares (well-known types, job states)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kitrading.common.v1 import job_pb2
from services.runtime.errors import InvalidArgument
from services.runtime.jobs import JobState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | str | Any | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime, a pandas Timestamp or an ISO string as a Timestamp; naive values are UTC.
    None (or "") stays None, so the field stays unset."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if isinstance(value, datetime) and value.tzinfo is not None:  # the hot path (pandas' too)
        # Plain arithmetic: Timestamp.FromDatetime costs ~10x more (thousands per detection reply).
        delta = value - _EPOCH
        return timestamp_pb2.Timestamp(
            seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
        )
    ts = timestamp_pb2.Timestamp()
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


#: Bounds of `request_summary`: items of a repeated field shown, characters of a string, nesting.
SUMMARY_ITEMS = 3
SUMMARY_CHARS = 200
SUMMARY_DEPTH = 4


def _summary_value(value: Any, field: FieldDescriptor, depth: int) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _summary(value, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type.values_by_number.get(value) if field.enum_type is not None else None
        return enum.name if enum is not None else value
    if isinstance(value, str):
        return (
            value
            if len(value) <= SUMMARY_CHARS
            else value[:SUMMARY_CHARS] + f"…(+{len(value) - SUMMARY_CHARS})"
        )
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _summary(message: Message, depth: int = 0) -> Any:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        try:
            return timestamp_pb2.Timestamp.ToDatetime(message, tzinfo=UTC).isoformat()  # type: ignore[arg-type]
        except (ValueError, OverflowError):  # out of datetime's range: the raw seconds
            return {"seconds": message.seconds}  # type: ignore[attr-defined]
    if name == "google.protobuf.FieldMask":
        return [str(p)[:SUMMARY_CHARS] for p in message.paths[:20]]  # type: ignore[attr-defined]
    if depth >= SUMMARY_DEPTH:
        return "…"
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        key = field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            keys = list(value)
            out[key] = {
                str(k)[:SUMMARY_CHARS]: _summary_value(value[k], inner, depth) for k in keys[:SUMMARY_ITEMS]
            }
            if len(keys) > SUMMARY_ITEMS:
                out[key]["…"] = f"{len(keys)} entries"
        elif field.is_repeated:
            if len(value) <= SUMMARY_ITEMS:
                out[key] = [_summary_value(v, field, depth) for v in value]
            else:
                out[key] = {"count": len(value), "first": _summary_value(value[0], field, depth)}
        else:
            out[key] = _summary_value(value, field, depth)
    return out


def request_summary(message: Message) -> dict[str, Any]:
    """A bounded, JSON-ready picture of a request for logs: scalar fields as they are (long strings
    cut), enums by name, a repeated field of more than SUMMARY_ITEMS items as its count and first
    item, nesting cut at SUMMARY_DEPTH. Linear in what it shows, not in the request; never raises."""
    try:
        summary = _summary(message)
    except Exception as exc:  # a log must never fail the call it describes
        return {"unsummarised": type(message).__name__, "why": str(exc)[:SUMMARY_CHARS]}
    return summary if isinstance(summary, dict) else {"value": summary}


def update_paths(paths: Sequence[str], resource: Message, mutable: Sequence[str]) -> list[str]:
    """The fields an update changes (AIP-134): the mask's `paths` when given; without a mask, the
    mutable fields `resource` sets (proto3: a field at its default value is not set unless it has
    presence, so clearing a field or setting a plain bool to false needs the mask). InvalidArgument
    naming `update_mask` when that leaves nothing to change."""
    if paths:
        return list(paths)
    present = {field.name for field, _ in resource.ListFields()}
    implied = [name for name in mutable if name in present]
    if not implied:
        raise InvalidArgument(
            "update_mask",
            f"nothing to update: set fields in the body or name them in update_mask ({', '.join(mutable)})",
        )
    return implied
