"""The one thing a model domain writes to train on the shared machinery: a `Trainer`.

In the serving process the job runner asks the trainer which keys exist (`check_keys`, `all_keys`)
and, for each key of a job, to `prepare` a picklable task (reading candles, deciding freshness) or a
`Skip`. The task then runs in the worker process (services.training.worker), which calls the
functions named by the trainer's `WorkerSpec`: `setup` once, `run` per task, emitting typed progress
events (services.training.events) and publishing through the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.training.jobs import TrainingJob
    from services.training.registry import ModelRegistry


@dataclass(frozen=True, slots=True)
class Skip:
    """`prepare`'s answer when a key needs no training (`reason` is shown to the caller)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a worker-side `run` returns: the published version, the steps taken, its metadata.

    `published`: every key the run published a version of (key -> version), when one training
    serves several keys (a global model across symbols); the job runner marks the job's items of
    those keys done with it instead of training them again."""

    version: str
    steps: int
    metadata: dict[str, Any] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How a domain's worker process runs: `module:function` names, imported in the worker only.

    `setup(context) -> state` runs once before the worker reports ready (pay heavy imports there);
    `run(task, state, emit) -> TrainResult` runs per task. `torch`: the worker imports torch to pin
    its threads and select the GPU (services.runtime.gpu); False for models without torch.
    """

    setup: str
    run: str
    torch: bool = True


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What `setup` gets: where models go and the device the worker chose (`accelerator` is "gpu"
    or "cpu"; `devices` is what Lightning wants, e.g. [0], or "auto" on CPU)."""

    models_dir: Path
    accelerator: str = "cpu"
    device_index: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    """A model domain's trainer (the forecast NHITS trainer is services.forecast.trainer)."""

    #: What is trained, e.g. "nhits"; shown in jobs as their `model`.
    model: str
    #: True when each key is a symbol; False for one model trained as a whole (key: its name).
    per_symbol: bool
    registry: ModelRegistry
    worker: WorkerSpec

    def planned_steps(self) -> int:
        """Steps one key's training is planned to take (the progress bar's length)."""
        ...

    async def check_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys, validated and de-duplicated; InvalidArgument / NotFound for a bad one."""
        ...

    async def all_keys(self) -> list[str]:
        """What "train all" trains (the active symbols, or the model's one key)."""
        ...

    async def stale_keys(self) -> list[str]:
        """Keys without a model or with one older than the service's retrain age (the scheduler)."""
        ...

    async def prepare(self, key: str, job: TrainingJob) -> Any:
        """A picklable task for the worker, or `Skip`. Raising fails this key with the message."""
        ...
