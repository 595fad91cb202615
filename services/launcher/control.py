"""The control socket of a running `kitrading up`: `kitrading restart SERVICE` talks to it.

A Unix socket (only its owner may connect: mode 0600) in `$KITRADING_HOME/run/control.sock`, or,
when that path is too long for a socket address, in the temp directory under a name derived from
the home; its path is in the state file (`mesh.json`, key `control`). One JSON line in, one out:

    {"op": "restart", "service": "forecast", "timeout_s": 120}
    {"ok": true, "service": "forecast", "old_pid": 4242, "new_pid": 4301, "stopped_s": 0.41, "serving_s": 3.2,
     "instances": [{"service": "forecast", "old_pid": 4242, ...}]}
    {"ok": false, "error": "unknown service 'nope'; running: data, forecast, ..."}

A service with several instances (`forecast`, `forecast-2`: `KITRADING_FORECAST_REPLICAS=2`) is
rolled: one instance at a time, each serving again (and routed to by the gateway) before the next is
stopped, so the others carry its calls meanwhile; the one holding the service's lease goes last, so
its once-only work moves once. The reply's `instances` lists each restart (the top level is the
first's, and `serving_s` the whole roll's). Naming one instance (`forecast-2`) restarts only it.
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
from services.runtime.leases import holder_record, lease_path

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


#: The instance holding a service's lease (`forecast-2`), or None.
LeaseHolder = Callable[[str], str | None]


def lease_holder(home: Path) -> LeaseHolder:
    """Reads `$KITRADING_HOME/run/leases/<service>.lock` (services.runtime.leases writes it)."""

    def holder(service: str) -> str | None:
        record = holder_record(lease_path(home, service)) or {}
        instance = record.get("instance")
        return instance if isinstance(instance, str) else None

    return holder


async def handle(
    supervisor: Supervisor,
    ready: Readiness,
    request: Mapping[str, Any],
    holder: LeaseHolder = lambda service: None,
) -> dict[str, Any]:
    op, name = request.get("op"), request.get("service")
    if op != "restart":
        return {"ok": False, "error": f"unknown op {op!r}; known: restart"}
    if not isinstance(name, str) or name not in supervisor.children:
        running = ", ".join(sorted(supervisor.children))
        return {"ok": False, "error": f"unknown service {name!r}; running: {running}"}
    timeout = request.get("timeout_s", 120.0)
    if not isinstance(timeout, int | float) or not 1 <= timeout <= 3600:
        return {"ok": False, "error": "timeout_s must be a number of seconds between 1 and 3600"}
    done: list[dict[str, Any]] = []
    order = instances_of(supervisor, name)
    leading = holder(name)
    if len(order) > 1 and leading in order:  # the holder last: its lease is handed over once
        order = [i for i in order if i != leading] + [leading]
    for instance in order:
        try:
            done.append(await supervisor.restart(instance, ready(instance), timeout_s=float(timeout)))
        except TimeoutError as exc:  # stop the roll here: the instances not yet restarted still serve
            return {"ok": False, "error": str(exc), "instances": done}
        log.info("restarted %s on request: %s", instance, done[-1])
    total = sum(float(result["serving_s"]) for result in done)
    return {"ok": True, **done[0], "serving_s": round(total, 3), "instances": done}


def instances_of(supervisor: Supervisor, name: str) -> list[str]:
    """`forecast` -> its instances in order (`forecast`, `forecast-2`, ...); an instance -> itself."""
    group = [
        child
        for child in supervisor.children
        if child == name or (child.startswith(f"{name}-") and child[len(name) + 1 :].isdigit())
    ]
    return sorted(group, key=lambda child: (child != name, len(child), child))


class ControlServer:
    def __init__(
        self,
        supervisor: Supervisor,
        ready: Readiness,
        path: Path,
        holder: LeaseHolder = lambda service: None,
    ) -> None:
        self.supervisor = supervisor
        self.ready = ready
        self.path = path
        self.holder = holder
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
                    reply = await handle(self.supervisor, self.ready, request, self.holder)
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
