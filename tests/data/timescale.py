"""A real TimescaleDB server for tests: PostgreSQL 16 with the TimescaleDB extension, on a free TCP port.

The installation comes from `deploy/timescaledb.sh` (built once from source against the embedded
server's PostgreSQL and cached; ~30 s the first time). This is an outside server as far as the Data
service is concerned: the service reaches it through `TIMESCALE_HOST`/`TIMESCALE_PORT`, exactly as it
would reach a TimescaleDB container in production.

PostgreSQL refuses to run as root; as root the server runs as the system user `pgserver` (the one the
embedded server uses), and the directories it needs are made traversable for it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench._mesh import free_port
from services.runtime.embedded import _pgserver

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "timescaledb.sh"
SYSTEM_USER = "pgserver"


def timescaledb_bin_dir() -> Path:
    """The bin directory of the cached PostgreSQL + TimescaleDB build (built now when missing)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), sys.executable],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"deploy/timescaledb.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _traversable(path: Path) -> None:
    """Let other users traverse (not list) every parent of `path`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@dataclass
class TimescaleServer:
    bin_dir: Path
    root: Path
    port: int
    preload: bool
    user: str | None

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        # As root: the server's user with its own group only (root's group would get /root's group bits).
        ids: dict[str, object] = {}
        if self.user is not None:
            ids = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}
        subprocess.run(list(args), check=True, capture_output=True, timeout=120, **ids)  # type: ignore[call-overload]

    def start(self) -> None:
        options = f"-h {self.host} -p {self.port} -k {self.root}"
        if self.preload:
            options += " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
        try:
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-l", str(self.root / "log"),
                "-o", options, "start",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"TimescaleDB did not start; its log:\n{self.log()[-3000:]}") from exc

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_timescale(*, preload: bool = True) -> TimescaleServer:
    """initdb + start a fresh server in a temp dir. `preload=False`: the extension is installed but
    not in `shared_preload_libraries`, so it cannot be created (a misconfigured server)."""
    bin_dir = timescaledb_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="kitrading-test-tsdb-"))
    user = None
    if os.geteuid() == 0:
        user = SYSTEM_USER
        entry = _pgserver().utils.ensure_user_exists(user)
        _traversable(bin_dir)
        _traversable(root)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = TimescaleServer(bin_dir, root, free_port(), preload, user)
    server._run(
        str(bin_dir / "initdb"), "-D", str(server.pgdata), "-U", "postgres",
        "--auth=trust", "--encoding=utf8", "--no-sync",
    )  # fmt: skip
    server.start()
    return server


def remove_timescale(server: TimescaleServer) -> None:
    with contextlib.suppress(subprocess.SubprocessError):
        server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
