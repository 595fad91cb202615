"""The control socket of a running `kitrading up`: `kitrading restart SERVICE` talks to it.

A Unix socket (only its owner may connect: mode 0600) in `$KITRADING_HOME/run/control.sock`, or,
when that path is too long for a socket address, in the temp directory under a name derived from
the home; its path is in the state file (`mesh.json`, key `control`). One JSON line in, one out:

    {"op": "restart", "service": "forecast", "timeout_s": 120}
    {"ok": true, "service": "forecast", "old_pid": 4242, "new_pid": 4301, "stopped_s": 0.41, "serving_s": 3.2}
    {"ok": false, "error": "unknown service 'nope'; running: data, forecast, ..."}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from services.launcher.supervisor import Supervisor

log = logging.getLogger("kitrading.launcher")

#: Longest path a Unix socket address holds on Linux (108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 100
MAX_REQUEST_BYTES = 4096

Readiness = Callable[[str], Callable[[], Awaitable[bool]] | None]


def socket_path(home: Path) -> Path:
    path = home / "run" / "control.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kitrading-{digest}.sock"


async def handle(supervisor: Supervisor, ready: Readiness, request: Mapping[str, Any]) -> dict[str, Any]:
    op, name = request.get("op"), request.get("service")
    if op != "restart":
        return {"ok": False, "error": f"unknown op {op!r}; known: restart"}
    if not isinstance(name, str) or name not in supervisor.children:
        running = ", ".join(sorted(supervisor.children))
        return {"ok": False, "error": f"unknown service {name!r}; running: {running}"}
    timeout = request.get("timeout_s", 120.0)
    if not isinstance(timeout, int | float) or not 1 <= timeout <= 3600:
        return {"ok": False, "error": "timeout_s must be a number of seconds between 1 and 3600"}
    try:
        result = await supervisor.restart(name, ready(name), timeout_s=float(timeout))
    except TimeoutError as exc:
        return {"ok": False, "error": str(exc)}
    log.info("restarted %s on request: %s", name, result)
    return {"ok": True, **result}


class ControlServer:
    def __init__(self, supervisor: Supervisor, ready: Readiness, path: Path) -> None:
        self.supervisor = supervisor
        self.ready = ready
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a launcher that was killed
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if len(line) > MAX_REQUEST_BYTES:
                reply: dict[str, Any] = {"ok": False, "error": "request too long"}
            else:
                try:
                    request = json.loads(line)
                except ValueError:
                    request = None
                if isinstance(request, dict):
                    reply = await handle(self.supervisor, self.ready, request)
                else:
                    reply = {"ok": False, "error": "send one JSON object on one line"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
