"""The LLM's GPU memory budget: a fraction of the GPU, turned into the number of layers offloaded.

Neither Ollama nor llama.cpp takes a memory fraction. Both take the number of layers to put on the
GPU (Ollama's `num_gpu` option, llama.cpp's `n_gpu_layers`); the rest runs on the CPU. So the budget
`KITRADING_LLM_GPU_MEMORY_FRACTION` x the GPU's memory (`KITRADING_LLM_GPU_MEMORY_TOTAL`, or what
NVML or `nvidia-smi` reports for `KITRADING_LLM_MAIN_GPU`) becomes a layer count, from the model's shape:

    per layer = weights (model bytes / (blocks + 1))        the output layer counts as one more
              + KV cache (context x (key + value width) x KV heads x 2 bytes, f16)
    layers    = floor((budget - reserve) / per layer), clamped to 0..blocks + 1

`reserve` covers the CUDA context and compute buffers (`KITRADING_LLM_GPU_RESERVE`, 1 GiB).

An estimate is not a guarantee, so it is checked: after an answer the engine reads what the server
really holds (Ollama's `/api/ps` `size_vram`). Over the budget, the next request asks for as many
fewer layers as the excess takes up; Ollama reloads a model whose `num_gpu` changed, so the memory
really drops, and a check after that load cuts again if the estimate was still short. Domain code:
no gRPC here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from services.runtime.config import ConfigError
from services.runtime.gpu import gpu_memory_total

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
#: Bytes per cached key or value element (llama.cpp and Ollama default to an f16 KV cache).
KV_ELEMENT_BYTES = 2


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """What the operator asked for. `fraction` None: no budget, the engine places layers itself."""

    fraction: float | None = None
    #: The GPU's memory in bytes; None: ask NVML (or `nvidia-smi`) for GPU `device`.
    total_bytes: int | None = None
    reserve_bytes: int = GIB
    device: int = 0


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the layer count depends on: the number of blocks, the weights' size, the KV width."""

    blocks: int
    model_bytes: int
    #: Bytes of KV cache one token takes in one layer.
    kv_bytes_per_token_layer: int

    @property
    def offloadable_layers(self) -> int:
        """The repeating blocks plus the output layer (what `num_gpu` / `n_gpu_layers` count)."""
        return self.blocks + 1

    def layer_bytes(self, context_tokens: int) -> int:
        weights = self.model_bytes / self.offloadable_layers
        return math.ceil(weights + context_tokens * self.kv_bytes_per_token_layer)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], model_bytes: int) -> ModelShape:
        """From GGUF metadata: Ollama's `/api/show` `model_info`, or llama.cpp's `Llama.metadata`.

        Keys are `<architecture>.block_count`, `.embedding_length`, `.attention.head_count`,
        `.attention.head_count_kv` (default: head_count) and optionally `.attention.key_length` /
        `.attention.value_length` (default: embedding_length / head_count). llama.cpp gives strings.
        """
        arch = str(metadata.get("general.architecture") or "")
        if not arch:
            raise ValueError("model metadata has no general.architecture")

        def number(key: str, default: int | None = None) -> int:
            raw = metadata.get(f"{arch}.{key}")
            if raw is None or raw == "":
                if default is None:
                    raise ValueError(f"model metadata has no {arch}.{key}")
                return default
            if isinstance(raw, list | tuple):  # per-layer head counts (some architectures): the largest
                return max(int(v) for v in raw)
            return int(str(raw))

        blocks = number("block_count")
        heads = number("attention.head_count")
        kv_heads = number("attention.head_count_kv", heads)
        width = number("embedding_length")
        key = number("attention.key_length", width // max(heads, 1))
        value = number("attention.value_length", key)
        if blocks <= 0 or model_bytes <= 0:
            raise ValueError(f"model metadata gives {blocks} blocks and {model_bytes} bytes")
        return cls(
            blocks=blocks,
            model_bytes=model_bytes,
            kv_bytes_per_token_layer=(key + value) * kv_heads * KV_ELEMENT_BYTES,
        )


def plan_layers(shape: ModelShape, *, budget_bytes: int, reserve_bytes: int, context_tokens: int) -> int:
    """The most layers whose weights and KV cache fit in `budget_bytes - reserve_bytes`."""
    room = budget_bytes - reserve_bytes
    if room <= 0:
        return 0
    return max(0, min(shape.offloadable_layers, room // shape.layer_bytes(context_tokens)))


@dataclass(slots=True)
class GpuBudget:
    """The budget in force and what was planned and observed against it (mutable, one per engine)."""

    budget_bytes: int
    total_bytes: int
    fraction: float
    reserve_bytes: int
    #: Layers to offload on the next load; None until the model's shape is known.
    layers: int | None = None
    total_layers: int | None = None
    #: GPU memory the engine reported for the model at the last check; None: not seen loaded.
    used_bytes: int | None = None
    #: Estimated bytes one offloaded layer takes (weights + KV cache); 0 until planned.
    layer_bytes: int = 0
    detail: str = "model shape not read yet"
    #: Times an observation cut the layers, and what the engine held at the last cut.
    cuts: int = 0
    cut_after_bytes: int = 0
    context_tokens: int = 0

    @classmethod
    def resolve(
        cls, settings: GpuSettings, *, variable: str = "KITRADING_LLM_GPU_MEMORY_FRACTION"
    ) -> GpuBudget | None:
        """The budget for `settings`; ConfigError when a fraction is set but the GPU's size is unknown."""
        if settings.fraction is None:
            return None
        total = settings.total_bytes or gpu_memory_total(settings.device)
        if not total:
            raise ConfigError(
                f"{variable}={settings.fraction} needs the GPU's memory size: set "
                "KITRADING_LLM_GPU_MEMORY_TOTAL (e.g. 80GiB, the GPU Ollama runs on) or run where "
                "NVML or nvidia-smi sees that GPU"
            )
        return cls(
            budget_bytes=int(total * settings.fraction),
            total_bytes=total,
            fraction=settings.fraction,
            reserve_bytes=settings.reserve_bytes,
        )

    def plan(self, shape: ModelShape, context_tokens: int) -> int:
        layers = plan_layers(
            shape,
            budget_bytes=self.budget_bytes,
            reserve_bytes=self.reserve_bytes,
            context_tokens=context_tokens,
        )
        if self.layers is None or self.total_layers != shape.offloadable_layers:
            self.layers = layers
        else:  # a re-read keeps a cut made from observation: the estimate was already shown too high
            self.layers = min(self.layers, layers)
        self.total_layers = shape.offloadable_layers
        self.layer_bytes = shape.layer_bytes(context_tokens)
        self.context_tokens = context_tokens
        self.detail = self._describe()
        return self.layers

    def _describe(self) -> str:
        text = f"{self.layers}/{self.total_layers} layers on the GPU"
        if self.layer_bytes:
            text += f" (~{self.layer_bytes / MIB:.0f} MiB each at {self.context_tokens} context tokens)"
        if self.cuts:
            text += (
                f"; cut {self.cuts}x, last after the engine held {self.cut_after_bytes / GIB:.2f} GiB, "
                f"over the {self.budget_bytes / GIB:.2f} GiB budget"
            )
        return text

    def observe(self, used_bytes: int, *, loaded_layers: int | None) -> int | None:
        """Record what the engine holds; over budget, cut the layers and return the new count.

        `loaded_layers` is the layer count the model was loaded with (None: not known, e.g. loaded
        before this process started). Only a load made with the current plan can prove the plan too
        big: an older, larger load is replaced by the next request anyway.
        """
        self.used_bytes = used_bytes
        if used_bytes <= self.budget_bytes or not self.layers or loaded_layers != self.layers:
            return None
        if self.layer_bytes:  # drop as many whole layers as the excess takes up
            cut = self.layers - math.ceil((used_bytes - self.budget_bytes) / self.layer_bytes)
        else:
            cut = min(self.layers - 1, math.floor(self.layers * self.budget_bytes / used_bytes) - 1)
        self.layers = max(0, cut)
        self.cuts += 1
        self.cut_after_bytes = used_bytes
        self.detail = self._describe()
        log.warning(
            "LLM used %.2f GiB of GPU memory, over its %.2f GiB budget: %d layers from the next request",
            used_bytes / GIB,
            self.budget_bytes / GIB,
            self.layers,
        )
        return self.layers


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """A snapshot of a `GpuBudget` for status replies."""

    budget_bytes: int
    total_bytes: int
    fraction: float
    layers: int | None
    total_layers: int | None
    used_bytes: int | None
    detail: str


def usage_of(budget: GpuBudget | None) -> GpuUsage | None:
    if budget is None:
        return None
    return GpuUsage(
        budget_bytes=budget.budget_bytes,
        total_bytes=budget.total_bytes,
        fraction=budget.fraction,
        layers=budget.layers,
        total_layers=budget.total_layers,
        used_bytes=budget.used_bytes,
        detail=budget.detail,
    )
