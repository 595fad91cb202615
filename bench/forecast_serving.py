"""Forecast serving over gRPC against real processes: a Data service and a forecast service, one run.

    .venv/bin/python -m bench.forecast_serving [--symbols 40] [--calls 200] [--rounds 5] [--json]

Setup: embedded PostgreSQL, `python -m services.data` and `python -m services.forecast` on free ports
(scheduler off, NHITS input 168, h 24, 50 steps, fixed seed). EURUSD gets the bundled 5000 H1 bars,
FX001..FXnnn copies of its last 2000 bars under new names. EURUSD is trained once by the service
(TrainSymbol); its published version is copied to every FXnnn (each loaded as its own model).
Every ratio below is measured within this one run, its two sides interleaved where they can be.

Two forecast processes run: the default (candle cache on, see services/training/data_client.py) and
one with KITRADING_FORECAST_CANDLE_CACHE=false, so both are measured in the same run.

(a) One cold forecast (forecast cache skipped): the GetForecast RPC p50 vs, in this process on the same
    model (the same weights file), (1) `NeuralForecast.predict` (target: RPC <= 1.10x), (2) the domain's
    own path with candles from the same Data service over gRPC (cache on / off, as the RPC's service),
    (3) the domain's path on in-memory candles.
(b) One BatchGetForecasts of all symbols vs one GetForecast per symbol (target >= 5x), cold (forecast
    cache skipped) and warm, on both processes.
(c) GetForecast p99 (cold) while a TrainAll runs in the worker vs idle (target <= 1.5x). Measured on
    the symbol trained last, so no new version of it is published (and hot-reloaded) meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.runtime.threads import limit_math_threads

limit_math_threads(1)  # the service's serving budget: one math thread

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench._mesh import free_port, wait_serving  # noqa: E402
from kitrading.common.v1 import job_pb2, market_pb2  # noqa: E402
from kitrading.data.v1 import request_response_pb2 as data_rr  # noqa: E402
from kitrading.data.v1 import resources_pb2 as data_pb  # noqa: E402
from kitrading.data.v1 import service_pb2_grpc as data_grpc  # noqa: E402
from kitrading.forecast.v1 import request_response_pb2 as rr  # noqa: E402
from kitrading.forecast.v1 import service_pb2_grpc as forecast_grpc  # noqa: E402
from services.data import convert as data_cv  # noqa: E402
from services.data.samples import SAMPLES, load_candles  # noqa: E402
from services.forecast.forecasting import Forecaster  # noqa: E402
from services.forecast.model import NHITSForecaster, quiet_lightning  # noqa: E402
from services.forecast.settings import ForecastSettings  # noqa: E402
from services.runtime.embedded import start_embedded_postgres  # noqa: E402
from services.training.data_client import DataServiceSource  # noqa: E402
from services.training.registry import ModelRegistry  # noqa: E402
from services.training.sources import InMemoryCandleSource, SymbolInfo, candles_from_ohlcv  # noqa: E402

H1 = market_pb2.TIMEFRAME_H1
TARGET_A, TARGET_B, TARGET_C = 1.10, 5.0, 1.5
#: Issue 20: the GetForecast RPC at most this many times the domain's own call on the same source.
TARGET_RPC_VS_DOMAIN = 1.3
FORECAST_SERVICE = "kitrading.forecast.v1.ForecastService"
ENV = {
    "NHITS_MAX_STEPS": "50",
    "NHITS_HORIZON": "24",
    "NHITS_INPUT_SIZE": "168",
    "NHITS_RANDOM_SEED": "1",
    "NHITS_USE_GPU": "false",
    "KITRADING_FORECAST_EVAL_WINDOWS": "6",
    "KITRADING_FORECAST_CALIBRATION_WINDOWS": "60",
    "KITRADING_FORECAST_WORKER_IDLE_SECONDS": "600",
    "KITRADING_FORECAST_SCHEDULE": "false",
    "KITRADING_METRICS": "false",
    "KITRADING_LOG_LEVEL": "WARNING",
    "KITRADING_DATA_IMPORT_SAMPLES": "false",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 50), 3),
        "p99_ms": round(pct(values, 99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
        "n": len(values),
    }


@dataclass
class Services:
    home: Path
    data_target: str
    forecast_target: str  # the default service: candle cache on
    uncached_target: str  # the same service with KITRADING_FORECAST_CANDLE_CACHE=false


@contextmanager
def services() -> Iterator[Services]:
    """Embedded PostgreSQL, a Data and a forecast process on free ports; torn down after."""
    home = Path(tempfile.mkdtemp(prefix="kitrading-bench-forecast-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db_url = start_embedded_postgres(home / "postgres", cleanup_mode="delete")
        data_port, forecast_port, uncached_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update(
            ENV,
            KITRADING_HOME=str(home),
            KITRADING_DATABASE_URL=db_url,
            KITRADING_DATA_PORT=str(data_port),
            KITRADING_FORECAST_PORT=str(forecast_port),
        )
        log = (home / "services.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.data"], env=env, stderr=log))
        wait_serving(f"127.0.0.1:{data_port}", "kitrading.data.v1.DataService")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.forecast"], env=env, stderr=log))
        # Serving first, it holds the home's training lease; the second process serves reads only
        # (the bench trains on the first), see docs/reliability.md on replicas.
        wait_serving(f"127.0.0.1:{forecast_port}", "kitrading.forecast.v1.ForecastService", timeout_s=300)
        uncached_env = {
            **env,
            "KITRADING_FORECAST_PORT": str(uncached_port),
            "KITRADING_FORECAST_CANDLE_CACHE": "false",
        }
        procs.append(
            subprocess.Popen([sys.executable, "-m", "services.forecast"], env=uncached_env, stderr=log)
        )
        wait_serving(f"127.0.0.1:{uncached_port}", "kitrading.forecast.v1.ForecastService", timeout_s=300)
        yield Services(
            home, f"127.0.0.1:{data_port}", f"127.0.0.1:{forecast_port}", f"127.0.0.1:{uncached_port}"
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def seed_data(target: str, symbols: list[str]) -> pd.DataFrame:
    """EURUSD (all 5000 bars) and copies of its last 2000 bars; returns EURUSD's candle frame."""
    candles = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"]
    with grpc.insecure_channel(target) as channel:
        stub = data_grpc.DataServiceStub(channel)
        for symbol in ["EURUSD", *symbols]:
            stub.CreateSymbol(
                data_rr.CreateSymbolRequest(
                    symbol=data_pb.Symbol(symbol=symbol, asset_class=market_pb2.ASSET_CLASS_FX, active=True)
                ),
                timeout=30,
            )
            rows = candles if symbol == "EURUSD" else candles[-2000:]
            stub.UpsertCandles(
                data_rr.UpsertCandlesRequest(
                    symbol=symbol, timeframe=H1, candles=[data_cv.candle_out(c) for c in rows]
                ),
                timeout=120,
            )
    frame = pd.DataFrame(
        {
            "time": [c.time for c in candles],
            "open": [c.open for c in candles],
            "high": [c.high for c in candles],
            "low": [c.low for c in candles],
            "close": [c.close for c in candles],
            "volume": [c.volume for c in candles],
        }
    )
    return candles_from_ohlcv(frame)


def copy_model(registry: ModelRegistry, source: str, symbols: list[str]) -> str:
    """Publish `source`'s current version under every symbol (same weights, separate models)."""
    version = registry.get(source)
    for symbol in symbols:
        staged = registry.stage(symbol)
        for file in version.path.iterdir():
            if file.name != "metadata.json":
                shutil.copy(file, staged.path / file.name)
        registry.publish(staged, {**version.metadata, "symbol": symbol})
    return version.version


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1e3)
    return out


async def timed_async(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def neuralforecast_predictor(
    weights_dir: Path, closes: np.ndarray, input_size: int
) -> Callable[[], np.ndarray]:
    """`NeuralForecast.predict` on the served weights and the newest `input_size` closes: a
    NeuralForecast object fitted for one step on the series (to get its fitted state), then the
    served state dict loaded into its model."""
    import torch
    from neuralforecast import NeuralForecast

    served = NHITSForecaster.load(weights_dir)
    builder = NHITSForecaster(replace(served.config, max_steps=1, val_check_steps=1))
    history = pd.DataFrame({"unique_id": "EURUSD", "ds": np.arange(len(closes), dtype=np.int64), "y": closes})
    window = closes[-input_size:]
    df = pd.DataFrame({"unique_id": "EURUSD", "ds": np.arange(len(window), dtype=np.int64), "y": window})
    with quiet_lightning():
        nf = NeuralForecast(models=[builder._build(trainer=True)], freq=1)
        nf.fit(df=history)
    state = torch.load(weights_dir / "weights.pt", map_location="cpu", weights_only=True)
    nf.models[0].load_state_dict(state)
    nf.models[0].eval()

    def predict() -> np.ndarray:
        with quiet_lightning():
            return np.asarray(nf.predict(df=df)["NHITS"].to_numpy(), dtype=np.float64)

    return predict


def serve_bare(port: int, response_file: str) -> None:
    """The floor of any Python gRPC service: a bare grpc.aio server answering GetForecast with a
    response captured from the real service, from memory (no runtime, no domain)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    response = rr.GetForecastResponse.FromString(Path(response_file).read_bytes())

    async def get_forecast(request: rr.GetForecastRequest, context: object) -> rr.GetForecastResponse:
        return response

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            get_forecast,
            request_deserializer=rr.GetForecastRequest.FromString,
            response_serializer=rr.GetForecastResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(FORECAST_SERVICE, {"GetForecast": handler}),)
        )
        checker = health.aio.HealthServicer()
        await checker.set(FORECAST_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


@contextmanager
def bare_forecast_server(response: rr.GetForecastResponse, home: Path) -> Iterator[str]:
    port = free_port()
    response_file = home / "bare-forecast-response.binpb"
    response_file.write_bytes(response.SerializeToString())
    env = {**os.environ, **ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.forecast_serving", "--serve-bare", str(port), str(response_file)],
        env=env,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", FORECAST_SERVICE)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


async def bench_single(
    s: Services,
    stub: forecast_grpc.ForecastServiceStub,
    uncached: forecast_grpc.ForecastServiceStub,
    eurusd: pd.DataFrame,
    calls: int,
    rounds: int,
) -> dict[str, Any]:
    settings = ForecastSettings(home=s.home)
    registry = ModelRegistry(settings.models_dir)
    stack = ExitStack()
    cached_source = DataServiceSource(s.data_target)
    plain_source = DataServiceSource(s.data_target, cache=False)
    for src in (cached_source, plain_source):
        await src.start()
    deadline = time.monotonic() + 30
    while not cached_source.cache_live:
        if time.monotonic() > deadline:
            raise TimeoutError("the candle cache never followed Data's events")
        await asyncio.sleep(0.05)
    memory = InMemoryCandleSource()
    memory.put(SymbolInfo("EURUSD", "FX", timeframe="H1"), "H1", eurusd)
    forecasters = {
        "domain_cached_source": Forecaster(settings, cached_source, registry),
        "domain_uncached_source": Forecaster(settings, plain_source, registry),
        "domain_memory_source": Forecaster(settings, memory, registry),
    }
    for forecaster in forecasters.values():
        await forecaster.warmup()
    request = rr.GetForecastRequest(symbol="EURUSD", horizon=24, skip_cache=True)
    answer = stub.GetForecast(request, timeout=30)
    rpc_values = np.array([p.value for p in answer.forecast.points])
    bare_target = stack.enter_context(bare_forecast_server(answer, s.home))
    bare = forecast_grpc.ForecastServiceStub(stack.enter_context(grpc.insecure_channel(bare_target)))
    local = await forecasters["domain_memory_source"].forecast("EURUSD", 24)
    nf_predict = neuralforecast_predictor(registry.get("EURUSD").path, eurusd["close"].to_numpy(), 168)
    nf_values = nf_predict()
    same_model = bool(
        np.allclose(rpc_values, local.point, rtol=1e-5) and np.allclose(nf_values, local.point, rtol=1e-5)
    )

    async def domain_call(forecaster: Forecaster) -> None:
        forecaster.clear_cache()
        await forecaster.forecast("EURUSD", 24)

    rpcs: dict[str, Callable[[], object]] = {
        "rpc_cached": lambda: stub.GetForecast(request, timeout=30),
        "rpc_uncached": lambda: uncached.GetForecast(request, timeout=30),
        "bare_rpc": lambda: bare.GetForecast(request, timeout=30),
    }
    samples: dict[str, list[float]] = {name: [] for name in [*rpcs, "neuralforecast_predict", *forecasters]}
    for call in rpcs.values():  # warm up every path
        timed(call, 50)
    timed(nf_predict, 5)
    for forecaster in forecasters.values():
        await timed_async(functools.partial(domain_call, forecaster), 50)
    nf_calls = max(10, calls // 10)  # NeuralForecast.predict costs tens of ms per call
    for _ in range(rounds):
        for name, call in rpcs.items():
            samples[name] += timed(call, calls)
        samples["neuralforecast_predict"] += timed(nf_predict, nf_calls)
        for name, forecaster in forecasters.items():
            samples[name] += await timed_async(functools.partial(domain_call, forecaster), calls)
    for src in (cached_source, plain_source):
        await src.close()
    stack.close()
    out = {name: summary(v) for name, v in samples.items()}

    def ratio(a: str, b: str) -> float:
        return round(out[a]["p50_ms"] / out[b]["p50_ms"], 3)

    return {
        "paths": out,
        "same_forecast_everywhere": same_model,
        "rpc_vs_neuralforecast_predict": ratio("rpc_cached", "neuralforecast_predict"),
        "rpc_vs_domain_same_source": ratio("rpc_cached", "domain_cached_source"),
        "rpc_vs_domain_memory_source": ratio("rpc_cached", "domain_memory_source"),
        "uncached_rpc_vs_neuralforecast_predict": ratio("rpc_uncached", "neuralforecast_predict"),
        "uncached_rpc_vs_domain_same_source": ratio("rpc_uncached", "domain_uncached_source"),
        # The lowest RPC / domain ratio any Python gRPC service could reach on this machine: the
        # domain's own time plus a bare server's round trip of the same messages.
        "floor_rpc_vs_domain_same_source": round(
            (out["domain_cached_source"]["p50_ms"] + out["bare_rpc"]["p50_ms"])
            / out["domain_cached_source"]["p50_ms"],
            3,
        ),
        "runtime_adds_ms": round(
            out["rpc_cached"]["p50_ms"] - out["domain_cached_source"]["p50_ms"] - out["bare_rpc"]["p50_ms"], 3
        ),
    }


def bench_batch(stub: forecast_grpc.ForecastServiceStub, symbols: list[str], rounds: int) -> dict[str, Any]:
    def per_symbol(skip: bool) -> None:
        for i, symbol in enumerate(symbols):
            # skip_cache clears the whole cache: once per sweep is "every call computes"
            stub.GetForecast(
                rr.GetForecastRequest(symbol=symbol, horizon=24, skip_cache=skip and i == 0), timeout=30
            )

    def batch(skip: bool) -> None:
        reply = stub.BatchGetForecasts(
            rr.BatchGetForecastsRequest(symbols=symbols, horizon=24, skip_cache=skip), timeout=60
        )
        assert len(reply.forecasts) == len(symbols), reply.errors

    out: dict[str, Any] = {"symbols": len(symbols)}
    for label, skip in (("cold", True), ("warm", False)):
        sweep, together = functools.partial(per_symbol, skip), functools.partial(batch, skip)
        timed(sweep, 2)
        timed(together, 2)
        seq: list[float] = []
        bat: list[float] = []
        for _ in range(rounds):
            seq += timed(sweep, 1)
            bat += timed(together, 1)
        s, b = statistics.median(seq), statistics.median(bat)
        out[label] = {"per_symbol_ms": round(s, 2), "batch_ms": round(b, 2), "speedup": round(s / b, 2)}
    return out


def bench_training(stub: forecast_grpc.ForecastServiceStub, measured: str, calls: int) -> dict[str, Any]:
    request = rr.GetForecastRequest(symbol=measured, horizon=24, skip_cache=True)

    def sample(n: int) -> tuple[list[float], set[str]]:
        out, versions = [], set()
        for _ in range(n):
            start = time.perf_counter()
            reply = stub.GetForecast(request, timeout=30)
            out.append((time.perf_counter() - start) * 1e3)
            versions.add(reply.forecast.model_version)
            time.sleep(0.005)
        return out, versions

    sample(50)
    idle, _ = sample(calls)
    job = stub.TrainAll(rr.TrainAllRequest(force=True, background=True), timeout=30).job
    stream = stub.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job.job_id))
    for message in stream:  # wait for real optimiser steps (the worker has started)
        if message.event.WhichOneof("event") == "step":
            break
    stream.cancel()
    busy, versions = sample(calls)
    state = stub.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job.job_id), timeout=30).job
    still_running = state.state == job_pb2.JOB_STATE_RUNNING
    trained = sum(1 for x in state.symbols if x.state == job_pb2.JOB_STATE_SUCCEEDED)
    stub.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=job.job_id), timeout=60)
    idle_s, busy_s = summary(idle), summary(busy)
    return {
        "symbol": measured,
        "idle": idle_s,
        "training": busy_s,
        "p99_ratio": round(busy_s["p99_ms"] / idle_s["p99_ms"], 3),
        "p50_ratio": round(busy_s["p50_ms"] / idle_s["p50_ms"], 3),
        "job_still_running_at_end": still_running,
        "symbols_trained_meanwhile": trained,
        "versions_served_meanwhile": sorted(versions),
    }


async def run(n_symbols: int, calls: int, rounds: int) -> dict[str, Any]:
    symbols = [f"FX{i:03d}" for i in range(1, n_symbols)]
    with services() as s:
        t0 = time.perf_counter()
        eurusd = seed_data(s.data_target, symbols)
        with grpc.insecure_channel(s.forecast_target) as channel:
            stub = forecast_grpc.ForecastServiceStub(channel)
            trained = stub.TrainSymbol(
                rr.TrainSymbolRequest(symbol="EURUSD", force=True, background=False), timeout=600
            ).job
            assert trained.state == job_pb2.JOB_STATE_SUCCEEDED, trained.error
            registry = ModelRegistry(s.home / "models" / "forecast")
            version = copy_model(registry, "EURUSD", symbols)
            setup_s = time.perf_counter() - t0
            with grpc.insecure_channel(s.uncached_target) as uncached_channel:
                uncached = forecast_grpc.ForecastServiceStub(uncached_channel)
                single = await bench_single(s, stub, uncached, eurusd, calls, rounds)
                batch = bench_batch(stub, ["EURUSD", *symbols], rounds)
                batch_uncached = bench_batch(uncached, ["EURUSD", *symbols], rounds)
            training = bench_training(stub, symbols[-1], max(calls, 1000))
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "setup_s": round(setup_s, 1),
        "model": {"version": version, "input_size": 168, "h": 24, "mlp_units": 64, "max_steps": 50},
        "a_single": single,
        "b_batch": batch,
        "b_batch_uncached_candles": batch_uncached,
        "c_training": training,
        "targets": {
            "a_rpc_vs_neuralforecast_predict_le": TARGET_A,
            "a_met": single["rpc_vs_neuralforecast_predict"] <= TARGET_A,
            "a_met_vs_domain_same_source": single["rpc_vs_domain_same_source"] <= TARGET_A,
            "a_rpc_vs_domain_same_source_le": TARGET_RPC_VS_DOMAIN,
            "a_met_rpc_vs_domain": single["rpc_vs_domain_same_source"] <= TARGET_RPC_VS_DOMAIN,
            "a_floor_above_target": single["floor_rpc_vs_domain_same_source"] > TARGET_RPC_VS_DOMAIN,
            "b_batch_speedup_ge": TARGET_B,
            "b_met_cold": batch["cold"]["speedup"] >= TARGET_B,
            "b_met_warm": batch["warm"]["speedup"] >= TARGET_B,
            "c_p99_ratio_le": TARGET_C,
            "c_met": training["p99_ratio"] <= TARGET_C,
        },
    }


def report(result: dict[str, Any]) -> None:
    a, c, t = result["a_single"], result["c_training"], result["targets"]
    print(f"cpus {result['machine']['cpus']}, setup {result['setup_s']} s, model {result['model']}")
    print("\n(a) one cold forecast of EURUSD (h=24, forecast cache skipped)")
    names = {
        "rpc_cached": "GetForecast RPC (service default: candle cache)",
        "rpc_uncached": "GetForecast RPC (candle cache off)",
        "neuralforecast_predict": "NeuralForecast.predict in-process",
        "domain_cached_source": "domain in-process, Data source with cache",
        "domain_uncached_source": "domain in-process, Data source, no cache",
        "domain_memory_source": "domain in-process, in-memory candles",
        "bare_rpc": "floor: bare grpc.aio server, captured answer",
    }
    for key, label in names.items():
        p = a["paths"][key]
        print(f"  {label:<50} p50 {p['p50_ms']:8.3f} ms  p99 {p['p99_ms']:8.3f} ms  n {p['n']}")
    print(f"  same forecast on every path: {a['same_forecast_everywhere']}")
    print(
        f"  RPC / NeuralForecast.predict {a['rpc_vs_neuralforecast_predict']}x "
        f"(target <= {TARGET_A}x: {'met' if t['a_met'] else 'NOT met'}); "
        f"RPC / domain on the same source {a['rpc_vs_domain_same_source']}x; "
        f"RPC / domain in memory {a['rpc_vs_domain_memory_source']}x; without the candle cache: "
        f"RPC / NeuralForecast.predict {a['uncached_rpc_vs_neuralforecast_predict']}x, "
        f"RPC / domain {a['uncached_rpc_vs_domain_same_source']}x"
    )
    floor = a["floor_rpc_vs_domain_same_source"]
    verdict = "met" if t["a_met_rpc_vs_domain"] else "NOT met"
    if not t["a_met_rpc_vs_domain"] and t["a_floor_above_target"]:
        verdict += ": the floor itself is above it"
    print(
        f"  RPC / domain on the same source {a['rpc_vs_domain_same_source']}x (target <= "
        f"{TARGET_RPC_VS_DOMAIN}x: {verdict}); floor (domain + a bare server's round trip) {floor}x; "
        f"the runtime adds {a['runtime_adds_ms']} ms beyond the bare round trip"
    )
    for key, label in (("b_batch", "candle cache on"), ("b_batch_uncached_candles", "candle cache off")):
        b = result[key]
        print(f"\n(b) {b['symbols']} symbols, {label}: one batch call vs one call per symbol")
        for kind in ("cold", "warm"):
            r = b[kind]
            verdict = "met" if r["speedup"] >= TARGET_B else "NOT met"
            print(
                f"  {kind}: per symbol {r['per_symbol_ms']:8.2f} ms | batch {r['batch_ms']:8.2f} ms | "
                f"speed-up {r['speedup']}x (target >= {TARGET_B}x: {verdict})"
            )
    print(f"\n(c) cold GetForecast of {c['symbol']} while TrainAll runs vs idle")
    for label in ("idle", "training"):
        p = c[label]
        print(f"  {label:<9} p50 {p['p50_ms']:8.3f} ms  p99 {p['p99_ms']:8.3f} ms  n {p['n']}")
    print(
        f"  p99 ratio {c['p99_ratio']}x (target <= {TARGET_C}x: {'met' if t['c_met'] else 'NOT met'}), "
        f"p50 ratio {c['p50_ratio']}x; still training at the end: {c['job_still_running_at_end']}, "
        f"symbols trained meanwhile: {c['symbols_trained_meanwhile']}, "
        f"versions served: {c['versions_served_meanwhile']}"
    )


def main() -> None:
    if sys.argv[1:2] == ["--serve-bare"]:
        serve_bare(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--symbols", type=int, default=40, help="symbols in the batch (EURUSD + copies)")
    parser.add_argument("--calls", type=int, default=200, help="calls per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = asyncio.run(run(args.symbols, args.calls, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
