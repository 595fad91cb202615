"""The web dashboard at `/`: static files served by Envoy itself (direct responses).

The dashboard is plain ES modules under `gateway/dashboard/` (no build step). It calls only the
gateway's public JSON/HTTP and SSE API, the same calls a user's script can make. The chart library,
TradingView's lightweight-charts, is not in the repository: it comes from the pinned PyPI package
`lightweight-charts` (its wheel ships the standalone build), read from the installed package at
config time and served at `CHARTS_PATH`. Without that package the page still loads and the Symbol
panel says the chart library is missing.
"""

from __future__ import annotations

import html
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.envoy_config import Page

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
#: Where the dashboard's own files are served (no service prefix is `ui`).
ASSET_PREFIX = "/ui/"
CHARTS_PATH = "/ui/vendor/lightweight-charts.js"
CHARTS_PACKAGE = "lightweight-charts"

#: Scripts and styles from the gateway only; inline styles allowed (the chart library sets them).
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class DashboardService:
    name: str
    prefix: str
    title: str
    implemented: bool
    documented: bool


def charts_library() -> tuple[str, str] | None:
    """(source, label) of lightweight-charts' standalone build from the installed package, or None.

    Found with `find_spec`, so the package's Python code (which imports pywebview) is never run."""
    spec = importlib.util.find_spec("lightweight_charts")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "js" / "lightweight-charts.js"
        if path.is_file():
            try:
                version = importlib.metadata.version(CHARTS_PACKAGE)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            source = path.read_text(encoding="utf-8")
            library = re.search(r"Lightweight Charts\S* v(\d+\.\d+\.\d+)", source[:400])
            return source, f"{CHARTS_PACKAGE} {version}, library v{library.group(1) if library else '?'}"
    return None


_MISSING_CHARTS = (
    "/* lightweight-charts is not installed: pip install the kitrading project "
    "(it pins lightweight-charts); the Symbol panel shows the chart as unavailable. */\n"
)


def render_index(services: Sequence[DashboardService], charts_version: str | None) -> str:
    config = {
        "services": [
            {
                "name": s.name,
                "prefix": s.prefix,
                "title": s.title,
                "implemented": s.implemented,
                "documented": s.documented,
            }
            for s in services
        ],
        "charts": charts_version,
    }
    template = (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")
    # `<` escaped so that no text inside the JSON can close the script element.
    blob = json.dumps(config).replace("<", "\\u003c")
    return template.replace("{{MESH_CONFIG}}", blob).replace(
        "{{CHARTS_VERSION}}", html.escape(charts_version or "missing")
    )


def dashboard_pages(services: Sequence[DashboardService]) -> list[Page]:
    """`/` (the dashboard), its modules and stylesheet under `/ui/`, and the chart library."""
    headers = (("content-security-policy", DASHBOARD_CSP),)
    charts = charts_library()
    pages = [
        Page(
            "/",
            "text/html; charset=utf-8",
            render_index(services, charts[1] if charts else None),
            headers,
            ("/index.html", "/dashboard", "/dashboard/"),
        )
    ]
    for path in sorted(DASHBOARD_DIR.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        route = ASSET_PREFIX + path.relative_to(DASHBOARD_DIR).as_posix()
        pages.append(Page(route, content_type, path.read_text(encoding="utf-8"), headers))
    pages.append(Page(CHARTS_PATH, CONTENT_TYPES[".js"], charts[0] if charts else _MISSING_CHARTS, headers))
    return pages
