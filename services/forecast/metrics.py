"""System metrics of the forecast service: CPU, memory, training jobs, GPU (NVML when present)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import psutil

psutil.cpu_percent(interval=None)  # prime: the first non-blocking reading is meaningless


@dataclass(frozen=True, slots=True)
class GpuMetrics:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class ProcessMetrics:
    pid: int
    cpu_percent: float
    rss_bytes: int
    nice: int


@dataclass(frozen=True, slots=True)
class SystemMetrics:
    cpu_percent: float
    cpu_count: int
    memory_used_bytes: int
    memory_total_bytes: int
    active_training_jobs: int
    server: ProcessMetrics
    worker: ProcessMetrics | None
    gpu_available: bool
    gpus: list[GpuMetrics] = field(default_factory=list)
    gpu_error: str = ""


_process_cache: dict[int, psutil.Process] = {}


def _process(pid: int) -> ProcessMetrics | None:
    try:
        proc = _process_cache.get(pid)
        if proc is None:
            proc = _process_cache[pid] = psutil.Process(pid)
            proc.cpu_percent(None)
        with proc.oneshot():
            return ProcessMetrics(pid, proc.cpu_percent(None), proc.memory_info().rss, proc.nice())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        _process_cache.pop(pid, None)
        return None


def gpu_metrics() -> tuple[bool, list[GpuMetrics], str]:
    """(available, per-GPU metrics, error). NVML via pynvml when installed; otherwise unavailable."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return False, [], "pynvml is not installed"
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU
        return False, [], f"NVML unavailable: {exc}"
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuMetrics(
                    index,
                    name.decode() if isinstance(name, bytes) else str(name),
                    float(util.gpu),
                    int(mem.used),
                    int(mem.total),
                )
            )
        return bool(gpus), gpus, ""
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def system_metrics(*, active_training_jobs: int = 0, worker_pid: int | None = None) -> SystemMetrics:
    """A snapshot; CPU percentages are since the previous call (non-blocking)."""
    mem = psutil.virtual_memory()
    available, gpus, error = gpu_metrics()
    server = _process(os.getpid())
    assert server is not None
    return SystemMetrics(
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or 1,
        memory_used_bytes=int(mem.total - mem.available),
        memory_total_bytes=int(mem.total),
        active_training_jobs=active_training_jobs,
        server=server,
        worker=_process(worker_pid) if worker_pid else None,
        gpu_available=available,
        gpus=gpus,
        gpu_error=error,
    )
