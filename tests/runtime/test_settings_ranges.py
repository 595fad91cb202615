"""Every variable of every settings class, table-driven from the classes' own declarations.

For each declared variable: every bad value (out of range, not a number, not a choice, not the form)
stops the load with a ConfigError naming the variable, and good values (both bounds) load. Every
variable a loader reads must be declared, every attribute of a settings class must have a variable,
and docs/configuration.md must state each variable's range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest

from gateway import envoy_config, rate_limits
from kitrading import mesh
from services.data import settings as data_settings
from services.embedder import settings as embedder_settings
from services.forecast import settings as forecast_settings
from services.forecast.model import NHITSConfig
from services.llm import settings as llm_settings
from services.llm.grounding_settings import GroundingSettings
from services.pattern import settings as pattern_settings
from services.rag import settings as rag_settings
from services.regime import settings as regime_settings
from services.runtime import addresses, database_settings, threads
from services.runtime.config import (
    HOST_PATTERN,
    URL_PATTERN,
    BoolVar,
    ChoiceVar,
    ConfigError,
    FloatVar,
    IntVar,
    ListVar,
    RuntimeSettings,
    SecretVar,
    SizeVar,
    TextVar,
    Var,
    format_bytes,
    read_fields,
)
from services.watchdog import settings as watchdog_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SERVICE = mesh.service("data")  # the runtime's per-service variables, spelt for one service
OLLAMA = {"OLLAMA_BASE_URL": "http://ollama:11434"}  # so the Ollama variables are read at all

# Variables of modules owned elsewhere, declared here until their module declares them.
_ADDRESSES: tuple[Var, ...] = (
    TextVar("KITRADING_SERVICE_HOST"),
    *(
        var
        for name in ("data", "forecast", "regime", "pattern", "rag")
        for var in (
            TextVar(f"KITRADING_{name.upper()}_HOST"),
            IntVar(f"KITRADING_{name.upper()}_PORT", 1, 65535),
        )
    ),
)
GROUNDING: tuple[Var, ...] = (
    FloatVar("KITRADING_LLM_GROUNDING_TIMEOUT_SECONDS", 0.05, 600.0),
    IntVar("KITRADING_LLM_FORECAST_HORIZON", 1, 720),
    IntVar("KITRADING_LLM_CANDLE_LOOKBACK", 2, 10_000),
    IntVar("KITRADING_LLM_PASSAGES", 1, 50),
    *_ADDRESSES,
    *(addresses.REPLICAS[name] for name in ("forecast", "regime", "pattern")),
)
DATABASE: tuple[Var, ...] = tuple(database_settings.FIELDS.values())


@dataclass(frozen=True)
class Loader:
    """One settings loader, the variables it declares and an environment that makes it read them all."""

    load: Callable[[Mapping[str, str]], object]
    variables: tuple[Var, ...]
    base: Mapping[str, str]
    #: Further environments to record reads under (other branches of the loader).
    also: tuple[Mapping[str, str], ...] = ()


LOADERS: dict[str, Loader] = {
    "runtime": Loader(
        lambda env: RuntimeSettings.from_env(SERVICE, env),
        tuple(RuntimeSettings.variables(SERVICE)),
        {"KITRADING_DATA_METRICS_PORT": "9001"},  # so KITRADING_DATA_PORT=65535 has a metrics port
    ),
    "threads": Loader(lambda env: threads.MATH_THREADS.read(1, env), (threads.MATH_THREADS,), {}),
    "forecast": Loader(forecast_settings.ForecastSettings.from_env, forecast_settings.VARIABLES, {}),
    # A pool of up to 1000 connections, so every POOL_MIN in range is not above POOL_MAX.
    "data": Loader(
        data_settings.DataSettings.from_env,
        data_settings.VARIABLES + DATABASE,
        {"KITRADING_DATABASE_POOL_MAX": "1000"},
    ),
    "watchdog": Loader(watchdog_settings.WatchdogSettings.from_env, watchdog_settings.VARIABLES, {}),
    "llm": Loader(llm_settings.LlmSettings.from_env, llm_settings.VARIABLES, OLLAMA, also=({},)),
    "grounding": Loader(GroundingSettings.from_env, GROUNDING, {}),
    "regime": Loader(regime_settings.RegimeSettings.from_env, regime_settings.VARIABLES, {}),
    "rate_limits": Loader(rate_limits.RateLimitSettings.from_env, tuple(rate_limits.FIELDS.values()), {}),
    # The gateway's limits against careless or slow clients (its other variables are not ranges).
    "gateway_limits": Loader(
        lambda env: envoy_config.GatewaySettings(
            **read_fields(envoy_config.GatewaySettings(), envoy_config.LIMIT_FIELDS, env)
        ),
        tuple(envoy_config.LIMIT_FIELDS.values()),
        {},
    ),
    "embedder": Loader(embedder_settings.EmbedderSettings.from_env, embedder_settings.VARIABLES, {}),
    "pattern": Loader(pattern_settings.PatternSettings.from_env, pattern_settings.VARIABLES, {}),
    # Chunks of 512 tokens and no overlap, so every CHUNK_OVERLAP and CHUNK_TOKENS in range fit.
    "rag": Loader(
        rag_settings.RagSettings.from_env,
        rag_settings.VARIABLES + DATABASE,
        {
            "KITRADING_RAG_CHUNK_TOKENS": "512",
            "KITRADING_RAG_CHUNK_OVERLAP": "0",
            "KITRADING_DATABASE_POOL_MAX": "1000",
        },
    ),
}

# ---- values to try, by kind of variable ----

#: A good value of each text form (by pattern; by name where the pattern is the variable's own).
EXAMPLES: dict[str, str] = {
    URL_PATTERN: "http://host.internal:8000/api",
    HOST_PATTERN: "0.0.0.0",
    "KITRADING_DATABASE_URL": "postgresql://kit@db:5432/kitrading",
    "TELEGRAM_CHAT_IDS": "1001, -1002,@alerts",
    "OLLAMA_MODEL": "llama3.1:70b",
    "KITRADING_LLM_KEEP_ALIVE": "1h30m",
    "KITRADING_LLM_OLLAMA_OPTIONS": '{"num_thread": 8}',
    "KITRADING_LLM_MODEL_SHA256": "Ab" * 32,
    "KITRADING_RAG_KNOWLEDGE_FILES": "models.md, regime.md",
}


def _example(var: TextVar | ListVar) -> str:
    if var.pattern is None:
        return "some-text"
    example = EXAMPLES.get(var.name) or EXAMPLES.get(var.pattern)
    assert example is not None, f"{var.name}: add a good example of {var.what!r} to EXAMPLES"
    return example


def _int_bad(var: IntVar) -> list[str]:
    below = var.minimum - 1 if var.minimum - 1 != var.auto else var.minimum - 2
    return ["abc", "1.5", str(below), str(var.maximum + 1)]


def _float_bad(var: FloatVar) -> list[str]:
    below = var.minimum if var.above else math.nextafter(var.minimum, -math.inf)
    return ["abc", "nan", "inf", repr(below), repr(math.nextafter(var.maximum, math.inf))]


def _text_bad(var: TextVar | ListVar) -> list[str]:
    if isinstance(var, ListVar) and var.choices:
        return ["no-such-choice"]
    if var.pattern is None:
        return []  # free text: nothing is wrong
    bad = "not valid!"
    assert re.fullmatch(var.pattern, bad) is None
    return [bad]


def _size_bad(var: SizeVar) -> list[str]:
    return ["lots", "-1GiB", *([str(var.minimum - 1)] if var.minimum > 0 else []), str(var.maximum + 1)]


BAD: dict[type, Callable[[Any], list[str]]] = {
    IntVar: _int_bad,
    FloatVar: _float_bad,
    BoolVar: lambda var: ["maybe", "2"],
    ChoiceVar: lambda var: ["no-such-choice"],
    TextVar: _text_bad,
    ListVar: _text_bad,
    SizeVar: _size_bad,
    SecretVar: lambda var: [],  # any text; its _FILE form is tried below
}
GOOD: dict[type, Callable[[Any], list[str]]] = {
    IntVar: lambda var: [str(var.minimum), str(var.maximum), *([] if var.auto is None else [str(var.auto)])],
    FloatVar: lambda var: [
        repr(math.nextafter(var.minimum, math.inf) if var.above else var.minimum),
        repr(var.maximum),
    ],
    BoolVar: lambda var: ["true", "Off"],
    ChoiceVar: lambda var: [*var.choices, var.choices[0].lower()],
    TextVar: lambda var: [_example(var)],
    ListVar: lambda var: [",".join(c.lower() for c in var.choices[:2]) if var.choices else _example(var)],
    SizeVar: lambda var: [str(var.minimum), str(var.maximum), "1GiB"],
    SecretVar: lambda var: ["s3cret-value"],
}


def _cases(table: dict[type, Callable[[Any], list[str]]]) -> Iterator[Any]:
    for loader_name, loader in LOADERS.items():
        for var in loader.variables:
            for value in table[type(var)](var):
                yield pytest.param(loader_name, var.name, value, id=f"{loader_name}-{var.name}={value}")


@pytest.mark.parametrize(("loader", "name", "value"), list(_cases(BAD)))
def test_a_bad_value_stops_the_load_naming_the_variable(loader: str, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(name)):
        LOADERS[loader].load({**LOADERS[loader].base, name: value})


@pytest.mark.parametrize(("loader", "name", "value"), list(_cases(GOOD)))
def test_a_good_value_is_accepted(loader: str, name: str, value: str) -> None:
    LOADERS[loader].load({**LOADERS[loader].base, name: value})


def _secrets() -> Iterator[Any]:
    for loader_name, loader in LOADERS.items():
        for var in loader.variables:
            if isinstance(var, SecretVar):
                yield pytest.param(loader_name, var.name, id=f"{loader_name}-{var.name}")


@pytest.mark.parametrize(("loader", "name"), list(_secrets()))
def test_a_secret_file_that_cannot_be_read_names_the_variable(loader: str, name: str, tmp_path: Path) -> None:
    load, base = LOADERS[loader].load, LOADERS[loader].base
    with pytest.raises(ConfigError, match=f"{name}_FILE"):
        load({**base, f"{name}_FILE": str(tmp_path / "missing")})
    (tmp_path / "secret").write_text("s3cret-value\n")
    load({**base, f"{name}_FILE": str(tmp_path / "secret")})


# ---- nothing read without a declaration, nothing settable without a range ----


class Recorder(Mapping[str, str]):
    """An environment that notes every name looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("a loader iterated the environment; read variables by name")

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_variable_read_is_declared(loader: str) -> None:
    spec = LOADERS[loader]
    declared = {var.name for var in spec.variables}
    declared |= {f"{var.name}_FILE" for var in spec.variables if isinstance(var, SecretVar)}
    read: set[str] = set()
    for base in (spec.base, *spec.also):
        env = Recorder(base)
        spec.load(env)
        read |= env.read
    assert read - declared == set(), "read without a declared range"
    assert {var.name for var in spec.variables} - read == set(), "declared but never read"


#: Attributes filled otherwise than from one declared variable of their own, and why.
NO_VARIABLE: dict[type, dict[str, str]] = {
    RuntimeSettings: {"service": "the service itself"},
    forecast_settings.ForecastSettings: {"nhits": "nested: nhits.* in FIELDS"},
    NHITSConfig: {"n_pool_kernel_size": "architecture", "n_freq_downsample": "architecture"},
    data_settings.DataSettings: {"database": "DatabaseSettings", "sync_default_timeframe": "TIMEFRAME"},
    watchdog_settings.WatchdogSettings: {
        "telegram": "TELEGRAM_FIELDS",
        "disk_min_free_bytes": "DISK_MIN_FREE_MB",
    },
    watchdog_settings.TelegramSettings: {},
    llm_settings.LlmSettings: {"ollama": "OLLAMA_FIELDS", "embedded": "EMBEDDED_FIELDS", "gpu": "GPU_*"},
    llm_settings.OllamaSettings: {"extra_options": "OLLAMA_OPTIONS"},
    llm_settings.EmbeddedSettings: {},
    regime_settings.RegimeSettings: {},
    pattern_settings.PatternSettings: {},
    embedder_settings.EmbedderSettings: {},
    rag_settings.RagSettings: {"database": "DatabaseSettings"},
    rate_limits.RateLimitSettings: {"expensive_methods": "EXPENSIVE_METHODS, in code"},
}
FIELD_TABLES: dict[type, Mapping[str, Var]] = {
    RuntimeSettings: RuntimeSettings.variables(SERVICE)._asdict(),
    forecast_settings.ForecastSettings: forecast_settings.FIELDS,
    NHITSConfig: {path.removeprefix("nhits."): var for path, var in forecast_settings.FIELDS.items()},
    data_settings.DataSettings: data_settings.FIELDS,
    watchdog_settings.WatchdogSettings: watchdog_settings.FIELDS,
    watchdog_settings.TelegramSettings: watchdog_settings.TELEGRAM_FIELDS,
    llm_settings.LlmSettings: llm_settings.FIELDS,
    llm_settings.OllamaSettings: llm_settings.OLLAMA_FIELDS,
    llm_settings.EmbeddedSettings: llm_settings.EMBEDDED_FIELDS,
    regime_settings.RegimeSettings: regime_settings.FIELDS,
    pattern_settings.PatternSettings: pattern_settings.FIELDS,
    embedder_settings.EmbedderSettings: embedder_settings.FIELDS,
    rag_settings.RagSettings: rag_settings.FIELDS,
    rate_limits.RateLimitSettings: rate_limits.FIELDS,
}


@pytest.mark.parametrize("cls", list(FIELD_TABLES), ids=lambda cls: cls.__name__)
def test_every_attribute_has_a_variable(cls: type) -> None:
    attributes = {f.name for f in fields(cls)}
    assert attributes - set(FIELD_TABLES[cls]) - set(NO_VARIABLE[cls]) == set()


def test_settings_built_in_code_obey_the_same_ranges() -> None:
    settings = forecast_settings.ForecastSettings()
    bad: dict[str, Any] = {"gpu_memory_fraction": 5.0, "worker_threads": -3, "worker_nice": 20}
    for attribute, value in bad.items():
        with pytest.raises(ConfigError, match=f"attribute {attribute}"):
            replace(settings, **{attribute: value})
    with pytest.raises(ConfigError, match="NHITS_MAX_STEPS"):
        settings.with_nhits(max_steps=-1)
    with pytest.raises(ConfigError, match="KITRADING_DATA_MARKET_EVENT_WINDOW"):
        data_settings.DataSettings(market_event_window=1)
    with pytest.raises(ConfigError, match="TELEGRAM_MAX_ATTEMPTS"):
        watchdog_settings.TelegramSettings(max_attempts=0)
    with pytest.raises(ConfigError, match="KITRADING_LLM_TEMPERATURE"):
        llm_settings.LlmSettings(temperature=3.0)
    with pytest.raises(ConfigError, match="KITRADING_DATA_PORT"):
        RuntimeSettings(SERVICE, port=70000)


def test_values_read_are_the_declared_ones() -> None:
    s = forecast_settings.ForecastSettings.from_env(
        {
            "KITRADING_FORECAST_GPU_DEVICE": "1",
            "KITRADING_FORECAST_TIMEFRAME": "d1",
            "KITRADING_FORECAST_EVENT_TYPES": "market_event, EVENT_TYPE_CANDLES_INGESTED",
            "NHITS_SCALER": "Standard",
            "KITRADING_FORECAST_EVAL_STEP": "",  # empty: the default
        }
    )
    assert (s.gpu_device, s.timeframe, s.nhits.scaler_type, s.eval_step) == (1, "D1", "standard", 0)
    assert s.event_types == ("MARKET_EVENT", "CANDLES_INGESTED")
    r = RuntimeSettings.from_env(SERVICE, {"KITRADING_LOG_LEVEL": "debug", "KITRADING_DATA_PORT": "4001"})
    assert (r.log_level, r.metrics_port) == ("DEBUG", 10001)
    with pytest.raises(ConfigError, match="KITRADING_DATA_METRICS_PORT must be set"):
        RuntimeSettings.from_env(SERVICE, {"KITRADING_DATA_PORT": "60000"})  # + 6000 > 65535
    llm = llm_settings.LlmSettings.from_env(
        {"KITRADING_LLM_CONTEXT": "0", "KITRADING_LLM_MAX_CONCURRENT": "0"}
    )
    assert (llm.embedded.context_tokens, llm.max_concurrent) == (4096, None)


# ---- the docs ----


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def documented_range(var: Var) -> str:
    """How docs/configuration.md writes what `var` accepts."""
    if isinstance(var, IntVar):
        auto = "" if var.auto is None else f", {var.auto} auto"
        return f"{var.minimum}..{var.maximum}{auto}"
    if isinstance(var, FloatVar):
        lo, hi = _format(var.minimum), _format(var.maximum)
        return f"> {lo} and ≤ {hi}" if var.above else f"{lo}..{hi}"
    if isinstance(var, SizeVar):
        return f"{format_bytes(var.minimum)}..{format_bytes(var.maximum)}"
    if isinstance(var, ChoiceVar):
        return ", ".join(f"`{c}`" for c in var.choices)
    if isinstance(var, ListVar) and var.choices:
        return "list of " + ", ".join(f"`{c}`" for c in var.choices if not c.startswith("EVENT_TYPE_"))
    if isinstance(var, BoolVar):
        return "true/false"
    return var.accepts


RUNTIME = {var.name for var in RuntimeSettings.variables(SERVICE)}


def _documented(var: Var) -> str:
    """The name as the docs write it: the runtime's per-service variables with `<NAME>`."""
    name = var.name.replace(f"_{SERVICE.name.upper()}_", "_<NAME>_") if var.name in RUNTIME else var.name
    return f"`{name}`"


DOCUMENTED: tuple[Var, ...] = (
    *RuntimeSettings.variables(SERVICE),
    threads.MATH_THREADS,
    *forecast_settings.VARIABLES,
    *data_settings.VARIABLES,
    *watchdog_settings.VARIABLES,
    *llm_settings.VARIABLES,
    *regime_settings.VARIABLES,
    *pattern_settings.VARIABLES,
    *embedder_settings.VARIABLES,
    *rag_settings.VARIABLES,
    *rate_limits.FIELDS.values(),
    *envoy_config.LIMIT_FIELDS.values(),
)


@pytest.mark.parametrize(
    "var", [pytest.param(var, id=var.name) for var in sorted(set(DOCUMENTED), key=lambda v: v.name)]
)
def test_the_docs_state_each_range(var: Var) -> None:
    rows = [
        line for line in DOCS.read_text().splitlines() if line.startswith("|") and _documented(var) in line
    ]
    assert rows, f"docs/configuration.md has no row for {_documented(var)}"
    assert any(documented_range(var) in row for row in rows), f"write {documented_range(var)!r} in its row"


def test_the_pool_minimum_may_not_exceed_its_maximum() -> None:
    env = {"KITRADING_DATABASE_POOL_MIN": "20", "KITRADING_DATABASE_POOL_MAX": "10"}
    with pytest.raises(ConfigError, match="KITRADING_DATABASE_POOL_MIN"):
        database_settings.DatabaseSettings.from_env(env)


@pytest.mark.parametrize("value", ["0", "65536", "port", "-1"])
def test_the_registry_ports_name_their_variable(value: str) -> None:
    data = mesh.service("data")
    with pytest.raises(ValueError, match="KITRADING_DATA_PORT"):
        data.port({"KITRADING_DATA_PORT": value})
    with pytest.raises(ValueError, match="KITRADING_GATEWAY_PORT"):
        mesh.gateway_port({"KITRADING_GATEWAY_PORT": value})
    if value != "0":  # 0: a free port for the metrics
        with pytest.raises(ValueError, match="KITRADING_DATA_METRICS_PORT"):
            data.metrics_port({"KITRADING_DATA_METRICS_PORT": value})
    assert data.port({"KITRADING_DATA_PORT": "4001"}) == 4001
    assert data.metrics_port({"KITRADING_DATA_PORT": "4001"}) == 10001
    assert data.metrics_port({"KITRADING_DATA_METRICS_PORT": "0"}) == 0


def test_the_gateway_concurrency_is_range_checked() -> None:
    from services.launcher.mesh import GATEWAY_CONCURRENCY

    assert GATEWAY_CONCURRENCY.read(2, {}) == 2
    for bad in ("0", "257", "many"):
        with pytest.raises(ConfigError, match="KITRADING_GATEWAY_CONCURRENCY"):
            GATEWAY_CONCURRENCY.read(2, {"KITRADING_GATEWAY_CONCURRENCY": bad})


def test_a_high_port_needs_a_metrics_port_only_when_metrics_are_on() -> None:
    """Regression: `tests/runtime/test_process.py` starts Data on a free port with metrics off; a port
    above 59535 failed the start because its (unused) default metrics port would pass 65535."""
    off = RuntimeSettings.from_env(SERVICE, {"KITRADING_DATA_PORT": "60447", "KITRADING_METRICS": "false"})
    assert off.port == 60447 and off.metrics_port is None
    with pytest.raises(ConfigError, match="KITRADING_DATA_METRICS_PORT"):
        RuntimeSettings.from_env(SERVICE, {"KITRADING_DATA_PORT": "60447"})
    chosen = RuntimeSettings.from_env(
        SERVICE, {"KITRADING_DATA_PORT": "60447", "KITRADING_DATA_METRICS_PORT": "9101"}
    )
    assert chosen.metrics_port == 9101
