"""The training RPCs every model service has (Get, List, Cancel, Watch a training job), once.

A service's servicer mixes them in and names its runner and its generated messages module:

    class RegimeServicer(TrainingJobMethods, service_pb2_grpc.RegimeServiceServicer):
        def __init__(self, domain):
            self.training = TrainingRpcs(domain.jobs)
            self.messages = rr   # kitrading.regime.v1.request_response_pb2
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from types import ModuleType
from typing import Any, Protocol, TypeVar

from services.runtime.pagination import paginate
from services.runtime.protos import job_state_in
from services.training.convert import job_event_out, job_out
from services.training.jobs import JobRunner
from services.training.registry import ModelVersion, version_key

R = TypeVar("R")


class _JobRequest(Protocol):
    job_id: str


class _PageRequest(Protocol):
    page_size: int
    page_token: str


def versions_page(
    versions: list[ModelVersion], request: _PageRequest, *, kind: str, filters: list[Any]
) -> tuple[list[ModelVersion], str]:
    """One page of a key's versions (given newest first) and the next token: the List*Versions RPCs
    of every trained service (`filters`: what the listing depends on, bound into the token)."""
    return paginate(
        versions,
        kind=kind,
        key=version_key,
        filters=filters,
        page_size=request.page_size,
        page_token=request.page_token,
        descending=True,
        default=100,
    )


class TrainingRpcs:
    """Get / List / Cancel / WatchTrainingJob over one `JobRunner`. Responses are built by keyword
    (`job=`, `jobs=`/`next_page_token=`, `event=`), the same in every service's contract."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner

    async def get(self, request: _JobRequest, response: type[R]) -> R:
        return response(job=job_out(self.runner.get(request.job_id)))  # type: ignore[call-arg]

    async def list(self, request: Any, response: type[R]) -> R:
        """`state`, and `symbol` where the request has it, filter; newest first."""
        state = job_state_in(request.state)
        key = request.symbol if _has(request, "symbol") else None
        jobs, token = self.runner.list_jobs(
            page_size=request.page_size,
            page_token=request.page_token,
            states=(state,) if state else (),
            key=key,
        )
        return response(jobs=[job_out(j) for j in jobs], next_page_token=token)  # type: ignore[call-arg]

    async def cancel(self, request: _JobRequest, response: type[R]) -> R:
        return response(job=job_out(await self.runner.cancel(request.job_id)))  # type: ignore[call-arg]

    async def watch(self, request: _JobRequest, response: type[R]) -> AsyncIterator[R]:
        """The job's events: its snapshot, every step and item transition, then its result."""
        sequence = 0
        async with aclosing(self.runner.watch(request.job_id)) as events:  # type: ignore[type-var]
            async for event in events:
                message = job_event_out(event, sequence + 1)
                if message is None:
                    continue
                sequence += 1
                yield response(event=message)  # type: ignore[call-arg]


def _has(request: Any, name: str) -> bool:
    try:
        return bool(request.HasField(name))
    except ValueError:  # no such (optional) field in this service's request
        return False


class TrainingJobMethods:
    """Get / List / Cancel / WatchTrainingJob as servicer methods (mix in before the generated
    servicer base): `training` is the service's `TrainingRpcs`, `messages` its request_response
    module, whose `<Rpc>Response` classes the answers are built with."""

    training: TrainingRpcs
    messages: ModuleType

    async def GetTrainingJob(self, request: Any, context: Any) -> Any:
        return await self.training.get(request, self.messages.GetTrainingJobResponse)

    async def ListTrainingJobs(self, request: Any, context: Any) -> Any:
        return await self.training.list(request, self.messages.ListTrainingJobsResponse)

    async def CancelTrainingJob(self, request: Any, context: Any) -> Any:
        return await self.training.cancel(request, self.messages.CancelTrainingJobResponse)

    def WatchTrainingJob(self, request: Any, context: Any) -> Any:
        return self.training.watch(request, self.messages.WatchTrainingJobResponse)
