"""`connect()` / `connect_async()`: one channel to the mesh, one typed attribute per service.

The channel goes to the Envoy gateway (`localhost:3000`, or `KITRADING_TARGET`), which passes native
gRPC through to every service; a single service's address works too. Unary RPCs bound to HTTP GET are
retried on UNAVAILABLE by gRPC itself (the channel's service config), everything else is sent once.
"""

from __future__ import annotations

import enum
import json
import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
import httpx
from grpc_health.v1 import health_pb2

from kitrading import mesh
from kitrading.client._generated import IDEMPOTENT_METHODS, AsyncServices, SyncServices
from kitrading.client._runtime import AsyncTransport, Metadata, SyncTransport
from kitrading.client.errors import NotFoundError, UnimplementedError

#: Environment variable that overrides the default target.
TARGET_ENV = "KITRADING_TARGET"
#: The gateway's API key (`kitrading keys create`), or a file holding it; sent as `x-api-key`.
API_KEY_ENV = "KITRADING_API_KEY"
API_KEY_FILE_ENV = "KITRADING_API_KEY_FILE"
API_KEY_METADATA = "x-api-key"
#: A PEM file of the CA (or the self-signed certificate) of a gateway that serves TLS: set, the
#: client dials with TLS trusting it (`kitrading up --tls` prints it).
TLS_CA_ENV = "KITRADING_TLS_CA"
DEFAULT_TIMEOUT = 30.0
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: The retry policy of idempotent methods (gRPC service config `retryPolicy`).
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def api_key_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """`$KITRADING_API_KEY`, else the first line of `$KITRADING_API_KEY_FILE`, else None."""
    source = os.environ if env is None else env
    if source.get(API_KEY_ENV, "").strip():
        return source[API_KEY_ENV].strip()
    path = source.get(API_KEY_FILE_ENV, "").strip()
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{API_KEY_FILE_ENV}={path}: {exc.strerror or exc}") from None
        return text.splitlines()[0].strip() if text else None
    return None


def with_api_key(
    metadata: Sequence[tuple[str, str]] | None, api_key: str | None
) -> Sequence[tuple[str, str]] | None:
    """`metadata` plus `x-api-key` (the argument, else the environment's), unless it has one already."""
    key = api_key if api_key is not None else api_key_from_env()
    if not key or any(name.lower() == API_KEY_METADATA for name, _ in metadata or ()):
        return metadata
    return [*(metadata or ()), (API_KEY_METADATA, key)]


def tls_ca_from_env(env: Mapping[str, str] | None = None) -> Path | None:
    """`$KITRADING_TLS_CA` as a path, else None."""
    source = os.environ if env is None else env
    path = source.get(TLS_CA_ENV, "").strip()
    return Path(path).expanduser() if path else None


def tls_credentials(tls_ca: str | os.PathLike[str]) -> grpc.ChannelCredentials:
    """TLS credentials trusting the PEM certificate(s) in `tls_ca` (a CA, or a self-signed certificate)."""
    try:
        roots = Path(tls_ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS CA file {tls_ca}: {exc.strerror or exc}") from None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _channel_security(
    credentials: grpc.ChannelCredentials | None,
    tls_ca: str | os.PathLike[str] | bool | None,
    target: str | None = None,
) -> tuple[grpc.ChannelCredentials | None, Path | None]:
    """(credentials or None for plaintext, the CA file trusted). `tls_ca`: a PEM file; None: the
    environment's (`KITRADING_TLS_CA`), except for a `target` naming a service (`data`: its own
    plaintext port); False: plaintext whatever the environment says; True: TLS trusting the system's
    roots. Explicit `credentials` win."""
    if tls_ca is None and target is not None and (target in mesh.BY_NAME or target in mesh.BY_PREFIX):
        tls_ca = False
    if credentials is not None or tls_ca is False:
        return credentials, None
    if tls_ca is True:
        return grpc.ssl_channel_credentials(), None
    path = Path(tls_ca) if tls_ca is not None else tls_ca_from_env()
    if path is None:
        return None, None
    return tls_credentials(path), path


class HealthStatus(enum.StrEnum):
    """Answer of `Client.health()` (the `grpc.health.v1` serving status)."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


def resolve_target(target: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """`host:port` to dial: `target`, else `$KITRADING_TARGET`, else the gateway on localhost.

    A service name from the registry (`data`, `nhits`) means that service on localhost.
    """
    source = os.environ if env is None else env
    chosen = target or source.get(TARGET_ENV) or f"localhost:{mesh.gateway_port(source)}"
    for scheme in ("grpc://", "http://"):
        chosen = chosen.removeprefix(scheme)
    if chosen in mesh.BY_NAME or chosen in mesh.BY_PREFIX:
        return f"localhost:{mesh.service(chosen).port(source)}"
    return chosen.rstrip("/")


def service_config(retries: bool = True) -> dict[str, Any]:
    """The channel's gRPC service config: the retry policy for every idempotent method."""
    if not retries:
        return {}
    names = [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS]
    names.append({"service": "grpc.health.v1.Health", "method": "Check"})
    return {"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]}


def channel_options(retries: bool = True) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ]
    if retries:
        options.append(("grpc.service_config", json.dumps(service_config(True), sort_keys=True)))
    return options


def _health_service_name(service: str) -> str:
    """`data` -> `kitrading.data.v1.DataService`; a full name or "" (the whole server) stays."""
    if service in mesh.BY_NAME or service in mesh.BY_PREFIX:
        return mesh.service(service).grpc_service
    return service


def _health_url(target: str, service: str, *, tls: bool = False) -> str | None:
    """The gateway's `/<prefix>/health` URL for a registry service, else None."""
    if not (service in mesh.BY_NAME or service in mesh.BY_PREFIX):
        found = [s for s in mesh.SERVICES if s.grpc_service == service]
        if not found:
            return None
        service = found[0].name
    scheme = "https" if tls else "http"
    return f"{scheme}://{target}/{mesh.service(service).prefix}/health"


def _http_verify(tls_ca: Path | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else True


def _http_health(status_code: int) -> HealthStatus:
    return HealthStatus.SERVING if 200 <= status_code < 300 else HealthStatus.NOT_SERVING


def _health_status(response: health_pb2.HealthCheckResponse) -> HealthStatus:
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthStatus(name) if name in HealthStatus.__members__ else HealthStatus.UNKNOWN


class Client(SyncServices):
    """A blocking client of the whole mesh. Make one with `connect()`; close it (or use `with`)."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        target: str,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata | None = None,
        tls: bool = False,
        tls_ca: Path | None = None,
        resume_streams: bool = True,
    ) -> None:
        self.target = target
        self.channel = channel
        #: whether the channel speaks TLS, and the CA file it trusts (None: the system's roots)
        self.tls = tls
        self.tls_ca = tls_ca
        self._transport = SyncTransport(
            channel, timeout=timeout, metadata=metadata, resume_streams=resume_streams
        )
        super().__init__(self._transport)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """`grpc.health.v1` status of a service (`"data"`, or its full name; `""`: the server).

        SERVICE_UNKNOWN when the server does not serve that service.

        Through a gateway that does not route the health service, falls back to its HTTP
        `/<prefix>/health` page.
        """
        request = health_pb2.HealthCheckRequest(service=_health_service_name(service))
        try:
            response = self._transport.unary(
                _HEALTH_CHECK, request, health_pb2.HealthCheckResponse, timeout=timeout, metadata=None
            )
        except NotFoundError:
            return HealthStatus.SERVICE_UNKNOWN
        except UnimplementedError:
            url = _health_url(self.target, service, tls=self.tls)
            if url is None:
                raise
            wait = self._transport.timeout if timeout is None else timeout
            try:
                return _http_health(
                    httpx.get(url, timeout=wait, verify=_http_verify(self.tls_ca)).status_code
                )
            except httpx.HTTPError:
                return HealthStatus.UNKNOWN
        return _health_status(response)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kitrading.client.Client {self.target}>"


class AsyncClient(AsyncServices):
    """The `asyncio` client (grpc.aio). Make one with `connect_async()`; `await client.close()`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        target: str,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata | None = None,
        tls: bool = False,
        tls_ca: Path | None = None,
        resume_streams: bool = True,
    ) -> None:
        self.target = target
        self.channel = channel
        #: whether the channel speaks TLS, and the CA file it trusts (None: the system's roots)
        self.tls = tls
        self.tls_ca = tls_ca
        self._transport = AsyncTransport(
            channel, timeout=timeout, metadata=metadata, resume_streams=resume_streams
        )
        super().__init__(self._transport)

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:  # noqa: ASYNC109
        """See `Client.health`."""
        request = health_pb2.HealthCheckRequest(service=_health_service_name(service))
        try:
            response = await self._transport.unary(
                _HEALTH_CHECK, request, health_pb2.HealthCheckResponse, timeout=timeout, metadata=None
            )
        except NotFoundError:
            return HealthStatus.SERVICE_UNKNOWN
        except UnimplementedError:
            url = _health_url(self.target, service, tls=self.tls)
            if url is None:
                raise
            wait = self._transport.timeout if timeout is None else timeout
            try:
                async with httpx.AsyncClient(timeout=wait, verify=_http_verify(self.tls_ca)) as http:
                    return _http_health((await http.get(url)).status_code)
            except httpx.HTTPError:
                return HealthStatus.UNKNOWN
        return _health_status(response)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<kitrading.client.AsyncClient {self.target}>"


def connect(
    target: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: bool = True,
    metadata: Sequence[tuple[str, str]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    api_key: str | None = None,
    tls_ca: str | os.PathLike[str] | bool | None = None,
) -> Client:
    """A blocking client of the mesh.

    `target`: `host:port` of the gateway or of one service (default `$KITRADING_TARGET`, else
    `localhost:3000`). `timeout`: default deadline in seconds of every unary call (streams have none
    unless a call passes one). `retries`: retry idempotent (GET) methods on UNAVAILABLE, up to 4
    attempts with 0.1-2 s backoff, and resume a `Watch*` subscription that breaks with UNAVAILABLE (a
    service or gateway restarting; `kitrading.client._runtime`). `metadata`: sent with every call.
    `credentials`: TLS credentials of your own. `tls_ca`: a gateway serving TLS, trusted through this
    PEM CA (or self-signed certificate) file (default `$KITRADING_TLS_CA`, else plaintext; `True`: TLS
    with the system's roots; `False`: plaintext whatever the environment says). `api_key`: the gateway's
    API key, sent as `x-api-key` metadata (default `$KITRADING_API_KEY`, else the file
    `$KITRADING_API_KEY_FILE`; none on a gateway without keys).
    """
    resolved = resolve_target(target)
    options = channel_options(retries)
    credentials, ca = _channel_security(credentials, tls_ca, target or os.environ.get(TARGET_ENV))
    if credentials is None:
        channel = grpc.insecure_channel(resolved, options=options)
    else:
        channel = grpc.secure_channel(resolved, credentials, options=options)
    return Client(
        channel,
        target=resolved,
        timeout=timeout,
        metadata=with_api_key(metadata, api_key),
        tls=credentials is not None,
        tls_ca=ca,
        resume_streams=retries,
    )


def connect_async(
    target: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: bool = True,
    metadata: Sequence[tuple[str, str]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    api_key: str | None = None,
    tls_ca: str | os.PathLike[str] | bool | None = None,
) -> AsyncClient:
    """The `asyncio` client; same arguments as `connect()`. Use it as `async with connect_async() as c:`."""
    resolved = resolve_target(target)
    options = channel_options(retries)
    credentials, ca = _channel_security(credentials, tls_ca, target or os.environ.get(TARGET_ENV))
    if credentials is None:
        channel = grpc.aio.insecure_channel(resolved, options=options)
    else:
        channel = grpc.aio.secure_channel(resolved, credentials, options=options)
    return AsyncClient(
        channel,
        target=resolved,
        timeout=timeout,
        metadata=with_api_key(metadata, api_key),
        tls=credentials is not None,
        tls_ca=ca,
        resume_streams=retries,
    )
