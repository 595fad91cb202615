"""The SDK's server streams against a running mesh, sync and async: run by tests/client/test_sdk_wheel.py
with the python of a fresh venv that holds only the `kitrading-sdk` wheel and its dependencies.

python sdk_wheel_streams.py GATEWAY_TARGET REGIME_TARGET EXAMPLES_DIR

1. `clients/examples/follow_events.py`'s `follow(1, limit=2)`: persisted data events 2 and 3 (the sample
   import's) through the gateway (0 would mean only new events).
2. A regime training job (one symbol, in the background), watched live by two subscribers at once: the
   sync client through the gateway (in a thread) and the async client on the regime service's own port.

Prints one JSON object: the event ids followed, the job id, and per watch the run-length of event kinds
(`[["snapshot", 1], ["step", 312], ...]`) and the final job state.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
from pathlib import Path
from typing import Any

from kitrading.client import connect, connect_async
from kitrading.common.v1.job_pb2 import JobState
from kitrading.common.v1.training_pb2 import TrainingJobEvent
from kitrading.regime.v1.request_response_pb2 import TrainRegimeModelsRequest, WatchTrainingJobRequest

WATCH_TIMEOUT_S = 150.0


def load_follow(examples: Path) -> Any:
    spec = importlib.util.spec_from_file_location("follow_events", examples / "follow_events.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.follow


class Watch:
    """What one subscriber saw: run-lengths of event kinds and the result's state."""

    def __init__(self) -> None:
        self.kinds: list[list[Any]] = []
        self.result_state = ""
        self.error = ""

    def add(self, event: TrainingJobEvent) -> None:
        kind = event.WhichOneof("event") or ""
        if self.kinds and self.kinds[-1][0] == kind:
            self.kinds[-1][1] += 1
        else:
            self.kinds.append([kind, 1])
        if kind == "result":
            self.result_state = JobState.Name(event.result.state)

    def summary(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "result": self.result_state, "error": self.error}


def watch_sync(target: str, job_id: str, watch: Watch) -> None:
    try:
        with (
            connect(target) as client,
            client.regime.watch_training_job(
                WatchTrainingJobRequest(job_id=job_id), timeout=WATCH_TIMEOUT_S
            ) as stream,
        ):
            for response in stream:
                watch.add(response.event)
    except Exception as exc:  # reported in the JSON, asserted by the test
        watch.error = f"{type(exc).__name__}: {exc}"


async def watch_async(target: str, job_id: str) -> Watch:
    watch = Watch()
    try:
        async with (
            connect_async(target) as client,
            client.regime.watch_training_job(
                WatchTrainingJobRequest(job_id=job_id), timeout=WATCH_TIMEOUT_S
            ) as stream,
        ):
            async for response in stream:
                watch.add(response.event)
    except Exception as exc:
        watch.error = f"{type(exc).__name__}: {exc}"
    return watch


def main(gateway: str, regime: str, examples: Path) -> int:
    followed = load_follow(examples)(1, limit=2, target=gateway)

    with connect(gateway, timeout=30.0) as client:
        request = TrainRegimeModelsRequest(symbols=["EURUSD"], force=True, background=True)
        job = client.regime.train_regime_models(request).job
    sync_watch = Watch()
    thread = threading.Thread(target=watch_sync, args=(gateway, job.job_id, sync_watch), daemon=True)
    thread.start()
    async_watch = asyncio.run(watch_async(regime, job.job_id))
    thread.join(WATCH_TIMEOUT_S)
    if thread.is_alive():
        sync_watch.error = "the sync watch did not end"
    print(
        json.dumps(
            {
                "followed": followed,
                "job_id": job.job_id,
                "sync": sync_watch.summary(),
                "async": async_watch.summary(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
