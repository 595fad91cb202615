"""A stand-in for the `pynvml` module (nvidia-ml-py), for tests on machines without a GPU.

Install it with `install(monkeypatch, FakeNvml(...))`: it goes into `sys.modules["pynvml"]`, where
`services.runtime.gpu` imports it from.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

GIB = 1 << 30


class NVMLError(Exception):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    def __str__(self) -> str:
        return "Driver Not Loaded"


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


@dataclass
class FakeGpu:
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    total: int = 80 * GIB
    used: int = 20 * GIB
    utilization: int | None = 37  # None: NVML says NotSupported (MIG)

    @property
    def free(self) -> int:
        return self.total - self.used


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: Exception | None = None
    #: Raised by nvmlDeviceGetMemoryInfo (a read that fails once NVML is up).
    read_error: Exception | None = None
    inits: int = 0
    shutdowns: int = 0

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        ns: dict[str, Any] = {
            "NVMLError": NVMLError,
            "nvmlInit": self._init,
            "nvmlShutdown": self._shutdown,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": self._handle,
            "nvmlDeviceGetMemoryInfo": self._memory,
            "nvmlDeviceGetName": lambda h: h.name,
            "nvmlDeviceGetUtilizationRates": self._utilization,
        }
        m.__dict__.update(ns)
        return m

    def _init(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def _handle(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def _memory(self, handle: FakeGpu) -> types.SimpleNamespace:
        if self.read_error is not None:
            raise self.read_error
        return types.SimpleNamespace(total=handle.total, used=handle.used, free=handle.free)

    def _utilization(self, handle: FakeGpu) -> types.SimpleNamespace:
        if handle.utilization is None:
            raise NVMLError_NotSupported()
        return types.SimpleNamespace(gpu=handle.utilization, memory=0)


def install(monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml | None) -> FakeNvml | None:
    """Put `nvml` in place of pynvml; None: pynvml is not installed (its import fails)."""
    monkeypatch.setitem(sys.modules, "pynvml", None if nvml is None else nvml.module())
    return nvml
