"""`kitrading up`: start the whole mesh (every implemented service and the gateway) in the foreground.

`kitrading up --tls` serves the gateway over TLS with a self-signed pair made by `openssl` in
`$KITRADING_HOME/tls/` (kept and reused while valid), for trying TLS locally; a real deployment
points `KITRADING_GATEWAY_TLS_CERT_FILE` / `KITRADING_GATEWAY_TLS_KEY_FILE` at its own files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from kitrading import mesh
from kitrading.cli.common import EXIT_ERROR, add_command, flag, option


def complete_services(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of `--only data,fore<TAB>`: the service names after the last comma."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [CompletionItem(prefix + s.name) for s in mesh.SERVICES if s.name.startswith(last)]


def register(cli: click.Group) -> None:
    add_command(
        cli,
        "up",
        run,
        help="start the mesh (Ctrl-C stops it)",
        description="Start every implemented service and the Envoy gateway; Ctrl-C stops them all.",
        params=[
            option(
                "--only",
                default="",
                help=f"comma-separated services to start ({', '.join(s.name for s in mesh.SERVICES)})",
                shell_complete=complete_services,
            ),
            option(
                "--replicas",
                default="",
                help="instances per service, e.g. forecast=2,embedder=2 (sets KITRADING_<NAME>_REPLICAS; "
                "replicable: " + ", ".join(s.name for s in mesh.SERVICES if s.replicable) + ")",
            ),
            flag("--no-gateway", help="do not start the Envoy gateway"),
            flag(
                "--tls",
                help="serve the gateway over TLS with a self-signed certificate for localhost and "
                "127.0.0.1, made in $KITRADING_HOME/tls/ (openssl)",
            ),
        ],
    )


#: The environment variables of the gateway's TLS files (`gateway.envoy_config.GatewaySettings`).
TLS_CERT_ENV = "KITRADING_GATEWAY_TLS_CERT_FILE"
TLS_KEY_ENV = "KITRADING_GATEWAY_TLS_KEY_FILE"
#: The CA the SDK and the CLI trust for the gateway (`kitrading.client.connect`).
TLS_CA_ENV = "KITRADING_TLS_CA"
CERT_NAME, KEY_NAME = "gateway.crt", "gateway.key"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = localhost
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
"""


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise RuntimeError("the openssl command is needed to make a self-signed certificate; install it")
    return found


def self_signed_pair(directory: Path, *, days: int = 365, renew_within_s: int = 86400) -> tuple[Path, Path]:
    """(certificate, private key) in `directory`: an ECDSA P-256 key and a self-signed certificate for
    CN localhost, SAN localhost, 127.0.0.1 and ::1, valid `days`. An existing pair is kept unless its
    certificate expires within `renew_within_s`, so clients that trust it keep working across restarts.
    The certificate is its own CA: clients trust it as the root (`--cacert`, `KITRADING_TLS_CA`)."""
    openssl = _openssl()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        fresh = subprocess.run(
            [openssl, "x509", "-checkend", str(renew_within_s), "-noout", "-in", str(cert)],
            capture_output=True,
            check=False,
        )
        if fresh.returncode == 0:
            return cert, key
    with tempfile.NamedTemporaryFile("w", suffix=".cnf", delete=False) as config:
        config.write(_OPENSSL_CONFIG)
    try:
        done = subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-config",
                config.name,
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-sha256",
                "-days",
                str(days),
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(config.name)
    if done.returncode != 0:
        raise RuntimeError(f"openssl could not make the self-signed pair: {done.stderr.strip()}")
    key.chmod(0o600)
    return cert, key


def enable_tls(home: Path, env: MutableMapping[str, str]) -> Path:
    """Make (or reuse) the pair in `home/tls`, point the gateway's settings in `env` at it, and have the
    watchdog check the gateway on its plain loopback admin `/ready` (its own probe speaks plain HTTP).
    Returns the certificate."""
    cert, key = self_signed_pair(home / "tls")
    env[TLS_CERT_ENV], env[TLS_KEY_ENV] = str(cert), str(key)
    admin = env.get("KITRADING_GATEWAY_ADMIN_PORT") or "9901"
    env.setdefault("WATCHDOG_GATEWAY_HEALTH_URL", f"http://127.0.0.1:{admin}/ready")
    return cert


def tls_banner(cert: Path, port: int) -> str:
    base = f"https://localhost:{port}"
    return "\n".join(
        [
            f"TLS: the gateway serves HTTPS, HTTP/2 and gRPC over TLS on {base}/ (h2 and http/1.1)",
            f"  self-signed certificate (CN localhost; SAN localhost, 127.0.0.1): {cert}",
            "  trust it as the CA:",
            f"    export {TLS_CA_ENV}={cert}        # the SDK and the kitrading CLI",
            f"    curl --cacert {cert} {base}/gateway/health",
            f"    grpcurl -cacert {cert} localhost:{port} list",
            f"  dashboard: {base}/ (the browser asks you to accept the certificate); docs: {base}/docs",
            "  (plain http:// to this port fails: every connection must speak TLS)",
            "",
        ]
    )


def replicas_env(text: str) -> dict[str, str]:
    """`forecast=2,embedder=3` -> {"KITRADING_FORECAST_REPLICAS": "2", ...}; ValueError naming the fault."""
    env: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, count = item.partition("=")
        if not sep:
            raise ValueError(f"--replicas {item!r}: expected SERVICE=N, e.g. forecast=2")
        try:
            info = mesh.service(name.strip())
        except KeyError as exc:
            raise ValueError(f"--replicas: {exc.args[0]}") from None
        variable = f"KITRADING_{info.name.upper()}_REPLICAS"
        info.replicas({variable: count.strip()})  # the registry's checks and message
        env[variable] = count.strip()
    return env


def run(args: argparse.Namespace) -> int:
    try:
        os.environ.update(replicas_env(getattr(args, "replicas", "") or ""))
    except ValueError as exc:
        print(f"kitrading up: {exc}", file=sys.stderr)
        return EXIT_ERROR
    only = [name.strip() for name in args.only.split(",") if name.strip()] or None
    for name in only or ():
        try:
            mesh.service(name)
        except KeyError as exc:
            print(f"kitrading up: {exc.args[0]}", file=sys.stderr)
            return EXIT_ERROR
    try:
        from services.launcher.mesh import run_mesh
        from services.runtime.config import ConfigError, kitrading_home
    except ImportError as exc:
        print(
            f"kitrading up: the server code is not installed ({exc}); run it from a checkout with `make up`",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if getattr(args, "tls", False):
        if args.no_gateway:
            print(
                "kitrading up: --tls is TLS at the gateway; it does not go with --no-gateway", file=sys.stderr
            )
            return EXIT_ERROR
        try:
            cert = enable_tls(kitrading_home(), os.environ)
        except (RuntimeError, OSError) as exc:
            print(f"kitrading up --tls: {exc}", file=sys.stderr)
            return EXIT_ERROR
        from kitrading.mesh import gateway_port

        print(tls_banner(cert, gateway_port()), flush=True)
    try:
        asyncio.run(run_mesh(only, gateway=not args.no_gateway))
    except ConfigError as exc:  # a setting that stops the start: say which, no traceback
        print(f"kitrading up: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
