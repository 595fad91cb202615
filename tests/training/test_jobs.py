"""The shared job runner with a real (tiny) trainer in a real worker process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kitrading.common.v1 import training_pb2
from kitrading.forecast.v1 import request_response_pb2 as rr
from services.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from services.runtime.jobs import JobState
from services.training.convert import job_out
from services.training.events import Step
from services.training.jobs import JobEventType, JobRunner, RunnerSettings
from services.training.servicer import TrainingRpcs
from services.training.worker import TrainingWorker, WorkerOptions

from .toy_trainer import ToyTrainer


def runner_for(trainer: ToyTrainer, tmp_path: Path) -> JobRunner:
    options = WorkerOptions(spec=trainer.worker, models_dir=trainer.registry.root, nice=0, use_gpu=False)
    return JobRunner(trainer, RunnerSettings(worker=options, worker_idle_s=5.0, max_jobs_kept=50))


@pytest.fixture
async def symbols(tmp_path: Path) -> AsyncIterator[JobRunner]:
    trainer = ToyTrainer(tmp_path, ["EURUSD", "GOOG", "FRESH", "BAD"], fresh=["FRESH"], failing=["BAD"])
    runner = runner_for(trainer, tmp_path)
    await runner.start()
    yield runner
    await runner.stop()


async def test_a_job_runs_each_key_in_the_worker_with_typed_progress(symbols: JobRunner) -> None:
    job = await symbols.train(["EURUSD", "GOOG", "EURUSD"], force=False)
    assert job.keys == ["EURUSD", "GOOG"] and job.model == "toy" and job.max_steps == 12
    events = [e async for e in symbols.watch(job.job_id)]
    final = symbols.get(job.job_id)
    assert final.state is JobState.SUCCEEDED and final.step == final.max_steps == 12
    assert [(i.key, i.state, i.version) for i in final.items] == [
        ("EURUSD", JobState.SUCCEEDED, "v000001"),
        ("GOOG", JobState.SUCCEEDED, "v000001"),
    ]
    steps = [e for e in events if e.detail == "step" and e.key == "EURUSD"]
    assert [e.progress.step for e in steps if isinstance(e.progress, Step)] == [1, 2, 3, 4, 5, 6]
    assert all(e.job.item("EURUSD").train_loss is not None for e in steps)
    assert [e.job.item("GOOG").phase for e in events if e.key == "GOOG" and e.detail == "phase"] == [
        "training",
        "publishing",
    ]
    assert events[0].type is JobEventType.SNAPSHOT and events[-1].type is JobEventType.JOB
    assert symbols.trainer.registry.get("GOOG").metadata["symbol"] == "GOOG"
    assert symbols.worker_info["accelerator"] == "cpu"


async def test_skip_failure_and_unknown_keys(symbols: JobRunner) -> None:
    job = await symbols.train(["FRESH", "BAD", "GOOG"], force=False, background=False)
    states = {i.key: (i.state, i.message) for i in job.items}
    assert states["FRESH"] == (JobState.SKIPPED, "FRESH is fresh")
    assert states["BAD"][0] is JobState.FAILED and "the toy diverged" in states["BAD"][1]
    assert states["GOOG"][0] is JobState.SUCCEEDED
    assert job.state is JobState.FAILED and "1 of 3 failed: BAD" in job.error
    assert job.max_steps == 6 + 3  # GOOG's six; BAD's three taken; FRESH's none
    with pytest.raises(NotFound):
        await symbols.train(["NOPE"])
    with pytest.raises(InvalidArgument) as bad:
        await symbols.train(["not a symbol"])
    assert bad.value.violations[0].field == "symbol"
    forced = await symbols.train(["FRESH"], force=True, background=False)
    assert forced.items[0].state is JobState.SUCCEEDED


async def test_a_queued_twin_is_the_same_job_and_cancel_works_queued_or_running(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["EURUSD", "GOOG"], steps=200, sleep_s=0.02)
    runner = runner_for(trainer, tmp_path)
    await runner.start()
    try:
        running = await runner.train(["EURUSD"])
        queued = await runner.train(["GOOG"])
        again = await runner.train(["GOOG"])
        assert again.job_id == queued.job_id and runner.active_count() == 2
        async for event in runner.watch(running.job_id):
            if event.detail == "step":
                break
        cancelled = await runner.cancel(queued.job_id)
        assert cancelled.state is JobState.CANCELLED and cancelled.items[0].state is JobState.CANCELLED
        stopped = await runner.cancel(running.job_id)
        assert stopped.state is JobState.CANCELLED and stopped.items[0].state is JobState.CANCELLED
        assert (await runner.cancel(running.job_id)).state is JobState.CANCELLED  # idempotent
        assert trainer.registry.trained_keys() == []  # nothing half-written was published
        assert runner.active_count() == 0
    finally:
        await runner.stop()


async def test_models_not_per_symbol_are_keyed_by_name_on_the_wire(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["tcn"], per_symbol=False)
    runner = runner_for(trainer, tmp_path)
    await runner.start()
    try:
        job = await runner.train_all(force=True, background=False)
        message = job_out(job)
        assert message.model == "toy" and message.state == training_pb2.TrainingJob().state + 3
        assert [(s.key, s.symbol, s.model_version) for s in message.symbols] == [("tcn", "", "v000001")]
        assert message.current_symbol == "" and message.current_key == ""
        with pytest.raises(InvalidArgument) as bad:
            await runner.train(["EURUSD"])
        assert bad.value.violations[0].field == "model"
    finally:
        await runner.stop()


async def test_rpcs_list_pages_with_opaque_tokens_and_watch_ends_with_the_result(symbols: JobRunner) -> None:
    rpcs = TrainingRpcs(symbols)
    for symbol in ("EURUSD", "GOOG", "FRESH"):
        await symbols.train([symbol], background=False)
    first = await rpcs.list(rr.ListTrainingJobsRequest(page_size=2), rr.ListTrainingJobsResponse)
    assert len(first.jobs) == 2 and first.next_page_token and not first.next_page_token.isdigit()
    second = await rpcs.list(
        rr.ListTrainingJobsRequest(page_size=2, page_token=first.next_page_token), rr.ListTrainingJobsResponse
    )
    newest_first = [j.symbols[0].key for j in [*first.jobs, *second.jobs]]
    assert newest_first == ["FRESH", "GOOG", "EURUSD"] and second.next_page_token == ""
    only = await rpcs.list(rr.ListTrainingJobsRequest(symbol="GOOG"), rr.ListTrainingJobsResponse)
    assert [j.symbols[0].symbol for j in only.jobs] == ["GOOG"]
    with pytest.raises(InvalidArgument):  # a token issued for another filter
        await symbols_list(rpcs, rr.ListTrainingJobsRequest(symbol="GOOG", page_token=first.next_page_token))
    job = await symbols.train(["EURUSD"])
    events = [
        m
        async for m in rpcs.watch(rr.WatchTrainingJobRequest(job_id=job.job_id), rr.WatchTrainingJobResponse)
    ]
    kinds = [m.event.WhichOneof("event") for m in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "result" and "step" in kinds
    assert [m.event.sequence for m in events] == list(range(1, len(events) + 1))
    got = await rpcs.get(rr.GetTrainingJobRequest(job_id=job.job_id), rr.GetTrainingJobResponse)
    assert got.job.symbols[0].model_version == "v000002"


async def symbols_list(rpcs: TrainingRpcs, request: rr.ListTrainingJobsRequest) -> None:
    await asyncio.wait_for(rpcs.list(request, rr.ListTrainingJobsResponse), 5)


async def test_an_identical_request_while_one_runs_is_that_job(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["EURUSD", "GOOG"], steps=200, sleep_s=0.02)
    runner = runner_for(trainer, tmp_path)
    await runner.start()
    try:
        running = await runner.train(["EURUSD"])
        async for event in runner.watch(running.job_id):
            if event.detail == "step":
                break
        again = await runner.train(["EURUSD"])
        assert again.job_id == running.job_id and runner.active_count() == 1
        everything = [await runner.train_all() for _ in range(20)]  # 20 identical train-all requests
        assert len({j.job_id for j in everything}) == 1 and runner.active_count() == 2
    finally:
        await runner.stop()


async def test_the_queue_has_a_bound_beyond_which_the_answer_is_resource_exhausted(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["EURUSD", "GOOG", "MSFT", "SP500"], steps=200, sleep_s=0.02)
    options = WorkerOptions(spec=trainer.worker, models_dir=trainer.registry.root, nice=0, use_gpu=False)
    runner = JobRunner(trainer, RunnerSettings(worker=options, worker_idle_s=5.0, max_queued_jobs=2))
    await runner.start()
    try:
        first = await runner.train(["EURUSD"])
        async for event in runner.watch(first.job_id):
            if event.detail == "step":
                break
        await runner.train(["GOOG"])
        await runner.train(["MSFT"])
        with pytest.raises(ResourceExhausted) as full:
            await runner.train(["SP500"])
        assert full.value.reason == "TRAINING_QUEUE_FULL"
        assert float(full.value.metadata["retry_after_s"]) >= 1
        assert (await runner.train(["GOOG"])).state is JobState.QUEUED  # a twin is still that job
    finally:
        await runner.stop()


class SlowStartWorker(TrainingWorker):
    """A worker whose start takes as long as a cold torch import."""

    async def start(self) -> dict[str, object]:
        await asyncio.sleep(1.5)
        return await super().start()


async def test_cancel_while_the_worker_starts_is_cancelled_at_once(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["EURUSD"], steps=50, sleep_s=0.01)
    options = WorkerOptions(spec=trainer.worker, models_dir=trainer.registry.root, nice=0, use_gpu=False)
    runner = JobRunner(
        trainer, RunnerSettings(worker=options, worker_idle_s=5.0), worker_factory=SlowStartWorker
    )
    await runner.start()
    try:
        job = await runner.train(["EURUSD"])
        async for event in runner.watch(job.job_id):
            if event.job.state is JobState.RUNNING:
                break
        await asyncio.sleep(0.2)  # the worker is starting
        loop = asyncio.get_running_loop()
        started = loop.time()
        cancelled = await runner.cancel(job.job_id)
        assert loop.time() - started < 0.5
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.items[0].state is JobState.CANCELLED
        await asyncio.sleep(2.5)  # the worker has started by now and must not train
        final = runner.get(job.job_id)
        assert final.state is JobState.CANCELLED and final.step == 0
        assert trainer.registry.trained_keys() == []
        assert runner.active_count() == 0
    finally:
        await runner.stop()


async def test_a_foreground_training_goes_on_when_its_caller_goes_away(tmp_path: Path) -> None:
    """Decided: a client that hangs up on a foreground (background=False) call does not cancel the
    job; it stays listed (ListTrainingJobs, state RUNNING) and is cancelled only by CancelTrainingJob."""
    trainer = ToyTrainer(tmp_path, ["EURUSD"], steps=20, sleep_s=0.01)
    runner = runner_for(trainer, tmp_path)
    await runner.start()
    try:
        caller = asyncio.create_task(runner.train(["EURUSD"], background=False))
        await asyncio.sleep(0.05)
        caller.cancel()  # the gRPC handler of a client that hung up
        with pytest.raises(asyncio.CancelledError):
            await caller
        (job,) = runner.active()
        assert (await runner.wait(job.job_id)).state is JobState.SUCCEEDED
    finally:
        await runner.stop()


async def test_only_a_runner_told_to_clean_removes_staging_leftovers(tmp_path: Path) -> None:
    """An instance without the service's lease starts its runner with `clean=False`: a staging
    directory (maybe the lease holder's publish in progress) stays until the holder cleans."""
    trainer = ToyTrainer(tmp_path, ["EURUSD"])
    leftover = trainer.registry.root / "EURUSD" / ".staging-999999999-abc"  # a pid nobody has
    leftover.mkdir(parents=True)
    runner = runner_for(trainer, tmp_path)
    await runner.start(clean=False)
    try:
        assert leftover.exists()
        await runner.clean_staging()  # the holder's `lead()`
        assert not leftover.exists()
    finally:
        await runner.stop()
