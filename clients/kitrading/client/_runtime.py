"""What the generated service clients call: one transport per channel, and the stream wrappers.

`_generated.py` holds one small class per service whose methods only name the RPC and its message
types; everything that happens on the wire (deadlines, metadata, error translation, cancelling a
stream that is dropped) lives here once, for sync and async.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from kitrading.client.errors import error_from_rpc

ResponseT = TypeVar("ResponseT", bound=Message)
Metadata = Sequence[tuple[str, str]]


class _Calls:
    """Defaults shared by every call on one channel, and a cache of its multi-callables."""

    def __init__(self, channel: Any, *, timeout: float | None, metadata: Metadata | None) -> None:
        self.channel = channel
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = tuple(metadata or ())
        self._callables: dict[tuple[str, str], Any] = {}

    def call_metadata(self, metadata: Metadata | None) -> tuple[tuple[str, str], ...] | None:
        merged = self.metadata + tuple(metadata or ())
        return merged or None

    def callable(self, kind: str, method: str, response_type: type[Message]) -> Any:
        key = (kind, method)
        found = self._callables.get(key)
        if found is None:
            factory = getattr(self.channel, kind)
            found = factory(
                method,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            self._callables[key] = found
        return found


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class SyncTransport(_Calls):
    """Blocking calls on a `grpc.Channel`."""

    def unary(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> ResponseT:
        call = self.callable("unary_unary", method, response_type)
        try:
            response: ResponseT = call(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.call_metadata(metadata),
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return response

    def server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> ServerStream[ResponseT]:
        call = self.callable("unary_stream", method, response_type)
        return ServerStream(call(request, timeout=timeout, metadata=self.call_metadata(metadata)))


class AsyncTransport(_Calls):
    """`grpc.aio` calls; the channel must be used from one event loop."""

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the call's gRPC deadline
        metadata: Metadata | None,
    ) -> ResponseT:
        call = self.callable("unary_unary", method, response_type)
        try:
            response: ResponseT = await call(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.call_metadata(metadata),
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return response

    def server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncServerStream[ResponseT]:
        call = self.callable("unary_stream", method, response_type)
        return AsyncServerStream(call(request, timeout=timeout, metadata=self.call_metadata(metadata)))


class ServerStream(Iterator[ResponseT], Generic[ResponseT]):
    """The responses of a server-streaming call, as they arrive.

    Iterating raises the call's `KitradingError` if it fails. `cancel()` (or leaving a `with` block)
    ends the call early; streams have no deadline unless the call was given a `timeout`.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ResponseT:
        try:
            response: ResponseT = next(self._call)
        except grpc.RpcError as exc:
            if self._cancelled:
                raise StopIteration from None
            raise error_from_rpc(exc) from None
        return response

    def cancel(self) -> None:
        """End the call; later iteration stops."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncServerStream(AsyncIterator[ResponseT], Generic[ResponseT]):
    """The responses of a `grpc.aio` server-streaming call; see `ServerStream`."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False
        self._iterator: AsyncIterator[ResponseT] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ResponseT:
        if self._iterator is None:
            self._iterator = self._call.__aiter__()
        try:
            return await self._iterator.__anext__()
        except asyncio.CancelledError:
            if self._cancelled:  # our own cancel(): grpc.aio raises CancelledError for it
                raise StopAsyncIteration from None
            raise
        except grpc.RpcError as exc:
            if self._cancelled:
                raise StopAsyncIteration from None
            raise error_from_rpc(exc) from None

    def cancel(self) -> None:
        """End the call; later iteration stops."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class SyncServiceClient:
    """Base of the generated sync service clients (`client.data`, `client.forecast`...)."""

    #: Fully-qualified protobuf service name, set by each generated class.
    SERVICE: str = ""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def _unary(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> ResponseT:
        return self._transport.unary(method, request, response_type, timeout=timeout, metadata=metadata)

    def _server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> ServerStream[ResponseT]:
        return self._transport.server_stream(
            method, request, response_type, timeout=timeout, metadata=metadata
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.SERVICE}>"


class AsyncServiceClient:
    """Base of the generated async service clients."""

    SERVICE: str = ""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def _unary(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the call's gRPC deadline
        metadata: Metadata | None,
    ) -> ResponseT:
        return await self._transport.unary(method, request, response_type, timeout=timeout, metadata=metadata)

    def _server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncServerStream[ResponseT]:
        return self._transport.server_stream(
            method, request, response_type, timeout=timeout, metadata=metadata
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.SERVICE}>"


__all__ = [
    "AsyncServerStream",
    "AsyncServiceClient",
    "AsyncTransport",
    "ServerStream",
    "SyncServiceClient",
    "SyncTransport",
]
