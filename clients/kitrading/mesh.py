"""The one service registry of the mesh.

Every place that needs to know the services (the gateway's Envoy config, the launcher, the SDK's
`connect()`, the watchdog's targets, docs) reads this table; nothing keeps a copy of its own.
Ports follow the users' current deployment and can be overridden per service with
`KITRADING_<NAME>_PORT` (e.g. `KITRADING_DATA_PORT=4001`).

`KITRADING_<NAME>_REPLICAS=N` runs N instances of a replicable service on one machine (`kitrading
up`): instance 1 on the service's port, instance k on that port + 100 * (k - 1) (forecast: 3002,
3102, ...; metrics ports alike). What only one instance may do (training, schedules) is done by the
one holding the service's lease; `leader_methods` are answered there only (docs/reliability.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One domain service of the mesh."""

    #: Short name: the domain, the CLI's name and the env prefix (`KITRADING_DATA_PORT`).
    name: str
    #: Default gRPC port.
    default_port: int
    #: Gateway path prefix, as the users have it (`/data/health`, `/nhits/docs`).
    prefix: str
    #: Fully-qualified protobuf service name, used for gRPC health and reflection.
    grpc_service: str
    #: Python module that runs the server (`python -m <module>`).
    module: str
    #: Whether the service can use a GPU (gets a GPU memory fraction and reservation).
    gpu: bool
    #: Short description for docs and status pages.
    title: str
    #: Implemented services are started by `kitrading up`; the others have contracts only so far.
    implemented: bool = False
    #: Whether several instances may serve side by side (`KITRADING_<NAME>_REPLICAS`): their state is
    #: the database, files they share, or per-process work that the lease keeps to one of them.
    replicable: bool = False
    #: Methods only the lease holder answers (training jobs and their streams, schedules, event
    #: monitors, rollbacks); the gateway sends them to the holder, other instances refuse them.
    leader_methods: tuple[str, ...] = ()

    @property
    def leader_health_name(self) -> str:
        """gRPC health name that is SERVING on the instance holding the lease (and serving)."""
        return f"{self.grpc_service}/leader"

    @property
    def proto_package(self) -> str:
        return self.grpc_service.rsplit(".", 1)[0]

    def port(self, env: Mapping[str, str] | None = None) -> int:
        """The configured port: `KITRADING_<NAME>_PORT` or the default."""
        source = os.environ if env is None else env
        return _port(source, f"KITRADING_{self.name.upper()}_PORT", self.default_port)

    def metrics_port(self, env: Mapping[str, str] | None = None) -> int:
        """Prometheus port: `KITRADING_<NAME>_METRICS_PORT` or gRPC port + 6000 (9001 for data)."""
        source = os.environ if env is None else env
        name = f"KITRADING_{self.name.upper()}_METRICS_PORT"
        value = _port(source, name, -1, minimum=0)  # 0: any free port
        return value if value >= 0 else self.port(source) + 6000

    def replicas(self, env: Mapping[str, str] | None = None) -> int:
        """`KITRADING_<NAME>_REPLICAS` (1..MAX_REPLICAS, default 1); ValueError naming it (and why, for
        a service that runs one instance only)."""
        source = os.environ if env is None else env
        name = f"KITRADING_{self.name.upper()}_REPLICAS"
        raw = (source.get(name) or "").strip()
        if not raw:
            return 1
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if not 1 <= value <= MAX_REPLICAS:
            raise ValueError(f"{name} must be a whole number in 1..{MAX_REPLICAS}, got {raw!r}")
        if value > 1 and not self.replicable:
            raise ValueError(
                f"{name}={value}: {self.name} runs one instance only ({ONE_INSTANCE_WHY[self.name]}); "
                f"replicable: {', '.join(s.name for s in SERVICES if s.replicable)}"
            )
        return value

    def instance_ports(self, env: Mapping[str, str] | None = None) -> list[tuple[int, int]]:
        """(gRPC port, metrics port) of every instance, the first being the service's own."""
        source = os.environ if env is None else env
        port, metrics = self.port(source), self.metrics_port(source)
        return [
            (port + INSTANCE_PORT_STEP * k, metrics + INSTANCE_PORT_STEP * k if metrics else 0)
            for k in range(self.replicas(source))
        ]


#: The shared training machinery's job methods (services/training/servicer.py), in every trainer.
TRAINING_JOB_METHODS = ("GetTrainingJob", "ListTrainingJobs", "CancelTrainingJob", "WatchTrainingJob")
MAX_REPLICAS = 8
#: Instance k (0-based) listens on the service's port + k * this (and so does its metrics port).
INSTANCE_PORT_STEP = 100
#: Why a service that is not replicable runs one instance.
ONE_INSTANCE_WHY = {
    "data": "its event stream and sync schedules live in its process",
    "rag": "its FAISS index lives in its process and volume",
    "watchdog": "two would check and alert twice",
}

SERVICES: tuple[ServiceInfo, ...] = (
    ServiceInfo(
        "data",
        3001,
        "data",
        "kitrading.data.v1.DataService",
        "services.data",
        gpu=False,
        title="Symbols, strategies, OHLCV candles, sync, query logs, events",
        implemented=True,
    ),
    ServiceInfo(
        "forecast",
        3002,
        "nhits",
        "kitrading.forecast.v1.ForecastService",
        "services.forecast",
        gpu=True,
        title="NHITS forecasting: training jobs, forecasts, performance",
        implemented=True,
        replicable=True,
        leader_methods=(
            "TrainAll",
            "TrainSymbol",
            "GetTrainingProgress",
            *TRAINING_JOB_METHODS,
            "RollbackModelVersion",
            "StartEventMonitor",
            "StopEventMonitor",
            "GetEventMonitorStatus",
        ),
    ),
    ServiceInfo(
        "pattern",
        3003,
        "tcn",
        "kitrading.pattern.v1.PatternService",
        "services.pattern",
        gpu=True,
        title="Chart patterns: a rule-based detector with honest follow-through (the TCN is to come)",
        implemented=True,
        replicable=True,
        leader_methods=("TrainPatternModel", "RollbackPatternModel", *TRAINING_JOB_METHODS),
    ),
    ServiceInfo(
        "regime",
        3004,
        "hmm",
        "kitrading.regime.v1.RegimeService",
        "services.regime",
        gpu=False,
        title="Market regimes (HMM) and signal scoring (LightGBM)",
        implemented=True,
        replicable=True,
        leader_methods=("TrainRegimeModels", "RollbackRegimeModel", *TRAINING_JOB_METHODS),
    ),
    ServiceInfo(
        "embedder",
        3005,
        "embedder",
        "kitrading.embedder.v1.EmbedderService",
        "services.embedder",
        gpu=True,
        title="Text, sentiment and time-series embeddings",
        implemented=True,
        replicable=True,
    ),
    ServiceInfo(
        "rag",
        3008,
        "rag",
        "kitrading.rag.v1.RagService",
        "services.rag",
        gpu=True,
        title="Knowledge base: documents and FAISS vector search",
        implemented=True,
    ),
    ServiceInfo(
        "llm",
        3009,
        "llm",
        "kitrading.llm.v1.LlmService",
        "services.llm",
        gpu=True,
        title="Grounded trading analysis streamed token by token",
        implemented=True,
        replicable=True,
    ),
    ServiceInfo(
        "watchdog",
        3010,
        "watchdog",
        "kitrading.watchdog.v1.WatchdogService",
        "services.watchdog",
        gpu=False,
        title="Health monitoring, alert history, Telegram alerts",
        implemented=True,
    ),
)

GATEWAY_PORT = 3000
BY_NAME: dict[str, ServiceInfo] = {s.name: s for s in SERVICES}
BY_PREFIX: dict[str, ServiceInfo] = {s.prefix: s for s in SERVICES}


def gateway_port(env: Mapping[str, str] | None = None) -> int:
    source = os.environ if env is None else env
    return _port(source, "KITRADING_GATEWAY_PORT", GATEWAY_PORT)


def _port(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    """The port in variable `name` (`minimum`..65535), or `default` when unset; ValueError naming it."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not minimum <= value <= 65535:
        raise ValueError(f"{name} must be a port in {minimum}..65535, got {raw!r}")
    return value


def service(name: str) -> ServiceInfo:
    """Look a service up by name (`data`) or gateway prefix (`nhits`)."""
    found = BY_NAME.get(name) or BY_PREFIX.get(name)
    if found is None:
        known = ", ".join(s.name for s in SERVICES)
        raise KeyError(f"unknown service {name!r}; known: {known}")
    return found
