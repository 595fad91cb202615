"""Where service X lives: one lookup for every caller (servicers' clients, the watchdog, the launcher).

`KITRADING_<NAME>_HOST` (else `KITRADING_SERVICE_HOST`, else 127.0.0.1) and `KITRADING_<NAME>_PORT`
(else the registry's default port, `clients/kitrading/mesh.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

from kitrading import mesh
from services.runtime.config import env_int, env_str


def service_host(name: str, env: Mapping[str, str] | None = None) -> str:
    """The host of registry service `name` (see the module docstring)."""
    upper = mesh.service(name).name.upper()
    return env_str(f"KITRADING_{upper}_HOST", env_str("KITRADING_SERVICE_HOST", "127.0.0.1", env), env).strip()


def service_port(name: str, env: Mapping[str, str] | None = None) -> int:
    """The gRPC port of registry service `name`; ConfigError names the variable when it is bad."""
    info = mesh.service(name)
    return env_int(f"KITRADING_{info.name.upper()}_PORT", info.default_port, minimum=1, maximum=65535, env=env)


def service_target(name: str, env: Mapping[str, str] | None = None) -> str:
    """`host:port` of registry service `name`."""
    return f"{service_host(name, env)}:{service_port(name, env)}"
