"""Prometheus metrics shared by every service (one registry per process).

Per RPC: requests by method and code, latency histogram, in-flight gauge. Services add their own
gauges (active training jobs, GPU memory) through `REGISTRY`. `start_metrics_server` exposes
`/metrics` on the service's metrics port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

RPC_REQUESTS = Counter(
    "kitrading_rpc_requests_total",
    "RPCs handled, by method and final status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_ERRORS = Counter(
    "kitrading_rpc_errors_total",
    "RPCs that ended with a status other than OK, by method and code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "kitrading_rpc_latency_seconds",
    "RPC latency from handler start to final status (streams: to stream end).",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
RPC_IN_FLIGHT = Gauge(
    "kitrading_rpc_in_flight",
    "RPCs being handled right now.",
    ["service", "method"],
    registry=REGISTRY,
)
SERVICE_HEALTHY = Gauge(
    "kitrading_service_serving",
    "1 while the service reports SERVING on grpc.health.v1, else 0.",
    ["service"],
    registry=REGISTRY,
)
TRAINING_JOBS_ACTIVE = Gauge(
    "kitrading_training_jobs_active",
    "Training jobs queued or running.",
    ["service"],
    registry=REGISTRY,
)


def start_metrics_server(host: str, port: int) -> int:
    """Serve `/metrics` on host:port in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
