"""`WatchdogDomain`: the one object the Watchdog servicer talks to.

It wires the probes (gRPC health of every service, the gateway URL, the database, disk under
KITRADING_HOME, GPU memory), the check loop, the alert policy, the history store and Telegram::

    domain = WatchdogDomain(WatchdogSettings.from_env(), targets=registry_targets(SERVICES), pool=pool)
    await domain.start()
    domain.status(); await domain.list_alerts(page_size=20); await domain.send_test_alert("hi")
    async with contextlib.aclosing(domain.watch()) as events:
        async for event in events: ...  # SnapshotEvent, then ChangeEvent / AlertEvent
    await domain.stop()

Plain Python: no servicer types here; errors are `services.runtime.errors` domain errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from kitrading import mesh
from services.runtime.addresses import host_port, service_port, service_target
from services.runtime.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.watchdog.alerts import AlertManager
from services.watchdog.events import EventHub
from services.watchdog.models import (
    KIND_ORDER,
    AlertEvent,
    AlertKind,
    AlertPage,
    AlertRecord,
    ChangeEvent,
    HealthStatus,
    Probe,
    SnapshotEvent,
    TargetState,
    TelegramStatus,
    WatchdogStatus,
    WatchEvent,
    utcnow,
)
from services.watchdog.monitor import Monitor
from services.watchdog.probes import (
    DatabaseProbe,
    DiskProbe,
    GpuProbe,
    GrpcHealthProbe,
    GrpcTarget,
    HttpProbe,
)
from services.watchdog.settings import WatchdogSettings
from services.watchdog.store import AlertStore, MemoryAlertStore, Pool, PostgresAlertStore, migrate
from services.watchdog.telegram import TelegramClient, api_host

log = logging.getLogger(__name__)

#: Worst first: the overall status is the first of these any target has.
_SEVERITY = (HealthStatus.UNREACHABLE, HealthStatus.NOT_SERVING, HealthStatus.UNKNOWN)


def registry_targets(
    services: Iterable[mesh.ServiceInfo],
    *,
    host: str | Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
    exclude: Iterable[str] = ("watchdog",),
) -> list[GrpcTarget]:
    """Targets for services of the mesh registry, each at `services.runtime.addresses.service_target`,
    or on `host` (one host, or a function of the service name) at the service's configured port."""
    skip = set(exclude)
    targets = []
    for info in services:
        if info.name in skip:
            continue
        if not host:
            address = service_target(info.name, env)
        else:
            address = host_port(host(info.name) if callable(host) else host, service_port(info.name, env))
        targets.append(GrpcTarget(info.name, address, info.grpc_service))
    return targets


class PostgresHistory:
    """The PostgreSQL alert store plus the schema migrations, retried until they succeed."""

    def __init__(self, pool: Pool, *, timeout: float = 10.0) -> None:
        self._pool = pool
        self._store = PostgresAlertStore(pool, timeout=timeout)
        self._timeout = timeout
        self._migrated = False
        self.persistent = True

    async def ensure_schema(self) -> None:
        if not self._migrated:
            applied = await migrate(self._pool, limit_seconds=max(self._timeout, 30.0))
            self._migrated = True
            if applied:
                log.info("watchdog schema migrated: %s", ", ".join(applied))

    async def save(self, record: AlertRecord) -> None:
        await self.ensure_schema()
        await self._store.save(record)

    async def list(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        try:
            await self.ensure_schema()
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(
                f"alert history is unavailable: database {type(exc).__name__}", reason="DATABASE_UNAVAILABLE"
            ) from None
        return await self._store.list(page_size=page_size, page_token=page_token, target=target, kind=kind)

    async def close(self) -> None:
        await self._store.close()


class WatchdogDomain:
    """Health monitoring, alert history and Telegram alerts of the mesh."""

    def __init__(
        self,
        settings: WatchdogSettings,
        *,
        targets: Iterable[GrpcTarget | tuple[str, str, str]] = (),
        pool: Pool | None = None,
        database_address: str = "postgresql",
        store: AlertStore | None = None,
        extra_probes: Sequence[Probe] = (),
        check_disk: bool = True,
        check_gpu: bool = True,
        telegram_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """
        targets: gRPC services as (name, "host:port", grpc service name), e.g. `registry_targets(...)`.
        pool: asyncpg-style pool: checked with `SELECT 1` (target "database") and, unless `store`
            is given, holds the alert history in schema `watchdog`. None: history in memory.
        database_address: how the database target is shown (host:port/db, never a password).
        extra_probes: further targets (any `Probe`).
        """
        self.settings = settings
        probes: list[Probe] = []
        reconnect = max(1.0, settings.check_interval_seconds)
        for target in targets:
            name, address, service = GrpcTarget(*target)
            probes.append(GrpcHealthProbe(name, address, service, reconnect_max_seconds=reconnect))
        if settings.gateway_health_url:
            probes.append(HttpProbe("gateway", settings.gateway_health_url))
        if pool is not None:
            probes.append(DatabaseProbe("database", database_address, _pinger(pool)))
        if check_disk:
            probes.append(
                DiskProbe(
                    "disk",
                    settings.home,
                    min_free_percent=settings.disk_min_free_percent,
                    min_free_bytes=settings.disk_min_free_bytes,
                )
            )
        if check_gpu:
            probes.append(GpuProbe("gpu", min_free_percent=settings.gpu_min_free_percent))
        probes.extend(extra_probes)
        if store is None:
            store = PostgresHistory(pool) if pool is not None else MemoryAlertStore()
        self.store: AlertStore = store
        self.monitor = Monitor(
            probes, interval=settings.check_interval_seconds, timeout=settings.check_timeout, clock=clock
        )
        self._telegram_transport = telegram_transport
        self._clock = clock
        self._events: EventHub[WatchEvent] = EventHub()
        self.monitor.add_listener(self._on_check)
        self.alerts: AlertManager | None = None
        self._telegram: TelegramClient | None = None
        self._started_at: datetime | None = None
        self._restarts_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"WatchdogDomain(targets={len(self.monitor.snapshot())}, "
            f"telegram={'on' if self.settings.telegram.enabled else 'off'})"
        )

    # ---- lifecycle ----

    async def start(self) -> None:
        """Create the schema (if the database is up; else later), start Telegram and the checks."""
        if self.alerts is not None:
            return
        if isinstance(self.store, PostgresHistory):
            try:
                await self.store.ensure_schema()
            except Exception as exc:
                log.warning("watchdog schema not ready (%s); alerts are kept until it is", type(exc).__name__)
        if self.settings.telegram.enabled:
            self._telegram = TelegramClient(self.settings.telegram, transport=self._telegram_transport)
        else:
            log.warning("Telegram alerts are off: %s", self.settings.telegram.disabled_reason)
        self.alerts = AlertManager(
            self.settings, self.store, self._telegram, clock=self._clock, on_alert=self._on_alert
        )
        self.monitor.add_listener(self.alerts.observe)
        self._events.reopen()
        self._started_at = self._clock()
        self.monitor.start()
        self._restarts_task = asyncio.create_task(self._watch_restarts(), name="watchdog-restarts")

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop the checks and end status streams, give in-flight alerts `grace_seconds`, close clients."""
        await self.monitor.stop()
        if self._restarts_task is not None:
            self._restarts_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarts_task
            self._restarts_task = None
        self._events.close()
        if self.alerts is not None:
            await self.alerts.close(grace_seconds)
        if self._telegram is not None:
            await self._telegram.aclose()
            self._telegram = None
        await self.store.close()

    def _crash_restarts(self) -> dict[str, tuple[int, int | None]] | None:
        """Child -> (crash restarts, last exit code) from the supervisor's state file; None without one."""
        try:
            state = json.loads(self.settings.supervisor_state_path.read_text())
            children = state["children"]
            return {
                str(name): (int(child.get("restarts", 0)), child.get("last_exit"))
                for name, child in children.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    async def _watch_restarts(self) -> None:
        """Alert each crash restart the supervisor counts (cumulative counts: none is missed between
        reads, however fast the restart). The first read is the baseline: restarts from before this
        watchdog started are not alerted again."""
        seen: dict[str, tuple[int, int | None]] | None = None
        period = min(5.0, self.settings.check_interval_seconds)
        while True:
            counts = await asyncio.to_thread(self._crash_restarts)
            if counts is not None:
                if seen is not None and self.alerts is not None:
                    for name, (restarts, last_exit) in sorted(counts.items()):
                        if restarts > seen.get(name, (restarts, None))[0]:
                            self.alerts.restarted(name, restarts, last_exit, self.monitor.get(name))
                seen = counts
            await asyncio.sleep(period)

    async def __aenter__(self) -> WatchdogDomain:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- API ----

    def status(self) -> WatchdogStatus:
        """Snapshot of every target, the overall status and whether Telegram is on."""
        return self._status(self.monitor.snapshot())

    async def check_now(self) -> WatchdogStatus:
        """Check every target now (concurrently, each within the check timeout), then `status()`."""
        return self._status(await self.monitor.check_now())

    async def list_alerts(
        self, *, page_size: int = 0, page_token: str = "", target: str = "", kind: AlertKind | None = None
    ) -> AlertPage:
        """Alert history, newest first. `page_size` 0 = 100 (max 1000); `page_token` from the
        previous page's `next_page_token` (with the same filters); `target` ("" = all) and `kind`
        (None = all) filter. Raises InvalidArgument (bad size/token) or Unavailable (database down)."""
        return await self.store.list(page_size=page_size, page_token=page_token, target=target, kind=kind)

    async def send_test_alert(self, message: str = "") -> AlertRecord:
        """Send a TEST alert to every chat now and wait for the outcome; returns the recorded alert
        (TELEGRAM_DISABLED when Telegram is off). InvalidArgument for a message over 1024 characters."""
        if self.alerts is None:
            raise FailedPrecondition("the watchdog is not started", reason="NOT_STARTED")
        return await self.alerts.send_test(message)

    async def watch(self, targets: Collection[str] = ()) -> AsyncGenerator[WatchEvent, None]:
        """The status stream: one `SnapshotEvent` (current status), then a `ChangeEvent` for each
        status change and an `AlertEvent` for each alert (again, same id, when its delivery outcome is
        known), until `stop()`. `targets` limits it to those names (test alerts always come).
        Raises InvalidArgument for an unknown target name. Use with `contextlib.aclosing`."""
        wanted = set(targets)
        unknown = sorted(wanted - {t.name for t in self.monitor.snapshot()})
        if unknown:
            raise InvalidArgument("targets", f"unknown target(s): {', '.join(unknown)}")
        with self._events.subscribe() as subscription:
            # Registered before the snapshot, with no await in between: no change can slip through.
            yield SnapshotEvent(self._status(self._select(self.monitor.snapshot(), wanted)))
            async for event in subscription.items():
                if not wanted or _target_of(event) in wanted or _target_of(event) == "":
                    yield event

    # ---- helpers ----

    def telegram_status(self) -> TelegramStatus:
        tg = self.settings.telegram
        return TelegramStatus(
            enabled=tg.enabled,
            reason=tg.disabled_reason,
            chat_count=len(tg.chat_ids),
            api_host=api_host(tg.api_base),
        )

    @staticmethod
    def _select(targets: list[TargetState], wanted: set[str]) -> list[TargetState]:
        return [t for t in targets if not wanted or t.name in wanted]

    def _on_check(self, previous: TargetState, current: TargetState) -> None:
        if current.status is not previous.status:
            self._events.publish(ChangeEvent(state=current, previous=previous.status))

    def _on_alert(self, alert: AlertRecord) -> None:
        self._events.publish(AlertEvent(alert=alert))

    def _status(self, targets: list[TargetState]) -> WatchdogStatus:
        targets = sorted(targets, key=lambda t: (KIND_ORDER[t.kind], t.name))
        present = {t.status for t in targets}
        overall = next((s for s in _SEVERITY if s in present), HealthStatus.SERVING)
        counts: dict[str, int] = {}
        for target in targets:
            counts[target.status.value] = counts.get(target.status.value, 0) + 1
        return WatchdogStatus(
            targets=targets,
            overall=overall,
            telegram=self.telegram_status(),
            check_interval_seconds=self.settings.check_interval_seconds,
            alert_cooldown_minutes=self.settings.alert_cooldown_minutes,
            started_at=self._started_at,
            history_persistent=self.store.persistent,
            unsaved_alerts=self.alerts.unsaved_count if self.alerts is not None else 0,
            counts=counts,
            check_time=max((t.last_check_time for t in targets if t.last_check_time), default=None),
        )


def _target_of(event: WatchEvent) -> str:
    if isinstance(event, AlertEvent):
        return event.alert.target
    if isinstance(event, ChangeEvent):
        return event.state.name
    return ""


def _pinger(pool: Pool) -> Callable[[float], Any]:
    async def ping(time_limit: float) -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1", timeout=time_limit)

    return ping
