"""Typed progress events a trainer emits from its real training steps, in the worker process.

They cross the process boundary pickled, so they are small frozen dataclasses of plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Phase:
    """The item entered a phase (`training`, `evaluating`, `publishing`, `committing`, ...)."""

    name: str


@dataclass(frozen=True, slots=True)
class Step:
    """One real optimisation step (an optimiser step, an HMM restart, a boosting round)."""

    step: int
    max_steps: int
    train_loss: float | None = None
    valid_loss: float | None = None


@dataclass(frozen=True, slots=True)
class Validation:
    """A validation pass after `step`."""

    step: int
    max_steps: int
    valid_loss: float


ProgressEvent = Phase | Step | Validation
Emit = Callable[[ProgressEvent], None]

#: The `detail` a job event carries for each kind of progress event.
KIND: dict[type, str] = {Phase: "phase", Step: "step", Validation: "validation"}
