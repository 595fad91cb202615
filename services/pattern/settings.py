"""Pattern service settings: one typed dataclass, read once from the environment.

`FIELDS` maps each attribute to its variable and range (docs/configuration.md); built in code or
from the environment, a value out of range raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from services.runtime.config import HOME, BoolVar, ChoiceVar, FloatVar, IntVar, Var, check_fields, read_fields

if TYPE_CHECKING:
    from services.pattern.tcn import TCNConfig

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class PatternSettings:
    """Configuration of the pattern domain."""

    home: Path = Path(".kitrading")
    #: Series scanned when the request and the symbol name none.
    timeframe: str = "H1"
    #: Newest bars a detection reads (pivots need history before the scanned window).
    history_bars: int = 10_000
    #: Bars after a pattern that its follow-through return spans.
    follow_horizon: int = 24
    #: Share of a series' newest bars the follow-through figures are measured on (and the TCN's test period).
    holdout: float = 0.3
    # The TCN (services.pattern.tcn): inputs, labels, architecture, optimisation.
    window: int = 128  # bars a TCN window spans (also the embargo between training and test windows)
    label_tolerance: int = 2  # a window ending at t is labelled with types confirmed in [t - this, t]
    channels: int = 32
    levels: int = 5  # residual blocks, dilations 1, 2, 4, ...
    kernel_size: int = 3
    dropout: float = 0.1
    max_steps: int = 300
    batch_size: int = 128
    learning_rate: float = 3e-3
    validation_share: float = 0.15  # of the training span, newest: the per-type thresholds
    train_bars: int = 0  # newest bars of each series trained on; 0: every stored bar
    seed: int = 0
    # Training jobs, retraining and the worker.
    train_on_start: bool = True  # no model at start: train one in the background
    schedule: bool = True
    auto_retrain_days: float = 7.0
    retrain_check_interval_s: float = 3600.0
    event_retrain: bool = True  # retrain on Data's new candles (debounced; skipped if none is new)
    event_debounce_s: float = 600.0
    event_max_delay_s: float = 3600.0
    keep_versions: int = 5
    max_jobs_kept: int = 200
    worker_nice: int = 10
    worker_threads: int = 1
    worker_idle_s: float = 60.0
    use_gpu: bool = True
    gpu_device: int = 0
    gpu_memory_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    @property
    def models_dir(self) -> Path:
        return self.home / "models" / "pattern"

    @property
    def state_dir(self) -> Path:
        """Service state (the event monitor's last event id)."""
        return self.home / "pattern"

    def tcn_config(self) -> TCNConfig:
        """The TCN these settings train (services.pattern.tcn)."""
        from services.pattern.tcn import TCNConfig

        return TCNConfig(
            window=self.window,
            tolerance=self.label_tolerance,
            channels=self.channels,
            levels=self.levels,
            kernel=self.kernel_size,
            dropout=self.dropout,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            holdout=self.holdout,
            validation_share=self.validation_share,
            seed=self.seed,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PatternSettings:
        """Read the settings from the variables in `FIELDS`; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values = read_fields(defaults, FIELDS, env)
        values["home"] = Path(values["home"])
        return replace(defaults, **values)


_P = "KITRADING_PATTERN_"
#: Attribute -> its environment variable and range.
FIELDS: dict[str, Var] = {
    "home": HOME,
    "timeframe": ChoiceVar(_P + "TIMEFRAME", ("M15", "M30", "H1", "H4", "D1")),
    "history_bars": IntVar(_P + "HISTORY_BARS", 500, 1_000_000),
    "follow_horizon": IntVar(_P + "FOLLOW_HORIZON", 1, 1000),
    "holdout": FloatVar(_P + "HOLDOUT", 0.05, 0.9),
    "window": IntVar(_P + "WINDOW", 16, 2048),
    "label_tolerance": IntVar(_P + "LABEL_TOLERANCE", 0, 100),
    "channels": IntVar(_P + "CHANNELS", 2, 1024),
    "levels": IntVar(_P + "LEVELS", 1, 16),
    "kernel_size": IntVar(_P + "KERNEL_SIZE", 2, 16),
    "dropout": FloatVar(_P + "DROPOUT", 0.0, 0.9),
    "max_steps": IntVar(_P + "MAX_STEPS", 1, 100_000),
    "batch_size": IntVar(_P + "BATCH_SIZE", 1, 65_536),
    "learning_rate": FloatVar(_P + "LEARNING_RATE", 0.0, 1.0, above=True),
    "validation_share": FloatVar(_P + "VALIDATION_SHARE", 0.05, 0.5),
    "train_bars": IntVar(_P + "TRAIN_BARS", 0, 10_000_000),
    "seed": IntVar(_P + "SEED", 0, 2**31 - 1),
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
    "use_gpu": BoolVar(_P + "USE_GPU"),
    "gpu_device": IntVar(_P + "GPU_DEVICE", 0, 255),
    "gpu_memory_fraction": FloatVar(_P + "GPU_MEMORY_FRACTION", 0.0, 1.0, above=True),
}
VARIABLES: tuple[Var, ...] = tuple(FIELDS.values())
