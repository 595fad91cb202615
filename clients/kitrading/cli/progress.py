"""Progress displays on Rich: a training job's watch stream (`JobProgress`) and `rag add`'s files.

On a terminal the bars redraw in place (Rich's Live display) and lines print above them. Anywhere else
(pipes, log files, tests) nothing redraws: the same rows are printed as plain lines, at most every
`PLAIN_EVERY_S` seconds and whenever a bar completes, and the final state once at the end.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Self, TextIO

from kitrading.cli.common import STATE_STYLES, console, emit, enum_label, live
from kitrading.common.v1 import job_pb2, training_pb2

if TYPE_CHECKING:
    from rich.progress import ProgressColumn, TaskID

#: A plain progress line at most this often when the output is not a terminal.
PLAIN_EVERY_S = 0.5
BAR_WIDTH = 32
#: The name column is at least this wide (as the symbol lines: `GOOG       succeeded`).
NAME_WIDTH = 10


def job_state(value: int) -> str:
    """`JOB_STATE_SUCCEEDED` -> `succeeded`."""
    return enum_label(job_pb2.JobState.Name(value), "JOB_STATE_").lower()  # type: ignore[arg-type]


class _Rows:
    """A Rich Progress drawn live on a terminal, printed row by row elsewhere."""

    def __init__(self, out: TextIO | None, columns: list[ProgressColumn], *, stderr: bool = False) -> None:
        from rich.progress import Progress

        self.console = console(out, stderr=stderr)
        self.live = live(self.console)
        self.progress = Progress(
            *columns,
            console=self.console,
            disable=not self.live,
            auto_refresh=self.live,
            refresh_per_second=8,
        )
        self.last_plain = 0.0
        #: Rows changed since they were last printed (plain output only).
        self.unprinted: set[TaskID] = set()

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (its last frame stays); elsewhere print the rows not printed yet."""
        if self.live:
            self.progress.stop()
        elif self.unprinted:
            self.print_rows(sorted(self.unprinted))

    def line(self, text: str, style: str | None = None) -> None:
        """A permanent line (above the bars on a terminal)."""
        from rich.text import Text

        self.console.print(Text(text, style=style or ""))

    def changed(self, tasks: list[TaskID], *, now: bool = False) -> None:
        """`tasks` were updated: on plain output print them when `now` or when the last print is old."""
        if self.live:
            return
        self.unprinted.update(tasks)
        if now or time.monotonic() - self.last_plain >= PLAIN_EVERY_S:
            self.print_rows(tasks)

    def print_rows(self, tasks: list[TaskID]) -> None:
        shown = [t for t in self.progress.tasks if t.id in tasks]
        if shown:
            emit(self.progress.make_tasks_table(shown), self.console)
        self.unprinted.difference_update(tasks)
        self.last_plain = time.monotonic()


def _columns(field: str, *, count: bool = False) -> list[ProgressColumn]:
    """Name, bar, percentage (`count`: done/total) and the text of the task's field `field`."""
    from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn
    from rich.table import Column

    return [
        TextColumn("{task.description}", markup=False, table_column=Column(min_width=NAME_WIDTH)),
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn() if count else TaskProgressColumn(),
        TextColumn(f"{{task.fields[{field}]}}", markup=False),
    ]


class JobProgress(_Rows):
    """Bars of a training job from its `WatchTrainingJob` events: one per symbol (or model key) that
    trains, and one of the whole job above them when it has more than one."""

    def __init__(self, out: TextIO | None) -> None:
        super().__init__(out, _columns("detail"))
        self.keys: dict[str, TaskID] = {}
        self.totals: dict[str, int] = {}
        self.job: TaskID | None = None
        self.several = False

    def snapshot(self, job: training_pb2.TrainingJob) -> None:
        names = [s.key or s.symbol for s in job.symbols]
        self.several = self.several or len(names) > 1
        state = job_state(job.state)
        text = f"job {job.job_id} {state}: {', '.join(names) or 'nothing to train'}"
        self.line(text, STATE_STYLES.get(state))

    def step(self, step: training_pb2.TrainingStep) -> None:
        key = step.key or step.symbol
        eta = f"  eta {step.eta_seconds:.0f}s" if step.HasField("eta_seconds") else ""
        changed: list[TaskID] = []
        if self.several:
            job_total = max(step.job_max_steps, 1)
            if self.job is None:
                self.job = self.progress.add_task("job", total=job_total, detail="")
            self.progress.update(
                self.job,
                total=job_total,
                completed=min(step.job_step, job_total),
                detail=f"{step.job_step}/{step.job_max_steps} steps{eta}",
            )
            changed.append(self.job)
            eta = ""
        total = self.totals[key] = max(step.max_steps, 1)
        if key not in self.keys:
            self.keys[key] = self.progress.add_task(key, total=total, detail="")
        val = f"  val {step.val_loss:.4g}" if step.HasField("val_loss") else ""
        self.progress.update(
            self.keys[key],
            total=total,
            completed=min(step.step, total),
            detail=f"step {step.step}/{step.max_steps}  loss {step.train_loss:.4g}{val}{eta}",
        )
        changed.append(self.keys[key])
        self.changed(changed, now=step.step >= step.max_steps)

    def full(self, key: str) -> bool:
        task = next(t for t in self.progress.tasks if t.id == self.keys[key])
        return task.completed >= self.totals[key]

    def transition(self, symbol: training_pb2.SymbolTrainingState, text: str) -> None:
        """A symbol's state changed: its line (`text`), and its bar full when it succeeded."""
        key = symbol.key or symbol.symbol
        if key in self.keys and symbol.state == job_pb2.JOB_STATE_SUCCEEDED and not self.full(key):
            self.progress.update(self.keys[key], completed=self.totals[key])  # e.g. stopped early
            self.changed([self.keys[key]])
        self.line(text, STATE_STYLES.get(job_state(symbol.state)))


class FileProgress(_Rows):
    """`rag add`'s bar on stderr: files done of all, and the one being read."""

    def __init__(self, total: int, err: TextIO | None) -> None:
        super().__init__(err, _columns("name", count=True), stderr=True)
        self.task = self.progress.add_task("adding", total=total, name="")

    def update(self, done: int, name: str) -> None:
        self.progress.update(self.task, completed=done, name=name)
        self.changed([self.task], now=True)
