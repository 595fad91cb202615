"""`ServiceAppBase`: the part of every service's `ServiceApp` that is the same, so an app is its wiring.

A subclass builds its settings (`load_settings`), domain and servicer in `__init__` and fills in
`on_start` / `on_stop` / `healthy`; the base registers the servicer, runs the periodic tasks between
start and stop, and, for a service that trains (it overrides `active_training_jobs`), keeps the
`kitrading_training_jobs_active` gauge current every second and after every RPC.

A service with work that must run once however many instances serve (training, schedules: it
overrides `lease_path` and `on_lead`) holds a lease for it (services/runtime/leases.py): the base
takes it at start when free, else tries every second, and calls `on_lead` once it has it; until then
`is_leader()` is False and the runtime refuses the registry's `leader_methods` with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from services.runtime import metrics
from services.runtime.config import ConfigError
from services.runtime.interceptor import Observer, RpcRecord
from services.runtime.leases import FileLease

log = logging.getLogger("kitrading.runtime")

S = TypeVar("S")

#: The generated `add_XServicer_to_server(servicer, server)` of a service's `service_pb2_grpc`.
AddServicer = Callable[[Any, grpc.aio.Server], None]

#: How often the training-jobs gauge is refreshed besides after every RPC.
GAUGE_PERIOD_S = 1.0
#: How often an instance without the lease tries to take it.
LEASE_POLL_S = 1.0


def load_settings(
    given: S | None, from_env: Callable[[Mapping[str, str] | None], S], env: Mapping[str, str] | None = None
) -> S:
    """`given`, else `from_env(env)` once; a bad value (any ValueError) is raised as `ConfigError`."""
    if given is not None:
        return given
    try:
        return from_env(env)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Periodic:
    """A background task: `run()` (plain or async) every `period_s` seconds while the app is started.

    `immediately`: the first run is at start, else one period after it. An exception is logged and
    the task goes on (a periodic check must never stop the service)."""

    name: str
    period_s: float
    run: Callable[[], object]
    immediately: bool = False


class ServiceAppBase:
    """What the runtime's `ServiceApp` protocol asks, with hooks for the service to fill in."""

    #: The service's servicer, registered with `add_servicer`; set it in the subclass's `__init__`.
    servicer: Any

    def __init__(self, name: str, add_servicer: AddServicer) -> None:
        """`name`: the service's registry name (the label of its metrics);
        `add_servicer`: the generated `service_pb2_grpc.add_XServicer_to_server`."""
        self.name = name
        self._add_servicer = add_servicer
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._lease: FileLease | None = None

    # ---- hooks for the subclass ----

    async def on_start(self) -> None:
        """Connect storage, load models. Calls are refused with UNAVAILABLE until it returned."""

    async def on_stop(self) -> None:
        """Release what `on_start` took (the server takes no more calls by then)."""

    def healthy(self) -> bool:
        """False while a dependency is down (the service then reports NOT_SERVING)."""
        return True

    def periodic(self) -> Sequence[Periodic]:
        """Background tasks to run while started (asked once, after `on_start`)."""
        return ()

    def rpc_observers(self) -> Sequence[Observer]:
        """Called after every RPC (e.g. a query log)."""
        return ()

    def active_training_jobs(self) -> int | None:
        """Training jobs queued or running; None (the default): this service does not train."""
        return None

    def lease_path(self) -> Path | None:
        """The lease file of the once-only work (`leases.lease_path`); None: nothing once-only."""
        return None

    async def on_lead(self) -> None:
        """Start the once-only work: this instance holds the lease now (until it stops)."""

    # ---- the ServiceApp protocol ----

    def register(self, server: grpc.aio.Server) -> None:
        self._add_servicer(self.servicer, server)

    async def start(self) -> None:
        await self.on_start()
        tasks = list(self.periodic())
        path = self.lease_path()
        if path is not None:
            instance = os.environ.get("KITRADING_INSTANCE") or self.name
            self._lease = FileLease(path, instance=instance)
            if not await self._try_lead():
                log.info("%s: the lease is held by %s; serving reads", instance, self._lease.holder())
                tasks.append(Periodic("lease", LEASE_POLL_S, self._try_lead))
        if self.trains:
            self._update_training_gauge()
            tasks.append(Periodic("training-gauge", GAUGE_PERIOD_S, self._update_training_gauge))
        self._tasks = [
            asyncio.create_task(self._every(task), name=f"{self.name}-{task.name}") for task in tasks
        ]
        self._started = True

    async def stop(self) -> None:
        self._started = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.on_stop()
        if self._lease is not None:  # after on_stop: the once-only work has stopped
            self._lease.release()
        self._update_training_gauge()

    def is_ready(self) -> bool:
        return self._started and self.healthy()

    def is_leader(self) -> bool:
        """Whether this instance runs the once-only work (always, for a service without any)."""
        return self._lease is None or self._lease.held

    def leader(self) -> str | None:
        """Who holds the lease, for a refusal's message."""
        return None if self._lease is None else self._lease.holder()

    @property
    def observers(self) -> Sequence[Observer]:
        observers = list(self.rpc_observers())
        if self.trains:
            observers.append(self._after_rpc)
        return observers

    # ---- the base's own ----

    @property
    def trains(self) -> bool:
        """Whether the subclass provides `active_training_jobs` (then the base keeps the gauge)."""
        return type(self).active_training_jobs is not ServiceAppBase.active_training_jobs

    def _update_training_gauge(self) -> None:
        active = self.active_training_jobs()
        if active is not None:
            metrics.TRAINING_JOBS_ACTIVE.labels(self.name).set(active)

    def _after_rpc(self, record: RpcRecord) -> None:
        self._update_training_gauge()

    async def _try_lead(self) -> bool:
        lease = self._lease
        if lease is None or lease.held:
            return True
        if not lease.try_acquire():
            return False
        log.info("%s holds the lease %s: it runs the once-only work", lease.instance, lease.path)
        await self.on_lead()
        return True

    async def _every(self, task: Periodic) -> None:
        if not task.immediately:
            await asyncio.sleep(task.period_s)
        while True:
            try:
                result = task.run()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s %s failed", self.name, task.name)
            await asyncio.sleep(task.period_s)
