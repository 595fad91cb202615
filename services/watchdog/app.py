"""The Watchdog as a `ServiceApp` for the shared runtime.

Targets (built once, at construction):

- every other mesh service from the registry: the implemented ones, or the names in
  `WATCHDOG_SERVICES` (comma list; `kitrading up` sets it to the services it starts), each where
  `services.runtime.addresses` says it is;
- the gateway at `WATCHDOG_GATEWAY_HEALTH_URL` (`kitrading up` sets it to its own gateway's
  `/gateway/health`; unset: not checked);
- the database (`services.runtime.database_settings`: `KITRADING_DATABASE_URL`, `TIMESCALE_*`, else the
  embedded PostgreSQL), which also keeps the alert history; disk and GPU.

`start()` opens the pool (waiting a few seconds at most: an unreachable database is a target to
report, not a reason not to start; alerts are kept in memory until it is back), then starts the
domain. The watchdog is ready (SERVING) once started, whatever the state of what it watches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from kitrading import mesh
from kitrading.watchdog.v1 import service_pb2_grpc
from services.runtime.app import ServiceAppBase, load_settings
from services.runtime.config import ConfigError, env_list
from services.runtime.database import DatabasePool
from services.runtime.database_settings import DatabaseSettings, resolve_database_url, revive_hook
from services.runtime.errors import Unavailable
from services.watchdog.probes import GrpcTarget
from services.watchdog.service import WatchdogDomain, registry_targets
from services.watchdog.servicer import WatchdogServicer
from services.watchdog.settings import WatchdogSettings

log = logging.getLogger(__name__)

#: How long `start()` waits for the database before starting without it (it keeps reconnecting).
DATABASE_WAIT_SECONDS = 5.0
POOL_MAX_SIZE = 4


def mesh_targets(env: Mapping[str, str] | None = None) -> list[GrpcTarget]:
    """The services to watch: `WATCHDOG_SERVICES` (names or prefixes), else every implemented one;
    never the watchdog itself."""
    source = os.environ if env is None else env
    names = env_list("WATCHDOG_SERVICES", source)
    if names:
        try:
            services = [mesh.service(name) for name in names]
        except KeyError as exc:
            raise ConfigError(f"WATCHDOG_SERVICES: {exc.args[0]}") from None
    else:
        services = [s for s in mesh.SERVICES if s.implemented]
    return registry_targets(services, env=source, exclude=("watchdog",))


class WatchdogApp(ServiceAppBase):
    def __init__(
        self,
        settings: WatchdogSettings | None = None,
        *,
        targets: Sequence[GrpcTarget] | None = None,
        database: DatabaseSettings | None = None,
        use_database: bool = True,
        check_disk: bool = True,
        check_gpu: bool = True,
    ) -> None:
        """settings/targets/database: default from the environment. use_database=False keeps the
        history in memory and does not check a database (tests)."""
        super().__init__("watchdog", service_pb2_grpc.add_WatchdogServiceServicer_to_server)
        self.settings = load_settings(settings, WatchdogSettings.from_env)
        self.targets = list(targets) if targets is not None else mesh_targets()
        self.database = load_settings(database, DatabaseSettings.from_env)
        self.use_database = use_database
        self.check_disk = check_disk
        self.check_gpu = check_gpu
        self.servicer = WatchdogServicer()
        self.domain: WatchdogDomain | None = None
        self.pool: DatabasePool | None = None

    async def _open_pool(self) -> DatabasePool | None:
        db = self.database
        try:
            url = await resolve_database_url(db)
        except Exception as exc:  # e.g. the embedded server cannot start: watch the rest anyway
            log.error("no database (%s: %s); the alert history is kept in memory", type(exc).__name__, exc)
            return None
        pool = DatabasePool(
            url,
            min_size=1,
            max_size=max(1, min(POOL_MAX_SIZE, db.pool_max_size)),
            revive=revive_hook(db),
            name="watchdog database",
        )
        try:
            await pool.open(wait_s=DATABASE_WAIT_SECONDS)
        except Unavailable:
            log.warning("database not reachable yet; alerts are kept in memory until it is")
        return pool

    async def on_start(self) -> None:
        self.pool = await self._open_pool() if self.use_database else None
        self.domain = WatchdogDomain(
            self.settings,
            targets=self.targets,
            pool=self.pool,
            database_address=self.database.describe(),
            check_disk=self.check_disk,
            check_gpu=self.check_gpu,
        )
        await self.domain.start()
        self.servicer.attach(self.domain)
        log.info(
            "watching %s; Telegram %s",
            ", ".join(t.name for t in self.domain.status().targets),
            "on" if self.settings.telegram.enabled else f"off ({self.settings.telegram.disabled_reason})",
        )

    async def on_stop(self) -> None:
        if self.domain is not None:
            await self.domain.stop()
        if self.pool is not None:
            await self.pool.close()
