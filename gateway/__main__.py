"""`python -m gateway`: print, write, validate or run the gateway's Envoy bootstrap.

python -m gateway --print-config            # YAML on stdout (--format json for JSON)
python -m gateway --validate                # envoy --mode validate on the generated bootstrap
python -m gateway --write build/envoy.yaml  # write it for a container
python -m gateway --run                     # write to a temp file and exec Envoy in the foreground
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.envoy_config import GatewaySettings
from gateway.run import build_config, envoy_command, render_config, validate_config, write_config
from services.runtime.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--print-config", action="store_true", help="print the bootstrap")
    action.add_argument("--validate", action="store_true", help="run envoy --mode validate on it")
    action.add_argument("--write", metavar="PATH", type=Path, help="write it (.json: JSON, else YAML)")
    action.add_argument("--run", action="store_true", help="exec Envoy with it in the foreground")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument(
        "--descriptors", type=Path, default=None, help="FileDescriptorSet (default: generated)"
    )
    parser.add_argument(
        "--bind", default=None, help="listen address (KITRADING_GATEWAY_BIND, 127.0.0.1; see docs/gateway.md)"
    )
    parser.add_argument("--port", type=int, default=None, help="gateway port (KITRADING_GATEWAY_PORT, 3000)")
    parser.add_argument("--admin-port", type=int, default=None, help="admin port on 127.0.0.1 (9901)")
    parser.add_argument("--service-host", default=None, help="host of every service (127.0.0.1)")
    parser.add_argument(
        "--no-embed", action="store_true", help="reference the descriptor file instead of embedding it"
    )
    parser.add_argument(
        "--log-level", default=None, help="Envoy log level for --run (KITRADING_GATEWAY_LOG_LEVEL, info)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.bind:
        overrides["listen_address"] = args.bind
    if args.port is not None:
        overrides["port"] = args.port
    if args.admin_port is not None:
        overrides["admin_port"] = args.admin_port
    if args.service_host:
        overrides["service_host"] = args.service_host
    try:
        settings = GatewaySettings.from_env(None, **overrides)
    except ConfigError as exc:
        print(f"python -m gateway: {exc}", file=sys.stderr)
        return 2
    config = build_config(settings, descriptor_path=args.descriptors, embed_descriptors=not args.no_embed)
    if args.print_config:
        sys.stdout.write(render_config(config, args.format))
        return 0
    if args.write:
        print(write_config(args.write, config))
        return 0
    with tempfile.TemporaryDirectory(prefix="kitrading-gateway-") as tmp:
        path = write_config(Path(tmp) / "envoy.yaml", config)
        if args.validate:
            result = validate_config(path)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode
    # --run: a config file that outlives this process, then become Envoy (signals go straight to it).
    fd, name = tempfile.mkstemp(prefix="kitrading-gateway-", suffix=".yaml")
    os.close(fd)
    write_config(name, config)
    command = envoy_command(name, log_level=args.log_level)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
