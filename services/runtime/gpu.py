"""The GPU, one way for every service: NVML figures, a GPU's memory size, a torch process's device,
and what this process holds on its GPUs against its budget (the Prometheus gauges, runtime/metrics.py).

pynvml and torch are imported only inside the functions that need them (the memory reading looks at
a torch that is already imported, never imports it), and every answer without a GPU says why.
Indices differ: NVML and nvidia-smi count every GPU of the machine in PCI order, torch counts the
GPUs its process sees (`CUDA_VISIBLE_DEVICES`, `CUDA_DEVICE_ORDER`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

log = logging.getLogger(__name__)

MIB = 1 << 20


# ---- NVML figures (metrics, the watchdog) ----


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU as NVML sees it. `utilization_percent` is 0.0 where NVML cannot tell (MIG, vGPU)."""

    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    memory_free_bytes: int

    @property
    def memory_free_percent(self) -> float:
        return 100.0 * self.memory_free_bytes / self.memory_total_bytes if self.memory_total_bytes else 0.0


@dataclass(frozen=True, slots=True)
class GpuReading:
    """Every GPU NVML reports, or none and `unavailable` says why: "pynvml is not installed", "no
    NVIDIA driver (...)", "no GPU", or "NVML read failed (...)" with `failed` (NVML is there but broke)."""

    gpus: tuple[GpuInfo, ...] = ()
    unavailable: str = ""
    failed: bool = False

    @property
    def available(self) -> bool:
        return bool(self.gpus)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_pynvml() -> Any | None:
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return pynvml


def _read_device(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        raw = nvml.nvmlDeviceGetName(handle)
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:
        name = f"GPU {index}"
    try:
        utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # NVMLError_NotSupported on MIG instances and some vGPUs
        utilization = 0.0
    return GpuInfo(
        index=index,
        name=name,
        utilization_percent=utilization,
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
    )


def read_gpus(*, nvidia_smi: bool = False, timeout: float = 5.0) -> GpuReading:
    """A reading of every GPU through pynvml (blocking: call it from a worker thread in async code).

    `nvidia_smi`: without pynvml, ask `nvidia-smi` (which comes with every driver) instead."""
    nvml = _import_pynvml()
    if nvml is None:
        reading = _nvidia_smi_gpus(timeout) if nvidia_smi else None
        return reading or GpuReading(unavailable="pynvml is not installed")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return GpuReading(unavailable=f"no NVIDIA driver ({_error_text(exc)})")
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            return GpuReading(unavailable="no GPU")
        return GpuReading(gpus=tuple(_read_device(nvml, index) for index in range(count)))
    except Exception as exc:
        return GpuReading(unavailable=f"NVML read failed ({_error_text(exc)})", failed=True)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _smi_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]" (MIG, vGPU), "[Not Supported]"
        return 0.0


def _nvidia_smi_gpus(timeout: float) -> GpuReading | None:
    """Every GPU as `nvidia-smi` reports it; None when there is no nvidia-smi or it fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    query = "index,name,utilization.gpu,memory.used,memory.total,memory.free"
    try:
        out = subprocess.run(
            [binary, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        gpus = []
        for line in out.strip().splitlines():
            index, name, utilization, used, total, free = (part.strip() for part in line.split(","))
            gpus.append(
                GpuInfo(
                    index=int(index),
                    name=name,
                    utilization_percent=_smi_number(utilization),
                    memory_used_bytes=int(_smi_number(used)) * MIB,
                    memory_total_bytes=int(_smi_number(total)) * MIB,
                    memory_free_bytes=int(_smi_number(free)) * MIB,
                )
            )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.debug("nvidia-smi could not report the GPUs: %s", exc)
        return None
    return GpuReading(gpus=tuple(gpus)) if gpus else GpuReading(unavailable="no GPU")


# ---- a GPU's memory size (the LLM budget) ----


def _nvml_memory_total(device: int) -> int | None:
    reading = read_gpus()
    for gpu in reading.gpus:
        if gpu.index == device:
            return gpu.memory_total_bytes
    if reading.available:
        log.warning("NVML reports no GPU %d (%d GPUs)", device, len(reading.gpus))
    return None


def _nvidia_smi_memory_total(device: int, timeout: float) -> int | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", str(device)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0])) * MIB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("nvidia-smi could not report GPU %d's memory: %s", device, exc)
        return None


def gpu_memory_total(device: int = 0, *, timeout: float = 10.0) -> int | None:
    """Total memory of GPU `device` (NVML index) in bytes; None when no GPU `device` is found.

    NVML when pynvml is installed; otherwise `nvidia-smi`, which comes with every driver.
    """
    return _nvml_memory_total(device) or _nvidia_smi_memory_total(device, timeout)


# ---- the device of a torch process (the training worker) ----

Accelerator = Literal["gpu", "cpu"]


def lightning_kwargs(accelerator: str, device: int | None) -> dict[str, Any]:
    """Lightning's / neuralforecast's `accelerator` and `devices` for a device: `[index]` on a GPU,
    so the chosen GPU is used and never GPU 0 by default; one process on the CPU."""
    if accelerator == "gpu" and device is not None:
        return {"accelerator": "gpu", "devices": [device]}
    return {"accelerator": "cpu", "devices": 1}


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """Where a torch process runs. On the GPU: `device` (torch index), its `name` and the process's
    `memory_fraction`; on the CPU, `reason` says why."""

    accelerator: Accelerator
    device: int | None = None
    name: str = ""
    memory_fraction: float | None = None
    reason: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.accelerator == "gpu"

    def lightning_kwargs(self) -> dict[str, Any]:
        """`{"accelerator": "gpu", "devices": [index]}` or `{"accelerator": "cpu", "devices": 1}`."""
        return lightning_kwargs(self.accelerator, self.device)

    def info(self) -> dict[str, Any]:
        """A plain dict for reporting (the worker's `info`)."""
        if self.is_gpu:
            return {
                "accelerator": "gpu",
                "device": self.device,
                "gpu": self.name,
                "gpu_memory_fraction": self.memory_fraction,
            }
        return {"accelerator": "cpu", "reason": self.reason}


def choose_device(use_gpu: bool, device: int, cuda_available: bool, device_count: int) -> DeviceChoice:
    """The decision alone, without torch: GPU `device` when allowed, present and visible, else the CPU."""
    if not use_gpu:
        return DeviceChoice("cpu", reason="GPU use disabled by settings")
    if not cuda_available:
        return DeviceChoice("cpu", reason="CUDA is not available")
    if not 0 <= device < device_count:
        return DeviceChoice("cpu", reason=f"GPU {device} does not exist ({device_count} visible)")
    return DeviceChoice("gpu", device=device)


def select_torch_device(*, use_gpu: bool, device: int, memory_fraction: float) -> DeviceChoice:
    """Choose the device of this torch process and, on a GPU, make it current and cap this process
    at `memory_fraction` (0 < x <= 1) of its memory. Call it once torch is to be imported anyway."""
    import torch

    available = bool(torch.cuda.is_available())
    count = int(torch.cuda.device_count()) if available else 0
    choice = choose_device(use_gpu, device, available, count)
    if choice.device is None:  # a missing GPU is a wrong setting; no CUDA at all is a CPU machine
        log.log(logging.WARNING if available else logging.INFO, "torch on the CPU: %s", choice.reason)
        return choice
    index = choice.device
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"GPU memory fraction must be in (0, 1], got {memory_fraction}")
    try:
        torch.cuda.set_device(index)
        torch.cuda.set_per_process_memory_fraction(memory_fraction, index)
        name = str(torch.cuda.get_device_name(index))
    except RuntimeError as exc:  # CUDA initialisation failed: busy in exclusive mode, driver mismatch
        reason = f"GPU {index} could not be used ({_error_text(exc)})"
        log.warning("torch on the CPU: %s", reason)
        return DeviceChoice("cpu", reason=reason)
    _TORCH_FRACTIONS[index] = memory_fraction
    return replace(choice, name=name, memory_fraction=memory_fraction)


# ---- what this process holds on its GPUs (the metrics) ----


@dataclass(frozen=True, slots=True)
class GpuMemoryUse:
    """GPU memory that one part of this process holds on one GPU, and its budget there.

    `source` says what holds it: "torch" (the caching allocator: `used_bytes` is what it reserved,
    which is what its per-process memory fraction caps; `allocated_bytes` the live tensors),
    "faiss" (the RAG index's GPU copy), or an LLM engine ("ollama", "llama.cpp": what the engine
    holds, Ollama's in its own process). `device` is the index the holder uses (torch's own, the
    engine's main GPU). `budget_bytes` None: no budget set.
    """

    source: str
    device: int
    used_bytes: int
    budget_bytes: int | None = None
    allocated_bytes: int | None = None


MemorySource = Callable[[], Iterable[GpuMemoryUse]]

#: Memory fraction of every GPU `select_torch_device` capped in this process (torch index -> x).
_TORCH_FRACTIONS: dict[int, float] = {}
#: Holders other than torch (faiss, LLM engines), by name.
_MEMORY_SOURCES: dict[str, MemorySource] = {}


def add_memory_source(name: str, source: MemorySource) -> None:
    """Report `source()` in `memory_in_use()` from now on; a later source of the same name replaces it.

    `source` runs in the metrics server's thread at every scrape: it reads plain attributes, no I/O."""
    _MEMORY_SOURCES[name] = source


def remove_memory_source(name: str) -> None:
    _MEMORY_SOURCES.pop(name, None)


def torch_memory() -> list[GpuMemoryUse]:
    """What torch's allocator holds on each GPU this process uses: nothing when torch is not imported
    or has not initialised CUDA (torch is never imported, nor CUDA initialised, here)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is None or not cuda.is_initialized():
            return []
        devices = sorted({int(cuda.current_device()), *_TORCH_FRACTIONS})
    except Exception as exc:  # a broken CUDA state must not break the metrics endpoint
        log.debug("torch GPU memory could not be read: %s", exc)
        return []
    uses = []
    for index in devices:
        try:
            fraction = _TORCH_FRACTIONS.get(index)
            budget = None
            if fraction is not None:
                budget = int(fraction * cuda.get_device_properties(index).total_memory)
            uses.append(
                GpuMemoryUse(
                    source="torch",
                    device=index,
                    used_bytes=int(cuda.memory_reserved(index)),
                    budget_bytes=budget,
                    allocated_bytes=int(cuda.memory_allocated(index)),
                )
            )
        except Exception as exc:
            log.debug("torch GPU %d memory could not be read: %s", index, exc)
    return uses


def memory_in_use() -> list[GpuMemoryUse]:
    """Every holder of GPU memory in this process: torch, then the added sources (a failing source
    is left out)."""
    uses = torch_memory()
    for name, source in list(_MEMORY_SOURCES.items()):
        try:
            uses.extend(source())
        except Exception as exc:
            log.debug("GPU memory source %s failed: %s", name, exc)
    return uses
