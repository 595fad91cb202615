"""The pattern CLI commands in-process against a real stack: a Data service (embedded PostgreSQL, the
bundled EURUSD H1 and GOOG D1 candles) and the pattern service on port 0 with the servicer tests' tiny
TCN (20 steps through the real worker). The commands run in a thread (they block) and their output is
asserted as a user reads it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import pytest

from kitrading.cli.commands.models import run_rollback, run_versions
from kitrading.cli.commands.patterns import run_pattern_model, run_patterns, run_train_patterns
from kitrading.cli.main import main, parse_args
from kitrading.common.v1 import market_pb2
from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import resources_pb2 as pb
from kitrading.pattern.v1 import service_pb2_grpc
from services.data.samples import SAMPLES, load_candles
from services.pattern.app import PatternApp
from services.pattern.settings import PatternSettings
from tests.cli_helpers import cli, table
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, start_server
from tests.pattern.test_pattern_servicer import TINY

pytestmark = pytest.mark.slow

H1, D1 = market_pb2.TIMEFRAME_H1, market_pb2.TIMEFRAME_D1
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Stack:
    pattern: service_pb2_grpc.PatternServiceStub
    target: str
    data_target: str


@pytest.fixture(scope="module")
async def stack(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    candles = load_candles([s for s in SAMPLES if s.symbol in ("EURUSD", "GOOG")])
    rows = [
        ("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles["EURUSD"]),
        ("GOOG", market_pb2.ASSET_CLASS_EQUITY, True, D1, candles["GOOG"]),
    ]
    async with data_service(postgres, "test_pattern_cli", rows) as data:
        settings = PatternSettings(home=tmp_path_factory.mktemp("pattern-cli"), **TINY)
        server = await start_server(PatternApp(settings, data=data.target), "pattern")
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Stack(service_pb2_grpc.PatternServiceStub(channel), server.target, data.target)
        await server.stop(0)


async def test_patterns_table_with_follow_through_and_a_plot_of_the_key_points(
    stack: Stack, tmp_path: Path
) -> None:
    png = tmp_path / "eurusd.png"
    argv = ["--target", stack.target, "patterns", "eurusd", "--lookback", "500"]
    status, text = await cli(run_patterns, [*argv, "--plot", str(png), "--data-target", stack.data_target])
    assert status == 0, text
    d = (
        await stack.pattern.DetectSymbolPatterns(
            rr.DetectSymbolPatternsRequest(symbol="EURUSD", lookback=500)
        )
    ).detection
    assert d.patterns, "no pattern in 500 EURUSD bars"
    first = text.splitlines()[0]
    assert first.startswith(f"EURUSD H1: {len(d.patterns)} patterns confirmed in the last 500 bars"), text
    assert "engine rules (model rules-v1)" in first and "rule-based detector answered" in text
    assert text.splitlines()[3].split()[:7] == [
        "TYPE",
        "DIRECTION",
        "CONFIDENCE",
        "START",
        "(UTC)",
        "END",
        "(UTC)",
    ]
    rows = table(text, "TYPE")
    assert len(rows) == len(d.patterns), text
    best = d.patterns[0]
    assert rows[0].startswith(best.pattern_type.replace("_", " ")) and f"{best.confidence:.2f}" in rows[0]
    assert all(" rules " in row and " vs base 0." in row for row in rows), text
    ft = best.follow_through
    if ft.samples:
        assert f"n={ft.samples} vs base {ft.base_rate:.2f}" in rows[0], rows[0]
    assert f"over the next {ft.horizon_bars} bars" in text and "Not a promise." in text
    assert f"saved {png}\n" in text and "no candles" not in text
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000

    # the pattern service alone has no candles: the plot says so and is still drawn
    bare = tmp_path / "bare.png"
    status, text = await cli(run_patterns, [*argv, "--plot", str(bare)])
    assert status == 0 and "no candles" in text and "--data-target" in text and bare.read_bytes()[:8] == PNG


async def test_before_training_the_card_says_so_and_tcn_falls_back(stack: Stack) -> None:
    status, text = await cli(run_pattern_model, ["--target", stack.target, "pattern-model"])
    assert status == 0
    assert text.startswith("Pattern TCN: no pattern TCN yet") and "No model card yet" in text, text
    status, text = await cli(run_patterns, ["--target", stack.target, "patterns", "GOOG", "--engine", "tcn"])
    assert status == 0 and text.startswith("GOOG D1: ") and "no TCN is published yet" in text, text


async def test_train_patterns_follows_with_the_progress_bar_then_the_tcn_answers(
    stack: Stack, tmp_path: Path
) -> None:
    status, text = await cli(run_train_patterns, ["--target", stack.target, "train-patterns", "--follow"])
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0].startswith("job ") and lines[0].endswith(": tcn"), text
    # not a terminal: the Rich progress rows printed as plain lines (name, bar, percentage, step, loss)
    bars = [line for line in lines if line.startswith("tcn ") and "%" in line]
    assert bars and "100%" in bars[-1] and "step 20/20  loss " in bars[-1], text
    assert "\x1b[" not in text, "no colours or cursor moves off a terminal"
    assert any(line.startswith("tcn") and "succeeded" in line and "model v000001" in line for line in lines)
    assert " succeeded in " in lines[-1] and "(1 symbols, manual)" in lines[-1], text

    job_id = lines[0].split()[1]
    status, text = await cli(
        run_train_patterns, ["--target", stack.target, "train-patterns", "--job", job_id]
    )
    assert status == 0 and text.startswith(f"job {job_id} succeeded in ") and "\ntcn " in text, text

    status, text = await cli(run_pattern_model, ["--target", stack.target, "pattern-model"])
    assert status == 0
    assert text.startswith("Pattern TCN: serving TCN v000001"), text
    assert "\nModel v000001, trained " in text and " on cpu in " in text and "(20 steps, manual" in text
    card = (await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())).model
    assert f"receptive field {card.receptive_field_bars} bars; windows of 32 bars" in text, text
    series = table(text, "SERIES")
    assert [row.split()[:2] for row in series] == [["EURUSD", "H1"], ["GOOG", "D1"]], text
    classes = table(text, "TYPE")
    types = (await stack.pattern.ListPatternTypes(rr.ListPatternTypesRequest())).pattern_types
    assert len(classes) == len(types) + 1 and classes[-1].startswith("macro"), text
    assert classes[0].startswith(types[0].pattern_type.replace("_", " ")) and "vs base" in classes[0]

    png = tmp_path / "both.png"
    argv = ["--target", stack.target, "patterns", "EURUSD", "--lookback", "1000", "--engine", "both"]
    status, text = await cli(run_patterns, [*argv, "--plot", str(png), "--data-target", stack.data_target])
    assert status == 0 and "both engines" in text and "(model rules-v1+tcn/v000001)" in text, text
    d = (
        await stack.pattern.DetectSymbolPatterns(
            rr.DetectSymbolPatternsRequest(
                symbol="EURUSD", lookback=1000, engine=pb.PATTERN_ENGINE_CHOICE_BOTH
            )
        )
    ).detection
    engines = sorted({p.engine for p in d.patterns})
    rows = table(text, "TYPE")
    assert len(rows) == len(d.patterns)
    for engine in engines:
        name = pb.PatternEngine.Name(engine).removeprefix("PATTERN_ENGINE_").lower()
        assert any(f" {name} " in row for row in rows), (name, text)
    assert png.read_bytes()[:8] == PNG


async def test_versions_and_rollback(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = await cli(run_versions, ["--target", stack.target, "versions", "pattern"])
    assert status == 0, text
    rows = table(text, "VERSION")
    card = (await stack.pattern.GetPatternModel(rr.GetPatternModelRequest())).model
    assert rows[0].split()[:2] == [card.version, "active"] and f"{card.macro.f1:.3f}" in rows[0], text
    assert "EURUSD, GOOG" in rows[0] and "MACRO F1" in text
    assert await asyncio.to_thread(main, ["--target", stack.target, "rollback", "pattern"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kitrading rollback: ") and "no version older" in err and "Traceback" not in err, (
        err
    )
    argv = ["--target", stack.target, "rollback", "pattern", "--version", card.version]
    status, text = await cli(run_rollback, argv)
    assert (status, text) == (0, f"pattern now serves {card.version}\n")
    assert await asyncio.to_thread(main, ["--target", stack.target, "versions", "pattern", "EURUSD"]) == 2
    assert "one model for every symbol" in capsys.readouterr().err


async def test_errors_print_the_service_message_and_exit_2(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["patterns", "NOPE"], "NOT_FOUND"),
        (["patterns", "EURUSD", "--lookback", "-1"], "lookback"),
        (["train-patterns", "--max-steps", "7"], "max_steps"),
        (["train-patterns", "NOPE"], "NOT_FOUND"),
    ]
    for argv, expected in cases:
        assert await asyncio.to_thread(main, ["--target", stack.target, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kitrading {argv[0]}: ") and expected in err and "Traceback" not in err, err
    assert await asyncio.to_thread(main, ["--target", stack.target, "train-patterns", "X", "--job", "j"]) == 2
    assert "not both" in capsys.readouterr().err
    # an interrupted --follow names `kitrading train-pattern --job ... -f`: that spelling works too
    assert parse_args(["train-pattern", "--job", "j1", "-f"]).handler is run_train_patterns


async def test_every_pattern_command_prints_json(stack: Stack) -> None:
    target = ["--target", stack.target]
    status, text = await cli(run_train_patterns, [*target, "train-patterns", "--force", "--follow", "--json"])
    assert status == 0, text
    events = [json.loads(line) for line in text.splitlines()]  # one object per streamed event, no bars
    assert "snapshot" in events[0] and any("step" in e for e in events), text
    result = events[-1]["result"]
    assert result["state"] == "JOB_STATE_SUCCEEDED" and result["symbols"][0]["key"] == "tcn"
    status, text = await cli(
        run_train_patterns, [*target, "train-patterns", "--job", result["jobId"], "--json"]
    )
    assert status == 0 and json.loads(text)["jobId"] == result["jobId"]

    status, text = await cli(run_pattern_model, [*target, "pattern-model", "--json"])
    card = json.loads(text)
    assert status == 0 and card["model"]["version"] == result["symbols"][0]["modelVersion"]
    status, text = await cli(run_patterns, [*target, "patterns", "EURUSD", "--lookback", "500", "--json"])
    detection = json.loads(text)
    assert status == 0 and detection["symbol"] == "EURUSD" and detection["patterns"], text
