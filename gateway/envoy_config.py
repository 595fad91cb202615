"""The Envoy bootstrap of the gateway, built from the service registry and the descriptor set.

Built with envoy-data-plane's typed dataclasses (pydantic-checked field names and types), then
rendered to a plain dict in proto JSON form with snake_case keys, which Envoy reads as YAML or JSON.
Nothing here is per service: adding a domain to `kitrading.mesh.SERVICES` and its protos to
`protos/` gives it a cluster, routes, health, docs and transcoding.

Request flow through the one HTTP connection manager (HTTP/1.1 and h2c on the same port):

1. `health_check` filters, one per service, answer `GET /<prefix>/health` from the cluster's active
   gRPC health checks (200 when a host is SERVING, else 503) without touching the service;
2. `grpc_web` turns grpc-web calls into gRPC;
3. `grpc_json_transcoder` turns JSON/HTTP calls (the `google.api.http` bindings) into gRPC and
   rewrites the path to `/<package>.<Service>/<Method>`; native gRPC passes through untouched;
4. `grpc_stats` counts calls per method; 5. the router sends each gRPC path to its service's cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLog,
    AccessLogFilter,
    AndFilter,
    ComparisonFilter,
    ComparisonFilterOp,
    HeaderFilter,
    NotHealthCheckFilter,
    OrFilter,
    StatusCodeFilter,
)
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    CircuitBreakersThresholdsRetryBudget,
    Cluster,
    ClusterCommonLbConfig,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    ClusterLbPolicy,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http2ProtocolOptions,
    KeepaliveSettings,
    Node,
    RuntimeUInt32,
    SocketAddress,
    SubstitutionFormatString,
    TransportSocket,
)
from envoy_data_plane.envoy.config.core.v3 import (
    HttpProtocolOptions as CoreHttpProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import (
    OverloadAction,
    OverloadManager,
    ResourceMonitor,
    ThresholdTrigger,
    Trigger,
)
from envoy_data_plane.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    PrincipalSet,
    RbacAction,
    SourcedMetadata,
)
from envoy_data_plane.envoy.config.rbac.v3 import Rbac as RbacRules
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    FilterConfig,
    HeaderMatcher,
    RedirectAction,
    RedirectActionRedirectResponseCode,
    RetryPolicy,
    RetryPolicyRetryBackOff,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
    RouteActionClusterNotFoundResponseCode,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
from envoy_data_plane.envoy.extensions.filters.http.grpc_json_transcoder.v3 import (
    GrpcJsonTranscoder,
    GrpcJsonTranscoderPrintOptions,
    GrpcJsonTranscoderRequestValidationOptions,
)
from envoy_data_plane.envoy.extensions.filters.http.grpc_stats.v3 import FilterConfig as GrpcStatsConfig
from envoy_data_plane.envoy.extensions.filters.http.grpc_web.v3 import GrpcWeb
from envoy_data_plane.envoy.extensions.filters.http.health_check.v3 import HealthCheck as HealthCheckFilter
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwtAuthentication,
    JwtClaimToHeader,
    JwtHeader,
    JwtProvider,
    JwtRequirement,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import PerRouteConfig as JwtPerRoute
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac, RbacPerRoute
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.resource_monitors.fixed_heap.v3 import FixedHeapConfig
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    MetadataMatcher,
    MetadataMatcherPathSegment,
    PathMatcher,
    RegexMatcher,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any as AnyProto
from envoy_data_plane.google.protobuf import Struct

from gateway import rate_limits, strict_json
from gateway import tracing as gateway_tracing
from gateway.descriptors import RoutedService, RpcMethod
from gateway.keys import ISSUER, SCOPES, ApiKeys, KeyStore, jwks, scopes_granting
from kitrading.mesh import INSTANCE_PORT_STEP, SERVICES, ServiceInfo, gateway_port
from services.runtime.config import BoolVar, ConfigError, FloatVar, IntVar, Var, check_fields, read_fields
from services.runtime.tracing import TracingSettings

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
GRPC_WEB = "envoy.filters.http.grpc_web"
GRPC_STATS = "envoy.filters.http.grpc_stats"
ROUTER = "envoy.filters.http.router"
HEALTH_CHECK = "envoy.filters.http.health_check"
LUA = "envoy.filters.http.lua"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
RBAC = "envoy.filters.http.rbac"
CORS = "envoy.filters.http.cors"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
#: The jwt_authn provider of the gateway's API keys, and where it puts a verified key's claims
#: (dynamic metadata of JWT_AUTHN, read by the RBAC filter).
JWT_PROVIDER = "kitrading"
KEY_METADATA = "api_key"
#: Request headers the gateway sets from a verified key (a client's own are removed first): the
#: access log and the services name the key by its id; the token never leaves the gateway.
KEY_ID_HEADER = "x-kitrading-key-id"
KEY_SCOPE_HEADER = "x-kitrading-key-scope"
#: Where a key is read from: `x-api-key` (HTTP header or gRPC metadata) or `Authorization: Bearer`.
API_KEY_HEADER = "x-api-key"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
DOWNSTREAM_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"

#: Unary RPCs that may legitimately run longer than the default unary timeout, in seconds (0: none).
#: Keyed by `package.Service/Method`; streaming RPCs never time out (see `route_timeout`).
METHOD_TIMEOUTS: dict[str, float] = {
    # Training in the foreground (`background=false`, or synchronous by design) returns when the models
    # are trained; the route's idle timeout (`stream_idle_timeout_s`) still ends a hung call.
    "kitrading.forecast.v1.ForecastService/TrainAll": 0.0,
    "kitrading.forecast.v1.ForecastService/TrainSymbol": 0.0,
    "kitrading.pattern.v1.PatternService/TrainPatternModel": 0.0,
    "kitrading.regime.v1.RegimeService/TrainRegimeModels": 0.0,
}

#: Scope of a method where the rule "GET binding: read; any other binding (or none): write" is wrong:
#: POSTs that only compute an answer from their body. Writes and expensive calls (training, sync,
#: analyze and its stream, document adds, test alerts, rollbacks) keep `write`.
SCOPE_OVERRIDES: dict[str, str] = {
    "kitrading.forecast.v1.ForecastService/BatchGetForecasts": "read",
    "kitrading.pattern.v1.PatternService/DetectPatterns": "read",
    "kitrading.regime.v1.RegimeService/ScoreSignal": "read",
    "kitrading.regime.v1.RegimeService/BatchScoreSignals": "read",
    "kitrading.embedder.v1.EmbedderService/EmbedText": "read",
    "kitrading.embedder.v1.EmbedderService/AnalyzeSentiment": "read",
    "kitrading.embedder.v1.EmbedderService/EmbedTimeSeries": "read",
}

#: Default unary timeout per mesh service (by registry name), where the 30 s default is too short.
SERVICE_TIMEOUTS: dict[str, float] = {
    # LLM answers take up to 600 s on the users' hardware (llama3.1:70b); streams have no timeout at all.
    "llm": 600.0,
    # Document ingestion embeds every chunk.
    "rag": 120.0,
}

#: Where the gateway answers about itself (no cluster: 200 unless Envoy is draining).
GATEWAY_HEALTH_PATH = "/gateway/health"

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Page:
    """A static document served by Envoy itself (`direct_response`)."""

    path: str
    content_type: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    #: Paths that redirect (302) here, e.g. `/data/` and `/data/docs/` for `/data/docs`.
    aliases: tuple[str, ...] = ()


ALLOW_UNAUTHENTICATED = "KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED"


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={text!r}: expected true or false")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, allow_unauthenticated: bool, keys_configured: bool = False) -> None:
    """ConfigError for a listener beyond loopback without API keys that nobody said may stay open."""
    if _is_loopback(address) or allow_unauthenticated or keys_configured:
        return
    raise ConfigError(
        f"KITRADING_GATEWAY_BIND={address} would let anyone who reaches this port create and delete "
        "symbols, start syncs and trainings and queue LLM work: no API keys are configured. "
        "Create one with `kitrading keys create --scope admin` (then every call needs a key), "
        "listen on 127.0.0.1 (the default), or accept an open gateway explicitly with "
        f"{ALLOW_UNAUTHENTICATED}=true."
    )


TLS_CERT_FILE = "KITRADING_GATEWAY_TLS_CERT_FILE"
TLS_KEY_FILE = "KITRADING_GATEWAY_TLS_KEY_FILE"
CORS_ORIGINS = "KITRADING_GATEWAY_CORS_ORIGINS"
#: ALPN offered by the TLS listener: HTTP/2 (gRPC, and JSON/grpc-web from clients that speak it) and
#: HTTP/1.1 (curl --http1.1, browsers' grpc-web and JSON over HTTP/1.1).
TLS_ALPN = ("h2", "http/1.1")


def _read_pem(setting: str, path: str, marker: str, what: str) -> None:
    """ConfigError naming `setting` unless `path` is a readable PEM file holding `marker`."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{setting}={path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{setting}={path}: cannot be read ({exc.strerror or exc})") from None
    if "-----BEGIN " not in text or marker not in text:
        raise ConfigError(f"{setting}={path}: not a PEM {what} (no '-----BEGIN ...{marker}' block)")


def check_tls(cert_file: str | None, key_file: str | None) -> None:
    """ConfigError for half a TLS setting, or a certificate or key that is missing, unreadable or not PEM."""
    if bool(cert_file) != bool(key_file):
        given, missing = (TLS_CERT_FILE, TLS_KEY_FILE) if cert_file else (TLS_KEY_FILE, TLS_CERT_FILE)
        raise ConfigError(
            f"{given} is set but {missing} is not: TLS at the gateway needs both the certificate "
            "(chain) file and its private key file, PEM (`kitrading up --tls` makes a self-signed pair)"
        )
    if cert_file and key_file:
        _read_pem(TLS_CERT_FILE, cert_file, "CERTIFICATE-----", "certificate")
        _read_pem(TLS_KEY_FILE, key_file, "PRIVATE KEY-----", "private key")


_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?$", re.IGNORECASE)


def parse_origins(text: str) -> tuple[str, ...]:
    """`KITRADING_GATEWAY_CORS_ORIGINS`: origins separated by commas or spaces, each
    `http(s)://host[:port]` (no path, no `*`: any web page could then drive the gateway)."""
    origins = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        origin = item.rstrip("/")
        if not _ORIGIN.match(origin):
            raise ConfigError(
                f"{CORS_ORIGINS}: {item!r} is not an origin; expected scheme://host[:port], e.g. "
                "https://app.example.com or http://localhost:5173 (no path, no wildcard)"
            )
        origins.append(origin.lower())
    return tuple(dict.fromkeys(origins))


#: Attribute -> its variable and range: limits against careless or slow clients (the shared
#: settings machinery: an out-of-range value is refused at start, naming the variable).
LIMIT_FIELDS: dict[str, Var] = {
    "max_request_body_bytes": IntVar("KITRADING_GATEWAY_MAX_REQUEST_BODY_BYTES", 1024, 1 << 30),
    # Envoy accepts 1..8192 KiB of request headers
    "max_request_headers_kb": IntVar("KITRADING_GATEWAY_MAX_REQUEST_HEADERS_KB", 1, 8192),
    "request_headers_timeout_s": FloatVar(
        "KITRADING_GATEWAY_REQUEST_HEADERS_TIMEOUT_S", 0.0, 3600.0, above=True
    ),
    "request_idle_timeout_s": FloatVar("KITRADING_GATEWAY_REQUEST_IDLE_TIMEOUT_S", 1.0, 86_400.0),
    "stream_idle_timeout_s": FloatVar("KITRADING_GATEWAY_STREAM_IDLE_TIMEOUT_S", 1.0, 7 * 86_400.0),
    # JSON bodies: unknown fields and non-bool bools are 400 (gateway.strict_json)
    "strict_json": BoolVar("KITRADING_GATEWAY_STRICT_JSON"),
}


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything about the gateway that a deployment or a test may change."""

    #: Loopback by default: without API keys, whoever reaches the gateway may write (train, sync,
    #: delete). Another address needs keys or `allow_unauthenticated` (`check_exposure`).
    listen_address: str = "127.0.0.1"
    #: Listening beyond loopback with no credential check, said explicitly
    #: (`KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED=true`; compose and Kubernetes, behind their networks).
    allow_unauthenticated: bool = False
    port: int = 3000
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    #: Host of every service unless named in `service_hosts`; an IP gives a STATIC cluster, a name a
    #: STRICT_DNS one (every address the name resolves to is an endpoint: compose replicas, k8s headless).
    service_host: str = "127.0.0.1"
    service_hosts: Mapping[str, str] = field(default_factory=dict)
    #: Port per service name; default: the registry (`KITRADING_<NAME>_PORT` or its default port).
    service_ports: Mapping[str, int] = field(default_factory=dict)
    #: Instances per service on `kitrading up` (`KITRADING_<NAME>_REPLICAS`; default 1): instance k
    #: at the service's port + k * `INSTANCE_PORT_STEP`, all endpoints of its cluster; a service with
    #: `leader_methods` and several instances also gets a `<name>-leader` cluster (`leader_cluster`).
    service_replicas: Mapping[str, int] = field(default_factory=dict)
    #: Timeout of unary routes without an override (`METHOD_TIMEOUTS`, `SERVICE_TIMEOUTS`).
    unary_timeout_s: float = 30.0
    method_timeouts: Mapping[str, float] = field(default_factory=lambda: dict(METHOD_TIMEOUTS))
    service_timeouts: Mapping[str, float] = field(default_factory=lambda: dict(SERVICE_TIMEOUTS))
    #: A stream (SSE, gRPC stream) with no message in either direction for this long is closed.
    stream_idle_timeout_s: float = 3600.0
    #: Refuse JSON bodies with unknown fields or non-bool bools (400 naming the field), as unknown
    #: query parameters are; off: Envoy's transcoder drops such fields and reads "yes" as true.
    strict_json: bool = True
    #: Idle timeout of any other request (no bytes either way).
    request_idle_timeout_s: float = 300.0
    #: A client must send a request's whole headers within this time of its first byte (slow-loris),
    #: else the connection is closed (HTTP 408 where a response can still be written).
    request_headers_timeout_s: float = 10.0
    #: Request headers larger than this (KiB, all of them together) are refused with 431.
    max_request_headers_kb: int = 60
    connect_timeout_s: float = 1.0
    health_check_interval_s: float = 1.0
    health_check_timeout_s: float = 1.0
    #: Percentage of a service's hosts that must pass health checks for `/<prefix>/health` to be 200.
    #: 1 % means "at least one host" for up to 100 replicas.
    min_healthy_percent: float = 1.0
    max_downstream_connections: int = 10_000
    max_heap_bytes: int = 1024 * _MiB
    #: Circuit breakers, per service cluster.
    max_upstream_connections: int = 1024
    max_upstream_requests: int = 4096
    max_pending_requests: int = 1024
    #: Retries of a read (a unary RPC bound to HTTP GET) that meets a connection failure, a reset or
    #: UNAVAILABLE, to another host where there is one (`read_retry_policy`); writes are never
    #: retried. The cluster's retry budget bounds them (`RETRY_BUDGET_PERCENT`).
    read_retries: int = 2
    #: Transcoder buffer limits (a JSON body is transcoded whole; streams per message).
    max_request_body_bytes: int = 8 * _MiB
    max_response_body_bytes: int = 64 * _MiB
    #: JSON field names: False gives proto3 JSON lowerCamelCase (`pageSize`), True the proto names.
    preserve_proto_field_names: bool = False
    access_log: bool = True
    node_id: str = "kitrading-gateway"
    #: Port of the mesh-wide reflection server (`python -m gateway.reflection`) on `service_host`;
    #: None leaves `/grpc.reflection.*` unrouted.
    reflection_port: int | None = 3011
    #: API keys (`gateway.keys`): None while none was created, and every call passes; otherwise
    #: every call but the health, docs and OpenAPI pages needs a key of the method's scope.
    api_keys: ApiKeys | None = field(default=None, repr=False)
    #: `package.Service/Method` -> scope, where the HTTP verb misleads (`SCOPE_OVERRIDES`).
    scope_overrides: Mapping[str, str] = field(default_factory=lambda: dict(SCOPE_OVERRIDES))
    #: Envoy's OpenTelemetry tracer (`gateway.tracing`): the standard OTEL_* variables; off by default.
    tracing: TracingSettings = field(default_factory=TracingSettings)
    #: TLS on the listener (`KITRADING_GATEWAY_TLS_CERT_FILE`, `KITRADING_GATEWAY_TLS_KEY_FILE`): PEM
    #: certificate chain and private key, both or neither; Envoy reads them at start. None: plain
    #: HTTP/1.1 and h2c.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Origins other than the gateway's own whose pages may call it (CORS,
    #: `KITRADING_GATEWAY_CORS_ORIGINS`); the dashboard is same-origin and needs none.
    cors_allowed_origins: tuple[str, ...] = ()
    #: Per-client rate limits (`gateway.rate_limits`): on beyond loopback or with API keys by default.
    rate_limits: rate_limits.RateLimitSettings = field(default_factory=rate_limits.RateLimitSettings)

    @property
    def rate_limited(self) -> bool:
        """Whether the gateway applies `rate_limits` (their mode, the listener, API keys)."""
        return self.rate_limits.active(
            exposed=not _is_loopback(self.listen_address), keys=self.api_keys is not None
        )

    def __post_init__(self) -> None:
        check_fields(self, LIMIT_FIELDS)
        check_exposure(self.listen_address, self.allow_unauthenticated, self.api_keys is not None)
        check_tls(self.tls_cert_file, self.tls_key_file)
        # normalised (lower case, no trailing slash, no duplicates) and checked like the variable
        object.__setattr__(self, "cors_allowed_origins", parse_origins(",".join(self.cors_allowed_origins)))
        for name, scope in self.scope_overrides.items():
            if scope not in SCOPES:
                raise ConfigError(f"scope of {name}: {scope!r}, expected one of {', '.join(SCOPES)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings from the environment, then `overrides`.

        `KITRADING_GATEWAY_PORT` (3000), `KITRADING_GATEWAY_BIND` (127.0.0.1; another address needs
        `KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED=true` or API keys), `KITRADING_GATEWAY_ADMIN_PORT`
        (9901), `KITRADING_SERVICE_HOST` (127.0.0.1) and `KITRADING_<NAME>_HOST` per service
        (e.g. `KITRADING_DATA_HOST=data` in compose); ports come from the registry (`KITRADING_<NAME>_PORT`).
        API keys from the key store (`gateway.keys.KeyStore.from_env`: `KITRADING_GATEWAY_KEYS_FILE`,
        `KITRADING_GATEWAY_SIGNING_KEY_FILE`, default `$KITRADING_HOME/secrets/`). TLS from
        `KITRADING_GATEWAY_TLS_CERT_FILE` + `KITRADING_GATEWAY_TLS_KEY_FILE`; CORS origins from
        `KITRADING_GATEWAY_CORS_ORIGINS` (comma-separated). Rate limits from
        `KITRADING_GATEWAY_RATE_LIMITS` and the others of `gateway.rate_limits`. Sizes and timeouts
        against careless or slow clients from `LIMIT_FIELDS`.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {"port": gateway_port(source)}
        if source.get("KITRADING_GATEWAY_BIND"):
            values["listen_address"] = source["KITRADING_GATEWAY_BIND"]
        if source.get(ALLOW_UNAUTHENTICATED):
            values["allow_unauthenticated"] = _flag(ALLOW_UNAUTHENTICATED, source[ALLOW_UNAUTHENTICATED])
        if source.get("KITRADING_GATEWAY_ADMIN_PORT"):
            values["admin_port"] = int(source["KITRADING_GATEWAY_ADMIN_PORT"])
        if source.get("KITRADING_REFLECTION_PORT"):
            values["reflection_port"] = int(source["KITRADING_REFLECTION_PORT"])
        if source.get("KITRADING_SERVICE_HOST"):
            values["service_host"] = source["KITRADING_SERVICE_HOST"]
        values["api_keys"] = KeyStore.from_env(source).api_keys()
        values["tracing"] = TracingSettings.from_env(source)
        values["rate_limits"] = rate_limits.RateLimitSettings.from_env(source)
        values.update(read_fields(cls(), LIMIT_FIELDS, source))  # unset: the defaults
        for name, key in ((TLS_CERT_FILE, "tls_cert_file"), (TLS_KEY_FILE, "tls_key_file")):
            if source.get(name, "").strip():
                values[key] = os.path.abspath(os.path.expanduser(source[name].strip()))
        if source.get(CORS_ORIGINS, "").strip():
            values["cors_allowed_origins"] = parse_origins(source[CORS_ORIGINS])
        try:
            replicas = {s.name: s.replicas(source) for s in SERVICES}
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if any(count > 1 for count in replicas.values()):
            values["service_replicas"] = {name: count for name, count in replicas.items() if count > 1}
        hosts = {
            s.name: source[f"KITRADING_{s.name.upper()}_HOST"]
            for s in SERVICES
            if source.get(f"KITRADING_{s.name.upper()}_HOST")
        }
        if hosts:
            values["service_hosts"] = hosts
        values.update(overrides)
        return cls(**values)

    def host_for(self, service: ServiceInfo) -> str:
        return self.service_hosts.get(service.name, self.service_host)

    def port_for(self, service: ServiceInfo, env: Mapping[str, str] | None = None) -> int:
        return self.service_ports.get(service.name) or service.port(env)

    def replicas_of(self, service: ServiceInfo) -> int:
        return self.service_replicas.get(service.name, 1)

    def led(self, service: ServiceInfo) -> bool:
        """Whether the service's `leader_methods` go to its leader cluster (several instances)."""
        return bool(service.leader_methods) and self.replicas_of(service) > 1


def leader_cluster_name(service: ServiceInfo) -> str:
    return f"{service.name}-leader"


# ---- small typed helpers ----


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def _any(message: betterproto2.Message) -> AnyProto:
    return AnyProto.pack(message)


def _socket(address: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=address, port_value=port))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def health_path_regex(prefix: str) -> str:
    """`/data/health`, with an optional trailing slash and query string (RE2 syntax)."""
    return rf"^/{re.escape(prefix)}/health/?(\?.*)?$"


def _path_regex_matcher(regex: str) -> HeaderMatcher:
    return HeaderMatcher(name=":path", string_match=StringMatcher(safe_regex=RegexMatcher(regex=regex)))


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=key, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


# ---- routes ----


def route_timeout(method: RpcMethod, service: ServiceInfo, settings: GatewaySettings) -> float:
    """Route timeout of a method in seconds; 0 means none (every stream, long unary calls)."""
    if method.server_streaming or method.client_streaming:
        return 0.0
    if method.full_name in settings.method_timeouts:
        return settings.method_timeouts[method.full_name]
    return settings.service_timeouts.get(service.name, settings.unary_timeout_s)


def _route_action(cluster: str, timeout_s: float, idle_timeout_s: float | None) -> RouteAction:
    action = RouteAction(cluster=cluster, timeout=_seconds(timeout_s))
    if idle_timeout_s is not None:
        action.idle_timeout = _seconds(idle_timeout_s)
    return action


#: Retries may add at most this share of a cluster's active requests (at least 3 at a time), so a
#: failing service is not hit with a multiple of its load.
RETRY_BUDGET_PERCENT = 20.0


def is_read(method: RpcMethod) -> bool:
    """A unary RPC whose every HTTP binding is GET: safe to send twice (the SDK retries the same)."""
    streaming = method.server_streaming or method.client_streaming
    return not streaming and bool(method.bindings) and all(b.verb == "get" for b in method.bindings)


def read_retry_policy(settings: GatewaySettings) -> RetryPolicy:
    """Connection failures, resets and UNAVAILABLE (a service restarting or draining), another host
    first; 25 ms backoff doubling to 250 ms, within the route's timeout."""
    return RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,unavailable",
        num_retries=settings.read_retries,
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts", typed_config=_any(PreviousHostsPredicate())
            )
        ],
        host_selection_retry_max_attempts=3,
        retry_back_off=RetryPolicyRetryBackOff(
            base_interval=datetime.timedelta(milliseconds=25),
            max_interval=datetime.timedelta(milliseconds=250),
        ),
    )


def service_routes(services: Sequence[RoutedService], settings: GatewaySettings) -> list[Route]:
    """gRPC routes: exact ones for methods with their own timeout or a retry policy (reads), then one
    prefix per service.

    The transcoder rewrites JSON calls to the gRPC path before routing, so these routes serve native
    gRPC, grpc-web and JSON alike.
    """
    exact: list[Route] = []
    prefixes: list[Route] = []
    for svc in services:
        default = settings.service_timeouts.get(svc.mesh.name, settings.unary_timeout_s)
        leader_only = set(svc.mesh.leader_methods) if settings.led(svc.mesh) else set()
        for method in svc.methods:
            timeout = route_timeout(method, svc.mesh, settings)
            streaming = method.server_streaming or method.client_streaming
            retried = settings.read_retries > 0 and is_read(method)
            to_leader = method.name in leader_only
            if timeout == default and not streaming and not retried and not to_leader:
                continue
            # Without an idle timeout as long as the route's, Envoy's stream idle timeout would cut
            # a quiet stream or a long unary call first.
            idle: float | None = (
                settings.stream_idle_timeout_s if streaming or timeout == 0 else max(timeout, 1.0)
            )
            if timeout == default and not streaming:  # a read only here for its retries: as its prefix
                idle = default if default > settings.request_idle_timeout_s else None
            target = leader_cluster_name(svc.mesh) if to_leader else svc.mesh.name
            action = _route_action(target, timeout, idle)
            if retried:
                action.retry_policy = read_retry_policy(settings)
            exact.append(Route(name=method.full_name, match=RouteMatch(path=method.grpc_path), route=action))
        idle_default = default if default > settings.request_idle_timeout_s else None
        prefixes.append(
            Route(
                name=svc.full_name,
                match=RouteMatch(prefix=f"/{svc.full_name}/"),
                route=_route_action(svc.mesh.name, default, idle_default),
            )
        )
    return exact + prefixes


_READ_METHODS = HeaderMatcher(
    name=":method", string_match=StringMatcher(safe_regex=RegexMatcher(regex="GET|HEAD"))
)


def page_routes(pages: Sequence[Page], *, keys: bool = False) -> list[Route]:
    """Envoy answers these itself; the transcoder is off on them so reject_unknown_method lets them by.

    With API keys (`keys`) the docs pages need none: they show the contracts, no data."""
    disabled = {TRANSCODER: _any(FilterConfig(disabled=True))}
    if keys:
        disabled[JWT_AUTHN] = _any(JwtPerRoute(disabled=True))
        disabled[RBAC] = _any(RbacPerRoute())  # no rules: RBAC off on this route
    redirects = [
        Route(
            name=f"redirect:{alias}",
            match=RouteMatch(path=alias),
            redirect=RedirectAction(
                path_redirect=page.path, response_code=RedirectActionRedirectResponseCode.FOUND
            ),
            typed_per_filter_config=dict(disabled),
        )
        for page in pages
        for alias in page.aliases
    ]
    not_allowed = [
        Route(
            name=f"page-method:{page.path}",
            match=RouteMatch(path=page.path),
            direct_response=DirectResponseAction(
                status=405,
                body=DataSource(
                    inline_string='{"code":12,"message":"only GET and HEAD are allowed here","details":'
                    '[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"METHOD_NOT_ALLOWED",'
                    '"domain":"gateway.kitrading","metadata":{}}]}'
                ),
            ),
            response_headers_to_add=[
                _header("allow", "GET, HEAD"),
                _header("content-type", "application/json"),
            ],
            typed_per_filter_config=dict(disabled),
        )
        for page in pages
    ]
    return (
        redirects
        + [
            Route(
                name=f"page:{page.path}",
                match=RouteMatch(path=page.path, headers=[_READ_METHODS]),
                # Bytes (base64 in the bootstrap), not a string: Envoy's YAML parser turns some of
                # PyYAML's escapes (`\_` for U+00A0 in Swagger UI's bundle) into other bytes, and a
                # block scalar can lose a trailing newline; base64 comes back byte for byte.
                direct_response=DirectResponseAction(
                    status=200, body=DataSource(inline_bytes=page.body.encode())
                ),
                response_headers_to_add=[
                    _header("content-type", page.content_type),
                    _header("cache-control", "no-cache"),
                    _header("x-content-type-options", "nosniff"),
                    *(_header(key, value) for key, value in page.headers),
                ],
                typed_per_filter_config=dict(disabled),
            )
            for page in pages
        ]
        + not_allowed
    )


# ---- CORS ----

#: What a page of an allowed origin may send and read: JSON and grpc-web calls with an API key.
CORS_ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
CORS_ALLOW_HEADERS = (
    f"content-type, {API_KEY_HEADER}, authorization, x-grpc-web, x-user-agent, grpc-timeout, "
    "x-request-id, traceparent"
)
CORS_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, retry-after, x-request-id"
CORS_MAX_AGE_S = 600


def cors_policy(settings: GatewaySettings) -> CorsPolicy | None:
    """The virtual host's CORS policy: exactly the configured origins, no credentials (a key travels
    in a header, never a cookie). None without origins: the CORS filter adds nothing, so a browser
    lets no other origin read an answer, and a preflight gets no `Access-Control-Allow-*`."""
    if not settings.cors_allowed_origins:
        return None
    return CorsPolicy(
        allow_origin_string_match=[StringMatcher(exact=o) for o in settings.cors_allowed_origins],
        allow_methods=CORS_ALLOW_METHODS,
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age=str(CORS_MAX_AGE_S),
        allow_credentials=False,
    )


#: The header the CORS route takes its cluster from. No request reaches the router with it: a `!` in
#: a header name is refused (400) by the Lua filter (`BODY_CONTENT_TYPE_LUA`), so the route never
#: forwards, and a request that nothing else serves is 404 (cluster not found).
CORS_NO_CLUSTER_HEADER = "kitrading!no-cluster"


def cors_route(settings: GatewaySettings) -> list[Route]:
    """The last route, with CORS origins only: any request carrying `Origin` that no other route
    takes. The CORS filter, which runs before the transcoder, finds its policy through the route of
    the path as sent, and only on a forwarding route (a direct response has no route entry); a JSON
    path (`/api/v1/symbols`) has no route until the transcoder rewrites it (then its gRPC route
    serves it), so without this one the filter would add no header and answer no preflight."""
    if not settings.cors_allowed_origins:
        return []
    return [
        Route(
            name="cors",
            match=RouteMatch(prefix="/", headers=[HeaderMatcher(name="origin", present_match=True)]),
            route=RouteAction(
                cluster_header=CORS_NO_CLUSTER_HEADER,
                cluster_not_found_response_code=RouteActionClusterNotFoundResponseCode.NOT_FOUND,
            ),
        )
    ]


# ---- TLS ----


def tls_transport_socket(settings: GatewaySettings) -> TransportSocket | None:
    """TLS on the listener from the settings' PEM files (None without them), ALPN h2 + http/1.1:
    the connection manager's AUTO codec then speaks whatever the client negotiated."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    context = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=os.path.abspath(settings.tls_cert_file)),
                    private_key=DataSource(filename=os.path.abspath(settings.tls_key_file)),
                )
            ],
            alpn_protocols=list(TLS_ALPN),
        )
    )
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=_any(context))


# ---- HTTP filters ----


def health_filters(registry: Sequence[ServiceInfo], settings: GatewaySettings) -> list[HttpFilter]:
    """One non-pass-through health check filter per service, answering from its cluster's health."""
    filters = [
        HttpFilter(
            name=f"{HEALTH_CHECK}.gateway",
            typed_config=_any(
                HealthCheckFilter(
                    pass_through_mode=False,
                    headers=[
                        HeaderMatcher(name=":path", string_match=StringMatcher(exact=GATEWAY_HEALTH_PATH))
                    ],
                )
            ),
        )
    ]
    for service in registry:
        filters.append(
            HttpFilter(
                name=f"{HEALTH_CHECK}.{service.name}",
                typed_config=_any(
                    HealthCheckFilter(
                        pass_through_mode=False,
                        headers=[_path_regex_matcher(health_path_regex(service.prefix))],
                        cluster_min_healthy_percentages={
                            service.name: Percent(value=settings.min_healthy_percent)
                        },
                    )
                ),
            )
        )
    return filters


def transcoder_filter(
    descriptor: bytes | str, service_names: Sequence[str], settings: GatewaySettings
) -> HttpFilter:
    """`descriptor`: the set's bytes (embedded) or a path Envoy reads at start."""
    config = GrpcJsonTranscoder(
        services=list(service_names),
        print_options=GrpcJsonTranscoderPrintOptions(
            add_whitespace=False,
            always_print_primitive_fields=True,
            always_print_enums_as_ints=False,
            preserve_proto_field_names=settings.preserve_proto_field_names,
            stream_sse_style_delimited=True,
        ),
        convert_grpc_status=True,
        request_validation_options=GrpcJsonTranscoderRequestValidationOptions(
            reject_unknown_method=True,
            reject_unknown_query_parameters=True,
            # PATCH /api/v1/symbols/ZZA with {"symbol": "ZZB"}: without this the body's id wins and
            # ZZB is changed; with it Envoy answers 400, so the resource in the path is the one changed.
            reject_binding_body_field_collisions=True,
        ),
        max_request_body_size=settings.max_request_body_bytes,
        max_response_body_size=settings.max_response_body_bytes,
    )
    if isinstance(descriptor, bytes):
        config.proto_descriptor_bin = descriptor
    else:
        config.proto_descriptor = descriptor
    return HttpFilter(name=TRANSCODER, typed_config=_any(config))


#: Runs before the transcoder: a body of a POST, PUT or PATCH must be declared JSON (the
#: transcoder's) or gRPC / grpc-web; a request without a body and without a content type passes.
#: Otherwise any web page could send a cross-site `text/plain` POST, which needs no CORS preflight,
#: and the transcoder would parse it as JSON anyway.
BODY_CONTENT_TYPE_LUA = """
local MAX_BODY = %(max_body)d
local MAX_URL = %(max_url)d
local writes = {POST = true, PUT = true, PATCH = true}
local UNQUOTABLE = "[%%c" .. string.char(34, 92) .. "]"  -- control characters, quote, backslash
function envoy_on_request(handle)
  local headers = handle:headers()
  -- a URL no call needs (names are at most a few hundred bytes): 414 saying so, not the gRPC
  -- server's metadata limit further on (a RESOURCE_EXHAUSTED naming internal headers)
  local url = #(headers:get(":path") or "")
  if url > MAX_URL then
    handle:respond({[":status"] = "414", ["content-type"] = "text/plain"},
      "the URL is " .. url .. " bytes long; at most " .. MAX_URL .. " are accepted")
    return
  end
  -- set by the gateway from a verified API key only, never taken from a client
  headers:remove("%(key_id)s")
  headers:remove("%(key_scope)s")
  -- HTTP allows !#$%%&'*+^`|~ in a header name, gRPC metadata only [0-9a-z_.-]: forwarded, such a
  -- header made the service's gRPC stack fail the call as INTERNAL (a 500)
  for name, _ in pairs(headers) do
    if string.sub(name, 1, 1) ~= ":" and string.find(name, "[^0-9a-z_%%.%%-]") then
      local shown = string.gsub(name, UNQUOTABLE, "?")
      -- plain text: the local reply mapper makes it the message of a google.rpc.Status (400)
      handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
        "header " .. shown .. " is not a valid name: gRPC metadata allows lower-case letters, digits, _ . -")
      return
    end
  end
  if not writes[headers:get(":method")] then return end
  local kind = string.lower(headers:get("content-type") or "")
  local length = headers:get("content-length")
  if length ~= nil and tonumber(length) ~= nil and tonumber(length) > MAX_BODY then
    handle:respond(
      {[":status"] = "413", ["content-type"] = "application/json", ["x-content-type-options"] = "nosniff"},
      '{"code":3,"message":"the request body is ' .. length .. ' bytes; at most ' .. MAX_BODY
        .. ' are accepted","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
        .. '"reason":"REQUEST_TOO_LARGE","domain":"gateway.kitrading","metadata":{}}]}')
    return
  end
  if string.find(kind, "^application/json") or string.find(kind, "^application/grpc") then return end
  if kind == "" and (length == nil or length == "0") and headers:get("transfer-encoding") == nil then
    return  -- no body at all (POST /api/v1/...:sync)
  end
  handle:respond(
    {[":status"] = "415", ["content-type"] = "application/json", ["x-content-type-options"] = "nosniff"},
    '{"code":3,"message":"a request body must be sent as application/json (content-type)",'
      .. '"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
      .. '"reason":"UNSUPPORTED_MEDIA_TYPE","domain":"gateway.kitrading","metadata":{}}]}')
end
"""


#: The longest path + query string accepted (414 beyond): ample for every call (names and ids are
#: bounded far below it), under what the services' gRPC servers take as metadata.
MAX_URL_BYTES = 8192


def body_content_type_filter(max_body_bytes: int) -> HttpFilter:
    """The Lua filter of `BODY_CONTENT_TYPE_LUA`; a declared body over `max_body_bytes` is 413."""
    source = BODY_CONTENT_TYPE_LUA % {
        "max_body": max_body_bytes,
        "max_url": MAX_URL_BYTES,
        "key_id": KEY_ID_HEADER,
        "key_scope": KEY_SCOPE_HEADER,
    }
    return HttpFilter(name=LUA, typed_config=_any(Lua(default_source_code=DataSource(inline_string=source))))


# ---- API keys: jwt_authn verifies, RBAC checks the scope ----


def method_scope(method: RpcMethod, settings: GatewaySettings) -> str:
    """`read` for a method bound to GET only, `write` for any other binding (or none), unless
    `settings.scope_overrides` names it."""
    if method.full_name in settings.scope_overrides:
        return settings.scope_overrides[method.full_name]
    if method.bindings and all(b.verb.lower() in ("get", "head") for b in method.bindings):
        return "read"
    return "write"


def scoped_paths(services: Sequence[RoutedService], settings: GatewaySettings) -> dict[str, list[str]]:
    """Scope -> the gRPC paths of the methods that need it (`read` also covers every unlisted path)."""
    out: dict[str, list[str]] = {scope: [] for scope in SCOPES}
    for svc in services:
        for method in svc.methods:
            out[method_scope(method, settings)].append(method.grpc_path)
    return out


def _key_claim(claim: str, values: Sequence[str]) -> Principal:
    """A verified key whose `claim` is one of `values` (exact matches: RE2 caps a regex's size)."""
    ids = [
        Principal(
            sourced_metadata=SourcedMetadata(
                metadata_matcher=MetadataMatcher(
                    filter=JWT_AUTHN,
                    path=[
                        MetadataMatcherPathSegment(key=KEY_METADATA),
                        MetadataMatcherPathSegment(key=claim),
                    ],
                    value=ValueMatcher(string_match=StringMatcher(exact=value)),
                )
            )
        )
        for value in values
    ]
    return ids[0] if len(ids) == 1 else Principal(or_ids=PrincipalSet(ids=ids))


def _exact_paths(paths: Sequence[str]) -> Permission:
    return Permission(
        or_rules=PermissionSet(
            rules=[Permission(url_path=PathMatcher(path=StringMatcher(exact=p))) for p in paths]
        )
    )


def rbac_rules(services: Sequence[RoutedService], settings: GatewaySettings, keys: ApiKeys) -> RbacRules:
    """ALLOW policies, one per scope: its methods' paths, and a key of that scope or a stronger one
    that is not revoked. `read` covers every path not claimed by a stronger scope (unknown methods,
    reflection), so nothing is reachable without a key."""
    paths = scoped_paths(services, settings)
    stronger = [p for scope in SCOPES[1:] for p in paths[scope]]
    policies: dict[str, Policy] = {}
    for scope in SCOPES:
        if scope == "read":
            permission = Permission(not_rule=_exact_paths(stronger)) if stronger else Permission(any=True)
        elif paths[scope]:
            permission = _exact_paths(paths[scope])
        else:
            continue
        principals = [_key_claim("scope", scopes_granting(scope))]
        if keys.revoked:
            principals.append(Principal(not_id=_key_claim("jti", keys.revoked)))
        policies[scope] = Policy(
            permissions=[permission], principals=[Principal(and_ids=PrincipalSet(ids=principals))]
        )
    return RbacRules(action=RbacAction.ALLOW, policies=policies)


def auth_filters(
    services: Sequence[RoutedService], settings: GatewaySettings
) -> tuple[list[HttpFilter], list[HttpFilter]]:
    """(jwt_authn, ahead of the transcoder; RBAC, after it, where every call has its gRPC path).

    Both empty without API keys. jwt_authn reads the key from `x-api-key` or `Authorization: Bearer`,
    checks the HS256 signature, the issuer and any expiry, removes the token from the request, and
    puts the claims in dynamic metadata for RBAC and the key id and scope in request headers."""
    keys = settings.api_keys
    if keys is None:
        return [], []
    provider = JwtProvider(
        issuer=ISSUER,
        local_jwks=DataSource(inline_string=jwks(keys.secret)),
        from_headers=[
            JwtHeader(name=API_KEY_HEADER),
            JwtHeader(name="authorization", value_prefix="Bearer "),
        ],
        forward=False,
        payload_in_metadata=KEY_METADATA,
        claim_to_headers=[
            JwtClaimToHeader(header_name=KEY_ID_HEADER, claim_name="jti"),
            JwtClaimToHeader(header_name=KEY_SCOPE_HEADER, claim_name="scope"),
        ],
    )
    jwt = JwtAuthentication(
        providers={JWT_PROVIDER: provider},
        rules=[
            RequirementRule(match=RouteMatch(prefix="/"), requires=JwtRequirement(provider_name=JWT_PROVIDER))
        ],
    )
    rbac = Rbac(rules=rbac_rules(services, settings, keys))
    return (
        [HttpFilter(name=JWT_AUTHN, typed_config=_any(jwt))],
        [HttpFilter(name=RBAC, typed_config=_any(rbac))],
    )


def http_filters(
    registry: Sequence[ServiceInfo],
    descriptor: bytes | str,
    service_names: Sequence[str],
    settings: GatewaySettings,
    services: Sequence[RoutedService] = (),
) -> list[HttpFilter]:
    authn, rbac = auth_filters(services, settings)
    return [
        # first: it answers an allowed origin's preflight before any check, and its response headers
        # reach every answer, the other filters' own (401, 415, health) included
        HttpFilter(name=CORS, typed_config=_any(Cors())),
        *health_filters(registry, settings),
        body_content_type_filter(settings.max_request_body_bytes),
        HttpFilter(name=GRPC_WEB, typed_config=_any(GrpcWeb())),
        # after grpc_web, so its 401 reaches a grpc-web client as grpc-status 16 in the trailers
        *authn,
        # just before the transcoder, which would drop unknown body fields and take "yes" for true
        *(
            [strict_json.strict_json_filter(descriptor, services)]
            if services and settings.strict_json
            else []
        ),
        transcoder_filter(descriptor, service_names, settings),
        *rbac,
        # after RBAC: a key's bucket only for a verified key; after the transcoder: by gRPC path
        *(
            rate_limits.rate_limit_filters(settings.rate_limits, keys=settings.api_keys is not None)
            if settings.rate_limited
            else []
        ),
        HttpFilter(
            name=GRPC_STATS,
            typed_config=_any(GrpcStatsConfig(stats_for_all_methods=True, enable_upstream_stats=True)),
        ),
        HttpFilter(name=ROUTER, typed_config=_any(Router())),
    ]


# ---- local replies and access log ----


def _status_is(code: int, op: ComparisonFilterOp = ComparisonFilterOp.EQ) -> AccessLogFilter:
    return AccessLogFilter(
        status_code_filter=StatusCodeFilter(
            comparison=ComparisonFilter(
                op=op, value=RuntimeUInt32(default_value=code, runtime_key="kitrading.status")
            )
        )
    )


def _json_body(fields: Mapping[str, Any]) -> SubstitutionFormatString:
    return SubstitutionFormatString(json_format=Struct.from_dict(dict(fields)))


#: Envoy's own error answers to HTTP clients as google.rpc.Status JSON, like the transcoded errors of
#: the services: HTTP status -> (gRPC code, ErrorInfo reason). Any other status >= 400: UNKNOWN.
LOCAL_ERRORS: dict[int, tuple[int, str]] = {
    400: (3, "INVALID_REQUEST"),  # unknown query parameter, malformed JSON body
    404: (5, "UNKNOWN_PATH"),  # no route, no HTTP binding
    408: (4, "REQUEST_TIMEOUT"),
    413: (8, "REQUEST_TOO_LARGE"),
    414: (3, "URI_TOO_LONG"),  # a path and query over MAX_URL_BYTES
    429: (8, "RATE_LIMITED"),
    500: (13, "GATEWAY_ERROR"),
    502: (14, "BAD_UPSTREAM"),
    503: (14, "SERVICE_UNAVAILABLE"),  # no healthy upstream, overload, circuit breaker open
    504: (4, "UPSTREAM_TIMEOUT"),
}


def _status_body(code: int, reason: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": "%LOCAL_REPLY_BODY%",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "gateway.kitrading",
                "metadata": {"envoy": "%RESPONSE_CODE_DETAILS%"},
            }
        ],
    }


_TEMPLATE_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def template_regex(template: str) -> str:
    """A `:path` regex for a `google.api.http` path template (with any query string): a variable
    is one segment (`[^/?:]+`), `{name=**}` or `{name=a/*}` any run of segments."""
    out, at = [], 0
    for m in _TEMPLATE_VARIABLE.finditer(template):
        out.append(re.escape(template[at : m.start()]))
        out.append("[^?]+" if (m.group(2) and "/" in m.group(2)) or m.group(2) == "**" else "[^/?:]+")
        at = m.end()
    out.append(re.escape(template[at:]))
    return "".join(out) + r"(\?.*)?"


def method_mappers(services: Sequence[RoutedService], http_client: AccessLogFilter) -> list[ResponseMapper]:
    """The transcoder answers 404 for a known path with the wrong method: 405 with `Allow` instead.

    One mapper per path template, most literal first (`/symbols/{symbol}:sync` before `/symbols/{symbol}`,
    whose variable cannot hold a `:`), each with the methods the contracts bind to it."""
    verbs: dict[str, set[str]] = {}
    literal: dict[str, int] = {}
    for svc in services:
        for method in svc.methods:
            for binding in method.bindings:
                regex = template_regex(binding.template)
                verbs.setdefault(regex, set()).add(binding.verb.upper())
                literal[regex] = len(_TEMPLATE_VARIABLE.sub("", binding.template))
    mappers = []
    for regex in sorted(verbs, key=lambda r: -literal[r]):
        allowed = ", ".join(sorted(verbs[regex]))
        path = AccessLogFilter(header_filter=HeaderFilter(header=_path_regex_matcher(regex)))
        mappers.append(
            ResponseMapper(
                filter=AccessLogFilter(and_filter=AndFilter(filters=[http_client, path, _status_is(404)])),
                status_code=405,
                headers_to_add=[_header("allow", allowed)],
                body_format_override=_json_body(
                    {
                        "code": 12,
                        "message": f"%REQ(:METHOD)% is not allowed here; allowed: {allowed}",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": "METHOD_NOT_ALLOWED",
                                "domain": "gateway.kitrading",
                                "metadata": {"allow": allowed},
                            }
                        ],
                    }
                ),
            )
        )
    return mappers


def _error_body(code: int, message: str, reason: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "gateway.kitrading",
                "metadata": dict(metadata),
            }
        ],
    }


def _header_in(name: str, values: Sequence[str]) -> AccessLogFilter:
    """The request header `name` is one of `values` (exact matches: RE2 caps a regex's size)."""
    filters = [
        AccessLogFilter(
            header_filter=HeaderFilter(
                header=HeaderMatcher(name=name, string_match=StringMatcher(exact=value))
            )
        )
        for value in values
    ]
    return filters[0] if len(filters) == 1 else AccessLogFilter(or_filter=OrFilter(filters=filters))


def auth_mappers(
    services: Sequence[RoutedService], settings: GatewaySettings, http_client: AccessLogFilter
) -> list[ResponseMapper]:
    """jwt_authn's 401 and RBAC's 403, said clearly: JSON google.rpc.Status for HTTP clients, a
    grpc-message for gRPC ones (grpc-status 16 / 7 from the HTTP code). A revoked key is RBAC's 403
    turned into 401 UNAUTHENTICATED. Empty without API keys."""
    keys = settings.api_keys
    if keys is None:
        return []
    key_id, scope = f"%REQ({KEY_ID_HEADER})%", f"%REQ({KEY_SCOPE_HEADER})%"
    how = f"send one as the {API_KEY_HEADER} header (gRPC metadata) or Authorization: Bearer"
    cases: list[tuple[list[AccessLogFilter], int | None, int, str, str, dict[str, str]]] = [
        (
            [_status_is(401)],
            None,
            16,
            f"a valid API key is needed ({how}; `kitrading keys create` makes one): %LOCAL_REPLY_BODY%",
            "API_KEY_INVALID",
            {"envoy": "%RESPONSE_CODE_DETAILS%"},
        )
    ]
    if keys.revoked:
        cases.append(
            (
                [_status_is(403), _header_in(KEY_ID_HEADER, keys.revoked)],
                401,
                16,
                f"API key {key_id} is revoked",
                "API_KEY_REVOKED",
                {"keyId": key_id},
            )
        )
    paths = scoped_paths(services, settings)
    for needed in reversed(SCOPES[1:]):
        if paths[needed]:
            cases.append(
                (
                    [_status_is(403), _header_in(":path", paths[needed])],
                    None,
                    7,
                    f"API key {key_id} has scope {scope}; %REQ(:PATH)% needs scope {needed}",
                    "API_KEY_SCOPE",
                    {"keyId": key_id, "scope": scope, "required": needed},
                )
            )
    cases.append(
        (
            [_status_is(403)],
            None,
            7,
            f"API key {key_id} has scope {scope}; %REQ(:PATH)% needs scope read",
            "API_KEY_SCOPE",
            {"keyId": key_id, "scope": scope, "required": "read"},
        )
    )
    mappers = []
    for filters, status, code, message, reason, metadata in cases:
        for clients in ("http", "grpc"):
            matched = [*filters, http_client] if clients == "http" else filters
            mapper = ResponseMapper(
                filter=AccessLogFilter(and_filter=AndFilter(filters=matched))
                if len(matched) > 1
                else matched[0],
                body_format_override=_json_body(_error_body(code, message, reason, metadata))
                if clients == "http"
                else SubstitutionFormatString(text_format_source=DataSource(inline_string=message)),
            )
            if status is not None:
                mapper.status_code = status
            mappers.append(mapper)
    return mappers


def rate_limit_mappers(settings: GatewaySettings, http_client: AccessLogFilter) -> list[ResponseMapper]:
    """The rate limit filters' 429 (gRPC: RESOURCE_EXHAUSTED) naming the limit that was hit, for HTTP
    clients as google.rpc.Status JSON (ErrorInfo RATE_LIMITED with the limit, RetryInfo), for gRPC ones
    as grpc-message.
    Empty while the gateway does not limit."""
    if not settings.rate_limited:
        return []
    limits = settings.rate_limits
    who = "API key %REQ(X-KITRADING-KEY-ID)%" if settings.api_keys is not None else "client address"
    # Envoy's own 429 is the rate limit filters' (the RL flag is set only after the reply is mapped)
    limited = _status_is(429)
    expensive = _header_in(":path", rate_limits.expensive_paths(limits.expensive_methods))
    cases: list[tuple[list[AccessLogFilter], str, dict[str, str], int]] = [
        (
            [limited, expensive],
            f"rate limited: %REQ(:PATH)% starts work (training, sync, analysis, ...), at most "
            f"{limits.expensive_per_minute} such calls a minute per {who} ({limits.expensive_burst} at "
            f"once); retry after {limits.expensive_retry_after_s} s",
            {
                "limit": "expensive",
                "perMinute": str(limits.expensive_per_minute),
                "burst": str(limits.expensive_burst),
                "retryAfterSeconds": str(limits.expensive_retry_after_s),
            },
            limits.expensive_retry_after_s,
        ),
        (
            [limited],
            f"rate limited: at most {limits.calls_per_second} calls a second per {who} "
            f"({limits.burst} at once); retry after {limits.calls_retry_after_s} s",
            {
                "limit": "calls",
                "perSecond": str(limits.calls_per_second),
                "burst": str(limits.burst),
                "retryAfterSeconds": str(limits.calls_retry_after_s),
            },
            limits.calls_retry_after_s,
        ),
    ]
    mappers = []
    for filters, message, metadata, retry_after_s in cases:
        body = _error_body(8, message, "RATE_LIMITED", metadata)
        # as the services' RESOURCE_EXHAUSTED with a retry delay (`services.runtime.status`)
        body["details"].append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after_s}s"}
        )
        for clients in ("http", "grpc"):
            matched = [*filters, http_client] if clients == "http" else filters
            mappers.append(
                ResponseMapper(
                    filter=AccessLogFilter(and_filter=AndFilter(filters=matched))
                    if len(matched) > 1
                    else matched[0],
                    body_format_override=_json_body(body)
                    if clients == "http"
                    else SubstitutionFormatString(text_format_source=DataSource(inline_string=message)),
                )
            )
    return mappers


#: A path Envoy's normalisation refuses (400, empty body): an encoded NUL, or a `%` not followed by two
#: hex digits (RE2: no look-ahead, so the three ways a `%` can go wrong are spelt out).
BAD_PATH_REGEX = r"^[^?]*%(00|[^0-9A-Fa-f]|[0-9A-Fa-f][^0-9A-Fa-f]|[0-9A-Fa-f]?$).*$"


def local_reply_config(
    registry: Sequence[ServiceInfo],
    services: Sequence[RoutedService] = (),
    settings: GatewaySettings | None = None,
) -> LocalReplyConfig:
    """JSON bodies for Envoy's own answers to HTTP clients (gRPC clients get grpc-status as usual).

    The health answers name the service; other errors (unknown path or query parameter, no healthy
    upstream, timeouts) become google.rpc.Status JSON (`LOCAL_ERRORS`). Only mapped replies are
    rewritten, so the docs pages keep their bodies.
    """
    mappers: list[ResponseMapper] = []
    for service in registry:
        path = AccessLogFilter(
            header_filter=HeaderFilter(header=_path_regex_matcher(health_path_regex(service.prefix)))
        )
        for code, status in ((200, "SERVING"), (503, "NOT_SERVING")):
            mappers.append(
                ResponseMapper(
                    filter=AccessLogFilter(and_filter=AndFilter(filters=[path, _status_is(code)])),
                    body_format_override=_json_body(
                        {"service": service.name, "grpcService": service.grpc_service, "status": status}
                    ),
                )
            )
    gateway_path = AccessLogFilter(
        header_filter=HeaderFilter(
            header=HeaderMatcher(name=":path", string_match=StringMatcher(exact=GATEWAY_HEALTH_PATH))
        )
    )
    mappers.append(
        ResponseMapper(
            filter=AccessLogFilter(and_filter=AndFilter(filters=[gateway_path, _status_is(200)])),
            body_format_override=_json_body({"service": "gateway", "status": "SERVING"}),
        )
    )
    # HTTP clients: no gRPC content type, or a JSON call the transcoder already turned into gRPC (it
    # keeps the original path in x-envoy-original-path). Native gRPC and grpc-web clients keep Envoy's
    # grpc-status/grpc-message answer.
    not_grpc = AccessLogFilter(
        header_filter=HeaderFilter(
            header=HeaderMatcher(
                name="content-type",
                string_match=StringMatcher(prefix="application/grpc"),
                invert_match=True,
                treat_missing_header_as_empty=True,
            )
        )
    )
    transcoded = AccessLogFilter(
        header_filter=HeaderFilter(header=HeaderMatcher(name="x-envoy-original-path", present_match=True))
    )
    http_client = AccessLogFilter(or_filter=OrFilter(filters=[not_grpc, transcoded]))
    if settings is not None:
        mappers += auth_mappers(services, settings, http_client)
        mappers += rate_limit_mappers(settings, http_client)
    mappers += method_mappers(services, http_client)
    # Envoy's own path check (normalize_path) refuses these with an empty body: say what is wrong.
    # (No percent sign in the message: Envoy would read it as the start of a format command.)
    bad_path = AccessLogFilter(header_filter=HeaderFilter(header=_path_regex_matcher(BAD_PATH_REGEX)))
    mappers.append(
        ResponseMapper(
            filter=AccessLogFilter(and_filter=AndFilter(filters=[_status_is(400), bad_path])),
            body_format_override=_json_body(
                _error_body(
                    3,
                    "the path is not a valid URL path: it holds an encoded NUL byte or a malformed "
                    "percent-escape, which no name may contain",
                    "INVALID_PATH",
                    {"envoy": "%RESPONSE_CODE_DETAILS%"},
                )
            ),
        )
    )
    for http_status, (code, reason) in [*LOCAL_ERRORS.items(), (400, (2, "GATEWAY_ERROR"))]:
        op = ComparisonFilterOp.EQ if http_status in LOCAL_ERRORS else ComparisonFilterOp.GE
        mappers.append(
            ResponseMapper(
                filter=AccessLogFilter(
                    and_filter=AndFilter(filters=[http_client, _status_is(http_status, op)])
                ),
                body_format_override=_json_body(_status_body(code, reason)),
            )
        )
    return LocalReplyConfig(mappers=mappers)


ACCESS_LOG_FORMAT: dict[str, str] = {
    "time": "%START_TIME%",
    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "grpc_path": "%REQ(:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "route": "%ROUTE_NAME%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "upstream": "%UPSTREAM_HOST%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    # the API key's id (never the token), set by the gateway from a verified key
    "key_id": "%REQ(X-KITRADING-KEY-ID)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    # the request's trace (tracing on): the same id as in the services' log lines and error bodies
    "trace_id": "%TRACE_ID%",
}


def access_logs(settings: GatewaySettings) -> list[AccessLog]:
    """JSON lines on stdout, without the health probes (compose, watchdog) that would drown them."""
    if not settings.access_log:
        return []
    return [
        AccessLog(
            name="envoy.access_loggers.stdout",
            filter=AccessLogFilter(not_health_check_filter=NotHealthCheckFilter()),
            typed_config=_any(StdoutAccessLog(log_format=_json_body(ACCESS_LOG_FORMAT))),
        )
    ]


# ---- listener, clusters, bootstrap ----


def virtual_host(routes: list[Route], settings: GatewaySettings) -> VirtualHost:
    host = VirtualHost(name="mesh", domains=["*"], routes=routes)
    policy = cors_policy(settings)
    if policy is not None:
        host.typed_per_filter_config = {CORS: _any(policy)}
    return host


def connection_manager(
    routes: list[Route],
    filters: list[HttpFilter],
    registry: Sequence[ServiceInfo],
    pages: Sequence[Page],
    settings: GatewaySettings,
    services: Sequence[RoutedService] = (),
) -> HttpConnectionManager:
    largest_page = max((len(p.body.encode()) for p in pages), default=0)
    return HttpConnectionManager(
        stat_prefix="gateway",
        # AUTO: HTTP/1.1, and HTTP/2 with prior knowledge (h2c: native gRPC) on the same port.
        codec_type=HttpConnectionManagerCodecType.AUTO,
        server_name="kitrading-gateway",
        use_remote_address=True,
        normalize_path=True,
        merge_slashes=True,
        stream_idle_timeout=_seconds(settings.request_idle_timeout_s),
        request_headers_timeout=_seconds(settings.request_headers_timeout_s),
        max_request_headers_kb=settings.max_request_headers_kb,
        common_http_protocol_options=CoreHttpProtocolOptions(idle_timeout=_seconds(3600)),
        http2_protocol_options=Http2ProtocolOptions(
            max_concurrent_streams=1024,
            initial_stream_window_size=1 * _MiB,
            initial_connection_window_size=4 * _MiB,
        ),
        route_config=RouteConfiguration(
            name="gateway",
            # Default 4 KiB; the docs pages and OpenAPI documents are inline direct responses.
            max_direct_response_body_size_bytes=max(64 * 1024, 2 * largest_page),
            virtual_hosts=[virtual_host(routes, settings)],
        ),
        http_filters=filters,
        local_reply_config=local_reply_config(registry, services, settings),
        access_log=access_logs(settings),
        tracing=gateway_tracing.connection_manager_tracing(settings.tracing),
    )


def cluster(
    service: ServiceInfo,
    settings: GatewaySettings,
    env: Mapping[str, str] | None = None,
    *,
    leader: bool = False,
) -> Cluster:
    """One HTTP/2 cluster per service with active gRPC health checks and no panic routing: an
    endpoint per instance (one, unless `service_replicas` says more), the least loaded first.

    `leader`: the `<name>-leader` cluster of the same instances, whose health check asks for the
    service's `leader_health_name`, SERVING only on the instance holding the service's lease: its
    `leader_methods` (training, schedules) reach that one wherever it runs, and a new holder ~1 s
    after the old one stopped."""
    host, port = settings.host_for(service), settings.port_for(service, env)
    static = _is_ip(host)
    name = leader_cluster_name(service) if leader else service.name
    # instances on one host (`kitrading up`) have ports of their own; a name (compose, a Kubernetes
    # headless Service) resolves to one address per instance, all on the same port
    count = settings.replicas_of(service) if static else 1
    ports = [port + INSTANCE_PORT_STEP * k for k in range(count)]
    result = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if static else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_seconds(settings.connect_timeout_s),
        lb_policy=ClusterLbPolicy.LEAST_REQUEST,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_socket(host, p))) for p in ports]
                )
            ],
        ),
        typed_extension_protocol_options={
            HTTP_PROTOCOL_OPTIONS: _any(
                HttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions(
                            connection_keepalive=KeepaliveSettings(interval=_seconds(30), timeout=_seconds(5))
                        )
                    )
                )
            )
        },
        health_checks=[
            HealthCheck(
                timeout=_seconds(settings.health_check_timeout_s),
                interval=_seconds(settings.health_check_interval_s),
                # Envoy checks an idle cluster every 60 s unless told otherwise.
                no_traffic_interval=_seconds(settings.health_check_interval_s),
                no_traffic_healthy_interval=_seconds(settings.health_check_interval_s),
                unhealthy_threshold=1,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(
                    service_name=service.leader_health_name if leader else service.grpc_service
                ),
            )
        ],
        # 0 %: with no healthy host, answer 503 at once instead of trying the unhealthy ones anyway.
        common_lb_config=ClusterCommonLbConfig(healthy_panic_threshold=Percent(value=0.0)),
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    max_connections=settings.max_upstream_connections,
                    max_pending_requests=settings.max_pending_requests,
                    max_requests=settings.max_upstream_requests,
                    max_retries=3,
                    retry_budget=CircuitBreakersThresholdsRetryBudget(
                        budget_percent=Percent(value=RETRY_BUDGET_PERCENT), min_retry_concurrency=3
                    ),
                )
            ]
        ),
    )
    if not static:
        result.dns_lookup_family = ClusterDnsLookupFamily.V4_PREFERRED
    return result


def overload_manager(settings: GatewaySettings) -> OverloadManager:
    return OverloadManager(
        refresh_interval=_seconds(0.25),
        resource_monitors=[
            ResourceMonitor(
                name=FIXED_HEAP,
                typed_config=_any(FixedHeapConfig(max_heap_size_bytes=settings.max_heap_bytes)),
            ),
            ResourceMonitor(
                name=DOWNSTREAM_CONNECTIONS,
                typed_config=_any(
                    DownstreamConnectionsConfig(
                        max_active_downstream_connections=settings.max_downstream_connections
                    )
                ),
            ),
        ],
        actions=[
            OverloadAction(
                name="envoy.overload_actions.shrink_heap",
                triggers=[Trigger(name=FIXED_HEAP, threshold=ThresholdTrigger(value=0.90))],
            ),
            OverloadAction(
                name="envoy.overload_actions.stop_accepting_requests",
                triggers=[Trigger(name=FIXED_HEAP, threshold=ThresholdTrigger(value=0.98))],
            ),
        ],
    )


REFLECTION_CLUSTER = "reflection"


def reflection_routes(settings: GatewaySettings) -> list[Route]:
    """`/grpc.reflection.*` (v1 and v1alpha) to the mesh-wide reflection server, for grpcurl."""
    if settings.reflection_port is None:
        return []
    return [
        Route(
            name="grpc.reflection",
            match=RouteMatch(prefix="/grpc.reflection."),
            route=_route_action(REFLECTION_CLUSTER, 0, settings.request_idle_timeout_s),
        )
    ]


def reflection_clusters(settings: GatewaySettings) -> list[Cluster]:
    if settings.reflection_port is None:
        return []
    info = ServiceInfo(
        REFLECTION_CLUSTER,
        settings.reflection_port,
        REFLECTION_CLUSTER,
        "",
        "gateway.reflection",
        gpu=False,
        title="mesh-wide gRPC reflection",
    )
    overrides = replace(
        settings, service_ports={**settings.service_ports, REFLECTION_CLUSTER: settings.reflection_port}
    )
    return [cluster(info, overrides)]


def bootstrap(
    *,
    registry: Sequence[ServiceInfo],
    services: Sequence[RoutedService],
    descriptor: bytes | str,
    pages: Sequence[Page],
    settings: GatewaySettings,
    env: Mapping[str, str] | None = None,
) -> Bootstrap:
    """The whole bootstrap: one listener, one cluster per registry service, admin, overload manager."""
    keys = settings.api_keys is not None
    routes = page_routes(pages, keys=keys) + service_routes(services, settings) + reflection_routes(settings)
    routes += cors_route(settings)
    filters = http_filters(registry, descriptor, [s.full_name for s in services], settings, services)
    hcm = connection_manager(routes, filters, registry, pages, settings, services)
    chain = FilterChain(
        filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm))]
    )
    tls = tls_transport_socket(settings)
    if tls is not None:  # every connection must speak TLS: plain HTTP to this port fails its handshake
        chain.transport_socket = tls
    listener = Listener(
        name="gateway",
        address=_socket(settings.listen_address, settings.port),
        filter_chains=[chain],
        # a filter that reads a whole body (the strict-JSON check) may buffer up to the body limit,
        # as the transcoder does (Envoy's default, 1 MiB, would refuse bigger bodies with 413)
        per_connection_buffer_limit_bytes=settings.max_request_body_bytes,
    )
    return Bootstrap(
        node=Node(id=settings.node_id, cluster="kitrading"),
        admin=Admin(address=_socket(settings.admin_address, settings.admin_port)),
        static_resources=BootstrapStaticResources(
            listeners=[listener],
            clusters=[cluster(service, settings, env) for service in registry]
            + [cluster(service, settings, env, leader=True) for service in registry if settings.led(service)]
            + reflection_clusters(settings)
            + [c for c in [gateway_tracing.collector_cluster(settings.tracing)] if c is not None],
        ),
        overload_manager=overload_manager(settings),
    )


def to_dict(message: betterproto2.Message) -> dict[str, Any]:
    """Proto JSON with the proto field names (snake_case), as in Envoy's own docs."""
    result: dict[str, Any] = message.to_dict(casing=betterproto2.Casing.SNAKE)
    # Round-trip through JSON so callers get plain, YAML-safe builtins only. Struct numbers are doubles
    # (`3.0`), which Envoy would print as "3.0" in json_format bodies: integral ones become ints.
    plain: dict[str, Any] = json.loads(json.dumps(result), parse_float=_number)
    return plain


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value
