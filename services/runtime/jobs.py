"""The life cycle every long-running job shares (training jobs, Data syncs): one enum, named as
`kitrading.common.v1.JobState` without its prefix, so conversion is by name."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """State of a job, or of one item of it (a symbol in a training job or a sync)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # an item with nothing to do (a model fresh enough)

    @property
    def terminal(self) -> bool:
        """True once nothing more happens to it (every state but QUEUED and RUNNING)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)
