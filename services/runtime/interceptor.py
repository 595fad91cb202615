"""The one server interceptor every service runs behind.

For each unary and server-streaming RPC it: refuses calls while the service is starting
(UNAVAILABLE), enforces the service's concurrency limits (RESOURCE_EXHAUSTED), validates the request
against the protovalidate rules in the contract (INVALID_ARGUMENT with BadRequest field violations),
publishes the deadline to domain code, maps DomainError to its status code with google.rpc details,
turns anything else into INTERNAL with a log id (never a stack trace to the caller), and records
metrics, one structured log line and observers (e.g. the Data service's query log).
Servicers therefore contain no try/except boilerplate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import protovalidate
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from services.runtime import metrics, tracing
from services.runtime.deadline import set_deadline
from services.runtime.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.runtime.status import internal_status, status_for, trailing_metadata

log = logging.getLogger("kitrading.rpc")

#: Methods that bypass limits, readiness and validation (health, reflection).
_INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class RpcRecord:
    """What an observer learns about one finished RPC."""

    service: str
    method: str  # full: /kitrading.data.v1.DataService/ListSymbols
    request: Message
    response: Message | None  # unary only
    messages_sent: int
    code: str
    duration_s: float

    @property
    def short_method(self) -> str:
        return self.method.rsplit("/", 1)[-1]


Observer = Callable[[RpcRecord], None]


@dataclass(slots=True)
class _Call:
    """What the runtime tracks about one call while it runs."""

    start: float
    peer: str
    code: str = "OK"
    message: str = ""  # of a failed call's status
    sent: int = 0
    response: Message | None = None


def _code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def _field_path(violation: protovalidate.Violation) -> str:
    """`candles[3].high` from a protovalidate field path; message-level rules name it in their id."""
    proto: Any = violation.proto
    parts: list[str] = []
    for element in proto.field.elements if proto.field is not None else ():
        name = str(element.field_name)
        subscript = element.subscript
        if subscript is not None:
            name += f"[{subscript.value}]"
        parts.append(name)
    if parts:
        return ".".join(parts)
    # Message-level CEL rules use the convention `<field>.<rule>` for their id.
    rule_id = str(proto.rule_id or "")
    return rule_id.split(".", 1)[0] if "." in rule_id else rule_id or "request"


_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
#: Message type -> whether a string can occur anywhere inside it (a Candle cannot: skipped unwalked).
_HOLDS_STRINGS: dict[str, bool] = {}
NUL_MESSAGE = "must not contain NUL characters (U+0000)"


def _holds_strings(descriptor: Any) -> bool:
    """Whether a string can occur anywhere inside messages of this type (`descriptor`: a message
    Descriptor, or None for a field that is not a message)."""
    if descriptor is None:
        return False
    known = _HOLDS_STRINGS.get(descriptor.full_name)
    if known is not None:
        return known
    _HOLDS_STRINGS[descriptor.full_name] = False  # a recursive type (Struct/Value) is being decided
    result = any(
        f.type == _STRING or (f.type == _MESSAGE and _holds_strings(f.message_type))
        for f in descriptor.fields
    )
    _HOLDS_STRINGS[descriptor.full_name] = result
    return result


def _nul_value(value: Any, field: FieldDescriptor, path: str, out: list[str]) -> None:
    if field.type == _STRING:
        if "\x00" in value:
            out.append(path)
    elif field.type == _MESSAGE and _holds_strings(field.message_type):
        _nul_fields(value, path, out)


def _nul_json(message: Message, path: str, out: list[str]) -> None:
    """google.protobuf.Struct / Value / ListValue, named as JSON: `parameters["a"][0]`."""
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for key, value in message.fields.items():  # type: ignore[attr-defined]
            if "\x00" in key:
                out.append(f"{path} (a key)")
            _nul_json(value, f'{path}["{key}"]', out)
    elif kind == "google.protobuf.ListValue":
        for i, value in enumerate(message.values):  # type: ignore[attr-defined]
            _nul_json(value, f"{path}[{i}]", out)
    else:  # Value
        which = message.WhichOneof("kind")
        if which == "string_value" and "\x00" in message.string_value:  # type: ignore[attr-defined]
            out.append(path)
        elif which in ("struct_value", "list_value"):
            _nul_json(getattr(message, which), path, out)


_JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def _nul_fields(message: Message, path: str, out: list[str]) -> None:
    """Append the path of every string holding NUL, walking only types that can hold strings."""
    if message.DESCRIPTOR.full_name in _JSON_TYPES:
        _nul_json(message, path, out)
        return
    for field, value in message.ListFields():
        if field.type != _STRING and not (field.type == _MESSAGE and _holds_strings(field.message_type)):
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for key in value:
                if key_field.type == _STRING and "\x00" in key:
                    out.append(f"{name} (a key)")
                _nul_value(value[key], value_field, f'{name}["{key}"]', out)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _nul_value(item, field, f"{name}[{i}]", out)
        else:
            _nul_value(value, field, name, out)


def nul_violations(request: Message) -> list[str]:
    """Paths (`strategy.symbols[1]`, `strategy.parameters["a"][0]`) of strings that hold NUL."""
    out: list[str] = []
    if _holds_strings(request.DESCRIPTOR):
        _nul_fields(request, "", out)
    return out


def validate_request(request: Message) -> None:
    """Raise InvalidArgument naming every field that breaks a rule in the contract, and every string
    that holds NUL (no store of the mesh can keep one; PostgreSQL text rejects it)."""
    found = [FieldViolation(path, NUL_MESSAGE) for path in nul_violations(request)]
    named = {v.field for v in found}
    found += [
        FieldViolation(_field_path(v), str(v.proto.message or v.proto.rule_id))
        for v in protovalidate.collect_violations(request)
        if _field_path(v) not in named
    ]
    if found:
        raise InvalidArgument.of(found)


#: A stream that has produced nothing for this long gets its response headers anyway (an SSE client
#: through the gateway sees the stream open); an error raised sooner keeps its own HTTP status.
HEADERS_AFTER_S = 0.25


async def _paced(
    items: AsyncIterator[Message],
    context: grpc.aio.ServicerContext,
    stop: asyncio.Event | None,
    service: str,
) -> AsyncIterator[Message]:
    """`items`, with headers sent after HEADERS_AFTER_S of silence, ending early when `stop` is set.

    `stop` (draining) ends subscriptions with UNAVAILABLE (reason DRAINING): the subscriber resumes
    elsewhere from its last id instead of holding shutdown for the whole grace period.
    """
    iterator = aiter(items)
    stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
    waiters: set[asyncio.Future[Any]] = {stopper} if stopper is not None else set()
    step: asyncio.Future[Message] | None = None
    headers_sent = False
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait(
                {step, *waiters},
                timeout=None if headers_sent else HEADERS_AFTER_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                await context.send_initial_metadata(())
                headers_sent = True
                await asyncio.wait({step, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise Unavailable(f"{service} is shutting down; resubscribe", reason="DRAINING")
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            headers_sent = True
            yield item
    finally:
        if stopper is not None:
            stopper.cancel()
        if step is not None and not step.done():
            # The call was cancelled (client gone, deadline) or is draining: let the servicer's
            # generator unwind inside its own step before closing it.
            step.cancel()
            await asyncio.wait({step})
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of its type. Without it, gRPC
    answers UNKNOWN with the parser's exception class in the message; the interceptor turns it into
    INVALID_ARGUMENT naming the type (and records an empty message of that type)."""

    __slots__ = ("empty",)

    def __init__(self, empty: Message) -> None:
        self.empty = empty

    def error(self) -> InvalidArgument:
        name = self.empty.DESCRIPTOR.full_name
        return InvalidArgument(
            "request", f"the request is not a valid {name} message (malformed or too deeply nested protobuf)"
        )


def _tolerant(deserializer: Callable[[bytes], Message] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or RecursionError-like depth limits of the parser
            return Undecodable(deserializer(b""))

    return decode


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        service: str,
        domain: str,
        max_concurrent_unary: int,
        max_concurrent_streams: int,
        is_started: Callable[[], bool],
        observers: Sequence[Observer] = (),
        admission_wait_s: float = 0.0,
        leader_only: Iterable[str] = (),
        is_leader: Callable[[], bool] = lambda: True,
        leader: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.service = service
        self.domain = domain
        self.max_concurrent_unary = max_concurrent_unary
        self.max_concurrent_streams = max_concurrent_streams
        #: How long a unary call over the limit waits for a slot (bounded by its deadline) before
        #: RESOURCE_EXHAUSTED: a burst is served in order, overload is still refused quickly.
        self.admission_wait_s = admission_wait_s
        #: Unary calls waiting for a slot, first come first served; a finishing call hands its slot
        #: to the first (the count of calls in flight does not drop, so no newcomer takes it).
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.is_started = is_started
        #: Full method paths only the lease holder answers (the registry's `leader_methods`).
        self.leader_only = frozenset(leader_only)
        self.is_leader = is_leader
        self.leader = leader
        self.observers = list(observers)
        self.unary_in_flight = 0
        self.streams_in_flight = 0
        #: Set when the server starts draining: subscriptions (`Watch*` streams) end at once with
        #: UNAVAILABLE so clients resume elsewhere; finite streams (an LLM answer) get the grace period.
        self.draining = asyncio.Event()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_INFRASTRUCTURE_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    # -- wrappers -------------------------------------------------------------------------------

    async def _admit(self, streaming: bool, context: grpc.aio.ServicerContext) -> None:
        """Take a slot (counted in flight) or raise: UNAVAILABLE while starting, RESOURCE_EXHAUSTED
        over the limit (a unary call first waits up to `admission_wait_s` for one)."""
        if not self.is_started():
            raise Unavailable(f"{self.service} is starting; retry shortly", reason="SERVICE_STARTING")
        if streaming:
            if self.streams_in_flight >= self.max_concurrent_streams:
                raise ResourceExhausted(
                    f"{self.service} has {self.streams_in_flight} open streams "
                    f"(limit {self.max_concurrent_streams})",
                    reason="CONCURRENCY_LIMIT",
                )
            self.streams_in_flight += 1
            return
        if self.unary_in_flight < self.max_concurrent_unary and not self._waiting:
            self.unary_in_flight += 1
            return
        if not await self._wait_for_slot(context):
            raise ResourceExhausted(
                f"{self.service} is handling {self.unary_in_flight} calls "
                f"(limit {self.max_concurrent_unary}, none freed within {self.admission_wait_s:g} s)",
                reason="CONCURRENCY_LIMIT",
            )

    async def _wait_for_slot(self, context: grpc.aio.ServicerContext) -> bool:
        """Queue for a slot; True when one was handed over (already counted in flight)."""
        wait = self.admission_wait_s
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, remaining)
        if wait <= 0:
            return False
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await asyncio.wait((slot,), timeout=wait)
        except BaseException:  # cancelled while queued: a slot handed over meanwhile passes on
            if slot.done() and not slot.cancelled():
                self._release_unary()
            else:
                slot.cancel()
            raise
        if not slot.done():  # timed out: leave the queue (the releaser skips cancelled entries)
            slot.cancel()
            return False
        return True

    def _release_unary(self) -> None:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes on; the count stays
                return
        self.unary_in_flight -= 1

    def _wrap_unary(self, inner: Any, method: str) -> Callable[[Message, Any], Awaitable[Message]]:
        async def behavior(request: Message, context: grpc.aio.ServicerContext) -> Message:
            async with self._guard(request, context, method, streaming=False) as call:
                call.response = await inner(request, context)
                call.sent = 1
                return call.response

        return behavior

    def _wrap_stream(self, inner: Any, method: str) -> Callable[[Message, Any], AsyncIterator[Message]]:
        subscription = method.rsplit("/", 1)[-1].startswith("Watch")

        async def behavior(request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
            async with self._guard(request, context, method, streaming=True) as call:
                drain = self.draining if subscription else None
                async for item in _paced(inner(request, context), context, drain, self.service):
                    yield item
                    call.sent += 1

        return behavior

    @asynccontextmanager
    async def _guard(
        self, request: Message, context: grpc.aio.ServicerContext, method: str, *, streaming: bool
    ) -> AsyncIterator[_Call]:
        """Everything around one call: admission, validation, deadline, error mapping, accounting."""
        call = _Call(start=time.perf_counter(), peer=context.peer())  # peer: never after teardown
        in_flight = metrics.RPC_IN_FLIGHT.labels(self.service, method)
        admitted = False
        span = (
            tracing.start_server_span(method, context.invocation_metadata(), call.peer)
            if tracing.ENABLED
            else None
        )
        try:
            if method in self.leader_only and not self.is_leader():
                raise Unavailable(
                    f"{self.service}: this instance serves reads; training and schedules run on "
                    f"{self.leader() or 'the instance holding the lease'} (the gateway routes there); "
                    "retry shortly",
                    reason="NOT_LEADER",
                )
            await self._admit(streaming, context)
            admitted = True
            in_flight.inc()
            if isinstance(request, Undecodable):
                bad, request = request, request.empty  # observers see an empty message of the type
                raise bad.error()
            validate_request(request)
            set_deadline(context.time_remaining())
            yield call
        except BaseException as exc:
            call.code, status = self._classify(exc, context, method)
            if status is not None:
                call.message = status.message
                await context.abort(_code(call.code), status.message, trailing_metadata(status))
            raise
        finally:
            if admitted:
                if streaming:
                    self.streams_in_flight -= 1
                else:
                    self._release_unary()
                in_flight.dec()
            self._finish(method, request, call)  # its log line still names the span's trace
            if span is not None:
                span.end(call.code, call.message)

    def _classify(
        self, exc: BaseException, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[str, status_pb2.Status | None]:
        """The final code of a failed call, and the status to abort with (None: already decided).

        Called while the call is still alive, so reading `context` is safe here.
        """
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            remaining = context.time_remaining()
            return ("DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"), None
        if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted on its own
            code = context.code()
            return (code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"), None
        # One id finds everything about a failed call: the trace's, in the error's ErrorInfo metadata.
        trace_id = tracing.current_trace_id() if tracing.ENABLED else None
        if isinstance(exc, DomainError):
            status_code, status = status_for(exc, self.domain, trace_id=trace_id)
            return status_code.name, status
        log_id = uuid.uuid4().hex[:12]
        log.error("unhandled error in %s", method, exc_info=exc, extra={"log_id": log_id, "method": method})
        return "INTERNAL", internal_status(log_id, self.domain, trace_id=trace_id)

    def _finish(self, method: str, request: Message, call: _Call) -> None:
        code, sent, duration = call.code, call.sent, time.perf_counter() - call.start
        metrics.RPC_REQUESTS.labels(self.service, method, code).inc()
        metrics.RPC_LATENCY.labels(self.service, method).observe(duration)
        if code != "OK":
            metrics.RPC_ERRORS.labels(self.service, method, code).inc()
        log.info(
            "rpc",
            extra={
                "method": method,
                "code": code,
                "duration_ms": round(duration * 1000, 3),
                "sent": sent,
                "peer": call.peer,
            },
        )
        record = RpcRecord(self.service, method, request, call.response, sent, code, duration)
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer must never fail the RPC
                log.exception("rpc observer failed", extra={"method": method})
