"""The training gauges (services/training/metrics.py) follow a real job in a real worker process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.runtime.metrics import REGISTRY
from services.training.jobs import JobState

from .test_jobs import runner_for
from .toy_trainer import ToyTrainer


def gauges(model: str) -> dict[str, float]:
    """name -> value of the training gauges of `model` in the registry now."""
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith("kitrading_training_job") and sample.labels.get("model") == model:
                found[sample.name] = sample.value
    return found


async def test_progress_eta_and_queue_of_a_running_job(tmp_path: Path) -> None:
    trainer = ToyTrainer(tmp_path, ["EURUSD", "GOOG"], steps=200, sleep_s=0.02)
    trainer.model = "toy-metrics"
    runner = runner_for(trainer, tmp_path)
    assert gauges("toy-metrics") == {"kitrading_training_jobs_queued": 0}, "idle: no progress line"
    await runner.start()
    try:
        running = await runner.train(["EURUSD"])
        await runner.train(["GOOG"])
        async for event in runner.watch(running.job_id):
            if event.detail == "step" and event.job.step >= 5:
                break
        now = gauges("toy-metrics")
        assert 0 < now["kitrading_training_job_progress_ratio"] < 1
        assert now["kitrading_training_job_eta_seconds"] > 0
        assert now["kitrading_training_jobs_queued"] == 1
        later = now
        for _ in range(200):  # progress only goes up while the job runs
            await asyncio.sleep(0.02)
            later = gauges("toy-metrics")
            if (
                later.get("kitrading_training_job_progress_ratio", 0)
                > now["kitrading_training_job_progress_ratio"]
            ):
                break
        assert later["kitrading_training_job_progress_ratio"] > now["kitrading_training_job_progress_ratio"]
        for job in runner.active():
            await runner.cancel(job.job_id)
        assert all(j.state is JobState.CANCELLED for j in runner.list_jobs()[0])
        assert gauges("toy-metrics") == {"kitrading_training_jobs_queued": 0}
    finally:
        await runner.stop()
