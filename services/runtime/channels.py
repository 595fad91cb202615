"""One way for a service to open a channel to another service of the mesh.

Every service-to-service client (training's Data client, the RAG service's embedder and model-card
clients, the LLM's grounding sources) opens its channel here, so they share:

- quick reconnects to a service that comes back (gRPC's default backoff grows to 120 s);
- round-robin balancing over every address of the target (the instances of a replicated service,
  `services.runtime.addresses.service_target(..., instances=True)`);
- large messages (64 MiB: candle pages, embedding batches);
- the SDK's retry policy (`kitrading.client.client.service_config`): idempotent methods (unary RPCs
  bound to HTTP GET, and health checks) are retried on UNAVAILABLE, up to 4 attempts with backoff
  0.1 s doubling to 2 s, always within the call's deadline; writes are never retried. A service
  restarting (`kitrading restart`, a crash) then costs a caller a short delay, not an error.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from kitrading.client.client import service_config
from services.runtime import tracing

#: Options every mesh channel gets, retries or not.
BASE_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.lb_policy_name", "round_robin"),
)


def channel_options(*, retries: bool = True) -> list[tuple[str, Any]]:
    """`BASE_OPTIONS`, and the retry policy unless `retries` is False (a caller that spends its own
    deadline budget per source, like the LLM's grounding, wants one attempt)."""
    options: list[tuple[str, Any]] = [*BASE_OPTIONS, ("grpc.enable_retries", 1 if retries else 0)]
    if retries:
        options.append(("grpc.service_config", json.dumps(service_config(True), sort_keys=True)))
    return options


def mesh_channel(target: str, *, retries: bool = True) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to another service (`host:port`) with the options above; while
    tracing is on (`services.runtime.tracing`), each call is a CLIENT span that the callee continues."""
    return grpc.aio.insecure_channel(
        target, options=channel_options(retries=retries), interceptors=tracing.client_interceptors() or None
    )
