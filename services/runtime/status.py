"""Domain errors and validation failures as `google.rpc.Status` with details.

Every non-OK status the mesh sends carries one `ErrorInfo` (UPPER_SNAKE reason, domain
`kitrading.<service>`), and bad input also a `BadRequest` with one field violation per bad field.
Envoy's `convert_grpc_status` turns these details into the JSON body of the HTTP error.

An error whose metadata has `retry_after_s` (a full training queue, the LLM's waiting room) also
carries a `google.rpc.RetryInfo` and the `retry-after` metadata key (whole seconds, rounded up),
which the gateway passes on as the HTTP `Retry-After` header of the 429.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.runtime.errors import DomainError, FieldViolation, InvalidArgument


def _code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def build_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    violations: Iterable[FieldViolation] = (),
) -> status_pb2.Status:
    """A `google.rpc.Status` with ErrorInfo and, when given, BadRequest field violations."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {})))
    details = [info]
    field_violations = [
        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
        for v in violations
    ]
    if field_violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(error_details_pb2.BadRequest(field_violations=field_violations))
        details.append(bad_request)
    delay = retry_after_seconds(metadata)
    if delay is not None:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=delay)))
        details.append(retry)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def retry_after_seconds(metadata: Mapping[str, str] | None) -> int | None:
    """`retry_after_s` of an error's metadata as whole seconds (at least 1), or None."""
    try:
        value = float((metadata or {})["retry_after_s"])
    except (KeyError, ValueError):
        return None
    return max(1, math.ceil(value)) if math.isfinite(value) else None


def _with_trace(metadata: Mapping[str, str], trace_id: str | None) -> Mapping[str, str]:
    return {**metadata, "trace_id": trace_id} if trace_id else metadata


def status_for(
    error: DomainError, domain: str, *, trace_id: str | None = None
) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status of a domain error; `trace_id` (tracing on) joins its ErrorInfo metadata."""
    code = _code(error.code)
    violations = error.violations if isinstance(error, InvalidArgument) else ()
    status = build_status(
        code,
        error.message,
        reason=error.reason,
        domain=domain,
        metadata=_with_trace(error.metadata, trace_id),
        violations=violations,
    )
    return code, status


def internal_status(log_id: str, domain: str, *, trace_id: str | None = None) -> status_pb2.Status:
    return build_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (log id {log_id})",
        reason="INTERNAL",
        domain=domain,
        metadata=_with_trace({"log_id": log_id}, trace_id),
    )


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, str | bytes], ...]:
    """The status details, and `retry-after` when the status has a RetryInfo."""
    out: list[tuple[str, str | bytes]] = [("grpc-status-details-bin", status.SerializeToString())]
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            out.append(("retry-after", str(max(1, info.retry_delay.seconds))))
    return tuple(out)


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
