"""Typed exceptions for failed calls, one class per gRPC status code.

Every error the mesh sends is a `google.rpc.Status` in the `grpc-status-details-bin` trailer with one
`ErrorInfo` (machine-readable `reason`, `domain`, `metadata`) and, for bad input, `BadRequest` field
violations. `error_from_rpc` turns a failed call (sync or `grpc.aio`) into the matching subclass of
`KitradingError` with those details as attributes, so callers can write::

    try:
        client.data.get_symbol(GetSymbolRequest(symbol="eurusd"))
    except InvalidArgumentError as exc:
        for violation in exc.field_violations:
            print(violation.field, violation.description)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer that carries the serialized `google.rpc.Status`.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field: `field` is a dotted path (`symbol`, `candles[3].high`)."""

    field: str
    description: str


class KitradingError(Exception):
    """A call failed. Base of every SDK error; the subclass names the gRPC status code.

    Attributes: `code` (grpc.StatusCode), `message` (safe to show), `reason` (UPPER_SNAKE cause from
    ErrorInfo, "" when the server sent none), `domain` (`kitrading.data`...), `metadata` (ErrorInfo
    metadata), `field_violations` (from BadRequest) and `log_id` (for INTERNAL errors: the id to look
    for in the service's log).
    """

    #: The status code a subclass stands for (the base takes any code).
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.grpc_code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations)

    @property
    def log_id(self) -> str | None:
        """The server's log id for this failure (INTERNAL errors carry one), else None."""
        return self.metadata.get("log_id")

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        missing = [v for v in self.field_violations if f"{v.field}: {v.description}" not in self.message]
        if missing:
            text += " (" + "; ".join(f"{v.field}: {v.description}" for v in missing) + ")"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, domain={self.domain!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), dict(self.__dict__))


class CancelledError(KitradingError):
    """The call was cancelled (by the caller, or the server is shutting down)."""

    grpc_code = grpc.StatusCode.CANCELLED


class UnknownError(KitradingError):
    grpc_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(KitradingError):
    """The request is malformed; `field_violations` names the offending fields."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(KitradingError):
    """The call's deadline (`timeout`) passed before the server answered."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(KitradingError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(KitradingError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(KitradingError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(KitradingError):
    """Out of a resource: a queue is full, a rate or memory limit was hit. Retry later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(KitradingError):
    """The system is not in a state to do this (e.g. no trained model yet)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(KitradingError):
    grpc_code = grpc.StatusCode.ABORTED


class OutOfRangeError(KitradingError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(KitradingError):
    """The server (or the gateway route) does not implement this method."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(KitradingError):
    """A server bug; `log_id` points at the details in the service's log."""

    grpc_code = grpc.StatusCode.INTERNAL


class UnavailableError(KitradingError):
    """The service is down, starting or not ready. Idempotent (GET) methods were retried already."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DataLossError(KitradingError):
    grpc_code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(KitradingError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


#: Exception class per status code.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[KitradingError]] = {
    cls.grpc_code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def parse_status(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    """The `google.rpc.Status` from a call's trailing metadata, or None when there is none (or it is bad)."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer must not hide the real error
                return None
    return None


def error_from_status(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None
) -> KitradingError:
    """Build the typed error for `code`, taking reason, domain and violations from `status`'s details."""
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    cls = ERRORS_BY_CODE.get(code, KitradingError)
    return cls(
        message, code=code, reason=reason, domain=domain, metadata=metadata, field_violations=violations
    )


def error_from_rpc(exc: grpc.RpcError) -> KitradingError:
    """The typed error for a failed sync or `grpc.aio` call (both are `grpc.RpcError` and `Call`s)."""
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(exc) or code.name.lower()
    trailing_fn = getattr(exc, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    return error_from_status(code, message, parse_status(trailing))
