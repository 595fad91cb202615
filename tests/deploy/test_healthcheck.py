"""deploy/healthcheck.py: exit 0 exactly when the probed service is SERVING (gRPC) or answers 2xx (HTTP)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest
from grpc_health.v1 import health, health_pb2

from tests.deploy.conftest import DEPLOY

SERVICE = "kitrading.data.v1.DataService"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "--timeout", "2", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_grpc_serving_not_serving_and_unknown(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    ok = probe("--port", str(port), "--service", SERVICE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == f"127.0.0.1:{port} SERVING"

    servicer.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe("--port", str(port), "--service", SERVICE).returncode == 1
    unknown = probe("--port", str(port), "--service", "kitrading.nope.v1.NopeService")
    assert unknown.returncode == 1 and "UNKNOWN_SERVICE" in unknown.stdout


def test_grpc_nothing_listening() -> None:
    result = probe("--port", "1", "--service", SERVICE)
    assert result.returncode == 1 and "UNREACHABLE" in result.stdout


def test_port_from_the_registry_name(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("data", health_pb2.HealthCheckResponse.SERVING)
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "--name", "data"],
        env={"KITRADING_DATA_PORT": str(port), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("status", "expected"), [(200, 0), (503, 1)])
def test_http_mode(status: int, expected: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/gateway/health"
        assert probe("--http", url).returncode == expected
    finally:
        server.shutdown()
        server.server_close()
