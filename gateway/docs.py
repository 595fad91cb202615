"""The API docs the gateway serves: Swagger UI over each service's OpenAPI document, and `/docs`.

Swagger UI is not in the repository: its standalone build comes from the pinned PyPI package
`swagger-ui-bundle` (1.1.0 ships Swagger UI 4.15.5), read from the installed package at config time
and served under `UI_PREFIX` as Envoy direct responses, like the dashboard's chart library. Each
`/<prefix>/docs` shows one service; `/docs` lists every service with its health, then shows them all
behind Swagger UI's service dropdown (`urls`). The one rule: the pages hold no inline script (the CSP
allows scripts from the gateway only), so `docs_ui/docs.js` starts Swagger UI from the page's
`data-url` / `data-urls` attribute.
"""

from __future__ import annotations

import html
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.envoy_config import Page
from gateway.openapi import dumps

SWAGGER_UI_PACKAGE = "swagger-ui-bundle"
#: Where Swagger UI's files and ours (`docs_ui/`) are served (no service prefix is `docs`).
UI_PREFIX = "/docs/ui/"
ASSETS_DIR = Path(__file__).parent / "docs_ui"
#: The files of the package the pages load: the bundle (React and Swagger UI in one script), the
#: standalone preset (the index's top bar with the service dropdown) and the stylesheet.
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")

#: Everything from the gateway itself: no inline script or style, no remote host. `data:` images are
#: Swagger UI's icons (inlined in its stylesheet and bundle).
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
HTML = "text/html; charset=utf-8"

# Source maps are not served: a `sourceMappingURL` left in would make devtools ask for a 404.
_SOURCE_MAP = re.compile(r"\n?(//# sourceMappingURL=\S+|/\*# sourceMappingURL=[^*]+\*/)\s*$")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    prefix: str
    title: str
    grpc_service: str
    implemented: bool
    documented: bool


def swagger_ui() -> tuple[dict[str, str], str] | None:
    """({file name: text} of `SWAGGER_UI_FILES}`, label) from the installed package, or None.

    Found with `find_spec` (the package's own code is never run); its files live in
    `vendor/swagger-ui-<version>/`."""
    spec = importlib.util.find_spec("swagger_ui_bundle")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for folder in sorted((Path(location) / "vendor").glob("swagger-ui-*")):
            if not all((folder / name).is_file() for name in SWAGGER_UI_FILES):
                continue
            files = {
                name: _SOURCE_MAP.sub("\n", (folder / name).read_text(encoding="utf-8"))
                for name in SWAGGER_UI_FILES
            }
            try:
                version = importlib.metadata.version(SWAGGER_UI_PACKAGE)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            ui_version = folder.name.removeprefix("swagger-ui-")
            return files, f"{SWAGGER_UI_PACKAGE} {version}, Swagger UI {ui_version}"
    return None


_MISSING = (
    "/* swagger-ui-bundle is not installed: pip install the kitrading project (it pins "
    "swagger-ui-bundle); the docs pages then say so and link the OpenAPI documents. */\n"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, bar: str, body: str, *, standalone: bool = False) -> str:
    preset = f'<script src="{UI_PREFIX}swagger-ui-standalone-preset.js"></script>' if standalone else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{UI_PREFIX}swagger-ui.css">'
        f'<link rel="stylesheet" href="{UI_PREFIX}docs.css"></head>'
        f'<body><nav class="kt-bar">{bar}</nav>{body}'
        f'<script src="{UI_PREFIX}swagger-ui-bundle.js"></script>{preset}'
        f'<script src="{UI_PREFIX}docs.js"></script></body></html>\n'
    )


def render_service_page(spec: Mapping[str, Any]) -> str:
    """`/<prefix>/docs`: Swagger UI over that service's `/<prefix>/openapi.json`."""
    meta = spec.get("x-kitrading", {})
    prefix, name = str(meta.get("prefix", "")), str(meta.get("service", ""))
    bar = (
        f'<a href="/docs"><strong>KI Trading Mesh</strong></a> &rsaquo; {_e(name)} API · '
        f'<a href="/{_e(prefix)}/openapi.json">openapi.json</a> · '
        f'<a href="/{_e(prefix)}/health">health</a> · <a href="/docs">all services</a> · '
        '<a href="/">dashboard</a>'
    )
    body = f'<div id="swagger-ui" data-url="/{_e(prefix)}/openapi.json"></div>'
    return _page(str(spec.get("info", {}).get("title", "API docs")), bar, body)


def render_index(
    entries: Sequence[IndexEntry], *, title: str = "KI Trading Mesh", ui_label: str | None = None
) -> str:
    """`/docs`: every service with its live health and links, then Swagger UI with a service dropdown."""
    rows: list[str] = []
    for entry in entries:
        links = [f'<a href="/{_e(entry.prefix)}/health">health</a>']
        if entry.documented:
            links[:0] = [
                f'<a href="/{_e(entry.prefix)}/docs">API docs</a>',
                f'<a href="/{_e(entry.prefix)}/openapi.json">openapi.json</a>',
            ]
        status = "" if entry.implemented else ' <span class="kt-badge">contracts only</span>'
        rows.append(
            f'<tr data-service="{_e(entry.name)}"><td><strong>{_e(entry.name)}</strong>{status}</td>'
            f'<td><span class="kt-health" data-health="/{_e(entry.prefix)}/health">…</span></td>'
            f"<td>{_e(entry.title)}<br><code>{_e(entry.grpc_service)}</code></td>"
            f"<td>{' · '.join(links)}</td></tr>"
        )
    urls = [{"name": e.name, "url": f"/{e.prefix}/openapi.json"} for e in entries if e.documented]
    bar = f'<strong>{_e(title)}</strong> API docs · <a href="/">dashboard</a>'
    bar += f' <span class="kt-muted">({_e(ui_label or SWAGGER_UI_PACKAGE + " missing")})</span>'
    body = (
        '<main class="kt-index"><p>A gRPC service mesh behind one gateway: JSON/HTTP, gRPC and grpc-web '
        "on this port. Pick a service in the box below, or open its own page.</p>"
        '<table class="kt-services"><thead><tr><th>service</th><th>health</th><th>what</th><th></th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></main>"
        f'<div id="swagger-ui" data-urls="{_e(json.dumps(urls))}"></div>'
    )
    return _page(f"{title}: API docs", bar, body, standalone=True)


def docs_pages(entries: Sequence[IndexEntry], specs: Mapping[str, Mapping[str, Any]]) -> list[Page]:
    """`/docs`, `/<prefix>/docs` and `/<prefix>/openapi.json` for each documented service (`specs`:
    name -> OpenAPI document), and the files under `UI_PREFIX`."""
    headers = (("content-security-policy", DOCS_CSP),)
    bundle = swagger_ui()
    pages: list[Page] = []
    for entry in entries:
        spec = specs.get(entry.name)
        if spec is None:
            continue
        pages.append(Page(f"/{entry.prefix}/openapi.json", "application/json", dumps(dict(spec))))
        docs = f"/{entry.prefix}/docs"
        aliases = (f"/{entry.prefix}", f"/{entry.prefix}/", f"{docs}/")
        pages.append(Page(docs, HTML, render_service_page(spec), headers, aliases))
    index = render_index(entries, ui_label=bundle[1] if bundle else None)
    pages.append(Page("/docs", HTML, index, headers, ("/docs/",)))
    for name in SWAGGER_UI_FILES:
        text = bundle[0][name] if bundle else _MISSING
        pages.append(Page(UI_PREFIX + name, CONTENT_TYPES[Path(name).suffix], text, headers))
    for path in sorted(ASSETS_DIR.iterdir()):
        if path.suffix in CONTENT_TYPES and path.is_file():
            text = path.read_text(encoding="utf-8")
            pages.append(Page(UI_PREFIX + path.name, CONTENT_TYPES[path.suffix], text, headers))
    return pages
