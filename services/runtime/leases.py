"""A lease that one process of a service holds at a time: what must run once per mesh runs there.

Replicas of a service (`KITRADING_<NAME>_REPLICAS`) share its files under `$KITRADING_HOME`; the one
holding `$KITRADING_HOME/run/leases/<service>.lock` runs the service's once-only work (training jobs,
retraining schedules, event monitors, first-start training) and answers its `leader_methods`; the
others serve reads and try to take the lease every second. It is an exclusive `flock` on an open
file: the kernel drops it when its process exits, however it exits (a `kill -9` included), so a lease
is never left held by the dead and there is no expiry to tune. The file says who holds it (pid and
instance), for error messages and `kitrading status`.

On one machine (`kitrading up`) that is exact. Across machines it needs a file system with working
`flock` (local disks, NFSv4); Kubernetes runs these services as one pod each (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path


def lease_path(home: Path, service: str) -> Path:
    return home / "run" / "leases" / f"{service}.lock"


class FileLease:
    """`try_acquire()` takes the lease if no other process holds it (never blocks); `release()` lets
    it go. Not shared between threads; one instance per process and service."""

    def __init__(self, path: Path, *, instance: str) -> None:
        self.path = path
        self.instance = instance
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        # The holder's name, for the others' messages (the holder empties the file when it lets go).
        record = json.dumps({"pid": os.getpid(), "instance": self.instance}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def holder(self) -> str | None:
        """Who holds it, as its file says ("forecast-2 (pid 4242)"); None when nobody says so."""
        record = holder_record(self.path)
        return None if record is None else f"{record.get('instance')} (pid {record.get('pid')})"


def holder_record(path: Path) -> dict[str, object] | None:
    """What a lease file says of its holder (`{"pid": 4242, "instance": "forecast-2"}`); None when
    it says nothing (free, unreadable, or not ours)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
