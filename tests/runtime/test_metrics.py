"""The runtime's Prometheus gauges beyond the interceptor's: streams open, and GPU memory, budget and
utilisation, read only where a GPU is in use (torch already imported and on CUDA, or an engine's
budget), never importing torch or pynvml themselves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kitrading.data.v1 import request_response_pb2 as rr
from kitrading.data.v1 import service_pb2_grpc
from services.runtime import gpu, metrics
from services.runtime.server import create_server
from tests.runtime.fake_pynvml import GIB, FakeGpu, FakeNvml, install
from tests.runtime.test_server import App, settings

WATCH = "/kitrading.data.v1.DataService/WatchEvents"


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """label set -> value of every sample `name` has in the registry now."""
    found = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_streaming_methods_are_told_by_their_descriptors() -> None:
    import kitrading.llm.v1.service_pb2  # noqa: F401  (its descriptors in the default pool)

    assert metrics.is_streaming(WATCH)
    assert metrics.is_streaming("/kitrading.llm.v1.LlmService/AnalyzeStream")
    assert not metrics.is_streaming("/kitrading.data.v1.DataService/GetSymbol")
    assert not metrics.is_streaming("/no.such.Service/Method")
    assert not metrics.is_streaming("garbage")


async def test_streams_open_counts_a_real_open_stream_and_no_unary_call() -> None:
    app = App()
    server = await create_server(app, settings())
    key = (("method", WATCH), ("service", "data"))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.DataServiceStub(channel)
            stream = stub.WatchEvents(rr.WatchEventsRequest(from_beginning=True))  # open until cancelled
            for _ in range(3):
                await stream.read()
            assert samples("kitrading_rpc_streams_open")[key] == 1
            assert all("GetSymbol" not in dict(k)["method"] for k in samples("kitrading_rpc_streams_open"))
            stream.cancel()
            for _ in range(100):
                if samples("kitrading_rpc_streams_open").get(key) == 0:
                    break
                await asyncio.sleep(0.02)
            assert samples("kitrading_rpc_streams_open")[key] == 0
    finally:
        await server.stop(0)


# ---- GPU --------------------------------------------------------------------------------------------


class FakeCuda:
    """torch.cuda as the gauges read it: initialised, one or two GPUs with fixed memory figures."""

    def __init__(self, count: int = 2, *, initialized: bool = True) -> None:
        self.count = count
        self.initialized = initialized

    def is_initialized(self) -> bool:
        return self.initialized

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return self.count

    def get_device_properties(self, index: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total_memory=80 * GIB)

    def memory_reserved(self, index: int) -> int:
        return (index + 1) * 3 * GIB

    def memory_allocated(self, index: int) -> int:
        return (index + 1) * 2 * GIB


@pytest.fixture
def clean_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gpu, "_TORCH_FRACTIONS", {})
    monkeypatch.setattr(gpu, "_MEMORY_SOURCES", {})
    for collector in list(metrics.REGISTRY._collector_to_names):
        if isinstance(collector, metrics.GpuCollector):
            monkeypatch.setattr(collector, "_device", None)
    yield


def fake_torch(monkeypatch: pytest.MonkeyPatch, cuda: Any) -> None:
    module = types.ModuleType("torch")
    module.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", module)


def test_no_gpu_in_use_means_no_gpu_samples_and_no_nvml(
    monkeypatch: pytest.MonkeyPatch, clean_gpu: None
) -> None:
    nvml = install(monkeypatch, FakeNvml([FakeGpu()]))
    fake_torch(monkeypatch, FakeCuda(initialized=False))  # torch imported, CUDA never used (CPU work)
    for name in ("used", "budget", "allocated"):
        assert samples(f"kitrading_gpu_memory_{name}_bytes") == {}
    assert samples("kitrading_gpu_utilization_percent") == {}
    assert nvml is not None and nvml.inits == 0, "a process without a GPU in use never asks NVML"


def test_torch_memory_against_the_budget_of_the_chosen_gpu(
    monkeypatch: pytest.MonkeyPatch, clean_gpu: None
) -> None:
    install(monkeypatch, FakeNvml([FakeGpu(used=20 * GIB, utilization=37), FakeGpu(name=b"Second")]))
    fake_torch(monkeypatch, FakeCuda())
    gpu._TORCH_FRACTIONS[1] = 0.25  # as select_torch_device(device=1, memory_fraction=0.25) records it
    used = samples("kitrading_gpu_memory_used_bytes")
    assert used == {
        (("device", "0"), ("source", "torch")): 3 * GIB,
        (("device", "1"), ("source", "torch")): 6 * GIB,
    }
    assert samples("kitrading_gpu_memory_budget_bytes") == {(("device", "1"), ("source", "torch")): 20 * GIB}
    assert samples("kitrading_gpu_memory_allocated_bytes")[(("device", "1"), ("source", "torch"))] == 4 * GIB
    utilization = samples("kitrading_gpu_utilization_percent")
    assert utilization[(("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"))] == 37
    assert (("gpu", "1"), ("name", "Second")) in utilization
    assert samples("kitrading_gpu_device_memory_used_bytes")[(("gpu", "0"),)] == 20 * GIB
    assert samples("kitrading_gpu_device_memory_total_bytes")[(("gpu", "0"),)] == 80 * GIB


def test_select_torch_device_records_the_budget(monkeypatch: pytest.MonkeyPatch, clean_gpu: None) -> None:
    from tests.runtime.test_gpu import FakeCuda as SelectCuda
    from tests.runtime.test_gpu import fake_torch as select_torch

    select_torch(monkeypatch, SelectCuda(2))
    assert gpu.select_torch_device(use_gpu=True, device=1, memory_fraction=0.4).is_gpu
    assert gpu._TORCH_FRACTIONS == {1: 0.4}


def test_an_engine_source_and_a_failing_one(monkeypatch: pytest.MonkeyPatch, clean_gpu: None) -> None:
    install(monkeypatch, None)  # no pynvml, no nvidia-smi: memory figures only
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)

    def broken() -> list[gpu.GpuMemoryUse]:
        raise RuntimeError("engine gone")

    gpu.add_memory_source("llm", lambda: [gpu.GpuMemoryUse("ollama", 0, 30 * GIB, 40 * GIB)])
    gpu.add_memory_source("broken", broken)
    key = (("device", "0"), ("source", "ollama"))
    assert samples("kitrading_gpu_memory_used_bytes") == {key: 30 * GIB}
    assert samples("kitrading_gpu_memory_budget_bytes") == {key: 40 * GIB}
    assert samples("kitrading_gpu_utilization_percent") == {}
    gpu.remove_memory_source("llm")
    assert samples("kitrading_gpu_memory_used_bytes") == {}


def test_without_pynvml_the_figures_come_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, None)
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    calls = []

    def run(args: list[str], **kwargs: Any) -> types.SimpleNamespace:
        calls.append(args)
        return types.SimpleNamespace(
            stdout="0, NVIDIA H200, 41, 1024, 143771, 142747\n1, NVIDIA H200 MIG 1g, [N/A], 10, 20, 10\n"
        )

    monkeypatch.setattr(gpu.subprocess, "run", run)
    reading = gpu.read_gpus(nvidia_smi=True)
    assert [g.index for g in reading.gpus] == [0, 1]
    assert reading.gpus[0].utilization_percent == 41 and reading.gpus[0].memory_used_bytes == 1024 * gpu.MIB
    assert reading.gpus[1].utilization_percent == 0.0  # MIG: not reported
    assert "--format=csv,noheader,nounits" in calls[0]
    assert gpu.read_gpus().unavailable == "pynvml is not installed", "the default stays NVML only"


def test_scraping_imports_neither_torch_nor_pynvml() -> None:
    code = (
        "import sys, json; from prometheus_client import generate_latest; "
        "import services.runtime.metrics as m; import services.training.jobs, services.llm.metrics; "
        "generate_latest(m.REGISTRY); "
        "print(json.dumps(sorted(x for x in ('torch', 'pynvml') if x in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
