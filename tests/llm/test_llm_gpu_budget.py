"""The LLM's GPU memory budget: planning layers from a model's shape, enforcing it on Ollama (checked
against what the server holds, `/api/ps`), configuration, and how status reports it."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import grpc.aio
import pytest
from fake_ollama import MODEL_SHAPES, FakeOllama

from kitrading.cli.main import main as cli_main
from kitrading.llm.v1 import request_response_pb2 as rr
from kitrading.llm.v1 import service_pb2_grpc
from services.llm.app import LlmApp
from services.llm.embedded import LlamaCppEngine
from services.llm.engine import ChatMessage
from services.llm.gpu_budget import (
    GIB,
    MIB,
    GpuBudget,
    GpuSettings,
    ModelShape,
    plan_layers,
)
from services.llm.grounding import GroundingSettings
from services.llm.ollama_engine import OllamaEngine
from services.llm.settings import EmbeddedSettings, LlmSettings, OllamaSettings
from services.runtime.config import ConfigError, env_bytes, parse_bytes
from services.runtime.gpu import gpu_memory_total
from tests.grpc_helpers import start_server

MESSAGES: list[ChatMessage] = [{"role": "user", "content": "Buy or sell EURUSD?"}]
LLAMA_70B_BYTES = 42_520_412_160  # llama3.1:70b Q4_K_M, as /api/tags lists it
#: llama3.1:70b at 4096 context tokens: its share of the weights plus its f16 KV cache, per layer.
LAYER_BYTES = LLAMA_70B_BYTES // 81 + 4096 * (128 + 128) * 8 * 2
HALF_OF_80 = GpuSettings(fraction=0.5, total_bytes=80 * GIB)


def llama_70b() -> ModelShape:
    return ModelShape.from_metadata(MODEL_SHAPES["llama3.1:70b"]["model_info"], LLAMA_70B_BYTES)


# -- sizes and shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("85899345920", 80 * GIB),
        ("80GiB", 80 * GIB),
        ("80g", 80 * GIB),
        ("80 GB", 80 * 10**9),
        ("81559MiB", 81559 * MIB),
        ("1.5GiB", 3 * GIB // 2),
    ],
)
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "80 parsecs", "1e", "nan"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)
    with pytest.raises(ConfigError, match="KITRADING_X must be a size"):
        env_bytes("KITRADING_X", None, {"KITRADING_X": text or "?"})


def test_shape_from_ollama_and_llama_cpp_metadata() -> None:
    shape = llama_70b()
    assert (shape.blocks, shape.offloadable_layers) == (80, 81)
    assert shape.kv_bytes_per_token_layer == (128 + 128) * 8 * 2  # GQA: 8 KV heads of 128
    assert shape.layer_bytes(4096) == LAYER_BYTES
    # llama-cpp-python's Llama.metadata gives every value as a string
    as_strings = {k: str(v) for k, v in MODEL_SHAPES["llama3.1:70b"]["model_info"].items()}
    assert ModelShape.from_metadata(as_strings, LLAMA_70B_BYTES) == shape
    with pytest.raises(ValueError, match="block_count"):
        ModelShape.from_metadata({"general.architecture": "llama"}, 1)


def test_plan_fits_the_budget_less_the_reserve() -> None:
    shape = llama_70b()
    layers = plan_layers(shape, budget_bytes=40 * GIB, reserve_bytes=GIB, context_tokens=4096)
    assert layers == (39 * GIB) // LAYER_BYTES == 77
    assert layers * LAYER_BYTES + GIB <= 40 * GIB < (layers + 1) * LAYER_BYTES + GIB
    # the KV cache counts: a 32k context leaves room for fewer layers
    assert (
        plan_layers(shape, budget_bytes=40 * GIB, reserve_bytes=GIB, context_tokens=32768) == 63
    )  # 128 MiB of KV each
    assert plan_layers(shape, budget_bytes=GIB, reserve_bytes=GIB, context_tokens=4096) == 0
    assert plan_layers(shape, budget_bytes=200 * GIB, reserve_bytes=GIB, context_tokens=4096) == 81


def test_observation_cuts_only_a_load_made_with_the_current_plan() -> None:
    budget = GpuBudget.resolve(HALF_OF_80)
    assert budget is not None and budget.budget_bytes == 40 * GIB
    assert budget.plan(llama_70b(), 4096) == 77
    assert budget.observe(39 * GIB, loaded_layers=77) is None  # within budget
    assert budget.observe(43 * GIB, loaded_layers=None) is None  # loaded before us: not our plan
    assert budget.layers == 77 and budget.cuts == 0
    assert budget.observe(43 * GIB, loaded_layers=77) == 71  # 3 GiB over: 6 layers of 517 MiB
    assert budget.observe(43 * GIB, loaded_layers=77) is None  # the old load, still resident
    assert budget.layers == 71 and budget.cuts == 1 and "cut" in budget.detail
    assert budget.plan(llama_70b(), 4096) == 71  # re-reading the shape keeps the cut
    assert budget.observe(int(40.2 * GIB), loaded_layers=71) == 70  # still over: cut again


# -- configuration ------------------------------------------------------------------------------------


def fake_nvidia_smi(tmp_path: Path, output: str) -> Path:
    script = tmp_path / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "{output}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "args"


def test_gpu_size_comes_from_the_setting_or_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No pynvml (importing it fails), so services.runtime.gpu falls back to nvidia-smi on PATH.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_memory_total() is None  # no nvidia-smi
    with pytest.raises(ConfigError, match="KITRADING_LLM_GPU_MEMORY_TOTAL"):
        GpuBudget.resolve(GpuSettings(fraction=0.5))
    assert GpuBudget.resolve(GpuSettings()) is None  # no fraction: no budget, nothing to size
    args = fake_nvidia_smi(tmp_path, "81559")
    budget = GpuBudget.resolve(GpuSettings(fraction=0.25, device=1))
    assert (
        budget is not None and budget.total_bytes == 81559 * MIB and budget.budget_bytes == 81559 * MIB // 4
    )
    assert args.read_text().split() == [
        "--query-gpu=memory.total",
        "--format=csv,noheader,nounits",
        "-i",
        "1",
    ]
    explicit = GpuBudget.resolve(GpuSettings(fraction=0.5, total_bytes=24 * GIB))
    assert explicit is not None and explicit.total_bytes == 24 * GIB  # the setting wins
    fake_nvidia_smi(tmp_path, "No devices were found")
    assert gpu_memory_total() is None


def test_settings_from_env() -> None:
    base = {"OLLAMA_BASE_URL": "http://gpu-box:11434"}
    gpu = LlmSettings.from_env(
        {
            **base,
            "KITRADING_LLM_GPU_MEMORY_FRACTION": "0.55",
            "KITRADING_LLM_GPU_MEMORY_TOTAL": "80GiB",
            "KITRADING_LLM_GPU_RESERVE": "512MiB",
            "KITRADING_LLM_MAIN_GPU": "1",
        }
    ).gpu
    assert gpu == GpuSettings(fraction=0.55, total_bytes=80 * GIB, reserve_bytes=512 * MIB, device=1)
    assert LlmSettings.from_env(base).gpu == GpuSettings()
    assert LlmSettings.from_env({**base, "KITRADING_LLM_GPU_MEMORY_FRACTION": ""}).gpu == GpuSettings()
    bad = {
        "KITRADING_LLM_GPU_MEMORY_FRACTION": ("1.5", "between 0.0 and 1.0"),
        "KITRADING_LLM_GPU_MEMORY_TOTAL": ("lots", "KITRADING_LLM_GPU_MEMORY_TOTAL must be a size"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            LlmSettings.from_env({**base, "KITRADING_LLM_GPU_MEMORY_FRACTION": "0.5", name: value})
    with pytest.raises(ConfigError, match="above 0"):
        LlmSettings.from_env({**base, "KITRADING_LLM_GPU_MEMORY_FRACTION": "0"})
    with pytest.raises(ConfigError, match="not both"):
        LlmSettings.from_env(
            {**base, "KITRADING_LLM_GPU_MEMORY_FRACTION": "0.5", "KITRADING_LLM_NUM_GPU": "40"}
        )


# -- enforcement on Ollama ----------------------------------------------------------------------------


async def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5.0
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def answer(engine: OllamaEngine) -> None:
    tokens = [t async for t in engine.stream(MESSAGES, max_tokens=8, temperature=0.0)]
    assert tokens[-1].finish_reason is not None


async def test_ollama_without_a_budget_takes_more_than_half_the_gpu() -> None:
    """The baseline the budget exists for: left alone, Ollama puts all 81 layers on the 80 GiB GPU."""
    with FakeOllama() as fake:
        engine = OllamaEngine(OllamaSettings(base_url=fake.url))
        await engine.start()
        await answer(engine)
        assert "num_gpu" not in fake.requests[-1]["options"] and engine.info().gpu is None
        held = fake.loaded["llama3.1:70b"]
        assert held["num_gpu"] == 81 and held["size_vram"] > 42 * GIB
        await engine.close()


async def test_ollama_budget_plans_layers_and_cuts_them_when_the_server_holds_more() -> None:
    with FakeOllama() as fake:
        engine = OllamaEngine(OllamaSettings(base_url=fake.url), HALF_OF_80)
        await engine.start()
        gpu = engine.info().gpu
        assert gpu is not None and (gpu.layers, gpu.total_layers) == (77, 81)
        assert gpu.budget_bytes == 40 * GIB and gpu.used_bytes == 0  # nothing loaded yet

        await answer(engine)
        options = fake.requests[-1]["options"]
        assert (options["num_gpu"], options["num_ctx"]) == (77, 4096)
        # Ollama's compute buffers (1.5 GiB) are more than the 1 GiB reserve: 77 layers hold 40.35 GiB.
        first = fake.loaded["llama3.1:70b"]["size_vram"]
        assert first > 40 * GIB
        await eventually(lambda: engine.gpu_budget is not None and engine.gpu_budget.layers == 76)
        status = engine.info().gpu
        assert (
            status is not None and status.used_bytes == first and "over the 40.00 GiB budget" in status.detail
        )

        await engine.refresh(force=True)  # the old load is still resident: no second cut
        assert engine.gpu_budget is not None and engine.gpu_budget.layers == 76
        assert fake.shows == 1  # the shape was read once; refreshes only check /api/ps
        assert "76/81 layers" in engine.gpu_budget.detail and "cut 1x, last after the engine held 40.35" in (
            engine.gpu_budget.detail
        )

        await answer(engine)
        assert fake.requests[-1]["options"]["num_gpu"] == 76 and fake.loads == 2  # Ollama reloaded
        second = fake.loaded["llama3.1:70b"]["size_vram"]
        assert second <= 40 * GIB
        await eventually(lambda: engine.info().gpu is not None and engine.info().gpu.used_bytes == second)  # type: ignore[union-attr]
        await answer(engine)
        assert fake.loads == 2 and engine.gpu_budget.cuts == 1  # stable within the budget
        await engine.close()


async def test_ollama_budget_without_readable_shape_keeps_the_model_off_the_gpu() -> None:
    with FakeOllama(models=["llama3.1:70b"]) as fake:
        engine = OllamaEngine(OllamaSettings(base_url=fake.url), HALF_OF_80)
        engine._model_bytes = LLAMA_70B_BYTES
        fake.stop()  # the server is gone: the shape cannot be read
        await engine._plan_layers()
        assert engine.gpu_budget is not None and engine.gpu_budget.layers is None
        assert engine.options(max_tokens=1, temperature=0.0, stop=())["num_gpu"] == 0
        assert "unreadable" in engine.gpu_budget.detail
        await engine.close()


async def test_ollama_budget_without_gpu_size_fails_the_start_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"KITRADING_LLM_GPU_MEMORY_FRACTION=0\.5 needs the GPU's memory"):
        OllamaEngine(OllamaSettings(base_url="http://127.0.0.1:9"), GpuSettings(fraction=0.5))


async def test_status_rpc_and_cli_report_the_budget() -> None:
    with FakeOllama() as fake:
        settings = LlmSettings(ollama=OllamaSettings(base_url=fake.url), gpu=HALF_OF_80)
        server = await start_server(LlmApp(settings, GroundingSettings.from_env({})), "llm")
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                llm = service_pb2_grpc.LlmServiceStub(channel)
                status = await llm.GetLlmStatus(rr.GetLlmStatusRequest())
                gpu = status.gpu_budget
                assert status.HasField("gpu_budget") and "ollama 0.6.8" in status.detail
                assert (gpu.fraction, gpu.total_bytes, gpu.budget_bytes) == (0.5, 80 * GIB, 40 * GIB)
                assert (gpu.offloaded_layers, gpu.total_layers, gpu.used_measured) == (77, 81, True)
            out = StringIO()

            def run() -> int:
                with redirect_stdout(out):
                    return cli_main(["--target", server.target, "llm", "status"])

            assert await asyncio.to_thread(run) == 0
            assert (
                "gpu      budget 40.00 GiB (50% of 80.00 GiB), holds 0.00 GiB; 77/81 layers" in out.getvalue()
            )
        finally:
            await server.stop(0)
        without = await start_server(
            LlmApp(LlmSettings(ollama=OllamaSettings(base_url=fake.url)), GroundingSettings.from_env({})),
            "llm",
        )
        try:
            async with grpc.aio.insecure_channel(without.target) as channel:
                status = await service_pb2_grpc.LlmServiceStub(channel).GetLlmStatus(rr.GetLlmStatusRequest())
                assert not status.HasField("gpu_budget")
        finally:
            await without.stop(0)


async def test_embedded_cpu_build_reports_no_gpu_memory() -> None:
    engine = LlamaCppEngine(EmbeddedSettings(threads=1), GpuSettings(fraction=0.5))
    await engine.start()
    try:
        gpu = engine.info().gpu
        assert gpu is not None and (gpu.layers, gpu.used_bytes, gpu.budget_bytes) == (0, 0, 0)
        assert "CPU build" in gpu.detail
    finally:
        await engine.close()
