"""mypy checks user code against the generated, typed clients (and rejects wrong types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "clients" / "examples").glob("*.py"))

BAD = """
from kitrading.client import connect
from kitrading.data.v1.request_response_pb2 import GetSymbolRequest, ListSymbolsResponse

client = connect()
response: ListSymbolsResponse = client.data.get_symbol(GetSymbolRequest(symbol="EURUSD"))
client.data.list_symbols(GetSymbolRequest())
client.data.list_symbols(None, 5.0)
"""


@pytest.mark.timeout(600)
def test_mypy_passes_on_the_examples_and_catches_type_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad_usage.py"
    bad.write_text(BAD)
    config = ["--config-file", str(ROOT / "pyproject.toml")]
    command = [sys.executable, "-m", "mypy", *config, *map(str, EXAMPLES), str(bad)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert EXAMPLES
    assert all("bad_usage.py" in line for line in errors), result.stdout
    assert len(errors) == 3, result.stdout
    assert "GetSymbolResponse" in errors[0] and "ListSymbolsResponse" in errors[0]
    assert "ListSymbolsRequest" in errors[1]
    assert "Too many positional arguments" in errors[2]
