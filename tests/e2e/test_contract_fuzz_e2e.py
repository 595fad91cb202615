"""Contract fuzzing of the Data service through the gateway, as a careless or hostile client would:
schemathesis against its OpenAPI document (the one the gateway serves), examples, fuzzing and the
stateful phase (sequences of calls following the links it infers: create, then read, update,
delete), a bounded number of examples per operation and a fixed seed. Check: no 5xx, ever.

The two PATCH operations are left to the hand-written tests (tests/gateway, tests/data): their
path variables (`{symbol.symbol}`) contain a dot, which schemathesis cannot fill in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.e2e

SEED = 20261203
EXAMPLES_PER_OPERATION = 10


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("fuzz-mesh"))
    running = start_mesh(home, ["data"], {})
    try:
        running.wait_healthy("data")
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        assert code == 0, f"kitrading up exited with {code}"


def test_no_request_gets_a_server_error(mesh: RunningMesh, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is in the dev group"
    result = subprocess.run(
        [
            st, "run", f"{mesh.gateway}/data/openapi.json",
            "--url", mesh.gateway,
            "--checks", "not_a_server_error",
            "--phases", "examples,fuzzing,stateful",
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", str(SEED),
            "--exclude-path-regex", r"\{[a-z_]+\.[a-z_]+\}",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,  # its .schemathesis/ there
    )  # fmt: skip
    summary = result.stdout[-1500:]
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1]
    logs = mesh.log("data")
    assert "unhandled error" not in logs, [line for line in logs.splitlines() if "unhandled error" in line][
        :3
    ]
