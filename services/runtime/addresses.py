"""Where service X lives: one lookup for every caller (servicers' clients, the watchdog, the launcher).

The host is the first non-empty of `KITRADING_<NAME>_HOST`, `KITRADING_SERVICE_HOST`, 127.0.0.1; the
port `KITRADING_<NAME>_PORT`, else the registry's default (`clients/kitrading/mesh.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kitrading import mesh
from services.runtime.config import env_int

DEFAULT_HOST = "127.0.0.1"


def service_host(name: str, env: Mapping[str, str] | None = None) -> str:
    """The host of registry service `name` (name or gateway prefix; see the module docstring)."""
    source = os.environ if env is None else env
    for variable in (f"KITRADING_{mesh.service(name).name.upper()}_HOST", "KITRADING_SERVICE_HOST"):
        value = source.get(variable, "").strip()
        if value:
            return value
    return DEFAULT_HOST


def service_port(name: str, env: Mapping[str, str] | None = None) -> int:
    """The gRPC port of registry service `name`; ConfigError names the variable when it is bad."""
    info = mesh.service(name)
    variable = f"KITRADING_{info.name.upper()}_PORT"
    return env_int(variable, info.default_port, minimum=1, maximum=65535, env=env)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 literal in brackets (`[::1]:3001`)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def service_target(name: str, env: Mapping[str, str] | None = None) -> str:
    """`host:port` of registry service `name`."""
    return host_port(service_host(name, env), service_port(name, env))
