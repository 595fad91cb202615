"""Forecast service settings: one typed dataclass, read once from the environment.

Every knob has an embedded default that works on a laptop with the bundled sample data; the
environment names are listed in docs/forecast.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from services.forecast.model import NHITSConfig
from services.runtime.config import ConfigError, env_bool


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """Configuration of the forecast domain.

    `home` is `$KITRADING_HOME` (default `./.kitrading`); models live under
    `home/models/forecast/<SYMBOL>/<version>/`, service state (the event monitor's last event id)
    under `home/forecast/`.
    """

    home: Path = Path(".kitrading")
    timeframe: str = "H1"
    # Retraining.
    auto_retrain_days: float = 7.0
    retrain_check_interval_s: float = 3600.0
    event_debounce_s: float = 60.0
    event_max_delay_s: float = 600.0
    event_types: tuple[str, ...] = ("CANDLES_INGESTED", "MARKET_EVENT")
    # Registry.
    keep_versions: int = 5
    # Isolation of the training worker.
    use_gpu: bool = True
    gpu_memory_fraction: float = 0.5
    worker_nice: int = 10
    worker_threads: int = 1
    worker_idle_s: float = 60.0
    # Serving.
    serving_threads: int = 1
    cache_size: int = 4096
    # Evaluation (bars of the held-out tail, see docs/forecast.md).
    eval_windows: int = 20
    eval_step: int = 0  # 0: the model's horizon (non-overlapping windows)
    calibration_windows: int = 200
    min_train_windows: int = 200
    # Jobs.
    max_jobs_kept: int = 200
    nhits: NHITSConfig = field(default_factory=NHITSConfig)

    @property
    def models_dir(self) -> Path:
        return self.home / "models" / "forecast"

    @property
    def state_dir(self) -> Path:
        return self.home / "forecast"

    def with_nhits(self, **overrides: Any) -> ForecastSettings:
        """A copy with some NHITS hyperparameters replaced."""
        return replace(self, nhits=replace(self.nhits, **overrides))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ForecastSettings:
        """Read the settings from environment variables (names in `ENV`); unset ones keep defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        nhits: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        nhits_types = {f.name: f.type for f in fields(NHITSConfig)}
        for name, (target, attr) in ENV.items():
            raw = env.get(name)
            if raw is None:
                continue
            kind = (nhits_types if target == "nhits" else types)[attr]
            value = _parse(str(kind), raw, name)
            (nhits if target == "nhits" else values)[attr] = value
        settings = cls(**values)
        return settings.with_nhits(**nhits) if nhits else settings


def _parse(kind: str, raw: str, name: str) -> Any:
    try:
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return env_bool(name, False, {name: raw})
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip().upper() for part in raw.split(",") if part.strip())
        return raw.strip()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


# Environment variable -> (settings object, attribute).
ENV: dict[str, tuple[str, str]] = {
    "KITRADING_HOME": ("settings", "home"),
    "KITRADING_FORECAST_TIMEFRAME": ("settings", "timeframe"),
    "NHITS_AUTO_RETRAIN_DAYS": ("settings", "auto_retrain_days"),
    "KITRADING_FORECAST_RETRAIN_CHECK_SECONDS": ("settings", "retrain_check_interval_s"),
    "KITRADING_FORECAST_EVENT_DEBOUNCE_SECONDS": ("settings", "event_debounce_s"),
    "KITRADING_FORECAST_EVENT_MAX_DELAY_SECONDS": ("settings", "event_max_delay_s"),
    "KITRADING_FORECAST_EVENT_TYPES": ("settings", "event_types"),
    "KITRADING_FORECAST_KEEP_VERSIONS": ("settings", "keep_versions"),
    "NHITS_USE_GPU": ("settings", "use_gpu"),
    "KITRADING_FORECAST_GPU_MEMORY_FRACTION": ("settings", "gpu_memory_fraction"),
    "KITRADING_FORECAST_WORKER_NICE": ("settings", "worker_nice"),
    "KITRADING_FORECAST_WORKER_THREADS": ("settings", "worker_threads"),
    "KITRADING_FORECAST_WORKER_IDLE_SECONDS": ("settings", "worker_idle_s"),
    "KITRADING_FORECAST_SERVING_THREADS": ("settings", "serving_threads"),
    "KITRADING_FORECAST_CACHE_SIZE": ("settings", "cache_size"),
    "KITRADING_FORECAST_EVAL_WINDOWS": ("settings", "eval_windows"),
    "KITRADING_FORECAST_EVAL_STEP": ("settings", "eval_step"),
    "KITRADING_FORECAST_CALIBRATION_WINDOWS": ("settings", "calibration_windows"),
    "NHITS_HORIZON": ("nhits", "h"),
    "NHITS_INPUT_SIZE": ("nhits", "input_size"),
    "NHITS_MAX_STEPS": ("nhits", "max_steps"),
    "NHITS_LEARNING_RATE": ("nhits", "learning_rate"),
    "NHITS_BATCH_SIZE": ("nhits", "batch_size"),
    "NHITS_MLP_UNITS": ("nhits", "mlp_units"),
    "NHITS_SCALER": ("nhits", "scaler_type"),
    "NHITS_VAL_CHECK_STEPS": ("nhits", "val_check_steps"),
    "NHITS_RANDOM_SEED": ("nhits", "random_seed"),
}
