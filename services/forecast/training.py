"""Train, evaluate and publish one symbol's model. Runs inside the training worker process.

`setup` and `run` are the forecast trainer's worker side (services.forecast.trainer names them in
its `WorkerSpec`); `train_symbol` is plain synchronous Python that emits typed progress events from
real Lightning training steps and validation losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from services.forecast.calendar import SEASON_LENGTH, calendar_for
from services.forecast.evaluation import LEVELS, VOL_LOOKBACK, evaluate, make_split
from services.forecast.model import NHITSConfig, NHITSForecaster, library_versions
from services.forecast.registry import forecast_registry
from services.training.events import Emit, Phase, Step, Validation
from services.training.registry import ModelRegistry, ModelVersion
from services.training.trainer import TrainResult, WorkerContext

CANDLE_COLUMNS = ("time", "open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class TrainTask:
    """Everything the worker needs to train one symbol (picklable)."""

    job_id: str
    symbol: str
    asset_class: str
    timeframe: str
    candles: pd.DataFrame
    config: NHITSConfig
    eval_windows: int = 20
    eval_step: int = 0
    calibration_windows: int = 200
    min_train_windows: int = 200
    interval_windows: int = 5000
    baselines: tuple[str, ...] = ()
    baseline_input_size: int = 500
    keep_versions: int = 5
    accelerator: str = "cpu"
    device_index: int | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def prepare_series(candles: pd.DataFrame) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Clean candles into (times (n,) UTC, close (n,) float64), sorted, one bar per time.

    `candles` has a `time` column (or a DatetimeIndex) and a `close` column. Rows with a missing or
    non-positive close are dropped; duplicate times keep the last row.
    """
    frame = candles
    if "time" not in frame.columns:
        frame = frame.rename_axis("time").reset_index()
    times = pd.DatetimeIndex(pd.to_datetime(frame["time"], utc=True))
    close = pd.to_numeric(frame["close"], errors="coerce").to_numpy(dtype=np.float64)
    series = pd.Series(close, index=times)
    series = series[np.isfinite(series.to_numpy()) & (series.to_numpy() > 0)]
    series = series[~series.index.duplicated(keep="last")].sort_index()
    return pd.DatetimeIndex(series.index), series.to_numpy(dtype=np.float64)


def make_progress_callback(emit: Emit, max_steps: int, min_interval_s: float = 0.1) -> Any:
    """A Lightning callback that emits `Step` events from real optimizer steps (throttled to one
    every `min_interval_s`, the first and the last always) and `Validation` events."""
    import pytorch_lightning as pl

    class ProgressCallback(pl.Callback):
        def __init__(self) -> None:
            self.last_emit = 0.0
            self.train_loss: float | None = None
            self.valid_loss: float | None = None

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.train_loss = float(loss.detach().cpu().item() if hasattr(loss, "detach") else loss)
            step = int(trainer.global_step)
            now = time.monotonic()
            if step == 1 or step >= max_steps or now - self.last_emit >= min_interval_s:
                self.last_emit = now
                emit(Step(step, max_steps, self.train_loss, self.valid_loss))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            value = trainer.callback_metrics.get("ptl/val_loss")
            if value is None or trainer.sanity_checking:
                return
            self.valid_loss = float(value)
            emit(Validation(int(trainer.global_step), max_steps, self.valid_loss))

    return ProgressCallback()


def train_symbol(task: TrainTask, registry: ModelRegistry, emit: Emit) -> ModelVersion:
    """Fit NHITS on `task.candles`, evaluate it walk-forward against Naive, SeasonalNaive and
    `task.baselines`, stage the files and publish them as the symbol's new current version."""
    started = time.monotonic()
    times, y = prepare_series(task.candles)
    cfg = task.config
    split = make_split(
        len(y),
        cfg.h,
        cfg.input_size,
        windows=task.eval_windows,
        step=task.eval_step,
        calibration=task.calibration_windows,
        min_train=task.min_train_windows,
    )
    emit(Phase("training"))
    model = NHITSForecaster(cfg, accelerator=task.accelerator, device=task.device_index)
    callback = make_progress_callback(emit, cfg.max_steps)
    model.fit(
        y[: split.train_end + split.calibration_len], val_size=split.calibration_len, callbacks=[callback]
    )
    trained_s = time.monotonic() - started

    emit(Phase("evaluating"))
    season = SEASON_LENGTH.get(task.timeframe, 1)
    result = evaluate(
        y,
        split,
        model.predict_windows,
        season_length=season,
        interval_windows=task.interval_windows,
        baselines=task.baselines,
        baseline_input_size=task.baseline_input_size,
    )

    staged = registry.stage(task.symbol)
    try:
        emit(Phase("publishing"))
        model.save(staged.path)
        fit = model.fit_
        metadata = {
            "symbol": task.symbol,
            "asset_class": task.asset_class,
            "timeframe": task.timeframe,
            "calendar": calendar_for(task.asset_class).name,
            "job_id": task.job_id,
            "created_at": datetime.now(UTC).isoformat(),
            "data": {
                "first_time": times[0].isoformat(),
                "last_time": times[-1].isoformat(),
                "bars": len(y),
                "train_bars": split.train_end,
                "train_end_time": times[split.train_end - 1].isoformat(),
                "calibration_bars": split.calibration_len,
                "test_start_time": times[int(split.test_origins[0])].isoformat(),
                "test_bars": split.test_len,
            },
            "hyperparameters": cfg.to_dict(),
            "training": {
                "steps": fit.steps,
                "max_steps": cfg.max_steps,
                "train_loss": fit.train_loss,
                "valid_loss": fit.valid_loss,
                "duration_s": round(trained_s, 3),
                "accelerator": task.accelerator,
            },
            "intervals": {
                "method": (
                    "conformal per horizon step on every fully observed earlier origin (at most "
                    "interval_windows), |error| / (last price x recent volatility)"
                ),
                "volatility_lookback": VOL_LOOKBACK,
                "levels": list(LEVELS),
                "quantiles": {str(k): [float(x) for x in v] for k, v in result.serving_quantiles.items()},
                "windows": result.serving_windows,
                "interval_windows": task.interval_windows,
            },
            "evaluation": {
                "method": "walk-forward on the held-out tail, same windows for every model",
                "windows": len(split.test_origins),
                "step": split.step,
                "h": cfg.h,
                "season_length": result.season_length,
                "calibration_windows": result.calibration_windows,
                "baseline_input_size": task.baseline_input_size,
                "baseline_seconds": round(result.baseline_seconds, 3),
                "interval_methods": result.interval_methods,
                "models": result.metrics,
            },
            "libraries": library_versions(),
            **task.extra_metadata,
        }
        emit(Phase("committing"))
        version = registry.publish(staged, metadata)
    except BaseException:
        registry.discard(staged)
        raise
    registry.prune(task.symbol, task.keep_versions)
    return version


# ---- the worker side of services.forecast.trainer ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerState:
    registry: ModelRegistry
    context: WorkerContext


def setup(context: WorkerContext) -> _WorkerState:
    """Pay neuralforecast's import once, before the worker reports ready."""
    from services.forecast.model import quiet_lightning

    with quiet_lightning():
        import neuralforecast  # noqa: F401
    return _WorkerState(forecast_registry(context.models_dir), context)


def run(task: TrainTask, state: _WorkerState, emit: Emit) -> TrainResult:
    """Train one symbol on the device the worker chose."""
    from dataclasses import replace

    from services.forecast.model import quiet_lightning

    task = replace(task, accelerator=state.context.accelerator, device_index=state.context.device_index)
    with quiet_lightning():
        version = train_symbol(task, state.registry, emit)
    return TrainResult(version.version, int(version.metadata["training"]["steps"]), version.metadata)
