"""The bootstrap, the OpenAPI documents and the docs pages, checked without starting Envoy
(except `--validate`, which runs the real binary in validate mode)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import METHOD_TIMEOUTS, GatewaySettings, build_config, envoy_command, write_config
from gateway.__main__ import main
from gateway.dashboard import ASSET_PREFIX, CHARTS_PATH
from gateway.descriptors import Contracts
from gateway.docs import SWAGGER_UI_FILES, UI_PREFIX, render_service_page
from gateway.envoy_config import TRANSCODER
from gateway.openapi import build_openapi, generate, openapi_path
from gateway.run import validate_config
from gateway.strict_json import FILTER_NAME as STRICT_JSON
from gateway.strict_json import WRITE_VERBS, body_bindings
from kitrading.mesh import SERVICES, service
from services.runtime.config import ConfigError

#: The calls the users make today (MISSION.md); each must be an HTTP binding of some RPC.
USER_CALLS = [
    ("post", "/api/v1/forecast/train-all"),
    ("get", "/api/v1/forecast/{symbol}"),
    ("get", "/api/v1/forecast/training/progress"),
    ("get", "/api/v1/forecast/performance"),
    ("post", "/api/v1/forecast/training/events/start"),
    ("post", "/api/v1/analyze"),
    ("get", "/api/v1/llm/status"),
    ("post", "/api/v1/rag/document"),
    ("get", "/api/v1/rag/query"),
    ("get", "/api/v1/symbols"),
    ("post", "/api/v1/symbols"),
    ("get", "/api/v1/strategies"),
    ("post", "/api/v1/sync/start"),
    ("get", "/api/v1/query-logs"),
    ("get", "/watchdog/api/v1/status"),
    ("get", "/watchdog/api/v1/alerts/history"),
    ("post", "/watchdog/api/v1/alerts/test"),
]


@pytest.fixture(scope="module")
def config(descriptor_path: Path) -> dict[str, Any]:
    settings = GatewaySettings(port=13000, admin_port=19901, service_hosts={"rag": "rag.internal"})
    return build_config(settings, descriptor_path=descriptor_path)


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = _hcm(config)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = vhost["routes"]
    return routes


def test_validate_with_the_real_envoy(descriptor_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--validate", "--descriptors", str(descriptor_path), "--port", "13000"]) == 0
    assert "OK" in capsys.readouterr().out


def test_strict_json_knows_every_bound_body(contracts: Contracts, descriptor_path: Path) -> None:
    bindings, messages = body_bindings(contracts, contracts.routed_services())
    expected = {
        m.full_name
        for s in contracts.routed_services()
        for m in s.methods
        for b in m.bindings
        if b.verb in WRITE_VERBS and b.body
    }
    assert {method for _, _, method, _ in bindings} == expected
    update = next(b for b in bindings if b[2].endswith("DataService/UpdateSymbol"))
    assert update[:2] == ("PATCH", "^/api/v1/symbols/[^/?:]+$") and "kitrading.data.v1.Symbol" in update[3]
    symbol = messages["kitrading.data.v1.Symbol"]
    # both spellings proto3 JSON accepts; a bool; nested messages and their elements
    assert '["display_name"]' in symbol and '["displayName"]' in symbol and "[\"active\"]={k='b'}" in symbol
    assert "r=1,e={k='m',m=\"kitrading.data.v1.CandleSeries\"}" in symbol
    assert "kitrading.data.v1.CandleSeries" in messages
    text = json.dumps(build_config(GatewaySettings(strict_json=False), descriptor_path=descriptor_path))
    assert STRICT_JSON not in text  # KITRADING_GATEWAY_STRICT_JSON=false: Envoy's lenient parsing
    assert GatewaySettings.from_env({"KITRADING_GATEWAY_STRICT_JSON": "off"}).strict_json is False


def test_listener_and_admin(config: dict[str, Any]) -> None:
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 13000}
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19901}
    hcm = _hcm(config)
    assert hcm.get("codec_type", "AUTO") == "AUTO"  # the default: HTTP/1.1 and h2c
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[-5:] == [
        "envoy.filters.http.grpc_web",
        # unknown body fields and non-bool bools: 400 before the transcoder would drop or coerce them
        STRICT_JSON,
        TRANSCODER,
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router",
    ]
    # the whole body may be buffered by it, up to the body limit
    assert listener["per_connection_buffer_limit_bytes"] == GatewaySettings().max_request_body_bytes
    monitors = {m["name"] for m in config["overload_manager"]["resource_monitors"]}
    assert "envoy.resource_monitors.global_downstream_max_connections" in monitors


def test_transcoder_lists_every_service_of_the_set(config: dict[str, Any], contracts: Contracts) -> None:
    transcoder = next(f for f in _hcm(config)["http_filters"] if f["name"] == TRANSCODER)["typed_config"]
    expected = [s.full_name for s in contracts.routed_services()]
    assert transcoder["services"] == expected
    assert {s.mesh.name for s in contracts.routed_services()} <= {s.name for s in SERVICES}
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
        # a body field that the URL binds too (PATCH /symbols/{symbol.symbol} with another symbol) is 400
        "reject_binding_body_field_collisions": True,
    }
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert transcoder["print_options"]["always_print_primitive_fields"] is True
    assert "proto_descriptor_bin" in transcoder


def test_transcoder_set_has_error_details(contracts: Contracts) -> None:
    from google.protobuf import descriptor_pb2

    names = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(contracts.transcoder_set()).file}
    assert {"google/rpc/error_details.proto", "google/rpc/status.proto"} <= names


def test_a_cluster_per_registry_service(config: dict[str, Any]) -> None:
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    # one per service, plus the mesh-wide reflection server behind /grpc.reflection.*
    assert set(clusters) == {s.name for s in SERVICES} | {"reflection"}
    reflection_route = next(
        r
        for r in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"
        ]["virtual_hosts"][0]["routes"]
        if r["match"].get("prefix") == "/grpc.reflection."
    )
    assert reflection_route["route"]["cluster"] == "reflection"
    for info in SERVICES:
        cluster = clusters[info.name]
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": info.grpc_service}
        assert check["unhealthy_threshold"] == check["healthy_threshold"] == 1
        assert check["no_traffic_interval"] == "1s"
        assert cluster["common_lb_config"]["healthy_panic_threshold"] == {}  # 0 %
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]
        assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] > 0
    address = clusters["data"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": service("data").port()}
    assert clusters["data"]["type"] == "STATIC"
    assert clusters["rag"]["type"] == "STRICT_DNS"  # a host name: every address it resolves to


def test_streams_and_long_calls_get_their_own_routes(config: dict[str, Any], contracts: Contracts) -> None:
    routes = {r["match"].get("path") or r["match"].get("prefix"): r for r in _routes(config)}
    for svc in contracts.routed_services():
        assert routes[f"/{svc.full_name}/"]["route"]["cluster"] == svc.mesh.name
        for method in svc.methods:
            if method.server_streaming:
                route = routes[method.grpc_path]["route"]
                assert route["timeout"] == "0s", method.full_name
                assert route["idle_timeout"] == "3600s"
    assert routes["/kitrading.data.v1.DataService/"]["route"]["timeout"] == "30s"
    assert routes["/kitrading.llm.v1.LlmService/"]["route"]["timeout"] == "600s"
    assert routes["/kitrading.llm.v1.LlmService/"]["route"]["idle_timeout"] == "600s"


def test_method_timeout_overrides_name_real_methods(contracts: Contracts) -> None:
    known = {m.full_name for s in contracts.routed_services() for m in s.methods}
    packages = {s.full_name for s in contracts.routed_services()}
    stale = [name for name in METHOD_TIMEOUTS if name.split("/")[0] in packages and name not in known]
    assert not stale, f"METHOD_TIMEOUTS names methods that do not exist: {stale}"


def test_pages_are_direct_responses_outside_the_transcoder(
    config: dict[str, Any], contracts: Contracts
) -> None:
    routes = _routes(config)
    direct = [r for r in routes if "direct_response" in r]
    pages = {r["match"]["path"]: r for r in direct if r["direct_response"]["status"] == 200}
    # GET and HEAD only; any other method on a page is the 405 route right after them
    assert all(r["match"]["headers"][0]["name"] == ":method" for r in pages.values())
    not_allowed = [r for r in direct if r["direct_response"]["status"] == 405]
    assert {r["match"]["path"] for r in not_allowed} == set(pages)
    documented = {s.mesh.prefix for s in contracts.routed_services()}
    expected = {"/", "/docs"} | {f"/{p}/docs" for p in documented}
    expected |= {f"/{p}/openapi.json" for p in documented}
    # the dashboard's modules, stylesheet and the chart library (gateway.dashboard)
    assets = {path for path in pages if path.startswith(ASSET_PREFIX)}
    assert CHARTS_PATH in assets and f"{ASSET_PREFIX}app.js" in assets and f"{ASSET_PREFIX}app.css" in assets
    # Swagger UI's files from the swagger-ui-bundle package and ours (gateway.docs)
    swagger = {path for path in pages if path.startswith(UI_PREFIX)}
    assert swagger == {UI_PREFIX + name for name in (*SWAGGER_UI_FILES, "docs.js", "docs.css")}
    assert set(pages) == expected | assets | swagger
    limit = _hcm(config)["route_config"]["max_direct_response_body_size_bytes"]
    for route in pages.values():
        assert route["typed_per_filter_config"][TRANSCODER]["disabled"] is True
        assert len(base64.b64decode(route["direct_response"]["body"]["inline_bytes"])) <= limit
    redirects = [r for r in routes if "redirect" in r]
    assert {r["match"]["path"] for r in redirects} >= {"/data", "/data/", "/data/docs/", "/docs/"}
    assert all(r["typed_per_filter_config"][TRANSCODER]["disabled"] for r in redirects)
    # Pages come first: a gRPC prefix route must never shadow them.
    local = len(direct) + len(redirects)
    assert all("route" not in r for r in routes[:local])
    assert all("route" in r for r in routes[local:])


def test_health_filters_cover_every_service(config: dict[str, Any]) -> None:
    filters = [
        f for f in _hcm(config)["http_filters"] if f["name"].startswith("envoy.filters.http.health_check.")
    ]
    by_cluster = {
        next(iter(f["typed_config"].get("cluster_min_healthy_percentages", {"gateway": None}))): f
        for f in filters
    }
    assert set(by_cluster) == {s.name for s in SERVICES} | {"gateway"}
    regex = by_cluster["forecast"]["typed_config"]["headers"][0]["string_match"]["safe_regex"]["regex"]
    assert re.match(regex, "/nhits/health") and re.match(regex, "/nhits/health?x=1")
    assert not re.match(regex, "/nhits/healthz")


def test_settings_from_env() -> None:
    settings = GatewaySettings.from_env(
        {
            "KITRADING_GATEWAY_PORT": "8080",
            "KITRADING_DATA_HOST": "data",
            "KITRADING_GATEWAY_BIND": "127.0.0.1",
        }
    )
    assert settings.port == 8080
    assert settings.listen_address == "127.0.0.1"
    assert settings.host_for(service("data")) == "data"
    assert settings.host_for(service("llm")) == "127.0.0.1"


def test_loopback_by_default_and_no_open_door_without_saying_so() -> None:
    """Anyone who reaches the gateway can write (train, sync, delete) until API keys exist: it
    listens on loopback unless told otherwise, and beyond loopback only with an explicit opt-out."""
    assert GatewaySettings().listen_address == "127.0.0.1"
    assert GatewaySettings.from_env({}).listen_address == "127.0.0.1"
    for address in ("0.0.0.0", "::", "192.168.1.20"):
        with pytest.raises(ConfigError) as refused:
            GatewaySettings.from_env({"KITRADING_GATEWAY_BIND": address})
        message = str(refused.value)
        assert "KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED" in message and "127.0.0.1" in message
    opened = GatewaySettings.from_env(
        {"KITRADING_GATEWAY_BIND": "0.0.0.0", "KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED": "true"}
    )
    assert opened.listen_address == "0.0.0.0" and opened.allow_unauthenticated
    assert GatewaySettings.from_env({"KITRADING_GATEWAY_BIND": "::1"}).listen_address == "::1"
    with pytest.raises(ConfigError, match="KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED"):
        GatewaySettings.from_env({"KITRADING_GATEWAY_ALLOW_UNAUTHENTICATED": "perhaps"})


def test_print_config_json(descriptor_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--print-config", "--format", "json", "--descriptors", str(descriptor_path), "--no-embed"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    transcoder = next(f for f in _hcm(printed)["http_filters"] if f["name"] == TRANSCODER)["typed_config"]
    assert transcoder["proto_descriptor"] == str(descriptor_path.resolve())


# ---- OpenAPI ----


def test_openapi_path_templates() -> None:
    assert openapi_path("/v1/{name=shelves/*}/books/{book.id}:get") == (
        "/v1/{name}/books/{id}:get",
        ["name", "book.id"],
    )
    # no dotted names (OpenAPI tools cannot fill them in); two alike endings keep their whole path
    assert openapi_path("/v1/{a.id}/{b.id}") == ("/v1/{a_id}/{b_id}", ["a.id", "b.id"])


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


@pytest.mark.parametrize("name", [s.name for s in SERVICES])
def test_openapi_per_service(contracts: Contracts, name: str) -> None:
    info = service(name)
    routed = [s for s in contracts.routed_services() if s.mesh.name == name]
    if not routed:
        pytest.skip(f"no contracts for {name} yet")
    spec = build_openapi(contracts, info)
    schemas = spec["components"]["schemas"]
    for ref in _refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    bindings = {(b.verb, b.template.split("=")[0]) for s in routed for m in s.methods for b in m.bindings}
    assert len(bindings) == sum(len(ops) for ops in spec["paths"].values())
    for path, operations in spec["paths"].items():
        for op in operations.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), path
    html = render_service_page(spec)
    assert not re.search(r"""(src|href)=["']https?://""", html), (
        "docs must not load anything from the network"
    )
    assert f'data-url="/{info.prefix}/openapi.json"' in html


def test_openapi_data_details(contracts: Contracts) -> None:
    spec = build_openapi(contracts, service("data"))
    get_symbols = spec["paths"]["/api/v1/symbols"]["get"]
    params = {p["name"]: p for p in get_symbols["parameters"]}
    assert params["pageSize"]["schema"]["maximum"] == 1000
    assert get_symbols["x-grpc-method"] == "/kitrading.data.v1.DataService/ListSymbols"
    symbol = spec["components"]["schemas"]["kitrading.data.v1.Symbol"]
    assert symbol["properties"]["symbol"]["pattern"].startswith("^[A-Z0-9]")
    assert symbol["properties"]["createTime"]["format"] == "date-time"
    assert "Symbol is a tradable instrument" in symbol["description"]
    watch = spec["paths"]["/api/v1/events:watch"]["get"]
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    snake = build_openapi(contracts, service("data"), preserve_proto_field_names=True)
    assert "page_size" in {p["name"] for p in snake["paths"]["/api/v1/symbols"]["get"]["parameters"]}


def test_users_calls_are_all_bound(contracts: Contracts) -> None:
    bound = {
        (b.verb, openapi_path(b.template)[0])
        for s in contracts.routed_services()
        for m in s.methods
        for b in m.bindings
    }
    present = {s.mesh.name for s in contracts.routed_services()}
    missing = [call for call in USER_CALLS if call not in bound]
    if len(present) < len(SERVICES):
        pytest.skip(f"contracts of {sorted({s.name for s in SERVICES} - present)} missing")
    assert not missing, missing


def test_generate_writes_one_document_per_service(
    descriptor_path: Path, tmp_path: Path, contracts: Contracts
) -> None:
    written = generate(descriptor_path, tmp_path)
    assert {p.stem for p in written} == {s.mesh.name for s in contracts.routed_services()}
    assert json.loads(written[0].read_text())["openapi"].startswith("3.")


def test_write_config_from_env_and_envoy_command(descriptor_path: Path, tmp_path: Path) -> None:
    # The launcher's use: `write_config(path, env=env)`, then run `envoy_command(path, env=env)`.
    env = {"KITRADING_GATEWAY_PORT": "3999", "KITRADING_GATEWAY_CONCURRENCY": "2"}
    path = write_config(tmp_path / "envoy.json", env=env, descriptor_path=descriptor_path)
    (listener,) = json.loads(path.read_text())["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 3999
    command = envoy_command(path, env=env)
    assert command[1:3] == ["-c", str(path)]
    assert command[-2:] == ["--concurrency", "2"]
    assert "--disable-hot-restart" in command


def test_replicas_are_endpoints_and_once_only_methods_go_to_the_lease_holder(
    descriptor_path: Path, contracts: Contracts, tmp_path: Path
) -> None:
    env = {"KITRADING_FORECAST_REPLICAS": "2", "KITRADING_EMBEDDER_REPLICAS": "3"}
    settings = GatewaySettings.from_env(env, port=13000, admin_port=19901)
    assert dict(settings.service_replicas) == {"forecast": 2, "embedder": 3}
    built = build_config(settings, descriptor_path=descriptor_path)
    clusters = {c["name"]: c for c in built["static_resources"]["clusters"]}

    def ports(name: str) -> list[int]:
        (locality,) = clusters[name]["load_assignment"]["endpoints"]
        return [e["endpoint"]["address"]["socket_address"]["port_value"] for e in locality["lb_endpoints"]]

    assert ports("forecast") == [3002, 3102] and ports("embedder") == [3005, 3105, 3205]
    assert ports("data") == [3001]
    assert all(c["lb_policy"] == "LEAST_REQUEST" for n, c in clusters.items() if n in ("forecast", "data"))
    # the leader cluster: the same instances, healthy only where the lease is held
    assert ports("forecast-leader") == [3002, 3102]
    (check,) = clusters["forecast-leader"]["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "kitrading.forecast.v1.ForecastService/leader"}
    assert "embedder-leader" not in clusters, "nothing once-only in the embedder"
    routes = {r["match"].get("path"): r["route"]["cluster"] for r in _routes(built) if "route" in r}
    (forecast,) = [r for r in contracts.routed_services() if r.full_name.endswith(".ForecastService")]
    leader = set(service("forecast").leader_methods)
    for method in forecast.methods:
        expected = "forecast-leader" if method.name in leader else "forecast"
        assert routes.get(method.grpc_path, "forecast") == expected, method.name
    assert routes["/kitrading.forecast.v1.ForecastService/TrainAll"] == "forecast-leader"
    assert routes["/kitrading.forecast.v1.ForecastService/WatchTrainingJob"] == "forecast-leader"
    assert routes["/kitrading.forecast.v1.ForecastService/GetForecast"] == "forecast"
    path = write_config(tmp_path / "envoy.yaml", built)
    assert validate_config(path).returncode == 0  # the real Envoy takes it
    # a host name (Kubernetes' headless Service): its DNS answers are the instances, on one port
    named = GatewaySettings.from_env(
        {"KITRADING_FORECAST_REPLICAS": "3", "KITRADING_FORECAST_HOST": "forecast"}, port=13000
    )
    clusters = {
        c["name"]: c
        for c in build_config(named, descriptor_path=descriptor_path)["static_resources"]["clusters"]
    }
    for name in ("forecast", "forecast-leader"):
        assert clusters[name]["type"] == "STRICT_DNS"
        assert ports(name) == [3002], name


def test_leader_methods_name_real_methods_and_only_replicable_services_have_replicas(
    contracts: Contracts,
) -> None:
    routed = {r.full_name: r for r in contracts.routed_services()}
    for info in SERVICES:
        names = {m.name for m in routed[info.grpc_service].methods}
        assert set(info.leader_methods) <= names, info.name
        if info.leader_methods:
            assert info.replicable
        if not info.replicable:
            with pytest.raises(ValueError, match=f"{info.name} runs one instance only"):
                info.replicas({f"KITRADING_{info.name.upper()}_REPLICAS": "2"})
    with pytest.raises(ConfigError, match=r"KITRADING_FORECAST_REPLICAS must be a whole number in 1\.\.8"):
        GatewaySettings.from_env({"KITRADING_FORECAST_REPLICAS": "9"})
