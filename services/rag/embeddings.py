"""Chunk and query vectors from the Embedder service over gRPC (`EmbedText`, normalised).

`Embeddings` is what the domain needs; `EmbedderClient` is it over the mesh. Texts go in calls of at
most `batch` (the embedder's contract allows 256); a failed call is `Unavailable` (reason
EMBEDDER_UNAVAILABLE, or the embedder's own reason) so a caller sees a retryable error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc
import grpc.aio
import numpy as np

from kitrading.client.errors import error_from_rpc
from kitrading.embedder.v1 import request_response_pb2 as emb_rr
from kitrading.embedder.v1 import resources_pb2 as emb_pb
from kitrading.embedder.v1 import service_pb2_grpc as emb_grpc
from services.runtime.channels import mesh_channel
from services.runtime.deadline import remaining
from services.runtime.errors import InvalidArgument, Unavailable


class Embeddings(Protocol):
    async def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, str]:
        """(len(texts), dimension) float32 unit vectors, and the model's name."""
        ...

    async def model(self) -> tuple[str, int]:
        """The text model's name and dimension."""
        ...


class EmbedderClient:
    def __init__(self, target: str, *, batch: int = 64, timeout_s: float = 120.0) -> None:
        self.target = target
        self.batch = batch
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: emb_grpc.EmbedderServiceStub | None = None

    async def start(self) -> None:
        self._channel = mesh_channel(self.target)
        self._stub = emb_grpc.EmbedderServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    def _ready(self) -> emb_grpc.EmbedderServiceStub:
        if self._stub is None:
            raise Unavailable("the embedder client is not started", reason="EMBEDDER_UNAVAILABLE")
        return self._stub

    async def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, str]:
        stub = self._ready()
        parts: list[np.ndarray] = []
        model = ""
        for start in range(0, len(texts), self.batch):
            request = emb_rr.EmbedTextRequest(texts=list(texts[start : start + self.batch]), normalize=True)
            try:
                reply = await stub.EmbedText(request, timeout=remaining(self.timeout_s))
            except grpc.aio.AioRpcError as exc:
                raise _unavailable(exc) from None
            parts.append(np.array([e.values for e in reply.embeddings], dtype=np.float32))
            model = reply.model
        if not parts:
            return np.zeros((0, 0), np.float32), model
        return np.vstack(parts), model

    async def model(self) -> tuple[str, int]:
        try:
            info = await self._ready().GetEmbedderInfo(
                emb_rr.GetEmbedderInfoRequest(), timeout=remaining(min(self.timeout_s, 10.0))
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from None
        text = next((m for m in info.models if m.kind == emb_pb.EMBEDDING_KIND_TEXT), None)
        if text is None:
            raise Unavailable("the embedder has no text model", reason="EMBEDDER_UNAVAILABLE")
        return text.name, text.dimension


def _unavailable(exc: grpc.aio.AioRpcError) -> Exception:
    error = error_from_rpc(exc)
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # a chunk the embedder refuses: our bug or a limit
        return InvalidArgument("text", f"the embedder refused it: {error.message}", reason=error.reason)
    reason = error.reason if error.reason and error.reason != error.code.name else "EMBEDDER_UNAVAILABLE"
    return Unavailable(f"the embedder is unavailable: {error.code.name} {error.message}", reason=reason)
