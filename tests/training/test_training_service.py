"""A second model service on the shared machinery, over real gRPC: the regime contract's training
RPCs served by a tiny trainer, the job RPCs mixed in (TrainingJobMethods), the app a few lines on the base.

This is the shape every new model service takes (its contract, domain code, a Trainer, settings
and a small app); the toy trainer stands in for the HMM, which is its own issue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kitrading.common.v1 import job_pb2
from kitrading.regime.v1 import request_response_pb2 as rr
from kitrading.regime.v1 import service_pb2_grpc
from services.runtime.app import ServiceAppBase
from services.runtime.server import RunningServer
from services.training.convert import job_out
from services.training.jobs import JobRunner, RunnerSettings
from services.training.servicer import TrainingJobMethods, TrainingRpcs
from services.training.worker import WorkerOptions
from tests.grpc_helpers import details, start_server

from .toy_trainer import ToyTrainer


class ToyRegimeServicer(TrainingJobMethods, service_pb2_grpc.RegimeServiceServicer):
    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.training = TrainingRpcs(runner)
        self.messages = rr

    async def TrainRegimeModels(self, request: rr.TrainRegimeModelsRequest, context: Any) -> Any:
        job = await (
            self.runner.train(request.symbols, force=request.force, background=request.background)
            if request.symbols
            else self.runner.train_all(force=request.force, background=request.background)
        )
        return rr.TrainRegimeModelsResponse(job=job_out(job))


class ToyRegimeApp(ServiceAppBase):
    def __init__(self, root: Path) -> None:
        super().__init__("regime", service_pb2_grpc.add_RegimeServiceServicer_to_server)
        trainer = ToyTrainer(root, ["EURUSD", "GOOG"], steps=5)
        options = WorkerOptions(spec=trainer.worker, models_dir=root, nice=0, use_gpu=False)
        self.runner = JobRunner(trainer, RunnerSettings(worker=options))
        self.servicer = ToyRegimeServicer(self.runner)  # type: ignore[abstract]  # no GetRegime here

    async def on_start(self) -> None:
        await self.runner.start()

    async def on_stop(self) -> None:
        await self.runner.stop()

    def active_training_jobs(self) -> int:
        return self.runner.active_count()


@pytest.fixture
async def regime(tmp_path: Path) -> AsyncIterator[service_pb2_grpc.RegimeServiceStub]:
    server: RunningServer = await start_server(ToyRegimeApp(tmp_path), "regime")
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield service_pb2_grpc.RegimeServiceStub(channel)
    await server.server.stop(None)
    await server.app.stop()


async def test_train_watch_list_and_errors_through_grpc(regime: service_pb2_grpc.RegimeServiceStub) -> None:
    started = await regime.TrainRegimeModels(rr.TrainRegimeModelsRequest(background=True, force=True))
    job = started.job
    assert job.model == "toy" and [s.key for s in job.symbols] == ["EURUSD", "GOOG"]
    assert job.state == job_pb2.JOB_STATE_QUEUED and job.background
    events = [m.event async for m in regime.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job.job_id))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "result" and kinds.count("step") >= 2
    result = events[-1].result
    assert result.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [(s.symbol, s.model_version) for s in result.symbols] == [
        ("EURUSD", "v000001"),
        ("GOOG", "v000001"),
    ]

    waited = await regime.TrainRegimeModels(rr.TrainRegimeModelsRequest(symbols=["GOOG"], force=True))
    assert (
        waited.job.state == job_pb2.JOB_STATE_SUCCEEDED and waited.job.symbols[0].model_version == "v000002"
    )
    listed = await regime.ListTrainingJobs(rr.ListTrainingJobsRequest(symbol="GOOG", page_size=1))
    assert [j.job_id for j in listed.jobs] == [waited.job.job_id] and listed.next_page_token

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await regime.GetTrainingJob(rr.GetTrainingJobRequest(job_id="nope"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND and details(missing.value)[0] == "JOB_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await regime.ListTrainingJobs(rr.ListTrainingJobsRequest(page_token="garbage"))
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(bad.value) == ("INVALID_PAGE_TOKEN", ["page_token"])
