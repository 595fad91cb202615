"""The typed Python SDK of the KI Trading Mesh.

    from kitrading.client import connect
    from kitrading.data.v1.request_response_pb2 import ListSymbolsRequest

    with connect() as client:  # the gateway on localhost:3000, or $KITRADING_TARGET
        for symbol in client.data.list_symbols(ListSymbolsRequest(page_size=10)).symbols:
            print(symbol.symbol)

One attribute per service (`client.data`, `client.forecast`, ...), one method per RPC, typed with the
generated message classes; failures raise `KitradingError` subclasses. See docs/sdk.md.
"""

from typing import TYPE_CHECKING, Any

from kitrading.client._runtime import AsyncServerStream, ServerStream
from kitrading.client.errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    KitradingError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)

if TYPE_CHECKING:
    from kitrading.client.client import (
        AsyncClient,
        Client,
        HealthStatus,
        connect,
        connect_async,
        resolve_target,
    )

#: Loaded on first use, so `kitrading.client.codegen` imports even before `_generated.py` exists.
_LAZY = ("AsyncClient", "Client", "HealthStatus", "connect", "connect_async", "resolve_target")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kitrading.client import client

        return getattr(client, name)
    raise AttributeError(f"module 'kitrading.client' has no attribute {name!r}")


__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncServerStream",
    "CancelledError",
    "Client",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "HealthStatus",
    "InternalError",
    "InvalidArgumentError",
    "KitradingError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "ServerStream",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "connect",
    "connect_async",
    "resolve_target",
]
