"""The `kitrading` CLI, called as `main([...])` against the in-process DataService."""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from kitrading import mesh
from kitrading.cli import commands
from kitrading.cli.main import main

from .fake_data import ServerThread

Capture = pytest.CaptureFixture[str]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_help_lists_every_command_module(capsys: Capture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("up", "status", "symbols", "candles", "events", "data"):
        assert command in out
    assert {m.__name__.rsplit(".", 1)[1] for m in commands.modules()} >= {"data", "status", "up"}


def test_symbols_table(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "symbols"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SYMBOL", "NAME", "CLASS", "ACTIVE", "CANDLES"]
    assert lines[1].startswith("EURUSD") and "FX" in lines[1] and "H1:48" in lines[1]


def test_symbols_json_with_target_from_env(
    data_server: ServerThread, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITRADING_TARGET", data_server.target)
    assert main(["symbols", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["symbols"][0]["symbol"] == "EURUSD"
    assert payload["symbols"][0]["assetClass"] == "ASSET_CLASS_FX"


def test_candles(data_server: ServerThread, capsys: Capture) -> None:
    assert (
        main(["--target", data_server.target, "candles", "eurusd", "--timeframe", "h1", "--limit", "3"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "OPEN", "HIGH", "LOW", "CLOSE", "VOLUME"]
    assert len(lines) == 4
    times = [line.split("  ")[0] for line in lines[1:]]
    assert times == sorted(times)  # oldest first


def test_invalid_argument_is_one_line_and_exit_2(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "candles", "EUR/USD"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "kitrading candles: INVALID_ARGUMENT: invalid argument: symbol: value does not"
    )
    assert "Traceback" not in captured.err


def test_unavailable_hints_at_kitrading_up(capsys: Capture) -> None:
    target = f"127.0.0.1:{closed_port()}"
    assert main(["--target", target, "--timeout", "2", "symbols"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "kitrading up" in err


def test_events_list(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "events", "--after", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["4", "5", "6"]
    assert "CANDLES_INGESTED" in lines[0] and '{"count":"4"}' in lines[0]


def test_events_follow(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "events", "--follow", "--after", "5", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["6", "7"]
    assert data_server.servicer.calls["WatchEvents"] == 1


def test_events_follow_json_until_the_stream_ends(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "events", "-f", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["eventId"] for e in events] == ["1", "2", "3"]


def test_events_follow_goes_on_across_a_restart_of_the_service(
    data_server: ServerThread, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream breaks with UNAVAILABLE (the service draining for a restart): `-f` resumes it after
    the last event it printed, no gap and no event twice."""
    from kitrading.client import _runtime

    monkeypatch.setattr(_runtime, "RESUME_BACKOFF_S", (0.01, 0.02))
    data_server.servicer.break_streams = 1
    assert main(["--target", data_server.target, "events", "-f", "--after", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["3", "4", "5", "6", "7", "8"]
    assert [r.after_event_id for r in data_server.servicer.watch_requests] == [2, 5]


def test_events_follow_stream_error(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "events", "--follow", "--symbol", "FAIL"]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("1 ")
    assert "FAILED_PRECONDITION: event store went away [reason EVENTS_UNAVAILABLE]" in captured.err


def test_import_samples(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["--target", data_server.target, "data", "import-samples"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["EURUSD", "H1", "backtesting", "5000"]
    assert data_server.servicer.calls["ImportSamples"] == 1


@pytest.fixture
def registry_ports(data_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data service on the test server; every other service and the gateway on closed ports."""
    for info in mesh.SERVICES:
        port = data_server.port if info.name == "data" else closed_port()
        monkeypatch.setenv(f"KITRADING_{info.name.upper()}_PORT", str(port))
    monkeypatch.setenv("KITRADING_GATEWAY_PORT", str(closed_port()))


def _expected_status() -> int:
    return 0 if [s.name for s in mesh.SERVICES if s.implemented] == ["data"] else 1


@pytest.mark.usefixtures("registry_ports")
def test_status_table(capsys: Capture) -> None:
    assert main(["status", "--host", "127.0.0.1"]) == _expected_status()
    lines = capsys.readouterr().out.splitlines()
    header = ["SERVICE", "PORT", "GRPC", "HEALTH", "GATEWAY", "HEALTH", "LATENCY", "LEADER"]
    assert lines[0].split() == header
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {s.name for s in mesh.SERVICES}
    assert rows["data"][2:4] == ["SERVING", "UNREACHABLE"]
    assert rows["data"][-2:] == ["ms", "-"]  # no lease: data has no once-only work
    assert rows["forecast"][2:] == ["UNREACHABLE", "UNREACHABLE", "-", "-"]


@pytest.mark.usefixtures("registry_ports")
def test_status_json(data_server: ServerThread, capsys: Capture) -> None:
    assert main(["status", "--host", "127.0.0.1", "--json", "--no-gateway"]) == _expected_status()
    rows = {r["service"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["data"]["grpc_health"] == "SERVING"
    assert rows["data"]["port"] == data_server.port
    assert rows["data"]["gateway_health"] == "-"
    assert rows["data"]["latency_ms"] >= 0
    assert rows["llm"]["latency_ms"] is None


def test_up_runs_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, bool]] = []

    async def run_mesh(only: list[str] | None = None, *, gateway: bool = True) -> None:
        calls.append((only, gateway))

    fake = types.ModuleType("services.launcher.mesh")
    fake.run_mesh = run_mesh  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "services.launcher.mesh", fake)
    assert main(["up", "--only", "data, llm", "--no-gateway"]) == 0
    assert main(["up"]) == 0
    assert calls == [(["data", "llm"], False), (None, True)]


def test_up_rejects_unknown_services(capsys: Capture) -> None:
    assert main(["up", "--only", "data,bogus"]) == 2
    assert "unknown service 'bogus'" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: Capture) -> None:
    assert main(["candles"]) == 2
    assert main(["candles", "EURUSD", "--timeframe", "H2"]) == 2
    assert "Invalid value for '--timeframe'" in capsys.readouterr().err


def test_data_commands_print_one_json_document(data_server: ServerThread, capsys: Capture) -> None:
    target = ["--target", data_server.target]
    assert main([*target, "candles", "EURUSD", "--limit", "3", "--json"]) == 0
    candles = json.loads(capsys.readouterr().out)["candles"]
    assert len(candles) == 3 and candles[0]["time"] < candles[-1]["time"]  # oldest first, as the table
    assert main([*target, "events", "--after", "3", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]  # one document without --follow
    assert [e["eventId"] for e in events] == ["4", "5", "6"] and events[0][
        "type"
    ] == "EVENT_TYPE_CANDLES_INGESTED"
    assert main([*target, "data", "import-samples", "--json"]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]
    assert datasets == [
        {"symbol": "EURUSD", "timeframe": "TIMEFRAME_H1", "package": "backtesting", "candles": "5000"}
    ]


def test_restart_answers_as_text_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    """Against a stand-in for the launcher's control socket (the e2e restart test runs the real one)."""
    reply = {
        "ok": True,
        "service": "forecast",
        "old_pid": 41,
        "new_pid": 42,
        "stopped_s": 0.5,
        "serving_s": 2.25,
    }
    requests: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="kt", dir="/tmp") as short,  # AF_UNIX paths are short
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener,
    ):
        path = str(Path(short) / "control.sock")
        listener.bind(path)
        listener.listen()

        def answer() -> None:
            for _ in range(2):
                conn, _addr = listener.accept()
                with conn:
                    requests.append(json.loads(conn.makefile("rb").readline()))
                    conn.sendall(json.dumps(reply).encode() + b"\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "mesh.json").write_text(json.dumps({"control": path}))
        home = ["--home", str(tmp_path)]
        assert main(["restart", "forecast", *home, "--timeout", "5"]) == 0
        assert capsys.readouterr().out == (
            "forecast: restarted (pid 41 -> 42); stopped after 0.50 s, serving again after 2.25 s\n"
        )
        assert main(["restart", "forecast", *home, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == reply
        thread.join(5)
    assert requests == [
        {"op": "restart", "service": "forecast", "timeout_s": 5.0},
        {"op": "restart", "service": "forecast", "timeout_s": 120.0},
    ]
    assert main(["restart", "data", "--home", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("kitrading restart: no running mesh found")
