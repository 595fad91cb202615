"""The client SDK as its own wheel (`kitrading-sdk`, clients/pyproject.toml), as a new user meets it.

The wheel is built from the tree (a copy of clients/, so the shared tree gets no build/ or egg-info),
installed by pip into a fresh venv (no system site packages) with nothing but its declared
dependencies, and that venv then runs the quickstart examples against a real mesh (data and regime,
Envoy in front): sync and async, through the gateway and on the data service's own port, the data
event stream, and a regime training job's progress streamed live to a sync and an async subscriber.
None of the server side (torch, pandas, numpy, Envoy, asyncpg, services, gateway, the CLI) is
importable there, and every module the wheel ships imports.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

import kitrading
from kitrading import mesh as registry
from tests.e2e.mesh import RunningMesh, running_mesh

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
EXAMPLES = CLIENTS / "examples"
STREAMS = Path(__file__).resolve().parent / "sdk_wheel_streams.py"

#: What the SDK's modules import, and nothing else (clients/pyproject.toml).
DEPENDENCIES = {"grpcio", "grpcio-health-checking", "protobuf", "googleapis-common-protos", "httpx"}
#: Import names of the server side: none may be importable in the SDK's venv.
FORBIDDEN = (
    "torch", "pandas", "numpy", "envoy", "asyncpg", "services", "gateway", "kitrading.cli",
    "click", "rich", "psycopg", "pgserver", "yaml", "psutil", "opentelemetry", "grpc_tools",
)  # fmt: skip
#: The mesh: data and regime, the regime trains only when asked (no start-up job, no schedule).
MESH_ENV = {
    "KITRADING_REGIME_TRAIN_ON_START": "false",
    "KITRADING_REGIME_SCHEDULE": "false",
    "KITRADING_REGIME_BOOSTING_ROUNDS": "50",
}


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point a venv at the tree or at a mesh."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("KITRADING_")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` of a copy of clients/ (the same files `make sdk` builds from)."""
    source = out / "sdk-source"
    shutil.copytree(
        CLIENTS,
        source,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "examples"),
    )
    dist = out / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(source)],
        check=True, timeout=180, env=_clean_env(), cwd=out,
    )  # fmt: skip
    (wheel,) = dist.glob("kitrading_sdk-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("sdk-wheel"))


def test_the_wheel_holds_the_sdk_and_the_contracts_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"kitrading", "buf", f"kitrading_sdk-{kitrading.__version__}.dist-info"}, top
    assert not [n for n in names if n.startswith("kitrading/cli/")]
    for module in (
        "kitrading/__init__.py", "kitrading/mesh.py", "kitrading/py.typed",
        "kitrading/client/client.py", "kitrading/client/_runtime.py", "kitrading/client/_generated.py",
        "kitrading/client/errors.py", "kitrading/data/v1/service_pb2_grpc.py",
        "kitrading/data/v1/request_response_pb2.pyi", "kitrading/regime/v1/service_pb2_grpc.py",
        "kitrading/common/v1/training_pb2.py", "buf/validate/validate_pb2.py",
    ):  # fmt: skip
        assert module in names, module
    domains = {n.split("/")[1] for n in names if n.startswith("kitrading/") and n.count("/") == 3}
    assert domains == {"common"} | {s.name for s in registry.SERVICES}  # every domain's contracts

    # One version: the contracts' (kitrading.__version__), the SDK's and the root distribution's.
    meta = Parser().parsestr(
        zipfile.ZipFile(wheel).read(f"kitrading_sdk-{kitrading.__version__}.dist-info/METADATA").decode()
    )
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == "kitrading-sdk"
    assert meta["Version"] == kitrading.__version__ == root["version"]
    requires = meta.get_all("Requires-Dist") or []
    assert {re.split(r"[<>=!~;\[ ]", r)[0] for r in requires} == DEPENDENCIES
    assert wheel.stat().st_size < 1_000_000


# ---- a fresh venv with only the wheel, against a real mesh ------------------------------------------


@pytest.fixture(scope="module")
def started_mesh() -> Iterator[RunningMesh]:
    """The mesh, started first so that it comes up while the venv is being made (not yet healthy)."""
    with running_mesh("sdk", ["data", "regime"], MESH_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def sdk_python(started_mesh: RunningMesh, wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv's python holding only the SDK wheel and what pip resolves from its metadata."""
    del started_mesh  # only for the order: the mesh starts before the venv is made
    base = tmp_path_factory.mktemp("sdk-venv")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_clean_env())
    python = venv / "bin" / "python"
    # The dev venv's versions as constraints: pip still resolves the wheel's own requirements, but
    # picks releases that the pip cache already holds (constraints install nothing by themselves).
    constraints = base / "constraints.txt"
    constraints.write_text(
        "".join(
            f"{d.metadata['Name']}=={d.version}\n"
            for d in importlib.metadata.distributions()
            if d.metadata["Name"] and d.metadata["Name"].lower() not in {"kitrading", "kitrading-sdk"}
        )
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)],
        check=True, timeout=300, env=_clean_env(), cwd=base,
    )  # fmt: skip
    return python


@pytest.fixture(scope="module")
def mesh(started_mesh: RunningMesh, sdk_python: Path) -> RunningMesh:
    del sdk_python
    started_mesh.wait_healthy("data")
    started_mesh.wait_healthy("hmm")
    return started_mesh


def run_in_venv(python: Path, *args: str, timeout_s: float = 120.0) -> str:
    """Run `python ARGS` in the SDK's venv, outside the tree; returns stdout (asserts exit 0)."""
    result = subprocess.run(
        [str(python), *args],
        capture_output=True, text=True, timeout=timeout_s, check=False,
        env=_clean_env(), cwd=python.parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


IMPORT_CHECK = """
import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
import kitrading, buf
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found[name] = False
modules = []
for package in (kitrading, buf):
    modules.append(package.__name__)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        modules.append(info.name)
print(json.dumps({
    "found": found,
    "kitrading": kitrading.__file__,
    "prefix": sys.prefix,
    "system_site": any(p.startswith(sys.base_prefix) and "site-packages" in p for p in sys.path),
    "modules": modules,
    "dists": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
}))
"""


@pytest.mark.e2e
def test_the_venv_has_the_sdk_and_none_of_the_server_side(sdk_python: Path) -> None:
    report = json.loads(run_in_venv(sdk_python, "-c", IMPORT_CHECK, *FORBIDDEN).splitlines()[-1])
    print("installed:", " ".join(report["dists"]))
    assert not [name for name, found in report["found"].items() if found], report["found"]
    assert report["kitrading"].startswith(report["prefix"]), report["kitrading"]  # not the tree's
    assert not report["system_site"]
    # every module the wheel ships imports with only the declared dependencies
    assert "kitrading.client.client" in report["modules"]
    assert "kitrading.mesh" in report["modules"]
    assert "kitrading.regime.v1.service_pb2_grpc" in report["modules"]
    assert not [m for m in report["modules"] if m == "kitrading.cli" or m.startswith("kitrading.cli.")]
    assert "kitrading-sdk" in report["dists"] and "kitrading" not in report["dists"]
    assert set(report["dists"]) >= DEPENDENCIES


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["gateway", "data"])
def test_quickstart(mesh: RunningMesh, sdk_python: Path, where: str) -> None:
    target = mesh.gateway_target if where == "gateway" else mesh.target("data")
    out = run_in_venv(sdk_python, str(EXAMPLES / "quickstart.py"), target)
    assert "EURUSD" in out and "Euro / US Dollar" in out
    assert out.count("close=") == 5
    assert "rejected: symbol:" in out


@pytest.mark.e2e
def test_async_quickstart(mesh: RunningMesh, sdk_python: Path) -> None:
    out = run_in_venv(sdk_python, str(EXAMPLES / "async_quickstart.py"), mesh.gateway_target)
    assert "stats failed: NotFoundError" in out
    assert out.count("event ") == 3  # the data event stream, on the async client
    assert "EURUSD [" in out


@pytest.mark.e2e
def test_streams_training_progress_sync_and_async(mesh: RunningMesh, sdk_python: Path) -> None:
    out = run_in_venv(
        sdk_python, str(STREAMS), mesh.gateway_target, mesh.target("regime"), str(EXAMPLES), timeout_s=240
    )
    print(out[-2000:])
    report = json.loads(out.splitlines()[-1])
    assert report["followed"] == [2, 3]  # follow_events.py: the persisted data events after id 1
    for how in ("sync", "async"):  # sync: through the gateway; async: the regime service's own port
        watch = report[how]
        assert not watch["error"], (how, watch)
        kinds = [kind for kind, _ in watch["kinds"]]
        steps = sum(count for kind, count in watch["kinds"] if kind == "step")
        assert kinds[0] == "snapshot" and kinds[-1] == "result", (how, kinds)
        assert steps > 10, (how, watch["kinds"])  # live progress, not just the snapshot and the result
        assert watch["result"] == "JOB_STATE_SUCCEEDED", (how, watch)
