"""`services.runtime.addresses`: where every caller finds service X."""

from __future__ import annotations

import pytest

from kitrading import mesh
from services.runtime.addresses import host_port, service_host, service_port, service_target
from services.runtime.config import ConfigError


def test_defaults_are_loopback_and_the_registry_port() -> None:
    assert service_target("data", {}) == f"127.0.0.1:{mesh.service('data').default_port}"
    assert service_port("forecast", {}) == mesh.service("forecast").default_port


def test_host_precedence_service_variable_then_mesh_wide_then_loopback() -> None:
    both = {"KITRADING_DATA_HOST": "data.internal", "KITRADING_SERVICE_HOST": "mesh.internal"}
    assert service_host("data", both) == "data.internal"
    assert service_host("llm", both) == "mesh.internal"  # no KITRADING_LLM_HOST
    assert service_host("data", {"KITRADING_SERVICE_HOST": "mesh.internal"}) == "mesh.internal"
    assert service_host("data", {"KITRADING_DATA_HOST": "  ", "KITRADING_SERVICE_HOST": ""}) == "127.0.0.1"
    assert service_host("data", {"KITRADING_DATA_HOST": " data "}) == "data"


def test_names_and_gateway_prefixes_both_work() -> None:
    env = {"KITRADING_FORECAST_HOST": "fc", "KITRADING_FORECAST_PORT": "4002"}
    assert service_target("forecast", env) == "fc:4002"
    assert service_target(mesh.service("forecast").prefix, env) == "fc:4002"


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITRADING_SERVICE_HOST", "from-env")
    monkeypatch.setenv("KITRADING_DATA_PORT", "4001")
    monkeypatch.delenv("KITRADING_DATA_HOST", raising=False)
    assert service_target("data") == "from-env:4001"


@pytest.mark.parametrize("raw", ["http", "0", "65536", "-1", "3001.5"])
def test_a_bad_port_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="KITRADING_DATA_PORT"):
        service_port("data", {"KITRADING_DATA_PORT": raw})
    with pytest.raises(ConfigError, match="KITRADING_DATA_PORT"):
        service_target("data", {"KITRADING_DATA_PORT": raw})


def test_an_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: data"):
        service_target("bogus", {})


def test_ipv6_hosts_are_bracketed() -> None:
    assert host_port("::1", 3001) == "[::1]:3001"
    assert host_port("[::1]", 3001) == "[::1]:3001"
    assert service_target("data", {"KITRADING_DATA_HOST": "fd00::5", "KITRADING_DATA_PORT": "3001"}) == (
        "[fd00::5]:3001"
    )
