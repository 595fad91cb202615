"""Forecast service settings: one typed dataclass, read once from the environment.

Every knob has an embedded default that works on a laptop with the bundled sample data. `FIELDS`
maps each attribute to its variable and range; built in code or from the environment, a value out
of range raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.forecast.model import SCALERS, NHITSConfig
from services.runtime.config import (
    HOME,
    BoolVar,
    ChoiceVar,
    FloatVar,
    IntVar,
    ListVar,
    Var,
    check_fields,
    read_fields,
)

#: Timeframes a model can train on (services/forecast/calendar.py knows their bar times).
TIMEFRAMES = ("M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1")
#: Data event types (`kitrading.data.v1.EventType`, the `EVENT_TYPE_` prefix optional).
EVENT_TYPES = (
    "CANDLES_INGESTED",
    "SYMBOL_ADDED",
    "SYMBOL_UPDATED",
    "SYMBOL_REMOVED",
    "SYNC_FINISHED",
    "MARKET_EVENT",
)
_DAY = 86_400.0
#: What one NHITS is trained on: one symbol's series, or every active symbol of a timeframe.
MODEL_SCOPES = ("symbol", "global")
#: statsforecast baselines that may be scored beside Naive and SeasonalNaive (KITRADING_FORECAST_BASELINES).
BASELINES = ("AutoETS", "AutoTheta", "AutoARIMA")


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
    schedule: bool = True
    auto_retrain_days: float = 7.0
    retrain_check_interval_s: float = 3600.0
    event_debounce_s: float = 60.0
    event_max_delay_s: float = 600.0
    event_types: tuple[str, ...] = ("CANDLES_INGESTED", "MARKET_EVENT")
    # Registry.
    keep_versions: int = 5
    # Isolation of the training worker.
    use_gpu: bool = True
    #: Index of the GPU the training worker uses (when `use_gpu` and it exists).
    gpu_device: int = 0
    gpu_memory_fraction: float = 0.5
    worker_nice: int = 10
    worker_threads: int = 1
    worker_idle_s: float = 60.0
    # Serving.
    candle_cache: bool = True
    serving_threads: int = 1
    cache_size: int = 4096
    # Evaluation (bars of the held-out tail, see docs/forecast.md).
    eval_windows: int = 20
    eval_step: int = 0  # 0: the model's horizon (non-overlapping windows)
    calibration_windows: int = 200
    min_train_windows: int = 200
    #: Most recent fully observed origins each conformal interval is calibrated on.
    interval_windows: int = 5000
    #: Extra statsforecast baselines (AutoARIMA is off by default: ~1 min per H1 symbol on one core).
    baselines: tuple[str, ...] = ("AutoETS", "AutoTheta")
    #: Bars each extra baseline is refitted on per test window.
    baseline_input_size: int = 500
    # Jobs.
    max_jobs_kept: int = 200
    #: "symbol": one NHITS per symbol (the default, by the rule in docs/models.md, "One model for
    #: all symbols"); "global": one NHITS per timeframe across its active symbols.
    model_scope: str = "symbol"
    nhits: NHITSConfig = field(default_factory=NHITSConfig)

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

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
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, Any] = {}
        nhits: dict[str, Any] = {}
        for path, value in read_fields(defaults, FIELDS, env).items():
            target, _, attr = path.rpartition(".")
            (nhits if target == "nhits" else values)[attr] = value
        values["home"] = Path(values["home"])
        values["baselines"] = tuple(values["baselines"])
        values["event_types"] = tuple(t.removeprefix("EVENT_TYPE_") for t in values["event_types"])
        return replace(defaults, nhits=replace(defaults.nhits, **nhits), **values)


#: Attribute (dotted for the NHITS hyperparameters) -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "home": HOME,
    "timeframe": ChoiceVar("KITRADING_FORECAST_TIMEFRAME", TIMEFRAMES),
    # Retraining.
    "schedule": BoolVar("KITRADING_FORECAST_SCHEDULE"),
    "auto_retrain_days": FloatVar("NHITS_AUTO_RETRAIN_DAYS", 0.0, 3650.0),
    "retrain_check_interval_s": FloatVar("KITRADING_FORECAST_RETRAIN_CHECK_SECONDS", 1.0, 7 * _DAY),
    "event_debounce_s": FloatVar("KITRADING_FORECAST_EVENT_DEBOUNCE_SECONDS", 0.0, _DAY),
    "event_max_delay_s": FloatVar("KITRADING_FORECAST_EVENT_MAX_DELAY_SECONDS", 0.0, 7 * _DAY),
    "event_types": ListVar(
        "KITRADING_FORECAST_EVENT_TYPES", EVENT_TYPES + tuple(f"EVENT_TYPE_{t}" for t in EVENT_TYPES)
    ),
    # Registry.
    "keep_versions": IntVar("KITRADING_FORECAST_KEEP_VERSIONS", 1, 1000),
    # Isolation of the training worker.
    "use_gpu": BoolVar("NHITS_USE_GPU"),
    "gpu_device": IntVar("KITRADING_FORECAST_GPU_DEVICE", 0, 255),
    "gpu_memory_fraction": FloatVar("KITRADING_FORECAST_GPU_MEMORY_FRACTION", 0.0, 1.0, above=True),
    "worker_nice": IntVar("KITRADING_FORECAST_WORKER_NICE", 0, 19),
    "worker_threads": IntVar("KITRADING_FORECAST_WORKER_THREADS", 1, 1024),
    "worker_idle_s": FloatVar("KITRADING_FORECAST_WORKER_IDLE_SECONDS", 0.0, 7 * _DAY),
    # Serving.
    "candle_cache": BoolVar("KITRADING_FORECAST_CANDLE_CACHE"),
    "serving_threads": IntVar("KITRADING_FORECAST_SERVING_THREADS", 1, 1024),
    "cache_size": IntVar("KITRADING_FORECAST_CACHE_SIZE", 0, 10_000_000),
    # Evaluation.
    "eval_windows": IntVar("KITRADING_FORECAST_EVAL_WINDOWS", 1, 100_000),
    "eval_step": IntVar("KITRADING_FORECAST_EVAL_STEP", 0, 100_000),
    "calibration_windows": IntVar("KITRADING_FORECAST_CALIBRATION_WINDOWS", 1, 1_000_000),
    "min_train_windows": IntVar("KITRADING_FORECAST_MIN_TRAIN_WINDOWS", 1, 1_000_000),
    "interval_windows": IntVar("KITRADING_FORECAST_INTERVAL_WINDOWS", 20, 10_000_000),
    "baselines": ListVar("KITRADING_FORECAST_BASELINES", BASELINES),
    "baseline_input_size": IntVar("KITRADING_FORECAST_BASELINE_INPUT_SIZE", 50, 1_000_000),
    # Jobs.
    "max_jobs_kept": IntVar("KITRADING_FORECAST_MAX_JOBS_KEPT", 1, 1_000_000),
    "model_scope": ChoiceVar("KITRADING_FORECAST_MODEL_SCOPE", MODEL_SCOPES),
    # NHITS hyperparameters; the horizon is at most what a forecast request may ask (720).
    "nhits.h": IntVar("NHITS_HORIZON", 1, 720),
    "nhits.input_size": IntVar("NHITS_INPUT_SIZE", 2, 100_000),
    "nhits.max_steps": IntVar("NHITS_MAX_STEPS", 1, 1_000_000),
    "nhits.learning_rate": FloatVar("NHITS_LEARNING_RATE", 0.0, 1.0, above=True),
    "nhits.batch_size": IntVar("NHITS_BATCH_SIZE", 1, 100_000),
    "nhits.windows_batch_size": IntVar("NHITS_WINDOWS_BATCH_SIZE", 1, 1_000_000),
    "nhits.mlp_units": IntVar("NHITS_MLP_UNITS", 1, 8192),
    "nhits.scaler_type": ChoiceVar("NHITS_SCALER", SCALERS),
    "nhits.val_check_steps": IntVar("NHITS_VAL_CHECK_STEPS", 1, 1_000_000),
    "nhits.random_seed": IntVar("NHITS_RANDOM_SEED", 0, 2**31 - 1),
}
#: Every variable the forecast settings read.
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
