"""The regime CLI commands in-process against a real stack: a Data service (embedded PostgreSQL, the
bundled EURUSD H1 candles) and the regime service on port 0 with small settings, its first-start job
awaited once. The commands run in a thread (they block) and their output is asserted as a user reads it."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc.aio
import pytest

from kitrading.cli.commands.forecast import follow
from kitrading.cli.commands.models import run_rollback, run_versions
from kitrading.cli.commands.regime import NO_EDGE, run_regime, run_regime_model, run_score, run_train_regime
from kitrading.cli.main import main
from kitrading.common.v1 import job_pb2, market_pb2, training_pb2
from kitrading.regime.v1 import request_response_pb2 as rr
from kitrading.regime.v1 import service_pb2_grpc
from services.data.samples import SAMPLES, load_candles
from services.regime.app import RegimeApp
from services.regime.settings import RegimeSettings
from tests.cli_helpers import cli, table
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, start_server

pytestmark = pytest.mark.slow

H1 = market_pb2.TIMEFRAME_H1
ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


@dataclass
class Stack:
    regime: service_pb2_grpc.RegimeServiceStub
    target: str
    data_target: str


@pytest.fixture(scope="module")
async def stack(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Data with EURUSD (2000 H1 bars) active and NOMODEL inactive; the regime service with small
    settings, no scheduler, no event retraining."""
    candles = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"]
    rows = [
        ("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles[-2000:]),
        ("NOMODEL", market_pb2.ASSET_CLASS_FX, False, H1, candles[-500:]),
    ]
    async with data_service(postgres, "test_regime_cli", rows) as data:
        settings = RegimeSettings(
            home=tmp_path_factory.mktemp("regime-cli"),
            restarts=1,
            max_iter=30,
            boosting_rounds=20,
            worker_nice=0,
            event_retrain=False,
        )
        server = await start_server(RegimeApp(settings, data=data.target, schedule=False), "regime")
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Stack(service_pb2_grpc.RegimeServiceStub(channel), server.target, data.target)
        await server.stop(0)


@pytest.fixture(scope="module")
async def trained(stack: Stack) -> training_pb2.TrainingJob:
    """The first-start job, awaited to its end."""
    job_id = (await stack.regime.GetRegimeStatus(rr.GetRegimeStatusRequest())).training_job.job_id
    assert job_id
    deadline = time.monotonic() + 120
    while True:
        job = (await stack.regime.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job
        if job.state in ENDED:
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
            return job
        assert time.monotonic() < deadline, f"first-start job {job_id} still {job.state}"
        await asyncio.sleep(0.1)


async def test_regime_prints_filtered_segments_hindsight_and_plots_prices(
    stack: Stack, trained: training_pb2.TrainingJob, tmp_path: Path
) -> None:
    png = tmp_path / "eurusd.png"
    argv = ["--target", stack.target, "regime", "eurusd", "--lookback", "300", "--hindsight"]
    status, text = await cli(run_regime, [*argv, "--plot", str(png), "--data-target", stack.data_target])
    assert status == 0
    lines = text.splitlines()
    assert lines[0].startswith("EURUSD H1 regime: ") and "(model v000001)" in lines[0], text
    assert lines[2].split() == ["REGIME", "PROBABILITY", "EXPECTED", "DURATION"], text
    state = (await stack.regime.GetRegime(rr.GetRegimeRequest(symbol="EURUSD", lookback=300))).state
    probabilities = [line for line in lines[3 : 3 + len(state.probabilities)]]
    assert all(" bars" in line for line in probabilities) and len(probabilities) >= 2, text
    assert "Regime segments over the last 300 bars, from filtered probabilities" in text
    assert "HINDSIGHT segments: the Viterbi path" in text and "uses later bars" in text
    assert text.count("START (UTC)") == 2 and "MEAN RETURN/BAR" in text
    newest = min(len(state.history), 12)
    assert f"the newest {newest} of {len(state.history)}" in text or len(state.history) <= 12
    assert f"saved {png}\n" in text and "no prices" not in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000

    # the regime service alone has no candles: the plot says so and is still drawn
    bare = tmp_path / "bare.png"
    status, text = await cli(run_regime, [*argv[:6], "--segments", "0", "--plot", str(bare)])
    assert status == 0 and "no prices" in text and "--data-target" in text and bare.exists()
    assert "HINDSIGHT" not in text and "; all of them, oldest first" in text


async def test_score_prints_probability_trade_setting_edge_and_features(
    stack: Stack, trained: training_pb2.TrainingJob
) -> None:
    card = await stack.regime.GetRegimeModel(rr.GetRegimeModelRequest(symbol="EURUSD"))
    status, text = await cli(run_score, ["--target", stack.target, "score", "EURUSD", "buy", "--top", "5"])
    assert status == 0
    assert text.startswith("EURUSD H1 buy at the bar of "), text
    assert "probability      0." in text and "that take-profit is hit before stop-loss" in text
    assert "expected return" in text and "after costs" in text and "regime " in text
    assert "horizon 24 bars, take-profit 2 ATR, stop-loss 1 ATR" in text
    assert (NO_EDGE in text) == (not card.scorer.evaluation.edge), text
    features = text.split("CONTRIBUTION\n", 1)[1].splitlines()
    assert len(features) == 5 and all(line.split()[-1][0] in "+-" for line in features), text

    state = (await stack.regime.GetRegime(rr.GetRegimeRequest(symbol="EURUSD"))).state
    at = state.last_candle_time.ToDatetime() - timedelta(hours=30)
    argv = ["--target", stack.target, "score", "EURUSD", "sell", "--time", at.isoformat()]
    explicit = [*argv, "--horizon", "24", "--take-profit", "2", "--stop-loss", "1", "--unit", "atr"]
    status, text = await cli(run_score, explicit)
    assert status == 0 and f"EURUSD H1 sell at the bar of {at:%Y-%m-%d %H:%M} UTC" in text, text


async def test_regime_model_prints_the_card(stack: Stack, trained: training_pb2.TrainingJob) -> None:
    status, text = await cli(run_regime_model, ["--target", stack.target, "regime-model", "EURUSD"])
    assert status == 0
    assert text.startswith("EURUSD H1 regime model v000001, trained ") and "on 2000 bars" in text, text
    assert "hidden states (chosen by BIC)" in text and "(chosen)" in text
    assert "EM converged in " in text or "EM did NOT converge" in text
    assert "Signal scorer (LightGBM) v000001" in text and "horizon 24 bars" in text
    for row in ("AUC", "Brier score", "Brier skill", "log loss", "log loss skill"):
        assert f"\n{row} " in text, row
    assert "Reliability (calibrated probabilities):" in text and "OBSERVED RATE" in text
    assert "Backtest, walk-forward, after costs" in text and "buy and hold" in text
    assert "\nVerdict: " in text and ("Edge: yes" in text or f"Edge: {NO_EDGE}" in text)


async def test_train_regime_follows_with_a_progress_bar(
    stack: Stack, trained: training_pb2.TrainingJob
) -> None:
    status, text = await cli(
        run_train_regime, ["--target", stack.target, "train-regime", "EURUSD", "--force", "--follow"]
    )
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0].startswith("job ") and lines[0].endswith(": EURUSD"), text
    bars = [line for line in lines if line.startswith("EURUSD ") and "%" in line]
    assert bars and "100%" in bars[-1] and " step " in bars[-1], text
    assert any(
        line.startswith("EURUSD") and "succeeded" in line and "model v000002" in line for line in lines
    )
    assert " succeeded in " in lines[-1], text

    job_id = lines[0].split()[1]
    argv = ["--target", stack.target, "train-regime", "--job", job_id]
    status, text = await cli(run_train_regime, argv)
    assert status == 0 and text.startswith(f"job {job_id} succeeded in ") and "\nEURUSD " in text, text


async def test_versions_and_rollback(
    stack: Stack, trained: training_pb2.TrainingJob, capsys: pytest.CaptureFixture[str]
) -> None:
    job = (
        await stack.regime.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["EURUSD"], force=True))
    ).job
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    newest = job.symbols[0].model_version
    status, text = await cli(run_versions, ["--target", stack.target, "versions", "regime", "eurusd"])
    assert status == 0, text
    rows = table(text, "VERSION")
    assert rows[0].split()[:3] == [newest, "active", "H1"] and rows[-1].split()[:2] == ["v000001", "H1"], text
    assert "BRIER" in text and "EDGE" in text
    older = rows[1].split()[0]
    status, text = await cli(run_rollback, ["--target", stack.target, "rollback", "regime", "EURUSD"])
    assert (status, text) == (0, f"regime EURUSD now serves {older}\n")
    state = (await stack.regime.GetRegime(rr.GetRegimeRequest(symbol="EURUSD"))).state
    assert state.model_version == older
    argv = ["--target", stack.target, "rollback", "regime", "EURUSD", "--version", newest, "--json"]
    status, text = await cli(run_rollback, argv)
    assert status == 0 and json.loads(text)["modelVersion"] == newest and json.loads(text)["active"]
    assert await asyncio.to_thread(main, ["--target", stack.target, "versions", "regime"]) == 2
    assert "per symbol" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["--target", stack.target, "rollback", "regime", "NOMODEL"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kitrading rollback: ") and "FAILED_PRECONDITION" in err and "Traceback" not in err


async def test_errors_print_the_service_message_and_exit_2(
    stack: Stack, trained: training_pb2.TrainingJob, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["regime", "NOMODEL"], "FAILED_PRECONDITION"),
        (["score", "EURUSD", "buy", "--horizon", "5"], "horizon"),
        (["regime-model", "NOPE"], "NOT_FOUND"),
        (["train-regime", "NOPE"], "NOT_FOUND"),
    ]
    for argv, expected in cases:
        assert await asyncio.to_thread(main, ["--target", stack.target, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kitrading {argv[0]}: ") and expected in err and "Traceback" not in err, err
    assert (
        await asyncio.to_thread(main, ["--target", stack.target, "score", "EURUSD", "buy", "--time", "x"])
        == 2
    )
    assert "not an ISO time" in capsys.readouterr().err


def test_an_interrupted_follow_names_the_command_to_follow_again() -> None:
    class Stream:
        def __enter__(self) -> Stream:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def __iter__(self) -> Stream:
            raise KeyboardInterrupt

    class Regime:
        def watch_training_job(self, request: rr.WatchTrainingJobRequest, timeout: float | None) -> Stream:
            return Stream()

    client: Any = SimpleNamespace(regime=Regime())
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        follow(client, "j1", as_json=False, out=out, timeout=None, service="regime")
    assert "the job goes on (kitrading train-regime --job j1 -f)" in out.getvalue()


async def test_every_regime_command_prints_json(stack: Stack, trained: training_pb2.TrainingJob) -> None:
    target = ["--target", stack.target]
    status, text = await cli(run_regime, [*target, "regime", "EURUSD", "--lookback", "300", "--json"])
    state = json.loads(text)
    assert status == 0 and state["symbol"] == "EURUSD" and state["history"], text
    status, text = await cli(run_score, [*target, "score", "EURUSD", "sell", "--json"])
    score = json.loads(text)
    assert status == 0 and score["side"] == "SIGNAL_SIDE_SELL" and 0 < score["score"] < 1, text
    status, text = await cli(run_regime_model, [*target, "regime-model", "EURUSD", "--json"])
    assert status == 0 and json.loads(text)["model"]["symbol"] == "EURUSD"
    status, text = await cli(run_train_regime, [*target, "train-regime", "--job", trained.job_id, "--json"])
    assert status == 0 and json.loads(text)["state"] == "JOB_STATE_SUCCEEDED"
    status, text = await cli(
        run_train_regime, [*target, "train-regime", "--job", trained.job_id, "-f", "--json"]
    )
    events = [json.loads(line) for line in text.splitlines()]  # an ended job: its snapshot and result
    assert (
        status == 0
        and events
        and events[-1].get("result", events[-1].get("snapshot"))["jobId"] == trained.job_id
    )
