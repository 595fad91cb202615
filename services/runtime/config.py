"""Typed configuration from the environment, validated at start with a clear message.

Every service reads its settings through these helpers so a bad value fails the start with
`ConfigError("KITRADING_DATA_PORT must be an integer in 1..65535, got 'abc'")`, never a traceback
deep inside. Each settings class declares its variables as a table of `Var`s (name and accepted
values) that it reads through, so the docs and tests/runtime/test_settings_ranges.py can walk them.
Secrets come from `<NAME>_FILE` when set and are never logged.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from kitrading.mesh import ServiceInfo


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


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
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
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


def format_bytes(size: int) -> str:
    """`size` in the largest binary unit that divides it (`16TiB`, `512MiB`, `1000`); parse_bytes reads it."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _BYTE_UNITS[unit.lower()]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


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


# ---- declared variables: one entry per environment variable, with the values it accepts ----


@dataclass(frozen=True, slots=True)
class IntVar:
    """An integer in `minimum..maximum`; `auto`, when not None, is one more accepted value that
    leaves the choice to the program (`-1`: Ollama decides)."""

    name: str
    minimum: int
    maximum: int
    auto: int | None = None

    @property
    def accepts(self) -> str:
        auto = "" if self.auto is None else f" (or {self.auto}: automatic)"
        return f"an integer in {self.minimum}..{self.maximum}{auto}"

    def check(self, value: int) -> int:
        if value != self.auto and not self.minimum <= value <= self.maximum:
            raise ConfigError(f"{self.name} must be {self.accepts}, got {value}")
        return value

    def read(self, default: int, env: Mapping[str, str] | None = None) -> int:
        raw = _env(env).get(self.name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{self.name} must be {self.accepts}, got {raw!r}") from None
        return self.check(value)


@dataclass(frozen=True, slots=True)
class FloatVar:
    """A finite number in `minimum..maximum`; `above`: `minimum` itself is excluded."""

    name: str
    minimum: float
    maximum: float
    above: bool = False

    @property
    def accepts(self) -> str:
        above = f", above {self.minimum}" if self.above else ""
        return f"a number between {self.minimum} and {self.maximum}{above}"

    def check(self, value: float) -> float:
        low_ok = value > self.minimum if self.above else value >= self.minimum
        if not (math.isfinite(value) and low_ok and value <= self.maximum):
            raise ConfigError(f"{self.name} must be {self.accepts}, got {value}")
        return value

    def read(self, default: float, env: Mapping[str, str] | None = None) -> float:
        raw = _env(env).get(self.name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{self.name} must be {self.accepts}, got {raw!r}") from None
        return self.check(value)


@dataclass(frozen=True, slots=True)
class BoolVar:
    """true/false, yes/no, on/off, 1/0 (any case)."""

    name: str

    @property
    def accepts(self) -> str:
        return "true or false"

    def check(self, value: bool) -> bool:
        return value

    def read(self, default: bool, env: Mapping[str, str] | None = None) -> bool:
        return env_bool(self.name, default, env)


@dataclass(frozen=True, slots=True)
class ChoiceVar:
    """One of `choices`, matched in any case; `read` returns the choice as declared."""

    name: str
    choices: tuple[str, ...]

    @property
    def accepts(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, value: str) -> str:
        for choice in self.choices:
            if value.strip().lower() == choice.lower():
                return choice
        raise ConfigError(f"{self.name} must be {self.accepts}, got {value!r}")

    def read(self, default: str, env: Mapping[str, str] | None = None) -> str:
        raw = _env(env).get(self.name)
        return default if raw is None or raw.strip() == "" else self.check(raw)


@dataclass(frozen=True, slots=True)
class TextVar:
    """Text, stripped; with a `pattern`, it must match it whole (`what` says what it is)."""

    name: str
    what: str = "any text"
    pattern: str | None = None

    @property
    def accepts(self) -> str:
        return self.what

    def check(self, value: str) -> str:
        if self.pattern is not None and re.fullmatch(self.pattern, str(value)) is None:
            raise ConfigError(f"{self.name} must be {self.what}, got {value!r}")
        return value

    def read(self, default: str, env: Mapping[str, str] | None = None) -> str:
        raw = _env(env).get(self.name)
        return default if raw is None or raw.strip() == "" else self.check(raw.strip())


@dataclass(frozen=True, slots=True)
class ListVar:
    """A comma-separated list, blanks dropped; each item one of `choices` (any case, returned as
    declared) or, without choices, matching `pattern` (`what` says what an item is)."""

    name: str
    choices: tuple[str, ...] = ()
    what: str = "any text"
    pattern: str | None = None

    @property
    def accepts(self) -> str:
        item = ("one of " + ", ".join(self.choices)) if self.choices else self.what
        return f"a comma-separated list, each {item}"

    def _item(self, item: str) -> str:
        if self.choices:
            for choice in self.choices:
                if item.lower() == choice.lower():
                    return choice
        elif self.pattern is None or re.fullmatch(self.pattern, item) is not None:
            return item
        raise ConfigError(f"{self.name} must be {self.accepts}, got {item!r}")

    def check(self, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self._item(item) for item in value)

    def read(self, default: tuple[str, ...], env: Mapping[str, str] | None = None) -> tuple[str, ...]:
        raw = _env(env).get(self.name)
        return default if raw is None or raw.strip() == "" else self.check(tuple(env_list(self.name, env)))


@dataclass(frozen=True, slots=True)
class SizeVar:
    """A size in bytes (`parse_bytes` forms: `80GiB`, `512MiB`, `1073741824`) in `minimum..maximum`."""

    name: str
    minimum: int
    maximum: int

    @property
    def accepts(self) -> str:
        low, high = format_bytes(self.minimum), format_bytes(self.maximum)
        return f"a size such as 80GiB, 512MiB or 1073741824, in {low}..{high}"

    def check(self, value: int) -> int:
        if not self.minimum <= value <= self.maximum:
            raise ConfigError(f"{self.name} must be {self.accepts}, got {value}")
        return value

    def read(self, default: int | None, env: Mapping[str, str] | None = None) -> int | None:
        value = env_bytes(self.name, None, env)
        return default if value is None else self.check(value)


@dataclass(frozen=True, slots=True)
class SecretVar:
    """A secret from `<name>` or from the file named by `<name>_FILE` (which wins); never echoed."""

    name: str

    @property
    def accepts(self) -> str:
        return f"any text, or {self.name}_FILE naming a readable file"

    def check(self, value: str) -> str:
        return value

    def read(self, default: str = "", env: Mapping[str, str] | None = None) -> str:
        return env_secret(self.name, env) or default


Var = IntVar | FloatVar | BoolVar | ChoiceVar | TextVar | ListVar | SizeVar | SecretVar

#: URLs of other servers: http(s), a host, optionally a port and a path.
URL_PATTERN = r"https?://[^\s/?#]+(/\S*)?"
#: A host name or address to listen on or connect to, without spaces.
HOST_PATTERN = r"[^\s/]+"

HOME = TextVar("KITRADING_HOME", "a directory")


def read_fields(defaults: object, fields: Mapping[str, Var], env: Mapping[str, str] | None) -> dict[str, Any]:
    """Attribute path -> its value read from its variable, or the attribute of `defaults` when unset."""
    return {path: var.read(attrgetter(path)(defaults), env) for path, var in fields.items()}


def check_fields(settings: object, fields: Mapping[str, Var]) -> None:
    """Check each attribute (dotted path) of `settings` against its variable; None is not checked.

    For `__post_init__`, so settings built in code obey the same ranges as those read from the
    environment; the error names the variable and the attribute.
    """
    for path, var in fields.items():
        value: Any = attrgetter(path)(settings)
        if value is None:
            continue
        try:
            var.check(value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (attribute {path})") from None


def kitrading_home(env: Mapping[str, str] | None = None) -> Path:
    """Data directory of the mesh (`KITRADING_HOME`, default ./.kitrading)."""
    return Path(HOME.read(".kitrading", env)).resolve()


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
    #: How long a unary call beyond `max_concurrent_unary` waits for a slot (bounded by its
    #: deadline) before RESOURCE_EXHAUSTED; 0 refuses at once.
    admission_wait_ms: int = 1000
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 10.0
    #: On SIGTERM, how long the service says NOT_SERVING while still answering every call before it
    #: stops taking new ones: the gateway's health check (every 1 s) sees it first and sends calls to
    #: another instance, so none meets a closed port (a rolling restart fails no call). Default
    #: `REPLICATED_DRAIN_DELAY_S` with several instances (`KITRADING_<NAME>_REPLICAS`), else 0:
    #: alone, nobody else would take its calls meanwhile.
    drain_delay_s: float = 0.0
    log_level: str = "INFO"
    home: Path = field(default_factory=lambda: Path(".kitrading").resolve())

    def __post_init__(self) -> None:
        check_fields(self, _runtime_fields(self.service))

    @staticmethod
    def variables(service: ServiceInfo) -> RuntimeVariables:
        """The variables of `service`'s runtime."""
        upper = service.name.upper()
        host = "a host name or address"
        return RuntimeVariables(
            host=TextVar(f"KITRADING_{upper}_BIND", host, HOST_PATTERN),
            host_all=TextVar("KITRADING_BIND_HOST", host, HOST_PATTERN),
            port=IntVar(f"KITRADING_{upper}_PORT", 0, 65535),
            metrics=BoolVar("KITRADING_METRICS"),
            metrics_port=IntVar(f"KITRADING_{upper}_METRICS_PORT", 0, 65535),
            max_concurrent_unary=IntVar(f"KITRADING_{upper}_MAX_CONCURRENT_RPCS", 1, 100_000),
            max_concurrent_unary_all=IntVar("KITRADING_MAX_CONCURRENT_RPCS", 1, 100_000),
            max_concurrent_streams=IntVar(f"KITRADING_{upper}_MAX_CONCURRENT_STREAMS", 1, 100_000),
            max_concurrent_streams_all=IntVar("KITRADING_MAX_CONCURRENT_STREAMS", 1, 100_000),
            admission_wait_ms=IntVar("KITRADING_ADMISSION_WAIT_MS", 0, 60_000),
            max_message_bytes=IntVar("KITRADING_MAX_MESSAGE_BYTES", 1024, 1 << 30),
            grace_seconds=FloatVar("KITRADING_GRACE_SECONDS", 0.0, 600.0),
            drain_delay_s=FloatVar("KITRADING_DRAIN_DELAY_SECONDS", 0.0, 60.0),
            log_level=ChoiceVar("KITRADING_LOG_LEVEL", LOG_LEVELS),
            home=HOME,
        )

    @classmethod
    def from_env(cls, service: ServiceInfo, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        v, d = cls.variables(service), cls(service=service)
        port = v.port.read(service.default_port, env)
        metrics_port = v.metrics_port.read(port + 6000, env)  # the default of ServiceInfo.metrics_port
        metrics_on = v.metrics.read(True, env)
        if metrics_on and metrics_port > v.metrics_port.maximum:
            raise ConfigError(
                f"{v.metrics_port.name} must be set: its default, {v.port.name} + 6000, is {metrics_port}"
            )
        replicated = service.replicable and service.replicas(os.environ if env is None else env) > 1
        drain_delay = REPLICATED_DRAIN_DELAY_S if replicated else d.drain_delay_s
        unary = v.max_concurrent_unary_all.read(d.max_concurrent_unary, env)
        streams = v.max_concurrent_streams_all.read(d.max_concurrent_streams, env)
        return cls(
            service=service,
            host=v.host.read(v.host_all.read(d.host, env), env),
            port=port,
            metrics_port=metrics_port if metrics_on else None,
            max_concurrent_unary=v.max_concurrent_unary.read(unary, env),
            max_concurrent_streams=v.max_concurrent_streams.read(streams, env),
            admission_wait_ms=v.admission_wait_ms.read(d.admission_wait_ms, env),
            max_message_bytes=v.max_message_bytes.read(d.max_message_bytes, env),
            grace_seconds=v.grace_seconds.read(d.grace_seconds, env),
            drain_delay_s=v.drain_delay_s.read(drain_delay, env),
            log_level=v.log_level.read(d.log_level, env),
            home=kitrading_home(env),
        )


#: The drain delay of an instance of a replicated service (`RuntimeSettings.drain_delay_s`).
REPLICATED_DRAIN_DELAY_S = 1.5


class RuntimeVariables(NamedTuple):
    """The runtime's variables of one service, named after the attribute they fill; `<name>_all`
    is the mesh-wide variable that `<name>`'s per-service one overrides."""

    host: TextVar
    host_all: TextVar
    port: IntVar
    metrics: BoolVar
    metrics_port: IntVar
    max_concurrent_unary: IntVar
    max_concurrent_unary_all: IntVar
    max_concurrent_streams: IntVar
    max_concurrent_streams_all: IntVar
    admission_wait_ms: IntVar
    max_message_bytes: IntVar
    grace_seconds: FloatVar
    drain_delay_s: FloatVar
    log_level: ChoiceVar
    home: TextVar


#: Names `logging` knows; `KITRADING_LOG_LEVEL` is one of them (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")


def _runtime_fields(service: ServiceInfo) -> dict[str, Var]:
    """The variables of `RuntimeSettings` whose value is the attribute's value as it is."""
    v = RuntimeSettings.variables(service)._asdict()
    return {name: var for name, var in v.items() if not name.endswith("_all") and name != "metrics"}
