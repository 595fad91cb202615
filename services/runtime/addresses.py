"""Where service X lives: one lookup for every caller (servicers' clients, the watchdog, the launcher).

The host is the first non-empty of `KITRADING_<NAME>_HOST`, `KITRADING_SERVICE_HOST`, 127.0.0.1; the
port `KITRADING_<NAME>_PORT`, else the registry's default (`clients/kitrading/mesh.py`).

A caller that opens a channel asks for `instances=True`: with `KITRADING_<NAME>_REPLICAS` above 1
(`kitrading up --replicas`) that is a gRPC target listing every instance (`ipv4:127.0.0.1:3002,
127.0.0.1:3102`), which `services.runtime.channels.mesh_channel` balances round robin; a host name
stays one `host:port` (a DNS name with one address per instance, a Kubernetes headless Service, is
balanced the same way by gRPC's DNS resolver).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from kitrading import mesh
from services.runtime.config import IntVar, env_int

DEFAULT_HOST = "127.0.0.1"
#: `KITRADING_<NAME>_REPLICAS` of the services that may run several instances (`kitrading up`
#: refuses it for the others, saying why: `ServiceInfo.replicas`).
REPLICAS: dict[str, IntVar] = {
    s.name: IntVar(f"KITRADING_{s.name.upper()}_REPLICAS", 1, mesh.MAX_REPLICAS)
    for s in mesh.SERVICES
    if s.replicable
}


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


def service_target(name: str, env: Mapping[str, str] | None = None, *, instances: bool = False) -> str:
    """`host:port` of registry service `name`; `instances`: every instance (the module docstring)."""
    host, port = service_host(name, env), service_port(name, env)
    variable = REPLICAS.get(mesh.service(name).name) if instances else None
    count = variable.read(1, env) if variable is not None else 1
    if count == 1:
        return host_port(host, port)
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        version = ipaddress.ip_address(literal.strip("[]")).version
    except ValueError:  # a name: its resolver lists the instances
        return host_port(host, port)
    ports = [port + mesh.INSTANCE_PORT_STEP * k for k in range(count)]
    return f"ipv{version}:" + ",".join(host_port(literal.strip("[]"), p) for p in ports)
