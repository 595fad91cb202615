"""The forecast service's system metrics: the GPU part comes from services.runtime.gpu (fake pynvml)."""

from __future__ import annotations

import os

import pytest

from services.forecast.metrics import system_metrics
from services.runtime.gpu import GpuInfo
from tests.runtime.fake_pynvml import GIB, FakeGpu, FakeNvml, install


def test_system_metrics_lists_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu()]))
    m = system_metrics(active_training_jobs=2)
    assert m.gpu_available and m.gpu_error == ""
    assert m.gpus == [GpuInfo(0, "NVIDIA H100 80GB HBM3", 37.0, 20 * GIB, 80 * GIB, 60 * GIB)]
    assert m.active_training_jobs == 2 and m.server.pid == os.getpid() and m.worker is None


def test_system_metrics_without_nvml_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, None)
    m = system_metrics()
    assert not m.gpu_available and m.gpus == [] and m.gpu_error == "pynvml is not installed"
