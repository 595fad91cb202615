"""Supervise the mesh's processes: restart with backoff on crash, logs per process, clean stop.

Each child is a `Child` (a command, an environment, a log file). The supervisor restarts a child
that exits without being asked to, after 0.2 s, doubling up to `max_backoff` while it keeps dying
quickly (the backoff resets once a child has run for `stable_after` seconds). A state file
(`$KITRADING_HOME/run/mesh.json`) lists every child's pid, so operators and tests can find them.
Stopping sends SIGTERM to every child (services drain in-flight calls), then SIGKILL after a grace.

`restart(name)` restarts one child on request (`kitrading restart SERVICE`, over the control socket
of `services/launcher/control.py`): SIGTERM (the service reports NOT_SERVING, finishes in-flight
calls within its grace and exits), then the same command again at once, so the code now on disk
runs; the others are not touched. It returns when the new process serves (the `ready` check).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("kitrading.launcher")

LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 3


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
    """Rotate `path` to `path.1`... when it has grown past `max_bytes` (called before each start)."""
    if not path.exists() or path.stat().st_size < max_bytes:
        return
    for index in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.2
    last_exit: int | None = None
    history: list[float] = field(default_factory=list)
    #: Its gRPC port, for the state file (a service instance; None for the gateway and the others).
    port: int | None = None
    #: Restarts asked for (`Supervisor.restart`), not counted as crashes.
    planned_restarts: int = 0
    planned: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        *,
        state_file: Path,
        max_backoff: float = 5.0,
        stable_after: float = 30.0,
        grace_seconds: float = 15.0,
    ) -> None:
        self.children = {child.name: child for child in children}
        self.state_file = state_file
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.grace_seconds = grace_seconds
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: More keys for the state file (the control socket's path).
        self.extra_state: dict[str, object] = {}

    async def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(child.log_path)
        with child.log_path.open("ab") as log_file:
            child.process = await asyncio.create_subprocess_exec(
                *child.argv,
                env=child.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C in the terminal reaches only the supervisor
            )
        child.started_at = time.monotonic()
        self._write_state()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    async def _keep_alive(self, child: Child) -> None:
        while not self._stopping:
            await self._spawn(child)
            assert child.process is not None
            code = await child.process.wait()
            child.last_exit = code
            if self._stopping:
                break
            if child.planned:  # restart on request: again at once, no backoff, not a crash
                child.planned = False
                child.planned_restarts += 1
                log.info("%s stopped on request (exit %s); starting it again", child.name, code)
                continue
            ran = time.monotonic() - child.started_at
            if ran >= self.stable_after:
                child.backoff = 0.2
            child.restarts += 1
            child.history.append(time.time())
            log.warning(
                "%s exited with %s after %.1fs; restarting in %.1fs", child.name, code, ran, child.backoff
            )
            self._write_state()
            await asyncio.sleep(child.backoff)
            child.backoff = min(self.max_backoff, child.backoff * 2)

    def _write_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor_pid": os.getpid(),
            "children": {
                name: {
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "planned_restarts": child.planned_restarts,
                    "last_exit": child.last_exit,
                    "log": str(child.log_path),
                    "port": child.port,
                }
                for name, child in self.children.items()
            },
            **self.extra_state,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    async def restart(
        self,
        name: str,
        ready: Callable[[], Awaitable[bool]] | None = None,
        *,
        timeout_s: float = 120.0,
    ) -> dict[str, object]:
        """Restart child `name` (see the module docstring); KeyError for an unknown name, TimeoutError
        when the new process does not get `ready` within `timeout_s`. Returns what happened."""
        child = self.children[name]
        async with child.lock:
            began = time.monotonic()
            old = child.pid
            if old is not None and child.process is not None:
                child.planned = True
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.process.wait(), self.grace_seconds)
                except TimeoutError:
                    log.warning("%s did not stop in time; killing it", child.name)
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
            stopped = time.monotonic() - began
            deadline = began + timeout_s
            while child.pid is None or child.pid == old:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not start again within {timeout_s:.0f} s")
                await asyncio.sleep(0.05)
            new = child.pid
            while ready is not None and not await ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{name} (pid {new}) is not serving {timeout_s:.0f} s after the restart"
                    )
                await asyncio.sleep(0.1)
            return {
                "service": name,
                "old_pid": old,
                "new_pid": new,
                "stopped_s": round(stopped, 3),
                "serving_s": round(time.monotonic() - began, 3),
            }

    async def start(self) -> None:
        for child in self.children.values():
            self._tasks.append(asyncio.create_task(self._keep_alive(child), name=f"supervise-{child.name}"))
            await asyncio.sleep(0)

    async def stop(self) -> None:
        """SIGTERM every child, wait up to the grace period, then SIGKILL what is left."""
        self._stopping = True
        running = [
            c for c in self.children.values() if c.process is not None and c.process.returncode is None
        ]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%s did not stop in time; killing it", child.name)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
