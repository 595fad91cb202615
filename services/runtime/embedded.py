"""The embedded PostgreSQL server (package `pgserver`) that services share when none is configured.

Several processes may share one data directory: the first one initialises and starts the server,
later ones attach to it, and the last process to exit stops it. The one non-obvious rule: pgserver
counts processes by the pids it registered, so pids of processes that died without exiting cleanly
are pruned on attach and on exit, or a killed service would keep the server running forever.
"""

from __future__ import annotations

import atexit
import json
import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless for us.
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that no longer exist from pgserver's handle list (caller holds the lock).

    pgserver stops the server when the last registered process exits; a process killed with SIGKILL
    never unregisters, which would otherwise keep the server running after everyone is gone.
    """
    import psutil

    path = pgdata / ".handle_pids.json"
    if not path.exists():
        return
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (ValueError, TypeError):
        pids = []
    alive = [p for p in pids if psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def start_embedded_postgres(pgdata: Path, *, cleanup_mode: str | None = "stop") -> str:
    """Start (or attach to) the embedded server in `pgdata`; returns its URL (unix socket, no password).

    Safe to call from several processes at once: pgserver serialises initdb and start with an
    inter-process file lock. Blocking (seconds on first start): call it in a thread.
    """
    pgserver = _pgserver()
    pgdata = pgdata.expanduser().absolute()
    # Create the directory ourselves: pgserver's own mkdir(exist_ok=False) races between processes.
    pgdata.mkdir(parents=True, exist_ok=True)
    with pgserver.PostgresServer._lock:
        _prune_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)

    def prune_at_exit() -> None:  # runs before pgserver's own exit hook (atexit is LIFO)
        with pgserver.PostgresServer._lock:
            _prune_dead_handles(pgdata)

    atexit.register(prune_at_exit)
    logger.info("embedded PostgreSQL ready in %s", pgdata)
    return str(server.get_uri())


def ensure_embedded_running(pgdata: Path) -> None:
    """Restart the embedded server in `pgdata` if its postmaster is gone. Blocking."""
    pgserver = _pgserver()
    server = pgserver.get_server(pgdata.expanduser().absolute())
    with pgserver.PostgresServer._lock:
        server.ensure_postgres_running()
