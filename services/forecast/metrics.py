"""System metrics of the forecast service: CPU, memory, training jobs, GPU (NVML when present)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psutil

from services.runtime.gpu import GpuInfo, read_gpus

psutil.cpu_percent(interval=None)  # prime: the first non-blocking reading is meaningless


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
    gpus: list[GpuInfo] = field(default_factory=list)
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


def system_metrics(*, active_training_jobs: int = 0, worker_pid: int | None = None) -> SystemMetrics:
    """A snapshot; CPU percentages are since the previous call (non-blocking)."""
    mem = psutil.virtual_memory()
    gpu = read_gpus()
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
        gpu_available=gpu.available,
        gpus=list(gpu.gpus),
        gpu_error=gpu.unavailable,
    )
