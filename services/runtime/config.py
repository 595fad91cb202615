"""Typed configuration from the environment, validated at start with a clear message.

Every service reads its settings through these helpers so a bad value fails the start with
`ConfigError("KITRADING_DATA_PORT must be an integer in 1..65535, got 'abc'")`, never a traceback
deep inside. Secrets come from `<NAME>_FILE` when set and are never logged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kitrading.mesh import ServiceInfo


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def env_str(name: str, default: str = "", env: Mapping[str, str] | None = None) -> str:
    value = _env(env).get(name)
    return default if value is None or value == "" else value


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    raw = _env(env).get(name)
    if raw is None or raw.strip() == "":
        return default
    bounds = f" in {minimum}..{maximum}" if minimum is not None and maximum is not None else ""
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer{bounds}, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be an integer{bounds}, got {value}")
    return value


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    env: Mapping[str, str] | None = None,
) -> float:
    raw = _env(env).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    raw = _env(env).get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip


def parse_bytes(text: str) -> int:
    """`85899345920`, `80GiB`, `80g` (binary, as docker reads it), `80GB` (decimal) -> bytes."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :]
    if not number or unit not in _BYTE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    value = float(number) * _BYTE_UNITS[unit]
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"not a size: {text!r}")
    return int(value)


def env_bytes(name: str, default: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """A size in bytes (`parse_bytes` forms); unset or empty: `default`."""
    raw = _env(env).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_bytes(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a size such as 80GiB, 512MiB or 1073741824, got {raw!r}") from None


def env_list(name: str, env: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [item.strip() for item in _env(env).get(name, "").split(",") if item.strip()]


def env_secret(name: str, env: Mapping[str, str] | None = None) -> str:
    """A secret from `<name>` or from the file named by `<name>_FILE` (which wins)."""
    source = _env(env)
    path = source.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{name}_FILE points at {path!r}, which cannot be read: {exc.strerror}"
            ) from None
    return source.get(name, "").strip()


def kitrading_home(env: Mapping[str, str] | None = None) -> Path:
    """Data directory of the mesh (`KITRADING_HOME`, default ./.kitrading)."""
    return Path(env_str("KITRADING_HOME", ".kitrading", env)).resolve()


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What the shared runtime needs to run one service's gRPC server."""

    service: ServiceInfo
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    #: Concurrent unary calls before RESOURCE_EXHAUSTED.
    max_concurrent_unary: int = 64
    #: Concurrent server streams before RESOURCE_EXHAUSTED.
    max_concurrent_streams: int = 256
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    home: Path = field(default_factory=lambda: Path(".kitrading").resolve())

    @classmethod
    def from_env(cls, service: ServiceInfo, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        upper = service.name.upper()
        metrics_enabled = env_bool("KITRADING_METRICS", True, env)
        return cls(
            service=service,
            host=env_str(f"KITRADING_{upper}_BIND", env_str("KITRADING_BIND_HOST", "127.0.0.1", env), env),
            port=env_int(f"KITRADING_{upper}_PORT", service.default_port, minimum=0, maximum=65535, env=env),
            metrics_port=(
                env_int(
                    f"KITRADING_{upper}_METRICS_PORT",
                    service.metrics_port(_env(env)),
                    minimum=0,
                    maximum=65535,
                    env=env,
                )
                if metrics_enabled
                else None
            ),
            max_concurrent_unary=env_int(
                f"KITRADING_{upper}_MAX_CONCURRENT_RPCS",
                env_int("KITRADING_MAX_CONCURRENT_RPCS", 64, minimum=1, maximum=100_000, env=env),
                minimum=1,
                maximum=100_000,
                env=env,
            ),
            max_concurrent_streams=env_int(
                f"KITRADING_{upper}_MAX_CONCURRENT_STREAMS",
                env_int("KITRADING_MAX_CONCURRENT_STREAMS", 256, minimum=1, maximum=100_000, env=env),
                minimum=1,
                maximum=100_000,
                env=env,
            ),
            max_message_bytes=env_int(
                "KITRADING_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024, maximum=1 << 30, env=env
            ),
            grace_seconds=env_float("KITRADING_GRACE_SECONDS", 10.0, minimum=0.0, maximum=600.0, env=env),
            log_level=env_str("KITRADING_LOG_LEVEL", "INFO", env).upper(),
            home=kitrading_home(env),
        )
