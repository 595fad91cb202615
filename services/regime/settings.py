"""Regime service settings: one typed dataclass, read once from the environment.

`FIELDS` maps each attribute to its variable and range (docs/configuration.md); built in code or
from the environment, a value out of range raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services.runtime.config import HOME, BoolVar, ChoiceVar, FloatVar, IntVar, Var, check_fields, read_fields

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class RegimeSettings:
    """Configuration of the regime domain; models live under `home/models/regime/<SYMBOL>/`."""

    home: Path = Path(".kitrading")
    timeframe: str = "H1"
    # Regimes (HMM).
    n_states: int = 0  # 0: chosen by BIC among 2..4
    restarts: int = 4
    max_iter: int = 100
    vol_window: int = 24
    lookback: int = 0  # bars to fit on; 0: every stored bar
    # Signal scoring (LightGBM on triple-barrier labels).
    horizon: int = 24
    take_profit: float = 2.0  # in `barrier_unit`
    stop_loss: float = 1.0
    barrier_unit: str = "atr"  # "atr": ATR(14) multiples; "percent": percent of the entry price
    cost: float = 0.0002  # round trip, as a fraction of the price
    folds: int = 5
    embargo: int = 24
    boosting_rounds: int = 200
    signal_step: int = 4  # a candidate signal every N bars
    # Serving: the newest bars a regime or score call reads (cached while the Data events follow).
    serve_bars: int = 10_000
    # Retraining and jobs.
    train_on_start: bool = True  # no model at all at start: train the active symbols in the background
    schedule: bool = True
    auto_retrain_days: float = 7.0
    retrain_check_interval_s: float = 3600.0
    event_retrain: bool = True  # retrain a symbol on the Data service's events (debounced)
    event_debounce_s: float = 60.0
    event_max_delay_s: float = 600.0
    keep_versions: int = 5
    max_jobs_kept: int = 200
    # Isolation of the training worker.
    worker_nice: int = 10
    worker_threads: int = 1
    worker_idle_s: float = 60.0

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    @property
    def models_dir(self) -> Path:
        return self.home / "models" / "regime"

    @property
    def state_dir(self) -> Path:
        """Service state (the event monitor's last event id)."""
        return self.home / "regime"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RegimeSettings:
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        values["home"] = Path(values["home"])
        return replace(defaults, **values)


_P = "KITRADING_REGIME_"
#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "home": HOME,
    "timeframe": ChoiceVar(_P + "TIMEFRAME", ("M15", "M30", "H1", "H4", "D1")),
    "n_states": IntVar(_P + "STATES", 0, 8),
    "restarts": IntVar(_P + "RESTARTS", 1, 100),
    "max_iter": IntVar(_P + "MAX_ITER", 1, 10_000),
    "vol_window": IntVar(_P + "VOL_WINDOW", 2, 1000),
    "lookback": IntVar(_P + "LOOKBACK", 0, 1_000_000),
    "horizon": IntVar(_P + "HORIZON", 1, 1000),
    "take_profit": FloatVar(_P + "TAKE_PROFIT", 0.0, 100.0, above=True),
    "stop_loss": FloatVar(_P + "STOP_LOSS", 0.0, 100.0, above=True),
    "barrier_unit": ChoiceVar(_P + "BARRIER_UNIT", ("atr", "percent")),
    "cost": FloatVar(_P + "COST", 0.0, 0.1),
    "folds": IntVar(_P + "FOLDS", 2, 50),
    "embargo": IntVar(_P + "EMBARGO", 0, 10_000),
    "boosting_rounds": IntVar(_P + "BOOSTING_ROUNDS", 1, 100_000),
    "signal_step": IntVar(_P + "SIGNAL_STEP", 1, 1000),
    "serve_bars": IntVar(_P + "SERVE_BARS", 500, 1_000_000),
    "train_on_start": BoolVar(_P + "TRAIN_ON_START"),
    "schedule": BoolVar(_P + "SCHEDULE"),
    "auto_retrain_days": FloatVar(_P + "AUTO_RETRAIN_DAYS", 0.0, 3650.0),
    "retrain_check_interval_s": FloatVar(_P + "RETRAIN_CHECK_SECONDS", 1.0, 7 * _DAY),
    "event_retrain": BoolVar(_P + "EVENT_RETRAIN"),
    "event_debounce_s": FloatVar(_P + "EVENT_DEBOUNCE_SECONDS", 0.0, _DAY),
    "event_max_delay_s": FloatVar(_P + "EVENT_MAX_DELAY_SECONDS", 0.0, 7 * _DAY),
    "keep_versions": IntVar(_P + "KEEP_VERSIONS", 1, 1000),
    "max_jobs_kept": IntVar(_P + "MAX_JOBS_KEPT", 1, 1_000_000),
    "worker_nice": IntVar(_P + "WORKER_NICE", 0, 19),
    "worker_threads": IntVar(_P + "WORKER_THREADS", 1, 1024),
    "worker_idle_s": FloatVar(_P + "WORKER_IDLE_SECONDS", 0.0, 7 * _DAY),
}
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
