"""The watchdog's domain side (monitor, models) imports no gRPC; only `probes.py` talks it."""

from __future__ import annotations

import subprocess
import sys


def test_monitor_and_models_import_no_grpc() -> None:
    code = (
        "import sys\n"
        "import services.watchdog.monitor, services.watchdog.models\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'grpc_'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
