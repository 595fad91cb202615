"""Domain errors and validation failures as `google.rpc.Status` with details.

Every non-OK status the mesh sends carries one `ErrorInfo` (UPPER_SNAKE reason, domain
`kitrading.<service>`), and bad input also a `BadRequest` with one field violation per bad field.
Envoy's `convert_grpc_status` turns these details into the JSON body of the HTTP error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2
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
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def status_for(error: DomainError, domain: str) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = _code(error.code)
    violations = error.violations if isinstance(error, InvalidArgument) else ()
    status = build_status(
        code,
        error.message,
        reason=error.reason,
        domain=domain,
        metadata=error.metadata,
        violations=violations,
    )
    return code, status


def internal_status(log_id: str, domain: str) -> status_pb2.Status:
    return build_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (log id {log_id})",
        reason="INTERNAL",
        domain=domain,
        metadata={"log_id": log_id},
    )


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
