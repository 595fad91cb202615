"""Self-contained HTML pages the gateway serves: API docs per service and the index at `/docs`.

The docs page is rendered from the service's OpenAPI document (so the two never disagree) into plain
HTML with inline CSS and a few lines of inline JavaScript for "try it" forms. No CDN, no external
font or script: it works on a machine with no network beyond the gateway.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Schema = Mapping[str, Any]

_REF = "#/components/schemas/"

#: Served with the pages: inline style and script only, calls only to the gateway itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)

_CSS = """
:root{--fg:#1d2430;--muted:#5b6675;--line:#dde2ea;--bg:#f7f8fa;--card:#fff;--accent:#1f5fbf}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{background:#14213d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cfd6e4}
header a{color:#9cc3ff}
main{max-width:1100px;margin:0 auto;padding:20px 28px 60px}
h2{margin-top:36px;border-bottom:1px solid var(--line);padding-bottom:6px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
pre{background:#0f172a;color:#e2e8f0;padding:12px;border-radius:6px;overflow:auto;max-height:420px;
white-space:pre-wrap}
details.op{background:var(--card);border:1px solid var(--line);border-radius:6px;margin:8px 0}
details.op>summary{cursor:pointer;padding:10px 12px;list-style:none;display:flex;gap:10px;
align-items:baseline}
details.op>summary::-webkit-details-marker{display:none}
details.op[open]>summary{border-bottom:1px solid var(--line)}
.op-body{padding:6px 14px 14px}
.verb{display:inline-block;min-width:62px;text-align:center;font-weight:700;font-size:12px;
border-radius:4px;padding:2px 6px;color:#fff}
.get{background:#2f7d32}
.post{background:#1f5fbf}
.put,.patch{background:#b26a00}
.delete{background:#b3261e}
.path{font-weight:600}
.summary{color:var(--muted)}
.badge{font-size:11px;border:1px solid var(--line);border-radius:10px;padding:0 7px;
color:var(--muted)}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;background:var(--card)}
th,td{border:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}
.muted{color:var(--muted)}
.req{color:#b3261e;font-weight:700}
.schema{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:4px 14px;
margin:12px 0}
form.try{border-top:1px dashed var(--line);margin-top:10px;padding-top:10px}
form.try label{display:block;margin:4px 0}
form.try input{width:320px;max-width:100%}
form.try textarea{width:100%;min-height:120px}
button{background:var(--accent);color:#fff;border:0;border-radius:4px;padding:5px 14px;
cursor:pointer}
button.stop{background:#666}
a{color:var(--accent)}
ul.services{list-style:none;padding:0}
ul.services li{background:var(--card);border:1px solid var(--line);border-radius:6px;margin:8px 0;
padding:10px 14px}
.health{font-size:12px;font-weight:700;border-radius:10px;padding:1px 8px;margin-left:8px;
background:#ddd}
.health.ok{background:#d7f0d9;color:#1b5e20}
.health.down{background:#f8d7d4;color:#8c1d18}
"""

_TRY_JS = """
function fill(form){let path=form.dataset.path;const q=new URLSearchParams();
for(const el of form.querySelectorAll('[data-in]')){const v=el.value.trim();if(!v)continue;
if(el.dataset.in==='path'){path=path.replace('{'+el.name+'}',encodeURIComponent(v));}
else{for(const part of(el.dataset.repeated?v.split(','):[v]))q.append(el.name,part.trim());}}
const qs=q.toString();return path+(qs?'?'+qs:'');}
for(const form of document.querySelectorAll('form.try')){let ctl=null;
form.querySelector('button.stop').addEventListener('click',()=>{if(ctl)ctl.abort();});
form.addEventListener('submit',async(ev)=>{ev.preventDefault();const out=form.querySelector('pre');
const url=fill(form);const init={method:form.dataset.method.toUpperCase(),headers:{}};
const body=form.querySelector('textarea');
if(body){init.body=body.value;init.headers['content-type']='application/json';}
ctl=new AbortController();init.signal=ctl.signal;out.textContent=init.method+' '+url+'\\n';
try{const res=await fetch(url,init);out.textContent+=res.status+' '+res.statusText+'\\n\\n';
const reader=res.body.getReader();const dec=new TextDecoder();let text='';
for(;;){const {value,done}=await reader.read();if(done)break;const chunk=dec.decode(value,{stream:true});
text+=chunk;out.textContent+=chunk;}
try{const parsed=JSON.parse(text);out.textContent=init.method+' '+url+'\\n'+res.status+' '+res.statusText
+'\\n\\n'+JSON.stringify(parsed,null,2);}catch(e){}}catch(e){out.textContent+=String(e);}});}
"""

_HEALTH_JS = """
async function refresh(){for(const el of document.querySelectorAll('[data-health]')){
try{const res=await fetch(el.dataset.health,{cache:'no-store'});el.textContent=res.ok?'SERVING':'DOWN';
el.className='health '+(res.ok?'ok':'down');}catch(e){el.textContent='?';el.className='health';}}}
refresh();setInterval(refresh,5000);
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escape, then render `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _prose(text: str) -> str:
    """Comments as HTML: blank lines separate paragraphs, `- ` lines become lists."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        items = [line[2:] for line in lines if line.startswith("- ")]
        plain = [line for line in lines if not line.startswith("- ")]
        if plain:
            blocks.append("<p>" + " ".join(_inline(line) for line in plain) + "</p>")
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
    return "\n".join(blocks)


def _page(title: str, header: str, body: str, script: str = "") -> str:
    tail = f"<script>{script}</script>" if script else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><header>{header}</header><main>{body}</main>{tail}</body></html>\n"
    )


# ---- schemas ----


def _ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        return ref[len(_REF) :]
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        return _ref_name(all_of[0])
    return None


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def type_label(schema: Schema) -> str:
    """Short HTML type label: `string (int64)`, `array of <link>`, `map of integer`."""
    name = _ref_name(schema)
    if name is not None:
        return f'<a href="#{_anchor(name)}">{_e(name.rsplit(".", 1)[-1])}</a>'
    kind = schema.get("type")
    if kind == "array":
        return "array of " + type_label(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return "map of " + type_label(schema["additionalProperties"])
    if kind is None:
        return "any"
    fmt = schema.get("format")
    return _e(f"{kind} ({fmt})" if fmt else kind)


_CONSTRAINTS = (
    ("minimum", ">= {}"),
    ("maximum", "<= {}"),
    ("minLength", "length >= {}"),
    ("maxLength", "length <= {}"),
    ("minItems", "items >= {}"),
    ("maxItems", "items <= {}"),
    ("pattern", "pattern {}"),
)


def constraints(schema: Schema) -> str:
    parts: list[str] = []
    for source in (schema, schema.get("items") or {}):
        for key, template in _CONSTRAINTS:
            if key in source:
                text = template.format(source[key])
                if key == "minimum" and source.get("exclusiveMinimum"):
                    text = f"> {source[key]}"
                if key == "maximum" and source.get("exclusiveMaximum"):
                    text = f"< {source[key]}"
                parts.append(text)
    if "enum" in schema and _ref_name(schema) is None:
        parts.append("one of " + ", ".join(str(v) for v in schema["enum"]))
    return "; ".join(f"<code>{_e(p)}</code>" for p in parts)


def _schema_section(name: str, schema: Schema) -> str:
    title = f'<h3 id="{_anchor(name)}" class="mono">{_e(name)}</h3>'
    description = _prose(str(schema.get("description", "")))
    if "enum" in schema:
        values = "".join(f"<li><code>{_e(v)}</code></li>" for v in schema["enum"])
        enum = f'<p class="muted">Enum (string)</p><ul>{values}</ul>'
        return f'<div class="schema">{title}{description}{enum}</div>'
    properties: Mapping[str, Schema] = schema.get("properties", {})
    if not properties:
        kind = "object" if schema.get("type") == "object" else type_label(schema)
        return f'<div class="schema">{title}{description}<p class="muted">{kind}</p></div>'
    required = set(schema.get("required", []))
    rows = "".join(
        f'<tr><td class="mono">{_e(field)}{" <span class=req>*</span>" if field in required else ""}</td>'
        f"<td>{type_label(prop)}</td><td>{_prose(str(prop.get('description', '')))}{constraints(prop)}"
        f"{' <span class=badge>deprecated</span>' if prop.get('deprecated') else ''}</td></tr>"
        for field, prop in properties.items()
    )
    table = f"<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>{rows}</table>"
    return f'<div class="schema">{title}{description}{table}</div>'


# ---- examples for the try-it forms ----


def example(schema: Schema, schemas: Mapping[str, Schema], depth: int = 0) -> Any:
    """A small example value for a schema (request body skeletons)."""
    name = _ref_name(schema)
    if name is not None:
        if depth > 3:
            return {}
        return example(schemas.get(name, {}), schemas, depth + 1)
    if "example" in schema:
        return schema["example"]
    if "enum" in schema:
        values = list(schema["enum"])
        return values[1] if len(values) > 1 else values[0]
    kind = schema.get("type")
    if kind == "object":
        properties: Mapping[str, Schema] = schema.get("properties", {})
        return (
            {key: example(value, schemas, depth + 1) for key, value in properties.items()}
            if depth < 4
            else {}
        )
    if kind == "array":
        return [example(schema.get("items", {}), schemas, depth + 1)] if depth < 4 else []
    if kind == "integer":
        return schema.get("minimum", 0)
    if kind == "number":
        return 0.0
    if kind == "boolean":
        return False
    if kind == "string":
        return "0" if schema.get("format") in ("int64", "uint64") else ""
    return None


# ---- operations ----


def _parameters_table(parameters: Sequence[Schema]) -> str:
    if not parameters:
        return ""
    rows = "".join(
        f'<tr><td class="mono">{_e(p["name"])}{" <span class=req>*</span>" if p.get("required") else ""}</td>'
        f"<td>{_e(p['in'])}</td><td>{type_label(p.get('schema', {}))}</td>"
        f"<td>{_prose(str(p.get('description', '')))}{constraints(p.get('schema', {}))}</td></tr>"
        for p in parameters
    )
    head = "<tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>"
    return f"<h4>Parameters</h4><table>{head}{rows}</table>"


def _try_form(method: str, path: str, op: Schema, schemas: Mapping[str, Schema]) -> str:
    fields: list[str] = []
    for p in op.get("parameters", []):
        repeated = p.get("schema", {}).get("type") == "array"
        hint = " (comma-separated)" if repeated else ""
        fields.append(
            f'<label><span class="mono">{_e(p["name"])}</span>{hint}<br>'
            f'<input name="{_e(p["name"])}" data-in="{_e(p["in"])}"'
            f"{' data-repeated=1' if repeated else ''}{' required' if p['in'] == 'path' else ''}></label>"
        )
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body is not None:
        skeleton = json.dumps(example(body, schemas), indent=2)
        fields.append(f'<label>Body (JSON)<br><textarea name="body">{_e(skeleton)}</textarea></label>')
    return (
        f'<form class="try" data-method="{_e(method)}" data-path="{_e(path)}">{"".join(fields)}'
        '<button type="submit">Send</button> <button type="button" class="stop">Stop</button>'
        "<pre>Response appears here.</pre></form>"
    )


def _operation(method: str, path: str, op: Schema, schemas: Mapping[str, Schema]) -> str:
    streaming = op.get("x-streaming") == "server"
    badges = f'<span class="badge">{"server stream (SSE)" if streaming else "unary"}</span>'
    summary = (
        f'<summary><span class="verb {_e(method)}">{_e(method.upper())}</span>'
        f'<span class="path mono">{_e(path)}</span>'
        f'<span class="summary">{_inline(str(op.get("summary", "")))}</span>'
        f"{badges}</summary>"
    )
    parts = [_prose(str(op.get("description", "")))] if op.get("description") else []
    parts.append(f'<p class="muted">gRPC: <code>{_e(op.get("x-grpc-method", ""))}</code></p>')
    parts.append(_parameters_table(op.get("parameters", [])))
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body is not None:
        parts.append(f"<h4>Request body</h4><p>{type_label(body)}</p>")
        if _ref_name(body) is None and body.get("properties"):
            parts.append(
                _schema_section(f"{op.get('operationId', '')} body", body).replace('class="schema"', "", 1)
            )
    ok = op.get("responses", {}).get("200", {})
    for media, content in ok.get("content", {}).items():
        parts.append(
            f'<h4>Response <span class="muted mono">{_e(media)}</span></h4>'
            f"<p>{type_label(content.get('schema', {}))}</p>"
            f"{_prose(str(ok.get('description', ''))) if streaming else ''}"
        )
    parts.append(_try_form(method, path, op, schemas))
    return f'<details class="op">{summary}<div class="op-body">{"".join(parts)}</div></details>'


def render_service_page(spec: Mapping[str, Any]) -> str:
    """The docs page of one service, from its OpenAPI document."""
    info = spec.get("info", {})
    meta = spec.get("x-kitrading", {})
    schemas: Mapping[str, Schema] = spec.get("components", {}).get("schemas", {})
    prefix = meta.get("prefix", "")
    header = (
        f'<h1>{_e(info.get("title", "API"))} <span class="muted">{_e(info.get("version", ""))}</span></h1>'
        f"<p>{_e(str(info.get('description', '')).split(chr(10))[0])} "
        f'<a href="/{_e(prefix)}/openapi.json">openapi.json</a> · '
        f'<a href="/{_e(prefix)}/health">health</a> · <a href="/docs">all services</a> · '
        '<a href="/">dashboard</a></p>'
    )
    sections: list[str] = [_prose(str(info.get("description", "")))]
    tags = spec.get("tags", [])
    by_tag: dict[str, list[str]] = {str(t["name"]): [] for t in tags}
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            tag = (op.get("tags") or ["API"])[0]
            by_tag.setdefault(tag, []).append(_operation(method, path, op, schemas))
    descriptions = {str(t["name"]): str(t.get("description", "")) for t in tags}
    for tag, ops in by_tag.items():
        sections.append(f"<h2>{_e(tag)}</h2>{_prose(descriptions.get(tag, ''))}{''.join(ops)}")
    if not spec.get("paths"):
        sections.append(
            '<p class="muted">No HTTP bindings yet: this service is reachable over gRPC only.</p>'
        )
    sections.append("<h2>Schemas</h2>" + "".join(_schema_section(n, s) for n, s in schemas.items()))
    return _page(str(info.get("title", "API docs")), header, "".join(sections), _TRY_JS)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    prefix: str
    title: str
    grpc_service: str
    implemented: bool
    documented: bool


def render_index(entries: Sequence[IndexEntry], *, title: str = "KI Trading Mesh") -> str:
    """`GET /docs`: every service with its docs, OpenAPI and live health."""
    items: list[str] = []
    for entry in entries:
        links = [f'<a href="/{_e(entry.prefix)}/health">health</a>']
        if entry.documented:
            links[:0] = [
                f'<a href="/{_e(entry.prefix)}/docs">API docs</a>',
                f'<a href="/{_e(entry.prefix)}/openapi.json">openapi.json</a>',
            ]
        status = "" if entry.implemented else ' <span class="badge">contracts only</span>'
        items.append(
            f"<li><strong>{_e(entry.name)}</strong>"
            f'<span class="health" data-health="/{_e(entry.prefix)}/health">…</span>{status}'
            f'<br><span class="muted">{_e(entry.title)}</span> · <code>{_e(entry.grpc_service)}</code>'
            f"<br>{' · '.join(links)}</li>"
        )
    tagline = "gRPC service mesh behind one gateway: JSON/HTTP, gRPC and grpc-web on this port."
    header = f'<h1>{_e(title)}</h1><p>{tagline} <a href="/">Open the dashboard</a></p>'
    body = f'<h2>Services</h2><ul class="services">{"".join(items)}</ul>'
    return _page(title, header, body, _HEALTH_JS)
