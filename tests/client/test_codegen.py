"""The SDK code generator: deterministic, up to date, lint- and format-clean, correct names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from kitrading.client import codegen

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTORS = ROOT / "gateway" / "generated" / "descriptors.binpb"
GENERATED = ROOT / codegen.OUTPUT
RUFF = Path(sys.executable).parent / "ruff"

pytestmark = pytest.mark.skipif(not DESCRIPTORS.exists(), reason="run `make generate` first")


def test_generate_is_deterministic(tmp_path: Path) -> None:
    codegen.generate(DESCRIPTORS, tmp_path / "a")
    codegen.generate(DESCRIPTORS, tmp_path / "b")
    first = (tmp_path / "a" / codegen.OUTPUT).read_bytes()
    assert first == (tmp_path / "b" / codegen.OUTPUT).read_bytes()
    codegen.generate(DESCRIPTORS, tmp_path / "a")  # regenerating in place changes nothing
    assert (tmp_path / "a" / codegen.OUTPUT).read_bytes() == first


def test_checked_in_file_is_up_to_date() -> None:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    assert GENERATED.read_text() == codegen.render(descriptor_set), "run `make generate`"


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is a dev dependency")
def test_output_is_ruff_clean(tmp_path: Path) -> None:
    target = tmp_path / "_generated.py"
    shutil.copy(GENERATED, target)
    config = ["--config", str(ROOT / "pyproject.toml")]
    fmt = subprocess.run(
        [RUFF, "format", "--check", *config, target], check=False, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    # lint the real path, so import sorting sees `kitrading` as first-party like `make lint` does
    lint = subprocess.run(
        [RUFF, "check", *config, GENERATED], check=False, capture_output=True, text=True, cwd=ROOT
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_services_and_methods() -> None:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    services = {s.attribute: s for s in codegen.load_services(descriptor_set)}
    assert list(services)[:1] == ["data"]
    data = {m.python_name: m for m in services["data"].methods}
    assert data["list_symbols"].http == "GET /api/v1/symbols"
    assert data["list_symbols"].idempotent
    assert not data["create_symbol"].idempotent
    assert data["watch_events"].server_streaming and not data["watch_events"].idempotent
    assert data["list_symbols"].request.expr == "data_v1_request_response_pb2.ListSymbolsRequest"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ListSymbols", "list_symbols"),
        ("GetLLMStatus", "get_llm_status"),
        ("EmbedTimeSeries", "embed_time_series"),
        ("ImportSamples", "import_samples"),
        ("GetV2Thing", "get_v2_thing"),
    ],
)
def test_snake_case(name: str, expected: str) -> None:
    assert codegen.snake_case(name) == expected


def test_docstrings_are_wrapped_and_escaped() -> None:
    lines = codegen._docstring('Says "hi" with a \\ backslash. ' + "word " * 40, 8, ["HTTP: `GET /x`."])
    assert all(len(line) <= codegen.LINE_LENGTH for line in lines)
    assert "\\\\ backslash" in lines[0]
    assert lines[-1].strip() == '"""'
