"""Prometheus metrics shared by every service (one registry per process).

Per RPC: requests by method and code, latency histogram, in-flight gauge, and the streams open (the
in-flight calls of streaming methods). Per process, where it uses a GPU: what it holds there against
its budget, and the GPU's utilisation and memory (services.runtime.gpu). Services add their own
(training progress: services/training/metrics.py; the LLM: services/llm/metrics.py) through
`REGISTRY`. `start_metrics_server` exposes `/metrics` on the service's metrics port. Every name
here is what deploy/observability's dashboards and alerts query (tests/deploy/test_observability.py).
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections.abc import Iterator

from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from services.runtime import gpu

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


@functools.lru_cache(maxsize=512)
def is_streaming(method: str) -> bool:
    """Whether `/package.Service/Method` streams, from its descriptor: in the default pool, or in the
    package's generated `service_pb2` (the servicers' grpc modules import only the messages')."""
    service, _, name = method.strip("/").partition("/")
    if "." not in service or not name:
        return False
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindServiceByName(service)
    except KeyError:
        try:
            importlib.import_module(f"{service.rpartition('.')[0]}.service_pb2")
            descriptor = pool.FindServiceByName(service)
        except (ImportError, KeyError, ValueError):
            return False
    found = descriptor.methods_by_name.get(name)
    return bool(found is not None and (found.server_streaming or found.client_streaming))


class StreamsCollector(Collector):
    """`kitrading_rpc_streams_open{service, method}`: the in-flight calls of streaming methods, read
    from `kitrading_rpc_in_flight` at scrape time (the interceptor keeps that one)."""

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "kitrading_rpc_streams_open",
            "Streaming RPCs open right now (watches, training progress, LLM answers).",
            labels=["service", "method"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for metric in RPC_IN_FLIGHT.collect():
            for sample in metric.samples:
                method = sample.labels.get("method", "")
                if is_streaming(method):
                    family.add_metric([sample.labels.get("service", ""), method], sample.value)
        yield family


class GpuCollector(Collector):
    """GPU gauges of this process, read at scrape time; none at all where it holds no GPU memory
    (every CPU service, a CPU machine), so NVML is asked only by processes that use a GPU.

    - `kitrading_gpu_memory_used_bytes{source, device}` / `..._budget_bytes` / `..._allocated_bytes`:
      what this service holds on a GPU (services.runtime.gpu.memory_in_use), against its budget;
    - `kitrading_gpu_utilization_percent{gpu, name}`, `kitrading_gpu_device_memory_used_bytes{gpu}`,
      `..._total_bytes`: the whole GPU as NVML (or nvidia-smi) sees it, shared by all its users.
    """

    #: Seconds an NVML reading is reused (several scrapers, one GPU reading).
    DEVICE_TTL_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._device: tuple[float, gpu.GpuReading] | None = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        def family(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        own = ["source", "device"]
        return {
            "used": family(
                "kitrading_gpu_memory_used_bytes",
                "GPU memory this service holds (torch: reserved by its allocator; an LLM engine: its model).",
                own,
            ),
            "budget": family(
                "kitrading_gpu_memory_budget_bytes",
                "This service's GPU memory budget (its memory fraction x the GPU's memory).",
                own,
            ),
            "allocated": family(
                "kitrading_gpu_memory_allocated_bytes", "GPU memory in live torch tensors.", own
            ),
            "utilization": family(
                "kitrading_gpu_utilization_percent",
                "Utilisation of the whole GPU (NVML; 0 where it cannot tell: MIG, vGPU).",
                ["gpu", "name"],
            ),
            "device_used": family(
                "kitrading_gpu_device_memory_used_bytes", "Memory used on the whole GPU (NVML).", ["gpu"]
            ),
            "device_total": family(
                "kitrading_gpu_device_memory_total_bytes", "Memory of the whole GPU (NVML).", ["gpu"]
            ),
        }

    def _reading(self) -> gpu.GpuReading:
        with self._lock:
            now = time.monotonic()
            if self._device is None or now - self._device[0] > self.DEVICE_TTL_S:
                self._device = (now, gpu.read_gpus(nvidia_smi=True))
            return self._device[1]

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        uses = gpu.memory_in_use()
        for use in uses:
            labels = [use.source, str(use.device)]
            families["used"].add_metric(labels, use.used_bytes)
            if use.budget_bytes is not None:
                families["budget"].add_metric(labels, use.budget_bytes)
            if use.allocated_bytes is not None:
                families["allocated"].add_metric(labels, use.allocated_bytes)
        if uses:
            for info in self._reading().gpus:
                index = str(info.index)
                families["utilization"].add_metric([index, info.name], info.utilization_percent)
                families["device_used"].add_metric([index], info.memory_used_bytes)
                families["device_total"].add_metric([index], info.memory_total_bytes)
        yield from families.values()


REGISTRY.register(StreamsCollector())
REGISTRY.register(GpuCollector())


def start_metrics_server(host: str, port: int) -> int:
    """Serve `/metrics` on host:port in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
