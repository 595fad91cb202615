"""A tiny real grpc.aio DataService for the gateway tests, built from the descriptor set alone.

Message classes come from the set's own pool (no generated code), so the fake always matches the
contracts the gateway transcodes. It serves ListSymbols (INVALID_ARGUMENT with BadRequest details for
a bad `prefix`), UpdateSymbol and UpdateStrategy (echo the resource they got), StartSync (an empty
answer) and WatchEvents (three events, `EVENT_GAP_S` apart), plus gRPC health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gateway.descriptors import Contracts
from services.runtime.errors import ResourceExhausted
from services.runtime.status import status_for, trailing_metadata

SERVICE = "kitrading.data.v1.DataService"
EVENT_GAP_S = 0.4
SYMBOLS = ("EURUSD", "GBPUSD", "GOOG")


class DataMessages:
    """Dynamic message classes of kitrading.data.v1 by short name (`DataMessages(c).ListSymbolsRequest`)."""

    def __init__(self, contracts: Contracts) -> None:
        self._contracts = contracts

    def __getattr__(self, name: str) -> Any:
        full = name if "." in name else f"kitrading.data.v1.{name}"
        return message_factory.GetMessageClass(self._contracts.message(full))


def _bad_request(field: str, description: str) -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"invalid argument: {field}: {description}"
    )
    status.details.add().Pack(detail)
    return rpc_status.to_status(status)


class FakeData:
    def __init__(self, contracts: Contracts) -> None:
        self.m = DataMessages(contracts)
        self.attempts: dict[str, int] = {}

    async def list_symbols(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        if request.prefix.startswith("!"):
            await context.abort_with_status(_bad_request("prefix", "must not start with '!'"))
        names = [s for s in SYMBOLS if s.startswith(request.prefix)]
        if request.page_size:
            names = names[: request.page_size]
        response: Message = self.m.ListSymbolsResponse(
            symbols=[self.m.Symbol(symbol=s, display_name=s.lower(), active=True) for s in names],
            total_size=len(names),
        )
        return response

    async def get_symbol(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        """`FLAKY*`: UNAVAILABLE on the first attempt of each name (a service restarting), then the
        symbol with the attempt count as its display name; `DOWN`: always UNAVAILABLE."""
        if request.symbol == "BUSY":  # a full queue, as the runtime answers it (status + metadata)
            error = ResourceExhausted(
                "queue full", reason="TRAINING_QUEUE_FULL", metadata={"retry_after_s": "6.2"}
            )
            _, status = status_for(error, "kitrading.data")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", trailing_metadata(status))
        attempt = self.attempts[request.symbol] = self.attempts.get(request.symbol, 0) + 1
        if request.symbol == "DOWN" or (request.symbol.startswith("FLAKY") and attempt == 1):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        response: Message = self.m.GetSymbolResponse(
            symbol=self.m.Symbol(symbol=request.symbol, display_name=f"attempt {attempt}")
        )
        return response

    async def update_symbol(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        """Echoes the symbol it was asked to change, so a test sees which id reached the service;
        `FLAKY*` symbols are UNAVAILABLE on their first attempt (writes must not be retried)."""
        name = request.symbol.symbol
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        if name.startswith("FLAKY") and attempt == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if name.startswith("FLAKY"):
            response_flaky: Message = self.m.UpdateSymbolResponse(
                symbol=self.m.Symbol(symbol=name, display_name=f"attempt {attempt}")
            )
            return response_flaky
        response: Message = self.m.UpdateSymbolResponse(symbol=request.symbol)
        return response

    async def update_strategy(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        response: Message = self.m.UpdateStrategyResponse(strategy=request.strategy)
        return response

    async def start_sync(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        response: Message = self.m.StartSyncResponse()
        return response

    async def watch_events(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        for i in range(3):
            if i:
                await asyncio.sleep(EVENT_GAP_S)
            event = self.m.Event(event_id=request.after_event_id + i + 1, symbol="EURUSD")
            yield self.m.WatchEventsResponse(event=event)


def data_handler(contracts: Contracts) -> grpc.GenericRpcHandler:
    fake = FakeData(contracts)
    m = fake.m
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetSymbol": grpc.unary_unary_rpc_method_handler(
                fake.get_symbol,
                request_deserializer=m.GetSymbolRequest.FromString,
                response_serializer=m.GetSymbolResponse.SerializeToString,
            ),
            "ListSymbols": grpc.unary_unary_rpc_method_handler(
                fake.list_symbols,
                request_deserializer=m.ListSymbolsRequest.FromString,
                response_serializer=m.ListSymbolsResponse.SerializeToString,
            ),
            "UpdateSymbol": grpc.unary_unary_rpc_method_handler(
                fake.update_symbol,
                request_deserializer=m.UpdateSymbolRequest.FromString,
                response_serializer=m.UpdateSymbolResponse.SerializeToString,
            ),
            "UpdateStrategy": grpc.unary_unary_rpc_method_handler(
                fake.update_strategy,
                request_deserializer=m.UpdateStrategyRequest.FromString,
                response_serializer=m.UpdateStrategyResponse.SerializeToString,
            ),
            "StartSync": grpc.unary_unary_rpc_method_handler(
                fake.start_sync,
                request_deserializer=m.StartSyncRequest.FromString,
                response_serializer=m.StartSyncResponse.SerializeToString,
            ),
            "WatchEvents": grpc.unary_stream_rpc_method_handler(
                fake.watch_events,
                request_deserializer=m.WatchEventsRequest.FromString,
                response_serializer=m.WatchEventsResponse.SerializeToString,
            ),
        },
    )


async def start_server(
    contracts: Contracts | None, health_names: Sequence[str]
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started grpc.aio server on a free loopback port: the fake DataService (if `contracts`) and
    health reporting SERVING for each of `health_names`."""
    server = grpc.aio.server()
    if contracts is not None:
        server.add_generic_rpc_handlers((data_handler(contracts),))
    servicer = health.aio.HealthServicer()
    for name in health_names:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, servicer
