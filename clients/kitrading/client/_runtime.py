"""What the generated service clients call: one transport per channel, and the stream wrappers.

`_generated.py` holds one small class per service whose methods only name the RPC and its message
types; everything that happens on the wire (deadlines, metadata, error translation, cancelling a
stream that is dropped, resuming a subscription that broke) lives here once, for sync and async.

Subscriptions (the `Watch*` streams: a training job, the Data events, the watchdog's status) that
break with UNAVAILABLE (a service restarting or draining, a gateway restart) are opened again by the
stream itself, with backoff (0.2 s doubling to 2 s) for up to `RESUME_WITHIN_S` without a message:
the iterator goes on. A request with `after_event_id` resumes after the last event it delivered (no
duplicate, no gap); the others (snapshot, then events) start with a fresh snapshot. A subscription
that ends normally, or fails otherwise, ends as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from kitrading.client.errors import error_from_rpc

ResponseT = TypeVar("ResponseT", bound=Message)
Metadata = Sequence[tuple[str, str]]

#: How long a broken subscription keeps trying to come back without a message in between.
RESUME_WITHIN_S = 60.0
RESUME_BACKOFF_S = (0.2, 2.0)


def is_subscription(method: str) -> bool:
    """`/pkg.Service/WatchX`: a stream that lasts until the client leaves (resumed when it breaks)."""
    return method.rsplit("/", 1)[-1].startswith("Watch")


def resumed_request(request: Message, last: Message | None) -> Message:
    """The request that continues a broken subscription after `last` (its last response)."""
    if last is None or "after_event_id" not in request.DESCRIPTOR.fields_by_name:
        return request
    event = getattr(last, "event", None)
    event_id = getattr(event, "event_id", 0)
    if not event_id:
        return request
    again = type(request)()
    again.CopyFrom(request)
    setattr(again, "after_event_id", event_id)  # noqa: B010 - a field only some requests have
    if "from_beginning" in request.DESCRIPTOR.fields_by_name:
        setattr(again, "from_beginning", False)  # noqa: B010
    return again


def _resumable(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    return code == grpc.StatusCode.UNAVAILABLE


class _Calls:
    """Defaults shared by every call on one channel, and a cache of its multi-callables."""

    def __init__(
        self,
        channel: Any,
        *,
        timeout: float | None,
        metadata: Metadata | None,
        resume_streams: bool = True,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        #: Open a broken subscription again (the module docstring); off with `connect(retries=False)`.
        self.resume_streams = resume_streams
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
        merged = self.call_metadata(metadata)

        def open_call(message: Message) -> Any:
            return call(message, timeout=timeout, metadata=merged)

        resume = self.resume_streams and timeout is None and is_subscription(method)
        return ServerStream(open_call(request), reopen=(open_call, request) if resume else None)


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
        merged = self.call_metadata(metadata)

        def open_call(message: Message) -> Any:
            return call(message, timeout=timeout, metadata=merged)

        resume = self.resume_streams and timeout is None and is_subscription(method)
        return AsyncServerStream(open_call(request), reopen=(open_call, request) if resume else None)


class ServerStream(Iterator[ResponseT], Generic[ResponseT]):
    """The responses of a server-streaming call, as they arrive.

    Iterating raises the call's `KitradingError` if it fails. `cancel()` (or leaving a `with` block)
    ends the call early; streams have no deadline unless the call was given a `timeout`. A
    subscription is resumed when it breaks (the module docstring); `resumes` counts how often.
    """

    def __init__(self, call: Any, *, reopen: tuple[Callable[[Message], Any], Message] | None = None) -> None:
        self._call = call
        self._cancelled = False
        self._reopen = reopen
        self._last: Message | None = None
        self.resumes = 0

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ResponseT:
        broken_since: float | None = None
        delay = RESUME_BACKOFF_S[0]
        while True:
            try:
                response: ResponseT = next(self._call)
            except grpc.RpcError as exc:
                if self._cancelled:
                    raise StopIteration from None
                now = time.monotonic()
                broken_since = now if broken_since is None else broken_since
                if self._reopen is None or not _resumable(exc) or now - broken_since > RESUME_WITHIN_S:
                    raise error_from_rpc(exc) from None
                time.sleep(delay)
                delay = min(RESUME_BACKOFF_S[1], delay * 2)
                open_call, request = self._reopen
                self._call = open_call(resumed_request(request, self._last))
                self.resumes += 1
                continue
            self._last = response
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

    def __init__(self, call: Any, *, reopen: tuple[Callable[[Message], Any], Message] | None = None) -> None:
        self._call = call
        self._cancelled = False
        self._iterator: AsyncIterator[ResponseT] | None = None
        self._reopen = reopen
        self._last: Message | None = None
        self.resumes = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ResponseT:
        broken_since: float | None = None
        delay = RESUME_BACKOFF_S[0]
        while True:
            if self._iterator is None:
                self._iterator = self._call.__aiter__()
            try:
                response = await self._iterator.__anext__()
            except asyncio.CancelledError:
                if self._cancelled:  # our own cancel(): grpc.aio raises CancelledError for it
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as exc:
                if self._cancelled:
                    raise StopAsyncIteration from None
                now = time.monotonic()
                broken_since = now if broken_since is None else broken_since
                if self._reopen is None or not _resumable(exc) or now - broken_since > RESUME_WITHIN_S:
                    raise error_from_rpc(exc) from None
                await asyncio.sleep(delay)
                delay = min(RESUME_BACKOFF_S[1], delay * 2)
                open_call, request = self._reopen
                self._call = open_call(resumed_request(request, self._last))
                self._iterator = None
                self.resumes += 1
                continue
            self._last = response
            return response

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
