"""The gateway's part of a trace: Envoy's OpenTelemetry tracer, on the same variables as the services.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, Envoy starts (or continues, from
an incoming `traceparent`) a span for every request, sends its context upstream as `traceparent`
(the transcoded gRPC call's metadata, which the service's interceptor continues), and exports its
spans over OTLP/gRPC to that endpoint through a cluster of its own (`otel_collector`). The sampling
share of new traces follows `OTEL_TRACES_SAMPLER` / `_ARG` (`services.runtime.tracing`). Off
(the default, or `OTEL_SDK_DISABLED=true`), the bootstrap has no tracing section at all.

Envoy has no file exporter: with only `KITRADING_TRACES_FILE` set, the services write their spans
and the gateway's part stays out (its access log still has each request's trace id).
"""

from __future__ import annotations

import datetime
import ipaddress

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http2ProtocolOptions,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManagerTracing,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import UpstreamTlsContext
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any as AnyProto

from services.runtime.tracing import TracingSettings

COLLECTOR_CLUSTER = "otel_collector"
SERVICE_NAME = "kitrading-gateway"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _any(message: betterproto2.Message) -> AnyProto:
    return AnyProto.pack(message)


def exports(settings: TracingSettings) -> bool:
    """Whether Envoy traces: only to an OTLP endpoint (it has no file or console exporter)."""
    return settings.exporter == "otlp" and settings.endpoint is not None


def connection_manager_tracing(settings: TracingSettings) -> HttpConnectionManagerTracing | None:
    """The HTTP connection manager's `tracing` section, or None while the gateway does not trace."""
    if not exports(settings):
        return None
    config = OpenTelemetryConfig(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=COLLECTOR_CLUSTER),
            timeout=datetime.timedelta(seconds=1),
        ),
        service_name=SERVICE_NAME,
    )
    return HttpConnectionManagerTracing(
        provider=TracingHttp(name="envoy.tracers.opentelemetry", typed_config=_any(config)),
        # New traces: the configured share. A request with a sampled `traceparent` stays sampled.
        random_sampling=Percent(value=100.0 * settings.sample_ratio),
        # A span per upstream attempt (its own retries visible), child of the request's span.
        spawn_upstream_span=True,
    )


def collector_cluster(settings: TracingSettings) -> Cluster | None:
    """The OTLP/gRPC collector as an HTTP/2 cluster (TLS for an `https://` endpoint)."""
    if not exports(settings):
        return None
    host, port, tls = settings.otlp_address()
    try:
        ipaddress.ip_address(host)
        static = True
    except ValueError:
        static = False
    cluster = Cluster(
        name=COLLECTOR_CLUSTER,
        type=ClusterDiscoveryType.STATIC if static else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=datetime.timedelta(seconds=1),
        load_assignment=ClusterLoadAssignment(
            cluster_name=COLLECTOR_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=Address(socket_address=SocketAddress(address=host, port_value=port))
                            )
                        )
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            _HTTP_PROTOCOL_OPTIONS: _any(
                HttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions()
                    )
                )
            )
        },
    )
    if not static:
        cluster.dns_lookup_family = ClusterDnsLookupFamily.V4_PREFERRED
    if tls:
        cluster.transport_socket = TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=_any(UpstreamTlsContext(sni=host))
        )
    return cluster
