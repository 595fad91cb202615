"""The one service registry of the mesh.

Every place that needs to know the services (the gateway's Envoy config, the launcher, the SDK's
`connect()`, the watchdog's targets, docs) reads this table; nothing keeps a copy of its own.
Ports follow the users' current deployment and can be overridden per service with
`KITRADING_<NAME>_PORT` (e.g. `KITRADING_DATA_PORT=4001`).
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
