"""Prometheus gauges of the training jobs, read from every `JobRunner` of the process at scrape time.

- `kitrading_training_job_progress_ratio{model}`: steps done / steps planned of the running job
  (0..1), absent while none runs;
- `kitrading_training_job_eta_seconds{model}`: the running job's estimated seconds left, absent
  until its first steps are seen;
- `kitrading_training_jobs_queued{model}`: jobs waiting behind it.

(`kitrading_training_jobs_active{service}`, queued + running, is the runtime's: services/runtime/app.py.)
The metrics server answers in its own thread while the event loop changes the jobs, so the reading
takes plain attribute values and one atomic copy of the job table, never a deep copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.runtime.jobs import JobState
from services.runtime.metrics import REGISTRY

if TYPE_CHECKING:
    from services.training.jobs import JobRunner

_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


def track(runner: JobRunner) -> None:
    """Report `runner`'s jobs from now on (until it is garbage-collected)."""
    _RUNNERS.add(runner)


class TrainingCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "kitrading_training_job_progress_ratio",
                "Steps done / steps planned of the running training job (0..1).",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "kitrading_training_job_eta_seconds",
                "Estimated seconds left of the running training job.",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "kitrading_training_jobs_queued", "Training jobs waiting to run.", labels=["model"]
            ),
        )

    def collect(self) -> Iterator[Metric]:
        # One sample per model even where several runners train the same model (tests; a process
        # normally has one): queued jobs add up, the first running job is the one reported.
        queued: dict[str, int] = {}
        running: dict[str, tuple[float, float | None]] = {}
        for runner in list(_RUNNERS):
            model = runner.trainer.model
            jobs = list(runner._jobs.values())  # one atomic copy; the loop may be changing the table
            queued[model] = queued.get(model, 0) + sum(1 for job in jobs if job.state is JobState.QUEUED)
            running_id = runner._running
            job = runner._jobs.get(running_id) if running_id is not None else None
            if job is None or job.state is not JobState.RUNNING or model in running:
                continue
            step, max_steps = job.step, job.max_steps
            running[model] = (min(1.0, step / max_steps) if max_steps > 0 else 0.0, job.eta_seconds)
        progress, eta, waiting = self._families()
        for model, count in sorted(queued.items()):
            waiting.add_metric([model], count)
        for model, (ratio, seconds) in sorted(running.items()):
            progress.add_metric([model], ratio)
            if seconds is not None:
                eta.add_metric([model], seconds)
        yield from (progress, eta, waiting)


REGISTRY.register(TrainingCollector())
