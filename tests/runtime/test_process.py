"""A real service process: SIGTERM drains and exits 0; a bad setting stops the start with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bench._mesh import free_port, wait_serving


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KITRADING_DATABASE_URL=database_url,
        KITRADING_DATA_IMPORT_SAMPLES="false",
        KITRADING_METRICS="false",
        **extra,
    )
    return env


def test_sigterm_drains_and_exits_zero(database_url: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.data"],
        env=service_env(database_url, KITRADING_DATA_PORT=str(port)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", "kitrading.data.v1.DataService", timeout_s=60)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert '"draining' in stderr and '"stopped"' in stderr


@pytest.mark.parametrize(
    "variable", ["KITRADING_DATA_PORT", "KITRADING_DATA_SYNC_RETRIES", "KITRADING_DATA_MARKET_EVENT_K"]
)
def test_bad_setting_names_the_variable(database_url: str, variable: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.data"],
        env=service_env(database_url, **{variable: "not-valid"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert variable in done.stderr
    assert "Traceback" not in done.stderr
