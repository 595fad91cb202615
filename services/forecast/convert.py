"""Protos <-> forecast domain types. The servicer's only vocabulary; no logic lives here."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kitrading.forecast.v1 import request_response_pb2 as rr
from kitrading.forecast.v1 import resources_pb2 as pb
from services.forecast import forecasting, metrics, service
from services.runtime.errors import DomainError
from services.runtime.protos import timestamp
from services.training import registry, retraining
from services.training.convert import job_out, timeframe_out
from services.training.data_client import timeframe_name

#: Domain model names in the stored evaluation -> the contract's enum, in the order served.
METHODS: dict[str, pb.ForecastMethod.ValueType] = {
    "NHITS": pb.FORECAST_METHOD_NHITS,
    "Naive": pb.FORECAST_METHOD_NAIVE,
    "SeasonalNaive": pb.FORECAST_METHOD_SEASONAL_NAIVE,
    "AutoETS": pb.FORECAST_METHOD_AUTO_ETS,
    "AutoTheta": pb.FORECAST_METHOD_AUTO_THETA,
    "AutoARIMA": pb.FORECAST_METHOD_AUTO_ARIMA,
}
LEVELS = (80, 95)
#: Converted forecasts kept for reuse (keyed by symbol, version, last candle, computation, horizon).
_REMEMBERED_MESSAGES = 2048
_messages: OrderedDict[tuple[Any, ...], pb.Forecast] = OrderedDict()


# -- scalars --------------------------------------------------------------------------------------


def timeframe_in(value: int) -> str | None:
    """The request's timeframe name (`H1`), or None when unset."""
    return timeframe_name(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- retraining -----------------------------------------------------------------------------------


def training_progress_out(
    progress: service.TrainingProgress, interval_days: float
) -> rr.GetTrainingProgressResponse:
    return rr.GetTrainingProgressResponse(
        training=bool(progress.active),
        active_jobs=[job_out(j) for j in progress.active],
        latest_job=job_out(progress.latest_ended) if progress.latest_ended else None,
        schedule=schedule_out(
            progress.scheduler, enabled=progress.schedule_enabled, interval_days=interval_days
        ),
    )


def schedule_out(
    scheduler: retraining.RetrainScheduler, *, enabled: bool, interval_days: float
) -> pb.RetrainSchedule:
    last = scheduler.last_check  # the last check that succeeded: a failed one is not a run
    following = scheduler.next_check if enabled and scheduler.running else None
    return pb.RetrainSchedule(
        enabled=enabled,
        interval_days=round(interval_days),
        last_run_time=timestamp(last),
        next_run_time=timestamp(following),
        last_job_id=scheduler.last_job_id or "",
    )


# -- forecasts ------------------------------------------------------------------------------------


def forecast_out(f: forecasting.Forecast) -> pb.Forecast:
    """The forecast as the contract's message, built field by field (`add()`, faster than nested
    constructors): it runs once per symbol of every batch."""
    out = pb.Forecast(
        symbol=f.symbol,
        timeframe=timeframe_out(f.timeframe),
        horizon=f.horizon,
        method=pb.FORECAST_METHOD_NHITS,
        model_version=f.model_version,
        last_candle_time=timestamp(f.last_candle_time),
        cached=f.cached,
        create_time=timestamp(f.generated_at),
    )
    intervals = sorted(f.intervals, key=lambda i: i.level)  # narrowest first
    bands = [(i.level, i.lower, i.upper) for i in intervals]
    points = out.points
    for k in range(f.horizon):
        point = points.add()
        moment = f.times[k]
        point.time.seconds = int(moment.timestamp())
        point.time.nanos = moment.microsecond * 1000
        point.value = f.point[k]
        for level, lower, upper in bands:
            band = point.intervals.add()
            band.level = level
            band.lower = lower[k]
            band.upper = upper[k]
    return out


def forecast_into(forecast: forecasting.Forecast, into: pb.Forecast) -> None:
    """Write `forecast` into `into`, reusing the message of an identical earlier answer, so a
    forecast-cache hit converts nothing (a copy instead of building every point)."""
    key = (
        forecast.symbol,
        forecast.model_version,
        forecast.last_candle_time,
        forecast.generated_at,
        forecast.horizon,
    )
    message = _messages.get(key)
    if message is None:
        message = _messages[key] = forecast_out(forecast)
        while len(_messages) > _REMEMBERED_MESSAGES:
            _messages.popitem(last=False)
    else:
        _messages.move_to_end(key)
    into.CopyFrom(message)
    into.cached = forecast.cached


def batch_error_out(symbol: str, error: DomainError) -> pb.BatchForecastError:
    return pb.BatchForecastError(symbol=symbol, code=error.code, message=error.message)


def batch_out(
    symbols: Sequence[str], results: Sequence[forecasting.Forecast | DomainError]
) -> rr.BatchGetForecastsResponse:
    response = rr.BatchGetForecastsResponse()
    for symbol, result in zip(symbols, results, strict=True):
        if isinstance(result, DomainError):
            response.errors.append(batch_error_out(symbol, result))
        else:
            forecast_into(result, response.forecasts.add())
    return response


# -- models ---------------------------------------------------------------------------------------


def performance_order(perf: service.ModelPerformance) -> list[Any]:
    """The page key of performance rows (by symbol, newest version first)."""
    return [perf.symbol, -int(perf.version[1:])]


def _size(version: registry.ModelVersion) -> int:
    try:
        return sum(p.stat().st_size for p in version.path.iterdir() if p.is_file())
    except OSError:  # pruned meanwhile
        return 0


def version_out(version: registry.ModelVersion) -> pb.ModelVersion:
    meta = version.metadata
    training = meta.get("training", {})
    hyper = meta.get("hyperparameters", {})
    return pb.ModelVersion(
        symbol=version.key,
        timeframe=timeframe_out(meta.get("timeframe")),
        version=version.version,
        active=version.current,
        create_time=timestamp(version.created_at),
        job_id=str(meta.get("job_id", "")),
        steps=int(training.get("steps", 0) or 0),
        train_loss=_float(training.get("train_loss")),
        val_loss=_float(training.get("valid_loss")),
        horizon=int(hyper.get("h", 0) or 0),
        input_size=int(hyper.get("input_size", 0) or 0),
        size_bytes=_size(version),
    )


def method_metrics_out(name: str, values: dict[str, float | None]) -> pb.MethodMetrics:
    return pb.MethodMetrics(
        method=METHODS[name],
        mae=values.get("mae") or 0.0,
        rmse=values.get("rmse") or 0.0,
        mase=values.get("mase") or 0.0,
        # 0 where undefined: Naive never predicts a direction.
        directional_accuracy=values.get("directional_accuracy") or 0.0,
        interval_coverage=[
            pb.IntervalCoverage(
                level=level,
                coverage=float(values[f"coverage_{level}"] or 0.0),
                width=float(values.get(f"width_{level}") or 0.0),
                interval_score=float(values.get(f"interval_score_{level}") or 0.0),
            )
            for level in LEVELS
            if values.get(f"coverage_{level}") is not None
        ],
        dm_statistic_vs_nhits=_float(values.get("dm_statistic_vs_nhits")),
        dm_p_value_vs_nhits=_float(values.get("dm_p_value_vs_nhits")),
        directional_p_value=_float(values.get("directional_p_value")),
    )


def performance_out(perf: service.ModelPerformance) -> pb.ModelPerformance:
    evaluation = perf.evaluation
    h = int(evaluation.get("h", 0) or 0)
    models = perf.models
    return pb.ModelPerformance(
        symbol=perf.symbol,
        timeframe=timeframe_out(perf.timeframe),
        model_version=perf.version,
        horizon=h,
        evaluate_time=timestamp(perf.created_at),
        test_start_time=timestamp(perf.data.get("test_start_time")),
        test_end_time=timestamp(perf.data.get("last_time")),
        samples=int(evaluation.get("windows", 0) or 0) * h,
        metrics=[method_metrics_out(name, models[name]) for name in METHODS if name in models],
    )


# -- automation and metrics -----------------------------------------------------------------------


def monitor_out(status: retraining.EventMonitorStatus, *, debounce_s: float) -> pb.EventMonitor:
    """The event monitor. It watches every active symbol (`symbols` empty) and debounces events:
    `cooldown_seconds` carries the debounce (KITRADING_FORECAST_EVENT_DEBOUNCE_SECONDS)."""
    return pb.EventMonitor(
        running=status.running,
        start_time=timestamp(status.started_at) if status.running else None,
        cooldown_seconds=round(debounce_s),
        events_seen=status.events_seen,
        retrains_started=status.retrains_triggered,
        last_job_id=status.last_job_id or "",
        last_error=status.last_error,
    )


def system_metrics_out(
    m: metrics.SystemMetrics, *, use_gpu: bool, gpu_memory_fraction: float
) -> pb.SystemMetrics:
    total = max(m.memory_total_bytes, 1)
    return pb.SystemMetrics(
        cpu_percent=m.cpu_percent,
        cpu_count=m.cpu_count,
        memory_used_bytes=m.memory_used_bytes,
        memory_total_bytes=m.memory_total_bytes,
        memory_percent=100.0 * m.memory_used_bytes / total,
        process_memory_bytes=m.server.rss_bytes,
        active_training_jobs=m.active_training_jobs,
        gpu_available=m.gpu_available and use_gpu,
        gpus=[
            pb.GpuMetrics(
                index=g.index,
                name=g.name,
                utilization_percent=g.utilization_percent,
                memory_used_bytes=g.memory_used_bytes,
                memory_total_bytes=g.memory_total_bytes,
                memory_fraction_limit=gpu_memory_fraction,
            )
            for g in m.gpus
        ],
        collect_time=timestamp(datetime.now(UTC)),
    )
