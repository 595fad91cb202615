"""Issue 21 end to end: one trace per request across the whole mesh (`kitrading up`, Envoy included).

Every implemented service runs with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/gRPC
collector this module runs (a test double of Jaeger / the OpenTelemetry Collector speaking the real
`opentelemetry.proto.collector.trace.v1.TraceService/Export`). Then:

- an analyze request (SSE through the gateway) is one trace whose spans come from the gateway, the
  LLM service and every service its grounding called (data, forecast, regime, pattern, rag, and the
  embedder behind rag), each server span a child of the caller's span;
- a training request's trace goes on into its job and the worker process that trained;
- an error through the gateway names its trace id, which finds the failed call's spans and log line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.e2e.mesh import TINY, RunningMesh, whole_mesh

pytestmark = pytest.mark.e2e

STREAM_TIMEOUT = httpx.Timeout(180.0, connect=5.0)


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str  # SPAN_KIND_SERVER, ...
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Receives OTLP/gRPC span exports and keeps every span."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[Span] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    found.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s.name,
                            kind=trace_pb2.Span.SpanKind.Name(s.kind),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            error=s.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
                        )
                    )
        with self._lock:
            self.spans.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, predicate: Any, timeout_s: float = 30.0) -> Span:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for s in self.spans:
                    if predicate(s):
                        return s
            time.sleep(0.2)
        raise AssertionError("no such span exported")

    def wait_trace(self, trace_id: str, done: Any, timeout_s: float = 30.0) -> list[Span]:
        """The trace's spans once `done(spans)` holds (late batches keep arriving for a moment)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            time.sleep(0.2)
        spans = self.trace(trace_id)
        summary = sorted({(s.service, s.kind, s.name) for s in spans})
        raise AssertionError(f"trace {trace_id} incomplete: {json.dumps(summary, indent=1)}")


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    store = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(store, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield store, port
    server.stop(0)


@pytest.fixture(scope="module")
def up(collector: tuple[Collector, int]) -> Iterator[RunningMesh]:
    _, port = collector
    # OTEL_BSP_SCHEDULE_DELAY: the services export within a fraction of a second
    env = {
        **TINY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "300",
    }
    with whole_mesh("tracing", env) as running:
        with httpx.Client(base_url=running.gateway, timeout=10.0) as client:
            # the knowledge base holds the mesh's docs (a query then asks the embedder), and the
            # regime's first-start training is done (a training request then runs at once)
            _wait(lambda: client.get("/api/v1/rag/status").json().get("documents", 0) >= 5, 240, "rag docs")
            _wait(lambda: client.get("/api/v1/regime/status").json().get("ready") is True, 300, "regime")
        yield running


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached after {timeout_s:.0f} s"
        time.sleep(0.5)


def _services(spans: list[Span]) -> set[str]:
    return {s.service for s in spans}


GROUNDING = {  # the LLM's grounding calls (services/llm/sources.py) and who answers them
    "kitrading.data.v1.DataService/GetSymbolStats": "kitrading-data",
    "kitrading.forecast.v1.ForecastService/GetForecast": "kitrading-forecast",
    "kitrading.regime.v1.RegimeService/GetRegime": "kitrading-regime",
    "kitrading.pattern.v1.PatternService/DetectSymbolPatterns": "kitrading-pattern",
    "kitrading.rag.v1.RagService/QueryKnowledgeBase": "kitrading-rag",
}


def test_an_analyze_request_is_one_trace_across_every_service_it_touched(
    up: RunningMesh, collector: tuple[Collector, int]
) -> None:
    store, _ = collector
    body = {"symbol": "EURUSD", "question": "Buy or sell?", "maxTokens": 8, "temperature": 0}
    with (
        httpx.Client(timeout=STREAM_TIMEOUT) as client,
        client.stream("POST", f"{up.gateway}/api/v1/analyze:stream", json=body) as response,
    ):
        assert response.status_code == 200
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert any("completion" in e for e in events), events[-1:]
    root = store.find(
        lambda s: (
            s.service == "kitrading-llm"
            and s.kind == "SPAN_KIND_SERVER"
            and s.name.endswith("/AnalyzeStream")
        )
    )
    wanted = {"kitrading-gateway", "kitrading-llm", *GROUNDING.values(), "kitrading-embedder"}

    def complete(spans: list[Span]) -> bool:
        clients = {s.name for s in spans if s.service == "kitrading-llm" and s.kind == "SPAN_KIND_CLIENT"}
        return wanted <= _services(spans) and set(GROUNDING) <= clients

    spans = store.wait_trace(root.trace_id, complete)
    by_id = {s.span_id: s for s in spans}
    print("services in the trace:", sorted(_services(spans)), f"({len(spans)} spans)")
    # the LLM's span continues the gateway's (Envoy's OpenTelemetry tracer sent `traceparent`)
    assert by_id[root.parent_id].service == "kitrading-gateway"
    for method, service in GROUNDING.items():
        client_span = next(
            s
            for s in spans
            if s.service == "kitrading-llm" and s.kind == "SPAN_KIND_CLIENT" and s.name == method
        )
        assert client_span.parent_id == root.span_id, method
        served = [
            s for s in spans if s.service == service and s.kind == "SPAN_KIND_SERVER" and s.name == method
        ]
        assert served and served[0].parent_id == client_span.span_id, method
    # and deeper: rag asked the embedder for the question's embedding within the same trace
    embedder = [s for s in spans if s.service == "kitrading-embedder" and s.kind == "SPAN_KIND_SERVER"]
    assert embedder and by_id[embedder[0].parent_id].service == "kitrading-rag"


def test_a_training_request_continues_into_its_job_and_worker_process(
    up: RunningMesh, collector: tuple[Collector, int]
) -> None:
    store, _ = collector
    queued = httpx.post(
        f"{up.gateway}/api/v1/regime/train",
        json={"symbols": ["EURUSD"], "force": True, "background": True},
        timeout=30,
    )
    assert queued.status_code == 200, queued.text
    job_id = queued.json()["job"]["jobId"]

    def ended() -> bool:
        job = httpx.get(f"{up.gateway}/api/v1/regime/training/jobs/{job_id}", timeout=10).json()
        return job["job"]["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")

    _wait(ended, 240, f"training job {job_id} ended")  # a job's span is exported when it ends
    job = store.find(
        lambda s: s.name.startswith("training job ") and s.attributes.get("kitrading.job_id") == job_id
    )
    # each process exports in batches (Envoy's every 5 s): wait for the whole chain, not its first part
    spans = store.wait_trace(
        job.trace_id,
        lambda spans: (
            {"kitrading-gateway", "kitrading-regime", "kitrading-regime-worker"} <= _services(spans)
            and job.parent_id in {s.span_id for s in spans}
        ),
        timeout_s=60,
    )
    by_id = {s.span_id: s for s in spans}
    request = by_id[job.parent_id]
    assert request.service == "kitrading-regime" and request.name.endswith("/TrainRegimeModels")
    assert by_id[request.parent_id].service == "kitrading-gateway"
    item = next(s for s in spans if s.name == "train EURUSD" and s.parent_id == job.span_id)
    worker = next(s for s in spans if s.service.endswith("-worker"))
    assert worker.service == "kitrading-regime-worker"
    assert worker.name == "worker train" and worker.parent_id == item.span_id
    print("training trace:", sorted({(s.service, s.name) for s in spans}))


def test_an_error_names_its_trace_which_finds_its_spans_and_log_line(
    up: RunningMesh, collector: tuple[Collector, int]
) -> None:
    store, _ = collector
    reply = httpx.get(f"{up.gateway}/api/v1/symbols/NOPE", timeout=10)
    assert reply.status_code == 404, reply.text
    info = next(d for d in reply.json()["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    trace_id = info["metadata"]["trace_id"]
    spans = store.wait_trace(
        trace_id, lambda spans: {"kitrading-gateway", "kitrading-data"} <= _services(spans)
    )
    data = next(s for s in spans if s.service == "kitrading-data" and s.kind == "SPAN_KIND_SERVER")
    assert data.name.endswith("/GetSymbol") and data.error
    lines = [json.loads(line) for line in up.log("data").splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id and line.get("msg") == "rpc" for line in lines)

    def in_access_log() -> bool:  # Envoy writes its access log file in batches (up to 10 s apart)
        lines = [json.loads(line) for line in up.log("gateway").splitlines() if line.startswith("{")]
        return any(line.get("trace_id") == trace_id for line in lines)

    _wait(in_access_log, 30, f"trace {trace_id} in the gateway's access log")
