"""services.runtime.gpu: NVML figures (through a fake pynvml), the "unavailable" answers, a GPU's
memory size, and the torch device choice (the decision table, and select_torch_device on a fake torch)."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest

from services.runtime import gpu
from services.runtime.gpu import (
    DeviceChoice,
    GpuInfo,
    choose_device,
    gpu_memory_total,
    lightning_kwargs,
    read_gpus,
    select_torch_device,
)
from tests.runtime.fake_pynvml import GIB, FakeGpu, FakeNvml, NVMLError, NVMLError_DriverNotLoaded, install


def test_importing_the_module_imports_neither_pynvml_nor_torch() -> None:
    code = (
        "import sys, services.runtime.gpu; print(sorted(m for m in ('pynvml', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- NVML figures ----


def test_nvml_figures_of_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(
        [
            FakeGpu(),
            FakeGpu(name=b"Tesla T4", total=16 * GIB, used=15 * GIB, utilization=None),  # old pynvml, MIG
        ]
    )
    install(monkeypatch, nvml)
    reading = read_gpus()
    assert reading.available and not reading.failed and reading.unavailable == ""
    assert reading.gpus == (
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 37.0, 20 * GIB, 80 * GIB, 60 * GIB),
        GpuInfo(1, "Tesla T4", 0.0, 15 * GIB, 16 * GIB, 1 * GIB),
    )
    assert reading.gpus[0].memory_free_percent == 75.0
    assert (nvml.inits, nvml.shutdowns) == (1, 1)  # NVML is shut down after every reading


@pytest.mark.parametrize(
    ("nvml", "why"),
    [
        (None, "pynvml is not installed"),
        (
            FakeNvml(init_error=NVMLError_DriverNotLoaded()),
            "no NVIDIA driver (NVMLError_DriverNotLoaded: Driver Not Loaded)",
        ),
        (FakeNvml([]), "no GPU"),
    ],
)
def test_unavailable_says_why(monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml | None, why: str) -> None:
    install(monkeypatch, nvml)
    reading = read_gpus()
    assert not reading.available and reading.gpus == () and not reading.failed
    assert reading.unavailable == why


def test_a_failed_read_is_reported_and_nvml_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([FakeGpu()], read_error=NVMLError("Unknown Error"))
    install(monkeypatch, nvml)
    reading = read_gpus()
    assert reading.failed and not reading.available
    assert reading.unavailable == "NVML read failed (NVMLError: Unknown Error)"
    assert nvml.shutdowns == 1


# ---- a GPU's memory size ----


def test_memory_total_from_nvml_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu(total=80 * GIB), FakeGpu(total=24 * GIB)]))
    monkeypatch.setattr(gpu, "_nvidia_smi_memory_total", lambda device, timeout: pytest.fail("not needed"))
    assert gpu_memory_total(1) == 24 * GIB
    assert gpu_memory_total() == 80 * GIB


def test_memory_total_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def smi(device: int, timeout: float) -> int | None:
        asked.append(device)
        return 16 * GIB if device == 0 else None

    monkeypatch.setattr(gpu, "_nvidia_smi_memory_total", smi)
    install(monkeypatch, None)  # no pynvml
    assert gpu_memory_total(0) == 16 * GIB
    install(monkeypatch, FakeNvml([FakeGpu()]))  # NVML has no GPU 3: nvidia-smi is asked, says no
    assert gpu_memory_total(3) is None
    assert asked == [0, 3]


# ---- the torch device ----


@pytest.mark.parametrize(
    ("use_gpu", "device", "cuda", "count", "expected"),
    [
        (False, 0, True, 1, DeviceChoice("cpu", reason="GPU use disabled by settings")),
        (True, 0, False, 0, DeviceChoice("cpu", reason="CUDA is not available")),
        (True, 3, True, 2, DeviceChoice("cpu", reason="GPU 3 does not exist (2 visible)")),
        (True, 2, True, 2, DeviceChoice("cpu", reason="GPU 2 does not exist (2 visible)")),
        (True, -1, True, 2, DeviceChoice("cpu", reason="GPU -1 does not exist (2 visible)")),
        (True, 0, True, 0, DeviceChoice("cpu", reason="GPU 0 does not exist (0 visible)")),
        (True, 0, True, 1, DeviceChoice("gpu", device=0)),
        (True, 1, True, 2, DeviceChoice("gpu", device=1)),
    ],
)
def test_choose_device(use_gpu: bool, device: int, cuda: bool, count: int, expected: DeviceChoice) -> None:
    assert choose_device(use_gpu, device, cuda, count) == expected


def test_lightning_gets_the_chosen_device() -> None:
    assert DeviceChoice("gpu", device=1).lightning_kwargs() == {"accelerator": "gpu", "devices": [1]}
    assert DeviceChoice("cpu", reason="x").lightning_kwargs() == {"accelerator": "cpu", "devices": 1}
    assert lightning_kwargs("gpu", 2) == {"accelerator": "gpu", "devices": [2]}
    assert lightning_kwargs("cpu", None) == {"accelerator": "cpu", "devices": 1}


class FakeCuda:
    def __init__(self, count: int, *, fail: str = "") -> None:
        self.count = count
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def is_available(self) -> bool:
        return self.count > 0

    def device_count(self) -> int:
        return self.count

    def set_device(self, index: int) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.calls.append(("set_device", index))

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.calls.append(("fraction", (fraction, device)))

    def get_device_name(self, index: int) -> str:
        return f"Fake GPU {index}"


def fake_torch(monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda) -> None:
    module = types.ModuleType("torch")
    module.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", module)


def test_select_torch_device_caps_the_chosen_gpu_not_gpu_0(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(2)
    fake_torch(monkeypatch, cuda)
    choice = select_torch_device(use_gpu=True, device=1, memory_fraction=0.4)
    assert choice == DeviceChoice("gpu", device=1, name="Fake GPU 1", memory_fraction=0.4)
    assert cuda.calls == [("set_device", 1), ("fraction", (0.4, 1))]
    assert choice.info() == {
        "accelerator": "gpu",
        "device": 1,
        "gpu": "Fake GPU 1",
        "gpu_memory_fraction": 0.4,
    }


@pytest.mark.parametrize(
    ("use_gpu", "device", "count", "reason"),
    [
        (False, 0, 1, "GPU use disabled by settings"),
        (True, 0, 0, "CUDA is not available"),
        (True, 3, 2, "GPU 3 does not exist (2 visible)"),
    ],
)
def test_select_torch_device_falls_back_to_the_cpu_and_says_why(
    monkeypatch: pytest.MonkeyPatch, use_gpu: bool, device: int, count: int, reason: str
) -> None:
    cuda = FakeCuda(count)
    fake_torch(monkeypatch, cuda)
    choice = select_torch_device(use_gpu=use_gpu, device=device, memory_fraction=0.5)
    assert choice == DeviceChoice("cpu", reason=reason) and cuda.calls == []
    assert choice.info() == {"accelerator": "cpu", "reason": reason}


def test_a_gpu_that_cannot_be_initialised_means_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch(monkeypatch, FakeCuda(1, fail="CUDA error: all CUDA-capable devices are busy"))
    choice = select_torch_device(use_gpu=True, device=0, memory_fraction=0.5)
    assert choice.accelerator == "cpu"
    assert (
        choice.reason
        == "GPU 0 could not be used (RuntimeError: CUDA error: all CUDA-capable devices are busy)"
    )


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_memory_fraction_out_of_range(monkeypatch: pytest.MonkeyPatch, fraction: float) -> None:
    fake_torch(monkeypatch, FakeCuda(1))
    with pytest.raises(ValueError, match="GPU memory fraction"):
        select_torch_device(use_gpu=True, device=0, memory_fraction=fraction)
    # Ignored on the CPU, as before: the fraction only applies to a GPU.
    assert select_torch_device(use_gpu=False, device=0, memory_fraction=fraction).accelerator == "cpu"


def test_real_torch_without_cuda_chooses_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        choice = select_torch_device(use_gpu=True, device=0, memory_fraction=1.0)
        assert choice.accelerator == "gpu" and choice.device == 0 and choice.name
    else:
        choice = select_torch_device(use_gpu=True, device=0, memory_fraction=0.5)
        assert choice == DeviceChoice("cpu", reason="CUDA is not available")
