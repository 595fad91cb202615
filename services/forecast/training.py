"""Train, evaluate and publish one symbol's model, or one global model across the symbols of a
timeframe. Runs inside the training worker process.

`setup` and `run` are the forecast trainer's worker side (services.forecast.trainer names them in
its `WorkerSpec`); `train_symbol` and `train_global` are plain synchronous Python that emit typed
progress events from real Lightning training steps and validation losses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd

from services.forecast.calendar import SEASON_LENGTH, calendar_for
from services.forecast.evaluation import (
    LEVELS,
    EvaluationResult,
    Split,
    compare_windows,
    evaluate,
    make_split,
)
from services.forecast.model import NHITSConfig, NHITSForecaster, library_versions
from services.forecast.registry import forecast_registry
from services.runtime.errors import FailedPrecondition, NotFound
from services.training.events import Emit, Phase, Step, Validation
from services.training.registry import ModelRegistry, ModelVersion
from services.training.trainer import TrainResult, WorkerContext

CANDLE_COLUMNS = ("time", "open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class SeriesInput:
    """One symbol's candles (picklable)."""

    symbol: str
    asset_class: str
    candles: pd.DataFrame


@dataclass(frozen=True, slots=True)
class TrainTask:
    """Everything the worker needs to train one symbol (picklable).

    `scope` "global": train one NHITS across `members` (the timeframe's active symbols, this
    symbol among them) and publish a version for each (`train_global`)."""

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
    scope: str = "symbol"
    members: tuple[SeriesInput, ...] = ()

    @property
    def own_series(self) -> SeriesInput:
        return SeriesInput(self.symbol, self.asset_class, self.candles)


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


class SplitPlan(Protocol):
    """The walk-forward layout's settings (a `TrainTask`, or `ForecastSettings`)."""

    @property
    def eval_windows(self) -> int: ...
    @property
    def eval_step(self) -> int: ...
    @property
    def calibration_windows(self) -> int: ...
    @property
    def min_train_windows(self) -> int: ...


def split_for(n: int, cfg: NHITSConfig, plan: SplitPlan) -> Split:
    """The walk-forward split of a series of `n` bars for a model of `cfg` under `plan`."""
    return make_split(
        n,
        cfg.h,
        cfg.input_size,
        windows=plan.eval_windows,
        step=plan.eval_step,
        calibration=plan.calibration_windows,
        min_train=plan.min_train_windows,
    )


def _split(task: TrainTask, n: int) -> Split:
    return split_for(n, task.config, task)


def _evaluate(task: TrainTask, y: np.ndarray, split: Split, model: NHITSForecaster) -> EvaluationResult:
    return evaluate(
        y,
        split,
        model.predict_windows,
        season_length=SEASON_LENGTH.get(task.timeframe, 1),
        interval_windows=task.interval_windows,
        baselines=task.baselines,
        baseline_input_size=task.baseline_input_size,
    )


def _metadata(
    task: TrainTask,
    series: SeriesInput,
    times: pd.DatetimeIndex,
    y: np.ndarray,
    split: Split,
    model: NHITSForecaster,
    result: EvaluationResult,
    trained_s: float,
) -> dict[str, Any]:
    """What is stored with a version: the data, split, training, intervals and evaluation."""
    cfg = task.config
    fit = model.fit_
    return {
        "symbol": series.symbol,
        "asset_class": series.asset_class,
        "timeframe": task.timeframe,
        "calendar": calendar_for(series.asset_class).name,
        "job_id": task.job_id,
        "created_at": datetime.now(UTC).isoformat(),
        "scope": "symbol",
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
                "interval_windows), |error| / (last price x blended short and long volatility)"
            ),
            **result.scale.to_metadata(),
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
            "nhits_window_mae": list(result.window_mae),
        },
        "libraries": library_versions(),
        **task.extra_metadata,
    }


def _publish(
    task: TrainTask,
    registry: ModelRegistry,
    symbol: str,
    model: NHITSForecaster,
    metadata: dict[str, Any],
    emit: Emit,
) -> ModelVersion:
    """Stage, write and publish one version; "publishing" is reported once the staging directory
    exists, "committing" before the version is made visible."""
    staged = registry.stage(symbol)
    try:
        emit(Phase("publishing"))
        model.save(staged.path)
        emit(Phase("committing"))
        version = registry.publish(staged, metadata)
    except BaseException:
        registry.discard(staged)
        raise
    registry.prune(symbol, task.keep_versions)
    return version


def train_symbol(task: TrainTask, registry: ModelRegistry, emit: Emit) -> ModelVersion:
    """Fit NHITS on `task.candles`, evaluate it walk-forward against Naive, SeasonalNaive and
    `task.baselines`, stage the files and publish them as the symbol's new current version."""
    started = time.monotonic()
    times, y = prepare_series(task.candles)
    cfg = task.config
    split = _split(task, len(y))
    emit(Phase("training"))
    model = NHITSForecaster(cfg, accelerator=task.accelerator, device=task.device_index)
    callback = make_progress_callback(emit, cfg.max_steps)
    model.fit(
        y[: split.train_end + split.calibration_len], val_size=split.calibration_len, callbacks=[callback]
    )
    trained_s = time.monotonic() - started

    emit(Phase("evaluating"))
    result = _evaluate(task, y, split, model)
    metadata = _metadata(task, task.own_series, times, y, split, model, result, trained_s)
    return _publish(task, registry, task.symbol, model, metadata, emit)


def global_training_inputs(ys: Sequence[np.ndarray], splits: Sequence[Split]) -> tuple[list[np.ndarray], int]:
    """What the global model trains on: (series, val_size).

    Each series is cut so that it ends `val_size` bars after its own `train_end`, where `val_size`
    is the shortest calibration segment of all: the model trains on exactly each series' training
    bars (`y[:train_end]`, as its per-symbol model does), neuralforecast's validation loss is taken
    on the next `val_size` bars, and no bar of any series' test period (from its first test origin)
    is in the input at all.
    """
    val_size = min(s.calibration_len for s in splits)
    return [y[: s.train_end + val_size] for y, s in zip(ys, splits, strict=True)], val_size


def _vs_symbol_model(
    registry: ModelRegistry, symbol: str, metadata: dict[str, Any]
) -> dict[str, float | str | None]:
    """DM of the symbol's current per-symbol NHITS against the global one on the same test windows
    (empty when it has none, or one evaluated on other windows)."""
    try:
        current = registry.get(symbol)
    except (FailedPrecondition, NotFound):
        return {}
    meta = current.metadata
    other = meta.get("evaluation", {})
    ours = metadata["evaluation"]
    same = (
        meta.get("scope", "symbol") == "symbol"
        and meta.get("data", {}).get("test_start_time") == metadata["data"]["test_start_time"]
        and meta.get("data", {}).get("last_time") == metadata["data"]["last_time"]
        and (other.get("windows"), other.get("step"), other.get("h"))
        == (ours["windows"], ours["step"], ours["h"])
        and len(other.get("nhits_window_mae", ())) == ours["windows"]
    )
    if not same:
        return {}
    dm = compare_windows(ours["nhits_window_mae"], other["nhits_window_mae"], ours["h"], ours["step"])
    symbol_mae = other.get("models", {}).get("NHITS", {}).get("mae")
    return {
        "symbol_nhits_version": current.version,
        "symbol_nhits_mae": symbol_mae,
        "dm_statistic_vs_symbol_nhits": dm["dm_statistic"],
        "dm_p_value_vs_symbol_nhits": dm["dm_p_value"],
    }


def train_global(task: TrainTask, registry: ModelRegistry, emit: Emit) -> dict[str, ModelVersion]:
    """Fit one NHITS across `task.members` (every active symbol of the timeframe), evaluate it on
    each series' own walk-forward windows (the same split as that series' per-symbol model) and
    publish a version per member: the same weights, that series' intervals and evaluation, and a
    `global` block naming the shared model. Returns {symbol: version}.

    A member whose series is too short for the split is left out (named in the metadata) unless it
    is the task's own symbol, which then fails the task.
    """
    started = time.monotonic()
    cfg = task.config
    members: list[tuple[SeriesInput, pd.DatetimeIndex, np.ndarray, Split]] = []
    excluded: dict[str, str] = {}
    for member in task.members:
        times, y = prepare_series(member.candles)
        try:
            split = _split(task, len(y))
        except ValueError as exc:
            if member.symbol == task.symbol:
                raise
            excluded[member.symbol] = str(exc)
            continue
        members.append((member, times, y, split))
    series, val_size = global_training_inputs([m[2] for m in members], [m[3] for m in members])
    emit(Phase("training"))
    model = NHITSForecaster(cfg, accelerator=task.accelerator, device=task.device_index)
    callback = make_progress_callback(emit, cfg.max_steps)
    model.fit_many(series, val_size=val_size, callbacks=[callback])
    trained_s = time.monotonic() - started

    model_id = uuid.uuid4().hex[:16]
    shared = {
        "model_id": model_id,
        "timeframe": task.timeframe,
        "symbols": [m[0].symbol for m in members],
        "excluded": excluded,
        "val_size": val_size,
        "train_bars": {m[0].symbol: m[3].train_end for m in members},
        "scaling": f"per input window ({cfg.scaler_type} scaler), no per-series statistics",
    }
    emit(Phase("evaluating"))
    results = [(m, _evaluate(task, m[2], m[3], model)) for m in members]
    published: dict[str, ModelVersion] = {}
    for (member, times, y, split), result in results:
        metadata = _metadata(task, member, times, y, split, model, result, trained_s)
        metadata["scope"] = "global"
        metadata["global"] = shared
        comparison = _vs_symbol_model(registry, member.symbol, metadata)
        metadata["evaluation"]["models"]["NHITS"].update(comparison)
        published[member.symbol] = _publish(task, registry, member.symbol, model, metadata, emit)
    return published


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
        if task.scope == "global":
            versions = train_global(task, state.registry, emit)
            version = versions[task.symbol]
            published = {symbol: v.version for symbol, v in versions.items()}
        else:
            version = train_symbol(task, state.registry, emit)
            published = {}
    return TrainResult(
        version.version, int(version.metadata["training"]["steps"]), version.metadata, published
    )
