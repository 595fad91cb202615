"""Contract fuzzing of every service through the gateway, as a careless or hostile client would:
schemathesis against each running service's OpenAPI document (the one the gateway serves),
examples, fuzzing and the stateful phase (sequences of calls following the links it infers: create,
then read, update, delete), a bounded number of examples per operation and a fixed seed. Checks: no
5xx, ever, and every response matches the document's schema; afterwards no service has crashed or
logged an unhandled error.

Every operation is fuzzed (the PATCH operations too: their path variables are named without dots in
the documents), except the expensive writes (training, analyze, the training-events switch), which
random valid bodies would turn into minutes of training or generation on this machine
(tests/e2e/test_*_e2e.py call each of them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitrading import mesh as mesh_services
from tests.e2e.mesh import TINY, RunningMesh, whole_mesh

pytestmark = pytest.mark.e2e

SEED = 20261203
EXAMPLES_PER_OPERATION = 10
SERVICES = [s for s in mesh_services.SERVICES if s.implemented]
EXCLUDED_PATHS = r"train|analyze|training/events"


@pytest.fixture(scope="module")
def mesh() -> Iterator[RunningMesh]:
    with whole_mesh("fuzz", dict(TINY)) as running:
        yield running


@pytest.mark.parametrize("service", SERVICES, ids=[s.name for s in SERVICES])
def test_no_request_gets_a_server_error_or_breaks_the_schema(
    mesh: RunningMesh, service: mesh_services.ServiceInfo, tmp_path: Path
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is in the dev group"
    result = subprocess.run(
        [
            st, "run", f"{mesh.gateway}/{service.prefix}/openapi.json",
            "--url", mesh.gateway,
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,fuzzing,stateful",
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", str(SEED),
            "--exclude-path-regex", EXCLUDED_PATHS,
            "--request-timeout", "30",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,  # its .schemathesis/ there
    )  # fmt: skip
    summary = result.stdout[-1500:]
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1]
    logs = mesh.log(service.name)
    assert "unhandled error" not in logs, [line for line in logs.splitlines() if "unhandled error" in line][
        :3
    ]
    child = mesh.state()["children"][service.name]
    assert child["restarts"] == 0, f"{service.name} crashed under fuzzing: {logs[-2000:]}"
