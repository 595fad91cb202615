"""A real, tiny trainer for the shared machinery's tests: plain Python, no torch, fast.

It "fits" the mean of a few numbers in `steps` real loop iterations in the worker process,
emitting typed progress events, and publishes the result through the registry like any model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime.errors import NotFound
from services.training.events import Emit, Phase, Step, Validation
from services.training.jobs import TrainingJob
from services.training.registry import MODEL_KEY, SYMBOL_KEY, KeyRule, ModelRegistry
from services.training.trainer import Skip, TrainResult, WorkerContext, WorkerSpec


@dataclass(frozen=True, slots=True)
class ToyTask:
    key: str
    values: list[float]
    steps: int
    sleep_s: float
    fail: bool = False
    per_symbol: bool = True


def setup(context: WorkerContext) -> Path:
    return context.models_dir


def run(task: ToyTask, models_dir: Path, emit: Emit) -> TrainResult:
    registry = ModelRegistry(models_dir, key=SYMBOL_KEY if task.per_symbol else MODEL_KEY)
    emit(Phase("training"))
    estimate = 0.0
    for step in range(1, task.steps + 1):
        time.sleep(task.sleep_s)
        target = sum(task.values) / len(task.values)
        estimate += (target - estimate) * 0.5
        emit(Step(step, task.steps, train_loss=abs(target - estimate)))
        if task.fail and step == task.steps // 2:
            raise ValueError("the toy diverged")
    emit(Validation(task.steps, task.steps, valid_loss=abs(target - estimate)))
    emit(Phase("publishing"))
    staged = registry.stage(task.key)
    (staged.path / "model.json").write_text(json.dumps({"mean": estimate}))
    version = registry.publish(staged, {"training": {"steps": task.steps}})
    return TrainResult(version.version, task.steps, version.metadata)


class ToyTrainer:
    """Keys are the names in `known`; a key in `fresh` is skipped unless forced, one in `failing`
    raises in the worker."""

    worker = WorkerSpec(
        setup="tests.training.toy_trainer:setup", run="tests.training.toy_trainer:run", torch=False
    )

    def __init__(
        self,
        root: Path,
        known: Sequence[str],
        *,
        per_symbol: bool = True,
        steps: int = 6,
        sleep_s: float = 0.0,
        fresh: Sequence[str] = (),
        failing: Sequence[str] = (),
    ) -> None:
        rule: KeyRule = SYMBOL_KEY if per_symbol else MODEL_KEY
        self.model = "toy"
        self.per_symbol = per_symbol
        self.registry = ModelRegistry(root, key=rule)
        self.known = list(known)
        self.steps = steps
        self.sleep_s = sleep_s
        self.fresh = set(fresh)
        self.failing = set(failing)

    def planned_steps(self) -> int:
        return self.steps

    async def check_keys(self, keys: Sequence[str]) -> list[str]:
        names = list(dict.fromkeys(self.registry.check_key(k) for k in keys))
        for name in names:
            if name not in self.known:
                raise NotFound(f"{name} not found")
        return names

    async def all_keys(self) -> list[str]:
        return list(self.known)

    async def stale_keys(self) -> list[str]:
        return [k for k in self.known if k not in self.registry.trained_keys()]

    async def prepare(self, key: str, job: TrainingJob) -> Any:
        if key in self.fresh and not job.force:
            return Skip(f"{key} is fresh")
        return ToyTask(key, [1.0, 2.0, 3.0], self.steps, self.sleep_s, key in self.failing, self.per_symbol)
