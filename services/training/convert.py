"""Training jobs <-> kitrading.common.v1 (TrainingJob, SymbolTrainingState, TrainingJobEvent)."""

from __future__ import annotations

from datetime import UTC, datetime

from kitrading.common.v1 import market_pb2, training_pb2
from services.runtime.jobs import JobState
from services.runtime.protos import job_state_out, timestamp
from services.training.jobs import ItemProgress, JobEvent, JobEventType, TrainingJob

#: Domain trigger names -> the contract's enum.
TRIGGERS: dict[str, training_pb2.TrainingTrigger.ValueType] = {
    "manual": training_pb2.TRAINING_TRIGGER_MANUAL,
    "scheduled": training_pb2.TRAINING_TRIGGER_SCHEDULE,
    "event": training_pb2.TRAINING_TRIGGER_MARKET_EVENT,
    "first start": training_pb2.TRAINING_TRIGGER_FIRST_START,
}


def timeframe_out(name: str | None) -> market_pb2.Timeframe.ValueType:
    if not name:
        return market_pb2.TIMEFRAME_UNSPECIFIED
    try:
        return market_pb2.Timeframe.Value(f"TIMEFRAME_{name.upper()}")
    except ValueError:
        return market_pb2.TIMEFRAME_UNSPECIFIED


def item_out(item: ItemProgress, per_symbol: bool) -> training_pb2.SymbolTrainingState:
    return training_pb2.SymbolTrainingState(
        symbol=item.key if per_symbol else "",
        key=item.key,
        state=job_state_out(item.state),
        phase=item.phase if item.state is JobState.RUNNING else "",
        step=item.step,
        max_steps=item.max_steps,
        train_loss=item.train_loss,
        val_loss=item.valid_loss,
        error="" if item.state in (JobState.SUCCEEDED, JobState.RUNNING) else item.message,
        model_version=item.version or "",
        start_time=timestamp(item.start_time),
        end_time=timestamp(item.end_time),
    )


def job_out(job: TrainingJob) -> training_pb2.TrainingJob:
    current = job.current or ""
    return training_pb2.TrainingJob(
        job_id=job.job_id,
        model=job.model,
        state=job_state_out(job.state),
        trigger=TRIGGERS.get(job.trigger, training_pb2.TRAINING_TRIGGER_UNSPECIFIED),
        timeframe=timeframe_out(job.timeframe),
        symbols=[item_out(i, job.per_symbol) for i in job.items],
        current_symbol=current if job.per_symbol else "",
        current_key=current,
        step=job.step,
        max_steps=job.max_steps,
        train_loss=job.train_loss,
        val_loss=job.valid_loss,
        eta_seconds=job.eta_seconds,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        error=job.error if job.state is not JobState.SUCCEEDED else "",
        force=job.force,
        background=job.background,
    )


def job_event_out(event: JobEvent, sequence: int) -> training_pb2.TrainingJobEvent | None:
    """One watch event as the contract's TrainingJobEvent, or None for events the contract has no
    message for (phase changes inside an item, the QUEUED -> RUNNING transition of the job)."""
    job = event.job
    now = timestamp(datetime.now(UTC))
    if event.type is JobEventType.SNAPSHOT:
        return training_pb2.TrainingJobEvent(sequence=sequence, time=now, snapshot=job_out(job))
    if event.type is JobEventType.JOB:
        if not job.state.terminal:
            return None
        return training_pb2.TrainingJobEvent(sequence=sequence, time=now, result=job_out(job))
    item = next((i for i in job.items if i.key == event.key), None)
    if item is None:
        return None
    if event.type is JobEventType.ITEM:
        return training_pb2.TrainingJobEvent(
            sequence=sequence, time=now, symbol_transition=item_out(item, job.per_symbol)
        )
    if event.detail not in ("step", "validation"):
        return None
    step = training_pb2.TrainingStep(
        symbol=item.key if job.per_symbol else "",
        key=item.key,
        step=item.step,
        max_steps=item.max_steps,
        train_loss=item.train_loss or 0.0,
        val_loss=item.valid_loss if event.detail == "validation" else None,
        job_step=job.step,
        job_max_steps=job.max_steps,
        eta_seconds=job.eta_seconds,
    )
    return training_pb2.TrainingJobEvent(sequence=sequence, time=now, step=step)
