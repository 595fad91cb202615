"""Domain errors: what domain code raises when a request cannot be served.

Plain Python, no gRPC. The shared runtime's error interceptor maps each class to a gRPC status code
with `google.rpc` details (ErrorInfo with `reason`, BadRequest field violations), so servicers and
domain code never build statuses themselves. Anything that is not a DomainError becomes INTERNAL with
a generic message and a log id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: `field` is a dotted path in the request (`symbol`, `candles[3].high`)."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a domain may raise on purpose.

    `code` is a gRPC status code name, `reason` an UPPER_SNAKE machine-readable cause that clients
    can switch on; `message` is safe to show to the caller.
    """

    code: ClassVar[str] = "INTERNAL"
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request is malformed; names the offending field(s)."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        field: str,
        description: str,
        *,
        reason: str | None = None,
        more: Iterable[FieldViolation] = (),
    ) -> None:
        self.violations = [FieldViolation(field, description), *more]
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid argument: {text}", reason=reason)

    @classmethod
    def of(cls, violations: Iterable[FieldViolation], *, reason: str | None = None) -> InvalidArgument:
        items = list(violations)
        if not items:
            raise ValueError("InvalidArgument.of needs at least one violation")
        return cls(items[0].field, items[0].description, reason=reason, more=items[1:])


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state to serve this (no model yet...); the message says what to do."""

    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Unavailable(DomainError):
    """A dependency (database, another service, the engine) is down; retrying later may work."""

    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    """A queue or concurrency limit is full."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Aborted(DomainError):
    """A concurrent change conflicted; retry the whole operation."""

    code = "ABORTED"
    default_reason = "ABORTED"


class Cancelled(DomainError):
    code = "CANCELLED"
    default_reason = "CANCELLED"


class DeadlineExceeded(DomainError):
    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(DomainError):
    code = "UNIMPLEMENTED"
    default_reason = "UNIMPLEMENTED"
