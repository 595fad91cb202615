"""What the `kitrading` CLI draws and how it parses: Rich progress of a training job's watch stream
(plain rows off a terminal, a live display on one), Rich tables, Click's help and shell completion,
`--json` on every command that prints data, and a start that loads neither Rich nor the SDK."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import click
import pytest

from kitrading.cli.commands.forecast import follow
from kitrading.cli.common import Styled, print_table
from kitrading.cli.main import build_cli, main
from kitrading.common.v1 import job_pb2, training_pb2
from kitrading.forecast.v1 import request_response_pb2 as rr

Capture = pytest.CaptureFixture[str]
STEPS = 5


def job_events(keys: list[str], *, fail: str = "") -> Iterator[training_pb2.TrainingJobEvent]:
    """A job's watch stream as the services send it: snapshot, steps, symbol transitions, result."""
    job = training_pb2.TrainingJob(
        job_id="j1",
        state=job_pb2.JOB_STATE_RUNNING,
        symbols=[training_pb2.SymbolTrainingState(symbol=k) for k in keys],
    )
    yield training_pb2.TrainingJobEvent(snapshot=job)
    done = 0
    for key in keys:
        for step in range(1, STEPS + 1):
            done += 1
            yield training_pb2.TrainingJobEvent(
                step=training_pb2.TrainingStep(
                    symbol=key,
                    step=step,
                    max_steps=STEPS,
                    train_loss=1.0 / step,
                    job_step=done,
                    job_max_steps=STEPS * len(keys),
                    eta_seconds=STEPS * len(keys) - done,
                )
            )
        state = job_pb2.JOB_STATE_FAILED if key == fail else job_pb2.JOB_STATE_SUCCEEDED
        yield training_pb2.TrainingJobEvent(
            symbol_transition=training_pb2.SymbolTrainingState(
                symbol=key, state=state, model_version="v000002", step=STEPS, train_loss=0.2
            )
        )
    job.state = job_pb2.JOB_STATE_FAILED if fail else job_pb2.JOB_STATE_SUCCEEDED
    yield training_pb2.TrainingJobEvent(result=job)


def fake_client(keys: list[str], *, fail: str = "") -> Any:
    class Stream:
        def __enter__(self) -> Stream:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def __iter__(self) -> Iterator[rr.WatchTrainingJobResponse]:
            for event in job_events(keys, fail=fail):
                yield rr.WatchTrainingJobResponse(event=event)

    def watch_training_job(request: rr.WatchTrainingJobRequest, timeout: float | None) -> Stream:
        assert request.job_id == "j1"
        return Stream()

    return SimpleNamespace(forecast=SimpleNamespace(watch_training_job=watch_training_job))


# -- the progress of `train --follow` ---------------------------------------------------------------


def test_follow_off_a_terminal_prints_the_rich_rows_as_plain_lines() -> None:
    out = io.StringIO()
    assert follow(fake_client(["GOOG", "EURUSD"]), "j1", as_json=False, out=out, timeout=None) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert "\x1b" not in text and "\r" not in text, "no colours or redraws off a terminal"
    assert all(line == line.rstrip() for line in lines)
    assert lines[0] == "job j1 running: GOOG, EURUSD"
    # the job's bar above each symbol's: name, bar, percentage, then the steps
    jobs = [line for line in lines if line.startswith("job  ")]
    assert jobs and jobs[-1].split()[-4:] == ["10/10", "steps", "eta", "0s"] and " 100% " in jobs[-1], text
    goog = [line for line in lines if line.startswith("GOOG ") and "%" in line]
    assert goog[-1].split()[-5:] == ["100%", "step", "5/5", "loss", "0.2"] and "━" in goog[-1], text
    assert "GOOG       succeeded  model v000002  5 steps, loss 0.2, val -" in lines
    assert lines.index("GOOG       succeeded  model v000002  5 steps, loss 0.2, val -") > lines.index(
        goog[-1]
    )
    assert any(line.startswith("EURUSD ") and "100%" in line for line in lines), text
    assert lines[-1] == "job j1 succeeded (2 symbols, unspecified)"


def test_follow_of_one_symbol_has_one_bar_with_the_eta() -> None:
    out = io.StringIO()
    assert follow(fake_client(["GOOG"]), "j1", as_json=False, out=out, timeout=None) == 0
    lines = out.getvalue().splitlines()
    assert not any(line.startswith("job  ") for line in lines)  # the symbol's bar is the job's
    bars = [line for line in lines if "%" in line]
    assert bars[-1].startswith("GOOG ") and bars[-1].endswith("100% step 5/5  loss 0.2  eta 0s"), lines
    assert lines[-1] == "job j1 succeeded (1 symbols, unspecified)"


def test_follow_of_a_failed_job_exits_1() -> None:
    out = io.StringIO()
    assert follow(fake_client(["GOOG"], fail="GOOG"), "j1", as_json=False, out=out, timeout=None) == 1
    lines = out.getvalue().splitlines()
    assert (
        "GOOG       failed  model v000002" in lines and lines[-1] == "job j1 failed (1 symbols, unspecified)"
    )


def test_follow_json_is_one_object_per_event_and_nothing_else() -> None:
    out = io.StringIO()
    assert follow(fake_client(["GOOG", "EURUSD"]), "j1", as_json=True, out=out, timeout=None) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [next(k for k in ("snapshot", "step", "symbolTransition", "result") if k in e) for e in events]
    assert kinds == [
        "snapshot",
        *["step"] * STEPS,
        "symbolTransition",
        *["step"] * STEPS,
        "symbolTransition",
        "result",
    ]
    assert events[-1]["result"]["state"] == "JOB_STATE_SUCCEEDED"


def test_follow_on_a_terminal_draws_a_live_coloured_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich then treats the stream as a terminal
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    assert follow(fake_client(["GOOG", "EURUSD"]), "j1", as_json=False, out=out, timeout=None) == 0
    text = out.getvalue()
    assert "\x1b[" in text  # colours and cursor moves: the bars redraw in place
    assert "100%" in text and "10/10 steps" in text
    assert "GOOG       succeeded  model v000002" in text and "job j1 succeeded (2 symbols" in text


# -- tables ---------------------------------------------------------------------------------------


def test_tables_off_a_terminal_are_plain_columns_two_spaces_apart() -> None:
    out = io.StringIO()
    print_table(
        ("service", "grpc health"), [("data", Styled("SERVING", "green")), ("llm", "[x] :smile:")], out=out
    )
    assert out.getvalue() == "SERVICE  GRPC HEALTH\ndata     SERVING\nllm      [x] :smile:\n"  # no markup


def test_tables_on_a_terminal_are_coloured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    print_table(("service", "grpc health"), [("data", Styled("SERVING", "green"))], out=out)
    assert "\x1b[32mSERVING" in out.getvalue()


# -- parsing, help, --json, completion ------------------------------------------------------------


def leaf_commands(group: click.Group, path: str = "kitrading") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_command_that_prints_data_takes_json() -> None:
    commands = dict(leaf_commands(build_cli()))
    assert len(commands) >= 25
    without = {
        path
        for path, command in commands.items()
        if not any("--json" in getattr(p, "opts", ()) for p in command.params)
    }
    assert without == {"kitrading up"}  # it runs the mesh in the foreground and prints its logs


def test_help_lists_the_commands_and_how_to_complete(capsys: Capture) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: kitrading [OPTIONS] COMMAND [ARGS]...")
    assert "train-patterns" in out and "_KITRADING_COMPLETE=bash_source kitrading" in out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: kitrading train [OPTIONS] [SYMBOL]" in out and "-f, --follow" in out and "--all" in out
    assert main(["keys"]) == 2 and "create" in capsys.readouterr().err  # a group alone: its help, exit 2


def test_usage_errors_name_the_command(capsys: Capture) -> None:
    assert main(["forecast", "EURUSD", "--horizon", "soon"]) == 2
    err = capsys.readouterr().err
    assert "Usage: kitrading forecast [OPTIONS] SYMBOL" in err and err.splitlines()[-1].startswith(
        "kitrading forecast: Invalid value for '--horizon': 'soon' is not a valid integer"
    )
    assert main(["nope"]) == 2 and "No such command 'nope'" in capsys.readouterr().err


def test_bash_completion_script(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_KITRADING_COMPLETE", "bash_source")
    assert main([]) == 0
    script = capsys.readouterr().out
    assert (
        "_kitrading_completion()" in script
        and "complete -o nosort -F _kitrading_completion kitrading" in script
    )


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("kitrading train", ["train", "train-patterns", "train-regime"]),
        ("kitrading candles EURUSD --timeframe h", ["H1", "H4"]),
        ("kitrading patterns EURUSD --engine ", ["both", "rules", "tcn"]),
        ("kitrading restart g", ["gateway"]),
        ("kitrading up --only data,fo", ["data,forecast"]),
        ("kitrading rag d", ["delete"]),
    ],
)
def test_completion_candidates(
    words: str, expected: list[str], capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    typed = words.split(" ")  # a trailing space: the next word, not typed yet
    monkeypatch.setenv("_KITRADING_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", " ".join(typed))
    monkeypatch.setenv("COMP_CWORD", str(len(typed) - 1))
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",", 1)[1] for line in lines] == expected


def test_the_command_line_starts_without_rich_or_the_sdk_and_prints_completion() -> None:
    probe = (
        "import sys\n"
        "from kitrading.cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "heavy = {'torch', 'pandas', 'numpy', 'matplotlib', 'rich', 'httpx', 'grpc'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.strip() == "[]", done.stderr
    script = subprocess.run(
        [sys.executable, "-m", "kitrading.cli.main"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "_KITRADING_COMPLETE": "zsh_source"},
    )
    assert script.returncode == 0 and "#compdef kitrading" in script.stdout, script.stderr
