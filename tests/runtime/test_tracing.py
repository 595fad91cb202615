"""Tracing (`services.runtime.tracing`) on real grpc.aio servers (port 0) and a real worker process.

A front service calls a back service over `mesh_channel`; the test client sends a `traceparent` as
Envoy does. One trace must hold: the caller's span -> front SERVER -> CLIENT -> back SERVER, errors
must carry the trace id (ErrorInfo metadata) and log lines name it; off, nothing of it happens.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kitrading import mesh
from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import resources_pb2, service_pb2_grpc
from services.runtime import tracing
from services.runtime.channels import mesh_channel
from services.runtime.config import ConfigError, RuntimeSettings
from services.runtime.errors import NotFound
from services.runtime.interceptor import Observer
from services.runtime.logging import JsonFormatter
from services.runtime.server import RunningServer, create_server
from services.runtime.tracing import TracingSettings
from services.training.jobs import JobRunner, RunnerSettings
from services.training.worker import WorkerOptions

from ..training.toy_trainer import ToyTrainer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


# -- settings --------------------------------------------------------------------------------------


def test_off_unless_configured_by_the_standard_variables() -> None:
    assert not TracingSettings.from_env({}).enabled
    on = TracingSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"})
    assert on.exporter == "otlp" and on.otlp_address() == ("jaeger", 4317, False)
    traces = TracingSettings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example"})
    assert traces.otlp_address() == ("collector.example", 4317, True)
    assert not TracingSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_SDK_DISABLED": "true"}
    ).enabled
    assert not TracingSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_TRACES_EXPORTER": "none"}
    ).enabled
    file_only = TracingSettings.from_env({"KITRADING_TRACES_FILE": "/tmp/spans.jsonl"})
    assert file_only.enabled and file_only.exporter == "none" and file_only.file == Path("/tmp/spans.jsonl")
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert TracingSettings.from_env(ratio).sample_ratio == 0.25
    assert tracing.service_name("forecast", {}) == "kitrading-forecast"
    assert tracing.service_name("forecast", {"OTEL_SERVICE_NAME": "fc"}) == "fc"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        TracingSettings.from_env(env)


# -- two services ----------------------------------------------------------------------------------


class Back(service_pb2_grpc.DataServiceServicer):
    async def GetSymbol(self, request: rr.GetSymbolRequest, context: object) -> rr.GetSymbolResponse:
        logging.getLogger("kitrading.test").info("back answers %s", request.symbol)
        if request.symbol != "EURUSD":
            raise NotFound(f"symbol {request.symbol} not found", reason="SYMBOL_NOT_FOUND")
        return rr.GetSymbolResponse(symbol=resources_pb2.Symbol(symbol="EURUSD", display_name="back"))

    async def WatchEvents(
        self, request: rr.WatchEventsRequest, context: object
    ) -> AsyncIterator[rr.WatchEventsResponse]:
        for i in range(2):
            yield rr.WatchEventsResponse(event=resources_pb2.Event(event_id=i + 1))


class Front(service_pb2_grpc.DataServiceServicer):
    """Asks Back for everything (a service grounding its answer on another)."""

    def __init__(self) -> None:
        self.target = ""

    async def GetSymbol(self, request: rr.GetSymbolRequest, context: object) -> rr.GetSymbolResponse:
        async with mesh_channel(self.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            try:
                reply: rr.GetSymbolResponse = await stub.GetSymbol(request, timeout=5)
            except grpc.aio.AioRpcError as exc:  # the back's NOT_FOUND, passed on
                raise NotFound(exc.details() or "", reason="SYMBOL_NOT_FOUND") from None
            events = [e async for e in stub.WatchEvents(rr.WatchEventsRequest(), timeout=5)]
        reply.symbol.display_name = f"{reply.symbol.display_name}+{len(events)}"
        return reply


class App:
    def __init__(self, servicer: Any) -> None:
        self.servicer = servicer

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_DataServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def is_ready(self) -> bool:
        return True

    @property
    def observers(self) -> Sequence[Observer]:
        return []


def _settings() -> RuntimeSettings:
    return RuntimeSettings.from_env(mesh.service("data"), env={"KITRADING_DATA_PORT": "0"})


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", {}, exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line as the services print it (JsonFormatter), formatted while the call runs."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
async def two() -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    back = await create_server(App(Back()), _settings())  # type: ignore[abstract]
    front_servicer = Front()  # type: ignore[abstract]
    front_servicer.target = back.target
    front = await create_server(App(front_servicer), _settings())
    yield front, back
    await front.stop(0)
    await back.stop(0)


async def _get(server: RunningServer, symbol: str) -> rr.GetSymbolResponse:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        reply: rr.GetSymbolResponse = await stub.GetSymbol(
            rr.GetSymbolRequest(symbol=symbol), timeout=5, metadata=(("traceparent", TRACEPARENT),)
        )
        return reply


async def _finished(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    for _ in range(200):  # client spans end in a done-callback, a moment after the call
        found = list(exporter.get_finished_spans())
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(exporter.get_finished_spans())} spans, expected {count}")


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def test_one_trace_from_the_callers_span_through_both_services(
    two: tuple[RunningServer, RunningServer], spans: InMemorySpanExporter, log_lines: io.StringIO
) -> None:
    front, _ = two
    reply = await _get(front, "EURUSD")
    assert reply.symbol.display_name == "back+2"
    found = await _finished(spans, 5)
    assert {_hex(s.context.trace_id, 32) for s in found} == {TRACE_ID}
    by_kind: dict[str, list[Any]] = {}
    for s in found:
        by_kind.setdefault(s.kind.name, []).append(s)
    servers = {s.name: s for s in by_kind["SERVER"]}
    clients = {s.name: s for s in by_kind["CLIENT"]}
    method = "kitrading.data.v1.DataService/GetSymbol"
    stream = "kitrading.data.v1.DataService/WatchEvents"
    assert len(by_kind["SERVER"]) == 3 and len(by_kind["CLIENT"]) == 2
    front_span = next(s for s in by_kind["SERVER"] if _hex(s.parent.span_id, 16) == PARENT_SPAN)
    assert front_span.name == method and front_span.attributes["rpc.method"] == "GetSymbol"
    for name in (method, stream):  # each outgoing call is a child of the front's span...
        assert clients[name].parent.span_id == front_span.context.span_id
    # ...and the back's spans children of those client spans: unary and the stream
    back_unary = next(s for s in by_kind["SERVER"] if s is not front_span and s.name == method)
    assert back_unary.parent.span_id == clients[method].context.span_id
    assert servers[stream].parent.span_id == clients[stream].context.span_id
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    back_line = next(line for line in lines if line["msg"] == "back answers EURUSD")
    assert back_line["trace_id"] == TRACE_ID and back_line["span_id"] == _hex(back_unary.context.span_id, 16)
    rpc_lines = [line for line in lines if line["msg"] == "rpc"]
    assert rpc_lines and all(line["trace_id"] == TRACE_ID for line in rpc_lines)


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


async def test_a_failed_call_names_its_trace_and_its_spans_are_errors(
    two: tuple[RunningServer, RunningServer], spans: InMemorySpanExporter
) -> None:
    front, _ = two
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _get(front, "GBPUSD")
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    info = _error_info(failed.value)
    assert info.reason == "SYMBOL_NOT_FOUND" and info.metadata["trace_id"] == TRACE_ID
    found = await _finished(spans, 3)  # front SERVER, CLIENT, back SERVER (no stream: it failed first)
    assert all(s.status.status_code.name == "ERROR" for s in found)
    assert all(s.attributes["rpc.grpc.status_code"] == "NOT_FOUND" for s in found)


async def test_off_no_span_no_trace_id_no_interceptor(
    two: tuple[RunningServer, RunningServer], log_lines: io.StringIO
) -> None:
    assert not tracing.ENABLED and tracing.client_interceptors() == [] and tracing.inject() == {}
    front, _ = two
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _get(front, "GBPUSD")
    assert "trace_id" not in _error_info(failed.value).metadata
    assert "trace_id" not in log_lines.getvalue()


# -- a training job and its worker process ---------------------------------------------------------


async def test_a_job_continues_the_trace_that_queued_it_into_the_worker_process(
    tmp_path: Path, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_spans = tmp_path / "worker-spans.jsonl"
    monkeypatch.setenv("KITRADING_TRACES_FILE", str(worker_spans))  # the worker's env: os.environ
    trainer = ToyTrainer(tmp_path, ["EURUSD"])
    options = WorkerOptions(spec=trainer.worker, models_dir=trainer.registry.root, nice=0, use_gpu=False)
    runner = JobRunner(trainer, RunnerSettings(worker=options, worker_idle_s=5.0))
    await runner.start()
    try:
        with tracing.span("TrainModel request") as request_span:
            job = await runner.train(["EURUSD"], force=True)
        await runner.wait(job.job_id)
    finally:
        await runner.stop()  # the worker exports its spans before it exits
    found = {s.name: s for s in await _finished(spans, 3)}
    job_span, item_span = found["training job toy"], found["train EURUSD"]
    trace_id = request_span.get_span_context().trace_id
    assert job_span.context.trace_id == item_span.context.trace_id == trace_id
    assert job_span.parent.span_id == request_span.get_span_context().span_id
    assert item_span.parent.span_id == job_span.context.span_id
    assert job_span.attributes["kitrading.job_id"] == job.job_id
    lines = [json.loads(line) for line in worker_spans.read_text().splitlines()]
    worker = next(line for line in lines if line["name"] == "worker train")
    assert worker["context"]["trace_id"] == f"0x{_hex(trace_id, 32)}"
    assert worker["parent_id"] == f"0x{_hex(item_span.context.span_id, 16)}"
    assert worker["resource"]["attributes"]["service.name"].endswith("-worker")
    assert worker["attributes"]["process.pid"] != os.getpid()
