"""The caller's deadline, visible to domain code without gRPC.

The runtime stores the absolute deadline of the RPC being served in a context variable; domain code
that calls another service asks `remaining(default)` for the time budget it may spend, so deadlines
propagate through the mesh.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("kitrading_deadline", default=None)


def set_deadline(seconds_from_now: float | None) -> None:
    _DEADLINE.set(None if seconds_from_now is None else time.monotonic() + seconds_from_now)


def remaining(default: float) -> float:
    """Seconds left before the current RPC's deadline (at most `default`; `default` when none)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))
