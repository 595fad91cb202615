"""The example scripts run against a real in-process DataService."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from .fake_data import ServerThread

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(data_server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert load("quickstart").main(data_server.target) == 0
    out = capsys.readouterr().out
    assert "EURUSD" in out
    assert out.count("close=") == 5
    assert "rejected: symbol: value does not match regex" in out


def test_follow_events(data_server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert load("follow_events").follow(7, limit=2, target=data_server.target) == [8, 9]
    assert "EVENT_TYPE_CANDLES_INGESTED" in capsys.readouterr().out


async def test_async_quickstart(data_server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert await load("async_quickstart").main(data_server.target) == 0
    out = capsys.readouterr().out
    assert "stats failed: UnimplementedError" in out
    assert out.count("event ") == 3
