"""The API docs pages (`gateway.docs`): Swagger UI from the swagger-ui-bundle package over each
service's OpenAPI document, the index at `/docs`, the API-key securityScheme and the SSE descriptions.
Checked without Envoy; `test_gateway_live.py` fetches the same pages through it, and
`tests/dashboard/test_dashboard_browser.py` uses them in Chromium."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.descriptors import Contracts
from gateway.docs import (
    DOCS_CSP,
    SWAGGER_UI_FILES,
    UI_PREFIX,
    IndexEntry,
    docs_pages,
    render_index,
    render_service_page,
    swagger_ui,
)
from gateway.envoy_config import API_KEY_HEADER, GatewaySettings, Page
from gateway.openapi import API_KEY_HEADER as OPENAPI_KEY_HEADER
from gateway.openapi import API_KEY_SCHEME, build_openapi
from gateway.run import build_config, build_pages, render_config
from kitrading.mesh import SERVICES, service


@pytest.fixture(scope="module")
def specs(contracts: Contracts) -> dict[str, dict[str, Any]]:
    documented = {s.mesh.name for s in contracts.routed_services()}
    return {s.name: build_openapi(contracts, s) for s in SERVICES if s.name in documented}


@pytest.fixture(scope="module")
def pages(contracts: Contracts) -> dict[str, Page]:
    return {p.path: p for p in build_pages(contracts, SERVICES, GatewaySettings())}


def swagger_ui_text(name: str) -> str:
    found = swagger_ui()
    assert found is not None
    return found[0][name]


def _entries(specs: dict[str, dict[str, Any]]) -> list[IndexEntry]:
    return [
        IndexEntry(s.name, s.prefix, s.title, s.grpc_service, s.implemented, s.name in specs)
        for s in SERVICES
    ]


def test_swagger_ui_comes_from_the_pinned_package() -> None:
    found = swagger_ui()
    assert found is not None, "swagger-ui-bundle is a dependency of the project"
    files, label = found
    assert re.fullmatch(r"swagger-ui-bundle 1\.1\.0, Swagger UI 4\.15\.5", label), label
    assert set(files) == set(SWAGGER_UI_FILES)
    assert "SwaggerUIBundle" in files["swagger-ui-bundle.js"][:2000]
    assert "SwaggerUIStandalonePreset" in files["swagger-ui-standalone-preset.js"][:2000]
    # the maps are not served, so nothing may point at them
    assert not any("sourceMappingURL" in text[-300:] for text in files.values())


def test_every_docs_file_is_served_with_its_type_and_the_csp(pages: dict[str, Page]) -> None:
    for name in (*SWAGGER_UI_FILES, "docs.js", "docs.css"):
        page = pages[UI_PREFIX + name]
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        assert page.content_type == f"{kind}; charset=utf-8", name
        assert dict(page.headers)["content-security-policy"] == DOCS_CSP
    assert len(pages[UI_PREFIX + "swagger-ui-bundle.js"].body) > 500_000  # the real bundle, not a stub


def test_the_csp_is_strict() -> None:
    directives = dict(d.strip().split(" ", 1) for d in DOCS_CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"  # Try it out: the gateway itself, nothing else
    assert "unsafe" not in DOCS_CSP and "http" not in DOCS_CSP


def test_a_service_page_is_swagger_ui_over_its_document(specs: dict[str, dict[str, Any]]) -> None:
    html = render_service_page(specs["data"])
    assert html.startswith("<!doctype html>")
    assert '<div id="swagger-ui" data-url="/data/openapi.json"></div>' in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert [attrs for attrs, _ in scripts] == [
        f' src="{UI_PREFIX}swagger-ui-bundle.js"',
        f' src="{UI_PREFIX}docs.js"',
    ]
    assert all(not body for _, body in scripts), "no inline script: the CSP forbids it"
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    for link in ("/data/openapi.json", "/data/health", "/docs", "/"):
        assert f'href="{link}"' in html


def test_the_index_lists_every_service_and_offers_each_document(specs: dict[str, dict[str, Any]]) -> None:
    html = render_index(_entries(specs), ui_label="swagger-ui-bundle 1.1.0, Swagger UI 4.15.5")
    for s in SERVICES:
        assert f'data-health="/{s.prefix}/health"' in html
        assert (f'href="/{s.prefix}/docs"' in html) == (s.name in specs)
    (raw,) = re.findall(r'data-urls="([^"]*)"', html)
    urls = json.loads(raw.replace("&quot;", '"'))
    assert urls == [{"name": n, "url": f"/{service(n).prefix}/openapi.json"} for n in specs]
    assert f'src="{UI_PREFIX}swagger-ui-standalone-preset.js"' in html  # the dropdown's top bar
    assert "Swagger UI 4.15.5" in html


def test_docs_pages_route_and_aliases(specs: dict[str, dict[str, Any]]) -> None:
    by_path = {p.path: p for p in docs_pages(_entries(specs), specs)}
    data = by_path["/data/docs"]
    assert data.content_type == "text/html; charset=utf-8"
    assert data.aliases == ("/data", "/data/", "/data/docs/")
    assert by_path["/docs"].aliases == ("/docs/",)
    assert json.loads(by_path["/data/openapi.json"].body) == specs["data"]


def test_documents_declare_the_api_key_header(specs: dict[str, dict[str, Any]]) -> None:
    assert OPENAPI_KEY_HEADER == API_KEY_HEADER
    for spec in specs.values():
        scheme = spec["components"]["securitySchemes"][API_KEY_SCHEME]
        assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        assert "kitrading keys create" in scheme["description"]
        assert spec["security"] == [{API_KEY_SCHEME: []}]


#: The streams the users follow (issue 21): each says how to read it and what an event carries.
STREAMS = [
    ("data", "get", "/api/v1/events:watch", ["eventId", "marketEvent"]),
    ("forecast", "get", "/api/v1/forecast/training/jobs/{job_id}:watch", ["snapshot", "step", "result"]),
    ("llm", "post", "/api/v1/analyze:stream", ["context", "token", "completion"]),
    ("watchdog", "get", "/watchdog/api/v1/status:watch", ["snapshot", "change", "alert"]),
]


@pytest.mark.parametrize(("name", "verb", "path", "fields"), STREAMS)
def test_streams_say_how_to_consume_sse(
    specs: dict[str, dict[str, Any]], name: str, verb: str, path: str, fields: list[str]
) -> None:
    op = specs[name]["paths"][path][verb]
    text = op["description"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert "curl -N" in text and "data: <JSON>" in text
    url = re.sub(r"\{([^}]+)\}", r"<\1>", path)
    assert f"http://localhost:3000{url}'" in text
    for field in fields:
        assert f"- `{field}` (" in text, field
    if verb == "get":
        assert f"new EventSource('{url}')" in text
    else:
        assert "EventSource` can only GET" in text
        assert """-d '{"symbol": "<symbol>", "question": "<question>"}'""" in text
    assert f"'{API_KEY_HEADER}': key" in text  # the fetch form, for a gateway with keys


def test_every_stream_and_only_streams_carry_the_sse_text(specs: dict[str, dict[str, Any]]) -> None:
    streams = 0
    for spec in specs.values():
        for operations in spec["paths"].values():
            for op in operations.values():
                streaming = op.get("x-streaming") == "server"
                streams += streaming
                assert ("curl -N" in op.get("description", "")) == streaming, op["operationId"]
    assert streams >= len(STREAMS) + 2  # the pattern and regime job watches too


def test_the_bundle_fits_the_direct_response_limit(descriptor_path: Path) -> None:
    config = build_config(GatewaySettings(), descriptor_path=descriptor_path)
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    limit = hcm["route_config"]["max_direct_response_body_size_bytes"]
    (bundle,) = [
        r
        for r in hcm["route_config"]["virtual_hosts"][0]["routes"]
        if r["match"].get("path") == UI_PREFIX + "swagger-ui-bundle.js" and "direct_response" in r
        if r["direct_response"]["status"] == 200
    ]
    body = base64.b64decode(bundle["direct_response"]["body"]["inline_bytes"])
    assert body.decode() == swagger_ui_text("swagger-ui-bundle.js")  # byte for byte (U+00A0 included)
    assert len(body) > 500_000 and limit >= len(body)
    # the YAML form (the launcher's) holds the pages unchanged
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    assert yaml.load(render_config(config), Loader=loader) == config
