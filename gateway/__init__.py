"""The mesh's gateway: an Envoy bootstrap generated from the service registry and the contracts.

One port (3000) serves JSON/HTTP (gRPC-JSON transcoding, server streams as Server-Sent Events), native
gRPC and grpc-web, `/<prefix>/health` per service, `/<prefix>/docs` and `/<prefix>/openapi.json`
generated from the descriptor set, and an index at `/`. See docs/gateway.md.
"""

from gateway.envoy_config import GATEWAY_HEALTH_PATH, METHOD_TIMEOUTS, SERVICE_TIMEOUTS, GatewaySettings
from gateway.run import (
    build_config,
    envoy_binary,
    envoy_command,
    render_config,
    start_envoy,
    stop_envoy,
    validate_config,
    wait_until_ready,
    write_config,
)

__all__ = [
    "GATEWAY_HEALTH_PATH",
    "METHOD_TIMEOUTS",
    "SERVICE_TIMEOUTS",
    "GatewaySettings",
    "build_config",
    "envoy_binary",
    "envoy_command",
    "render_config",
    "start_envoy",
    "stop_envoy",
    "validate_config",
    "wait_until_ready",
    "write_config",
]
