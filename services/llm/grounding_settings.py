"""Grounding settings: where the five sources live and how long an analysis waits for them.

Every variable is range-checked (a bad value stops the start with a ConfigError naming it); the
ranges of the three request sizes are the ones the sources' contracts accept. The variables are
listed in docs/llm.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime.addresses import service_target
from services.runtime.config import env_float, env_int

CANDLES, FORECAST, REGIME, PATTERN, RAG = "candles", "forecast", "regime", "pattern", "rag"
#: Source name -> the registry name of the service that answers it, in gathering order.
SOURCE_SERVICES: dict[str, str] = {
    CANDLES: "data",
    FORECAST: "forecast",
    REGIME: "regime",
    PATTERN: "pattern",
    RAG: "rag",
}


@dataclass(frozen=True, slots=True)
class GroundingSettings:
    #: `host:port` by registry service name (`data`, `forecast`, `regime`, `pattern`, `rag`); a
    #: service missing here is looked up in the registry.
    targets: Mapping[str, str] = field(default_factory=dict)
    #: Deadline of each source's call, in seconds (`KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS`).
    timeout_seconds: float = 3.0
    #: Share of the caller's remaining deadline that gathering may use; the rest is for the answer.
    deadline_share: float = 0.5
    #: Forecast bars asked for (`KITRADING_LLM_FORECAST_HORIZON`).
    forecast_horizon: int = 24
    #: Bars summarised by the candle statistics (`KITRADING_LLM_CANDLE_LOOKBACK`).
    candle_lookback: int = 100
    #: Knowledge-base passages asked for (`KITRADING_LLM_PASSAGES`).
    passages: int = 5

    def target(self, service: str) -> str:
        return self.targets.get(service) or service_target(service, instances=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GroundingSettings:
        """Read the settings from `env` (default: os.environ); unset or empty values keep defaults."""
        return cls(
            targets={name: service_target(name, env, instances=True) for name in SOURCE_SERVICES.values()},
            timeout_seconds=env_float(
                "KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", 3.0, minimum=0.05, maximum=600.0, env=env
            ),
            forecast_horizon=env_int("KITRADING_LLM_FORECAST_HORIZON", 24, minimum=1, maximum=720, env=env),
            candle_lookback=env_int("KITRADING_LLM_CANDLE_LOOKBACK", 100, minimum=2, maximum=10_000, env=env),
            passages=env_int("KITRADING_LLM_PASSAGES", 5, minimum=1, maximum=50, env=env),
        )
