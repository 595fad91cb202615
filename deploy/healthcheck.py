"""Container health probe: exit 0 when a mesh service answers SERVING, else 1.

    python deploy/healthcheck.py --port 3001 --service kitrading.data.v1.DataService   # gRPC health
    python deploy/healthcheck.py --http http://127.0.0.1:3000/gateway/health           # HTTP 2xx

Used by docker-compose.yml (`healthcheck.test`). Standard library plus grpcio-health-checking only,
so it starts fast and works in any image that runs the services. With `--name data` and no `--port`,
the port is `$KITRADING_DATA_PORT`, else the registry's default (when `kitrading` is importable). The
host defaults to 127.0.0.1: the probe runs inside the service's own container. One line on stdout says
what was seen; the exit code is what Docker reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def grpc_status(address: str, service: str, timeout_s: float) -> str:
    """The `grpc.health.v1` status name of `service` at `address` (UNREACHABLE when no answer)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return "UNKNOWN_SERVICE" if code == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def http_status(url: str, timeout_s: float) -> str:
    """SERVING for a 2xx answer, else `HTTP <code>` or UNREACHABLE."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            code = int(response.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError):
        return "UNREACHABLE"
    return "SERVING" if 200 <= code < 300 else f"HTTP {code}"


def default_port(name: str) -> int | None:
    """`$KITRADING_<NAME>_PORT`, else the registry's default port of `name`, else None."""
    if not name:
        return None
    raw = os.environ.get(f"KITRADING_{name.upper()}_PORT", "").strip()
    if raw:
        return int(raw)
    try:
        from kitrading.mesh import BY_NAME
    except ImportError:
        return None
    info = BY_NAME.get(name)
    return info.default_port if info is not None else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="gRPC host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port")
    parser.add_argument("--name", default="", help="registry name (data, forecast, ...): port from env")
    parser.add_argument("--service", default="", help="gRPC health service name ('' = the whole server)")
    parser.add_argument("--http", metavar="URL", default=None, help="probe an HTTP URL instead (2xx = ok)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.http:
        status = http_status(args.http, args.timeout)
        target = args.http
    else:
        port = args.port if args.port is not None else default_port(args.name)
        if port is None:
            print("healthcheck.py: give --port, or --name of a registry service", file=sys.stderr)
            return 2
        target = f"{args.host}:{port}"
        status = grpc_status(target, args.service or args.name, args.timeout)
    print(f"{target} {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
