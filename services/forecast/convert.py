"""Protos <-> forecast domain types. The servicer's only vocabulary; no logic lives here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pandas as pd
from google.protobuf import timestamp_pb2

from kitrading.common.v1 import job_pb2, market_pb2, training_pb2
from kitrading.forecast.v1 import resources_pb2 as pb
from services.forecast import forecasting, jobs, metrics, registry, retraining, service
from services.forecast.data_source import timeframe_name
from services.runtime.errors import DomainError, InvalidArgument

T = TypeVar("T")

#: Domain trigger names -> the contract's enum.
TRIGGERS: dict[str, training_pb2.TrainingTrigger.ValueType] = {
    "manual": training_pb2.TRAINING_TRIGGER_MANUAL,
    "scheduled": training_pb2.TRAINING_TRIGGER_SCHEDULE,
    "event": training_pb2.TRAINING_TRIGGER_MARKET_EVENT,
}
#: Domain model names in the stored evaluation -> the contract's enum, in the order served.
METHODS: dict[str, pb.ForecastMethod.ValueType] = {
    "NHITS": pb.FORECAST_METHOD_NHITS,
    "Naive": pb.FORECAST_METHOD_NAIVE,
    "SeasonalNaive": pb.FORECAST_METHOD_SEASONAL_NAIVE,
}
LEVELS = (80, 95)


# -- scalars --------------------------------------------------------------------------------------


def timestamp(value: datetime | pd.Timestamp | str | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime (or ISO string) as a Timestamp; None stays None (the field stays unset)."""
    if value is None or (isinstance(value, str) and not value):
        return None
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, datetime) and value.tzinfo is not None:  # the hot path (forecast points)
        ts.FromDatetime(value)
        return ts
    moment = pd.Timestamp(value)
    if moment.tzinfo is None:
        moment = moment.tz_localize(UTC)
    ts.FromDatetime(moment.to_pydatetime().astimezone(UTC))
    return ts


def timeframe_out(name: str | None) -> market_pb2.Timeframe.ValueType:
    if not name:
        return market_pb2.TIMEFRAME_UNSPECIFIED
    try:
        return market_pb2.Timeframe.Value(f"TIMEFRAME_{name.upper()}")
    except ValueError:
        return market_pb2.TIMEFRAME_UNSPECIFIED


def timeframe_in(value: int) -> str | None:
    """The request's timeframe name (`H1`), or None when unset."""
    return timeframe_name(value)


def job_state_out(state: jobs.JobState) -> job_pb2.JobState.ValueType:
    return job_pb2.JobState.Value(f"JOB_STATE_{state.value}")


def job_state_in(value: int) -> jobs.JobState | None:
    if value == job_pb2.JOB_STATE_UNSPECIFIED:
        return None
    return jobs.JobState(job_pb2.JobState.Name(value).removeprefix("JOB_STATE_"))  # type: ignore[arg-type]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- pagination -----------------------------------------------------------------------------------


def page(items: Sequence[T], page_size: int, page_token: str, *, default: int = 100) -> tuple[list[T], str]:
    """One page of `items` and the next token ("" at the end). Tokens are offsets."""
    size = min(page_size or default, 1000)
    try:
        offset = int(page_token or "0")
    except ValueError:
        raise InvalidArgument("page_token", "invalid page token") from None
    if offset < 0:
        raise InvalidArgument("page_token", "invalid page token")
    chunk = list(items[offset : offset + size])
    return chunk, str(offset + size) if offset + size < len(items) else ""


# -- training jobs --------------------------------------------------------------------------------


def symbol_state_out(sp: jobs.SymbolProgress) -> training_pb2.SymbolTrainingState:
    return training_pb2.SymbolTrainingState(
        symbol=sp.symbol,
        state=job_state_out(sp.state),
        step=sp.step,
        max_steps=sp.max_steps,
        train_loss=_float(sp.train_loss),
        val_loss=_float(sp.valid_loss),
        error="" if sp.state in (jobs.JobState.SUCCEEDED, jobs.JobState.RUNNING) else sp.message,
        model_version=sp.version or "",
        start_time=timestamp(sp.start_time),
        end_time=timestamp(sp.end_time),
    )


def job_out(
    job: jobs.TrainingJob, *, background: bool = False, timeframe: str | None = None
) -> training_pb2.TrainingJob:
    """A domain job as the contract's TrainingJob. `background` and `timeframe` are what the
    request that created it asked (the domain does not keep them)."""
    return training_pb2.TrainingJob(
        job_id=job.job_id,
        state=job_state_out(job.state),
        trigger=TRIGGERS.get(job.trigger, training_pb2.TRAINING_TRIGGER_UNSPECIFIED),
        timeframe=timeframe_out(timeframe),
        symbols=[symbol_state_out(s) for s in job.symbols],
        current_symbol=job.current_symbol or "",
        step=job.step,
        max_steps=job.max_steps,
        train_loss=_float(job.train_loss),
        val_loss=_float(job.valid_loss),
        eta_seconds=_float(job.eta_seconds),
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        error=job.error if job.state is not jobs.JobState.SUCCEEDED else "",
        force=job.force,
        background=background,
    )


def job_event_out(
    event: jobs.JobEvent, sequence: int, *, background: bool = False, timeframe: str | None = None
) -> training_pb2.TrainingJobEvent | None:
    """One watch event as the contract's TrainingJobEvent, or None for events the contract has no
    message for (phase changes inside a symbol, the QUEUED -> RUNNING transition of the job)."""
    job = event.job
    now = timestamp(datetime.now(UTC))
    if event.type is jobs.JobEventType.SNAPSHOT:
        return training_pb2.TrainingJobEvent(
            sequence=sequence, time=now, snapshot=job_out(job, background=background, timeframe=timeframe)
        )
    if event.type is jobs.JobEventType.JOB:
        if not job.state.terminal:
            return None
        return training_pb2.TrainingJobEvent(
            sequence=sequence, time=now, result=job_out(job, background=background, timeframe=timeframe)
        )
    if event.symbol is None:
        return None
    sp = next((s for s in job.symbols if s.symbol == event.symbol), None)
    if sp is None:
        return None
    if event.type is jobs.JobEventType.SYMBOL:
        return training_pb2.TrainingJobEvent(
            sequence=sequence, time=now, symbol_transition=symbol_state_out(sp)
        )
    if event.detail not in ("step", "validation"):
        return None
    step = training_pb2.TrainingStep(
        symbol=sp.symbol,
        step=sp.step,
        max_steps=sp.max_steps,
        train_loss=sp.train_loss or 0.0,
        val_loss=_float(sp.valid_loss) if event.detail == "validation" else None,
        job_step=job.step,
        job_max_steps=job.max_steps,
        eta_seconds=_float(job.eta_seconds),
    )
    return training_pb2.TrainingJobEvent(sequence=sequence, time=now, step=step)


def schedule_out(
    scheduler: retraining.RetrainScheduler, *, enabled: bool, interval_days: float
) -> pb.RetrainSchedule:
    last = scheduler.last_check
    following = (
        last + timedelta(seconds=scheduler.interval_s)
        if enabled and last is not None and scheduler.running
        else None
    )
    return pb.RetrainSchedule(
        enabled=enabled,
        interval_days=round(interval_days),
        last_run_time=timestamp(last),
        next_run_time=timestamp(following),
        last_job_id=scheduler.last_job_id or "",
    )


# -- forecasts ------------------------------------------------------------------------------------


def forecast_out(f: forecasting.Forecast) -> pb.Forecast:
    """The forecast as the contract's message. Built field by field (`add()`): ~3x faster than nested
    constructors, and it runs once per symbol of every batch."""
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


def batch_error_out(symbol: str, error: DomainError) -> pb.BatchForecastError:
    return pb.BatchForecastError(symbol=symbol, code=error.code, message=error.message)


# -- models ---------------------------------------------------------------------------------------


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
        symbol=version.symbol,
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
            pb.IntervalCoverage(level=level, coverage=float(values[f"coverage_{level}"] or 0.0))
            for level in LEVELS
            if values.get(f"coverage_{level}") is not None
        ],
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
