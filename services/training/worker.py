"""The training worker: a separate OS process, so training never blocks or crashes a server.

A serving process starts `python -m services.training.worker` as a subprocess with its own thread
budget (math-library variables, `torch.set_num_threads`), a lower CPU priority (`os.nice`) and, for
torch trainers, the device of `services.runtime.gpu` with its per-process memory fraction. Which
domain code it runs comes from the trainer's `WorkerSpec`, imported only here.

Protocol: length-prefixed pickle frames (4-byte big-endian length). Server -> worker on the
worker's stdin: ("train", task, trace) | ("stop", None), `trace` the job's `traceparent` carrier
(empty while tracing is off). Worker -> server on a dedicated pipe (stdout stays free for library
chatter, which goes to stderr): ("ready", info) once, then per task any number of
("event", ProgressEvent) and one ("done", TrainResult) or ("failed", error). Cancelling a job kills
the worker (SIGKILL); the registry's atomic publish makes that safe at any instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.runtime import tracing
from services.training.events import Emit, ProgressEvent
from services.training.trainer import TrainResult, WorkerContext, WorkerSpec

_HEADER = struct.Struct(">I")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


class WorkerCrashed(RuntimeError):
    """The worker process exited (killed, out of memory, crashed) before answering."""


class TaskFailed(RuntimeError):
    """The worker reported that training one key raised."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What the worker runs (`spec`) and how its process is isolated."""

    spec: WorkerSpec
    models_dir: Path
    nice: int = 10
    threads: int = 1
    use_gpu: bool = True
    gpu_device: int = 0
    gpu_memory_fraction: float = 0.5
    startup_timeout_s: float = 180.0


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


# ---- server side -------------------------------------------------------------------------------

EventHandler = Callable[[ProgressEvent], Awaitable[None] | None]


class TrainingWorker:
    """Server-side handle of one worker process: start it, run tasks one at a time, kill it."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.process: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in _THREAD_VARS:
            env[name] = str(self.options.threads)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{_REPO_ROOT}{os.pathsep}{path}" if path else str(_REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def start(self) -> dict[str, Any]:
        """Start the process and wait for its `ready` message (imports take a few seconds)."""
        read_fd, write_fd = os.pipe()
        opts = self.options
        args = [
            sys.executable, "-m", "services.training.worker",
            "--setup", opts.spec.setup,
            "--run", opts.spec.run,
            "--models-dir", str(opts.models_dir),
            "--out-fd", str(write_fd),
            "--nice", str(opts.nice),
            "--threads", str(opts.threads),
            "--gpu-device", str(opts.gpu_device),
            "--gpu-memory-fraction", str(opts.gpu_memory_fraction),
        ]  # fmt: skip
        if opts.use_gpu:
            args.append("--use-gpu")
        if opts.spec.torch:
            args.append("--torch")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else asyncio.subprocess.DEVNULL,
                pass_fds=(write_fd,),
                env=self._env(),
                cwd=str(_REPO_ROOT),
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        self._reader = asyncio.StreamReader(limit=2**26)
        protocol = asyncio.StreamReaderProtocol(self._reader)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
        self._transport = transport
        try:
            kind, info = await asyncio.wait_for(self._recv(), opts.startup_timeout_s)
        except BaseException:
            self.kill()
            raise
        if kind != "ready":
            self.kill()
            raise WorkerCrashed(f"unexpected first message {kind!r}")
        self.info = dict(info)
        return self.info

    async def _recv(self) -> tuple[str, Any]:
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(_HEADER.size)
            body = await self._reader.readexactly(_HEADER.unpack(header)[0])
        except asyncio.IncompleteReadError:
            code = await self._exit_code()
            raise WorkerCrashed(f"training worker exited (code {code})") from None
        kind, payload = pickle.loads(body)
        return str(kind), payload

    async def _exit_code(self) -> int | None:
        if self.process is None:
            return None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), 5)
        return self.process.returncode

    async def _send(self, message: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(encode(message))
        try:
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerCrashed("training worker is gone") from None

    async def run(self, task: Any, on_event: EventHandler) -> TrainResult:
        """Send one task; call `on_event(event)` for each progress event; return the result.

        Raises TaskFailed when training raised in the worker, WorkerCrashed when the worker died.
        """
        async with self._lock:
            if not self.alive:
                raise WorkerCrashed("training worker is not running")
            await self._send(("train", task, tracing.inject()))
            while True:
                kind, payload = await self._recv()
                if kind == "event":
                    result = on_event(payload)
                    if asyncio.iscoroutine(result):
                        await result
                elif kind == "done":
                    return payload
                elif kind == "failed":
                    raise TaskFailed(payload["error"], payload["type"])

    def kill(self) -> None:
        """SIGKILL the worker (cancellation); safe to call at any time."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def stop(self, grace_s: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not within `grace_s` seconds."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(WorkerCrashed, RuntimeError):
                await self._send(("stop", None))
                if self.process.stdin is not None:
                    self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                self.kill()
                await self.process.wait()
        self._close_pipe()


def _has_fileno(stream: IO[str]) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


# ---- worker side -------------------------------------------------------------------------------


def _isolate(nice: int, threads: int) -> dict[str, Any]:
    """Lower priority and pin the thread budget; runs before any math library is imported."""
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    return {"pid": os.getpid(), "nice": os.nice(0), "threads": threads}


def _torch_device(threads: int, use_gpu: bool, device: int, fraction: float) -> dict[str, Any]:
    """Pin torch's threads and choose its device (services.runtime.gpu): the worker's `info`."""
    import torch

    from services.runtime.gpu import select_torch_device

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    choice = select_torch_device(use_gpu=use_gpu, device=device, memory_fraction=fraction)
    return {"threads": torch.get_num_threads(), **choice.info()}


def _load(name: str) -> Callable[..., Any]:
    """`module:function` -> the function."""
    import importlib

    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Training worker (started by a model service)")
    parser.add_argument("--setup", required=True, help="module:function called once before ready")
    parser.add_argument("--run", required=True, help="module:function called per task")
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch", action="store_true")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--gpu-device", type=int, default=0)
    parser.add_argument("--gpu-memory-fraction", type=float, default=0.5)
    ns = parser.parse_args(argv)

    out = os.fdopen(ns.out_fd, "wb", buffering=0)
    source = sys.stdin.buffer
    sys.stdout = sys.stderr  # library prints must not reach the protocol

    def send(kind: str, payload: Any) -> None:
        out.write(encode((kind, payload)))

    info = _isolate(ns.nice, ns.threads)
    # `services.pattern.trainer:setup` -> spans of `kitrading-pattern-worker` (tracing on)
    owner = ns.setup.split(":")[0].split(".")
    tracing.configure_tracing(
        f"{owner[1] if len(owner) > 1 else owner[0]}-worker", {**os.environ, "OTEL_SERVICE_NAME": ""}
    )
    if ns.torch:
        info.update(_torch_device(ns.threads, ns.use_gpu, ns.gpu_device, ns.gpu_memory_fraction))
    else:
        info.update(accelerator="cpu", reason="this model does not use torch")
    context = WorkerContext(
        models_dir=Path(ns.models_dir),
        accelerator=str(info.get("accelerator", "cpu")),
        device_index=info.get("device") if info.get("accelerator") == "gpu" else None,
        info=dict(info),
    )
    state = _load(ns.setup)(context)
    run = _load(ns.run)
    send("ready", info)

    def emit(event: ProgressEvent) -> None:
        send("event", event)

    emitter: Emit = emit
    while True:
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0  # server closed our stdin
        body = source.read(_HEADER.unpack(header)[0])
        kind, task, *extra = pickle.loads(body)
        if kind == "stop":
            tracing.shutdown_tracing()
            return 0
        try:
            with tracing.span(
                "worker train", parent=extra[0] if extra else None, attributes={"process.pid": os.getpid()}
            ):
                result = run(task, state, emitter)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            send("failed", {"error": str(exc) or type(exc).__name__, "type": type(exc).__name__})
        else:
            send("done", result)
        tracing.flush()  # before the server may kill an idle worker


if __name__ == "__main__":
    sys.exit(main())
