"""OpenAPI 3 documents per mesh service, generated from the descriptor set.

What the gateway really serves is what the document says: paths and verbs come from the
`google.api.http` bindings the transcoder routes by, field names follow the transcoder's JSON print
options (proto3 JSON lowerCamelCase unless `preserve_proto_field_names`), 64-bit integers are strings,
enums are their value names, server streams are Server-Sent Events, and errors are `google.rpc.Status`.
Descriptions are the proto comments; `buf.validate` field rules become JSON-schema keywords.

`generate(descriptor_set, root)` is called by `make generate` (protos/generate.py) and writes
`gateway/generated/openapi/<service>.json`; the gateway builds the same documents in memory and serves
them at `/<prefix>/openapi.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import Contracts, HttpBinding, RoutedService, RpcMethod
from kitrading.mesh import SERVICES, ServiceInfo

OPENAPI_VERSION = "3.0.3"
SCHEMA_REF = "#/components/schemas/"
STATUS_SCHEMA = "google.rpc.Status"
#: The securityScheme of the gateway's API keys (`gateway.keys`; the header is
#: `gateway.envoy_config.API_KEY_HEADER`, a test keeps the two equal).
API_KEY_SCHEME = "apiKey"
API_KEY_HEADER = "x-api-key"
#: Where the examples in the stream descriptions send their calls (the gateway's default address).
EXAMPLE_ORIGIN = "http://localhost:3000"

Schema = dict[str, Any]

_T = FieldDescriptor
_SCALARS: dict[int, Schema] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    # proto3 JSON writes 64-bit integers as strings (JavaScript numbers cannot hold them).
    _T.TYPE_INT64: {"type": "string", "format": "int64"},
    _T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _T.TYPE_SINT64: {"type": "string", "format": "int64"},
    _T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _T.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    _T.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}

#: proto3 JSON writes a non-finite double or float as one of these strings.
NON_FINITE: Schema = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}

_WRAPPERS = {
    "DoubleValue": _T.TYPE_DOUBLE,
    "FloatValue": _T.TYPE_FLOAT,
    "Int64Value": _T.TYPE_INT64,
    "UInt64Value": _T.TYPE_UINT64,
    "Int32Value": _T.TYPE_INT32,
    "UInt32Value": _T.TYPE_UINT32,
    "BoolValue": _T.TYPE_BOOL,
    "StringValue": _T.TYPE_STRING,
    "BytesValue": _T.TYPE_BYTES,
}

#: JSON forms of the well-known types (https://protobuf.dev/programming-guides/json/).
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time", "example": "2024-01-31T12:00:00Z"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "example": "3.5s",
        "description": "Duration in seconds with an `s` suffix.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase.",
        "example": "displayName,active",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    **{f"google.protobuf.{name}": {**_SCALARS[kind], "nullable": True} for name, kind in _WRAPPERS.items()},
}

_STATUS: Schema = {
    "type": "object",
    "description": (
        "The error: a gRPC status (`code` is the gRPC code number) with typed details such as "
        "`google.rpc.ErrorInfo` (`reason`) and `google.rpc.BadRequest` (`fieldViolations`). Errors the "
        "gateway answers itself (unknown path or query parameter, service down) have the same shape, with an "
        "ErrorInfo of domain `gateway.kitrading`."
    ),
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
    },
}

_API_KEY: Schema = {
    "type": "apiKey",
    "in": "header",
    "name": API_KEY_HEADER,
    "description": (
        "An API key of the gateway (`kitrading keys create --scope read|write|admin` prints one). "
        "Needed only once the gateway has keys: then every call but health and docs needs one "
        "(`Authorization: Bearer <key>` works too). A call bound to GET needs scope `read`, any other "
        "`write` (a few reads bound to POST, such as scoring and embedding, need only `read`); `admin` "
        "covers both."
    ),
}

_PATH_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def parameter_names(variables: list[str]) -> list[str]:
    """The OpenAPI name of each path variable (a request field path): its last segment
    (`symbol.symbol` -> `symbol`; OpenAPI tools fill in no dotted names), or the whole path with `_`
    for dots where two variables of one template end alike."""
    leaves = [v.rsplit(".", 1)[-1] for v in variables]
    return [
        leaf if leaves.count(leaf) == 1 else v.replace(".", "_")
        for v, leaf in zip(variables, leaves, strict=True)
    ]


def openapi_path(template: str) -> tuple[str, list[str]]:
    """`/v1/{name=shelves/*}/books/{book.id}` -> (`/v1/{name}/books/{id}`, [`name`, `book.id`]): the
    path with each variable's OpenAPI name (`parameter_names`), and the request field paths they set."""
    variables = [m.group(1).strip() for m in _PATH_VARIABLE.finditer(template)]
    names = iter(parameter_names(variables))
    return _PATH_VARIABLE.sub(lambda _: "{" + next(names) + "}", template), variables


class _Builder:
    """Builds one service's document; collects the component schemas it references."""

    def __init__(self, contracts: Contracts, *, preserve_proto_field_names: bool) -> None:
        self.contracts = contracts
        self.proto_names = preserve_proto_field_names
        self.schemas: dict[str, Schema] = {STATUS_SCHEMA: _STATUS}
        self._pending: list[Descriptor | EnumDescriptor] = []
        #: Messages a request can carry (its type and every message reachable from its fields): their
        #: doubles stay plain numbers; a message only answers carry may hold NaN ("no samples").
        self.in_requests: set[str] = set()

    def note_request(self, message: Descriptor) -> None:
        if message.full_name in self.in_requests:
            return
        self.in_requests.add(message.full_name)
        for field in message.fields:
            if field.message_type is not None:
                self.note_request(field.message_type)

    # ---- names ----

    def json_name(self, field: FieldDescriptor) -> str:
        return field.name if self.proto_names else field.json_name

    def ref(self, descriptor: Descriptor | EnumDescriptor) -> Schema:
        if descriptor.full_name not in self.schemas:
            self.schemas[descriptor.full_name] = {}  # reserve: recursion-safe
            self._pending.append(descriptor)
        return {"$ref": SCHEMA_REF + descriptor.full_name}

    def flush(self) -> None:
        while self._pending:
            descriptor = self._pending.pop()
            if isinstance(descriptor, EnumDescriptor):
                self.schemas[descriptor.full_name] = self.enum_schema(descriptor)
            else:
                self.schemas[descriptor.full_name] = self.message_schema(descriptor)

    # ---- schemas ----

    def enum_schema(self, enum: EnumDescriptor) -> Schema:
        lines = [self.contracts.comment(enum.full_name)]
        for value in enum.values:
            text = self.contracts.comment(f"{enum.full_name}.{value.name}")
            if text:
                lines.append(f"- `{value.name}`: {text}")
        schema: Schema = {"type": "string", "enum": [v.name for v in enum.values]}
        description = "\n".join(line for line in lines if line)
        if description:
            schema["description"] = description
        return schema

    def message_schema(self, message: Descriptor, *, skip: Sequence[str] = ()) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name in skip:
                continue
            name = self.json_name(field)
            schema, is_required = self.field_schema(field, message)
            properties[name] = schema
            if is_required:
                required.append(name)
        schema = {"type": "object", "properties": properties}
        if message.full_name in self.in_requests:
            # the gateway refuses unknown fields in request bodies (gateway.strict_json); a message
            # only answers carry stays open (a newer server may add fields; clients ignore them)
            schema["additionalProperties"] = False
        description = self.contracts.comment(message.full_name)
        if description:
            schema["description"] = description
        if required:
            schema["required"] = required
        return schema

    def type_schema(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of the field (an element, for repeated fields)."""
        if field.enum_type is not None:
            return self.ref(field.enum_type)
        if field.message_type is not None:
            known = _WELL_KNOWN.get(field.message_type.full_name)
            return dict(known) if known is not None else self.ref(field.message_type)
        return dict(_SCALARS[field.type])

    def field_schema(self, field: FieldDescriptor, parent: Descriptor) -> tuple[Schema, bool]:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value = message_type.fields_by_name["value"]
            schema: Schema = {"type": "object", "additionalProperties": self.type_schema(value)}
        elif is_repeated(field):
            schema = {"type": "array", "items": self.type_schema(field)}
        else:
            schema = self.type_schema(field)
        notes: list[str] = []
        comment = self.contracts.comment(f"{parent.full_name}.{field.name}")
        if comment:
            notes.append(comment)
        oneof = field.containing_oneof
        if oneof is not None and not _is_synthetic(oneof):
            others = [self.json_name(f) for f in oneof.fields if f is not field]
            notes.append(
                f"Oneof `{oneof.name}`: set at most one of this and {', '.join(f'`{o}`' for o in others)}."
            )
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        required = False
        rules = self.contracts.field_rules(field)
        if rules is not None:
            required = _apply_rules(schema, rules)
        if field.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT) and parent.full_name not in self.in_requests:
            if schema.get("type") == "array":
                schema["items"] = {"oneOf": [schema["items"], NON_FINITE]}
            elif schema.get("type") == "object":
                schema["additionalProperties"] = {"oneOf": [schema["additionalProperties"], NON_FINITE]}
            else:
                schema = {"oneOf": [schema, NON_FINITE]}
        if notes:
            text = "\n\n".join(notes)
            if "$ref" in schema:
                # OpenAPI 3.0 ignores siblings of $ref.
                schema = {"allOf": [schema], "description": text}
            else:
                schema["description"] = (
                    (text + "\n\n" + schema["description"]) if "description" in schema else text
                )
        return schema, required

    def field_by_path(self, message: Descriptor, path: str) -> FieldDescriptor | None:
        field: FieldDescriptor | None = None
        current: Descriptor | None = message
        for part in path.split("."):
            if current is None:
                return None
            field = current.fields_by_name.get(part)
            if field is None:
                return None
            current = field.message_type
        return field

    # ---- parameters ----

    def query_parameters(
        self, message: Descriptor, exclude: set[str], prefix: str = "", json_prefix: str = "", depth: int = 0
    ) -> Iterator[Schema]:
        """Fields the transcoder reads from the query string: every leaf not bound to path or body.

        Nested message fields are addressed with dots (`range.start`); maps cannot be set this way.
        """
        for field in message.fields:
            proto_path = f"{prefix}{field.name}"
            if proto_path in exclude:
                continue
            name = f"{json_prefix}{self.json_name(field)}"
            message_type = field.message_type
            if message_type is not None and message_type.GetOptions().map_entry:
                continue
            if (
                message_type is not None
                and message_type.full_name not in _WELL_KNOWN
                and not is_repeated(field)
            ):
                if depth < 3:
                    yield from self.query_parameters(
                        message_type, exclude, f"{proto_path}.", f"{name}.", depth + 1
                    )
                continue
            schema, required = self.field_schema(field, message)
            description = (
                schema.pop("description", None) if "allOf" not in schema else schema.get("description")
            )
            parameter: Schema = {"name": name, "in": "query", "required": required, "schema": schema}
            if description:
                parameter["description"] = description
            if is_repeated(field):
                parameter["style"], parameter["explode"] = "form", True
            yield parameter

    # ---- operations ----

    def operation(
        self, service: RoutedService, method: RpcMethod, binding: HttpBinding, index: int
    ) -> tuple[str, Schema]:
        request = self.contracts.message(method.input_type)
        response = self.contracts.message(method.output_type)
        path, variables = openapi_path(binding.template)
        parameters: list[Schema] = []
        for variable, name in zip(variables, parameter_names(variables), strict=True):
            field = self.field_by_path(request, variable)
            schema = self.type_schema(field) if field is not None else {"type": "string"}
            if field is not None:
                rules = self.contracts.field_rules(field)
                if rules is not None:
                    _apply_rules(schema, rules)
            parameter: Schema = {"name": name, "in": "path", "required": True, "schema": schema}
            if name != variable:
                parameter["description"] = (
                    f"Sets `{variable}` of the request; a body with another value is 400."
                )
                parameter["x-field-path"] = variable
            parameters.append(parameter)
        bound = set(variables)
        if binding.body != "*":
            exclude = bound | ({binding.body} if binding.body else set())
            parameters.extend(self.query_parameters(request, exclude))
        op: Schema = {
            "operationId": f"{service.short_name}_{method.name}" + (f"_{index}" if index else ""),
            "tags": [service.short_name],
            "summary": method.comment.split("\n", 1)[0],
            "x-grpc-method": method.grpc_path,
        }
        if "\n" in method.comment.strip():
            op["description"] = method.comment
        if parameters:
            op["parameters"] = parameters
        if binding.body == "*":
            top_level = {v.split(".", 1)[0] for v in variables if "." not in v}
            body_schema = (
                self.message_schema(request, skip=sorted(top_level)) if top_level else self.ref(request)
            )
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
        elif binding.body:
            field = request.fields_by_name.get(binding.body)
            if field is not None:
                schema, _ = self.field_schema(field, request)
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        response_schema: Schema = self.ref(response)
        if binding.response_body:
            field = response.fields_by_name.get(binding.response_body)
            if field is not None:
                response_schema, _ = self.field_schema(field, response)
        if method.server_streaming:
            op["x-streaming"] = "server"
            how = self.stream_description(path, binding, request, response)
            op["description"] = (op["description"] + "\n\n" + how) if "description" in op else how
            ok: Schema = {
                "description": (
                    f"A stream of `{response.full_name}` messages as Server-Sent Events: each event is one "
                    "`data: <JSON message>` line followed by a blank line. An error ends the stream."
                ),
                "content": {"text/event-stream": {"schema": response_schema}},
            }
        else:
            ok = {
                "description": f"`{response.full_name}`",
                "content": {"application/json": {"schema": response_schema}},
            }
        op["responses"] = {
            "200": ok,
            "default": {
                "description": "Error (HTTP status mapped from the gRPC code: 400 INVALID_ARGUMENT, "
                "404 NOT_FOUND, 409 ALREADY_EXISTS, 503 UNAVAILABLE, ...)",
                "content": {"application/json": {"schema": {"$ref": SCHEMA_REF + STATUS_SCHEMA}}},
            },
        }
        return path, op

    # ---- streams ----

    def _field_lines(self, message: Descriptor) -> list[str]:
        """`- `name` (Type): first paragraph of its comment`, then which fields share a oneof."""
        lines: list[str] = []
        for field in message.fields:
            if field.message_type is not None:
                kind = field.message_type.name
            elif field.enum_type is not None:
                kind = field.enum_type.name
            else:
                scalar = _SCALARS[field.type]
                kind = f"{scalar['type']}, {scalar['format']}" if "format" in scalar else str(scalar["type"])
            if is_repeated(field):
                kind = f"list of {kind}"
            comment = self.contracts.comment(f"{message.full_name}.{field.name}").split("\n\n", 1)[0]
            text = " ".join(comment.split())
            lines.append(f"- `{self.json_name(field)}` ({kind}){': ' + text if text else ''}")
        for oneof in message.oneofs:
            if not _is_synthetic(oneof):
                names = ", ".join(f"`{self.json_name(f)}`" for f in oneof.fields)
                lines.append(f"\nAt most one of {names} is set in each (oneof `{oneof.name}`).")
        return lines

    def _example_body(self, request: Descriptor, skip: set[str]) -> str:
        """The fields a request cannot leave out (required, or a string of at least one character) as
        placeholders: `{"symbol": "<symbol>", "question": "<question>"}`."""
        body: dict[str, object] = {}
        for field in request.fields:
            if field.name in skip:
                continue
            schema, required = self.field_schema(field, request)
            if schema.get("type") == "string" and (required or schema.get("minLength", 0) >= 1):
                body[self.json_name(field)] = f"<{field.name}>"
            elif required:
                body[self.json_name(field)] = {"integer": 0, "number": 0, "boolean": False}.get(
                    str(schema.get("type")), {}
                )
        return json.dumps(body)

    def stream_description(
        self, path: str, binding: HttpBinding, request: Descriptor, response: Descriptor
    ) -> str:
        """How to read this stream (curl, a browser) and what one event carries, as Markdown."""
        url = re.sub(r"\{([^}]+)\}", lambda m: f"<{m.group(1)}>", path)
        carried = self.contracts.comment(response.full_name)
        lines = [
            "**A Server-Sent Events stream** (`text/event-stream`): each event is one `data: <JSON>` line, "
            f"then a blank line. Each event's JSON is one `{response.name}` (schema below). "
            + " ".join(carried.split()),
            "",
            *self._field_lines(response),
        ]
        # A response that only wraps one message (`{"event": {...}}`): describe that message too.
        only = response.fields[0] if len(response.fields) == 1 else None
        nested = only.message_type if only is not None else None
        if only is not None and nested is not None and nested.full_name not in _WELL_KNOWN:
            comment = " ".join(self.contracts.comment(nested.full_name).split())
            lines += ["", f"`{self.json_name(only)}` holds one `{nested.name}`. {comment}".rstrip()]
            lines += ["", *self._field_lines(nested)]
        lines += ["", "Read it as it arrives with `curl -N` (no buffering):", "", "```sh"]
        if binding.verb == "get":
            lines += [
                f"curl -N '{EXAMPLE_ORIGIN}{url}'",
                "```",
                "",
                "or in a page served by the gateway (same origin) with `EventSource`, which reconnects "
                "when a stream ends: close it after the last event you need.",
                "",
                "```js",
                f"const events = new EventSource('{url}');",
                "events.onmessage = (e) => console.log(JSON.parse(e.data));",
                "```",
                "",
                "`EventSource` cannot send headers: where the gateway needs API keys, read the stream with "
                f"`fetch` and the `{API_KEY_HEADER}` header (as below), or "
                f'`curl -N -H "{API_KEY_HEADER}: $KEY"`.',
            ]
        else:
            top_level = {v.split(".", 1)[0] for v in openapi_path(binding.template)[1]}
            body = self._example_body(request, top_level)
            lines += [
                f"curl -N -H 'content-type: application/json' -d '{body}' '{EXAMPLE_ORIGIN}{url}'",
                "```",
                "",
                "or in a page served by the gateway with `fetch` (`EventSource` can only GET):",
            ]
        verb = binding.verb.upper()
        request_body = "" if binding.verb == "get" else ", body: JSON.stringify(request)"
        content_type = "" if binding.verb == "get" else "'content-type': 'application/json', "
        request_note = "" if binding.verb == "get" else f"; request: the body, {request.name}"
        lines += [
            "",
            "```js",
            f"// key: your API key (leave the header out where the gateway has none){request_note}",
            f"const response = await fetch('{url}', {{ method: '{verb}', "
            f"headers: {{ {content_type}'{API_KEY_HEADER}': key }}{request_body} }});",
            "const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();",
            "let buffer = '';",
            "for (;;) {",
            "  const { value, done } = await reader.read();",
            "  if (done) break;",
            "  buffer += value;",
            "  const blocks = buffer.split('\\n\\n');",
            "  buffer = blocks.pop();",
            "  for (const block of blocks) console.log(JSON.parse(block.replace(/^data: ?/, '')));",
            "}",
            "```",
            "",
            "*Try it out* here shows the events only once the stream has ended (a finished job, a complete "
            "answer); a live watch never ends, so follow it with `curl -N`.",
        ]
        return "\n".join(lines)


def is_repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` on newer protobuf; `label` on older ones.
    repeated = getattr(field, "is_repeated", None)
    if isinstance(repeated, bool):
        return repeated
    return bool(getattr(field, "label", None) == _T.LABEL_REPEATED)


def _is_synthetic(oneof: Any) -> bool:
    """proto3 `optional` fields live in a synthetic one-field oneof named `_<field>`."""
    return len(oneof.fields) == 1 and str(oneof.name).startswith("_")


_NUMERIC_KEYS = {
    "gte": ("minimum", False),
    "gt": ("minimum", True),
    "lte": ("maximum", False),
    "lt": ("maximum", True),
}
_STRING_FORMATS = {
    "email": "email",
    "uuid": "uuid",
    "uri": "uri",
    "hostname": "hostname",
    "ipv4": "ipv4",
    "ipv6": "ipv6",
}


def _apply_rules(schema: Schema, rules: Message) -> bool:
    """Copy `buf.validate.FieldRules` into JSON-schema keywords; returns whether the field is required."""
    required = bool(getattr(rules, "required", False))
    kind = rules.WhichOneof("type")
    if kind is None:
        return required
    target = schema["items"] if (kind != "repeated" and schema.get("type") == "array") else schema
    sub: Message = getattr(rules, kind)
    for field, value in sub.ListFields():
        name = field.name
        if kind == "repeated":
            keyword = {"min_items": "minItems", "max_items": "maxItems", "unique": "uniqueItems"}.get(name)
            if keyword:
                schema[keyword] = value
            elif name == "items" and "items" in schema:
                _apply_rules(schema["items"], value)
        elif name in _NUMERIC_KEYS and target.get("type") in ("integer", "number"):
            keyword, exclusive = _NUMERIC_KEYS[name]
            target[keyword] = value
            if exclusive:
                target["exclusive" + keyword.capitalize()] = True
        elif name in ("min_len", "max_len", "pattern") and target.get("type") == "string":
            keyword = {"min_len": "minLength", "max_len": "maxLength", "pattern": "pattern"}[name]
            target[keyword] = value
        elif name in _STRING_FORMATS and value is True:
            target["format"] = _STRING_FORMATS[name]
        elif name == "in" and kind == "string":
            target["enum"] = list(value)
        elif name == "const" and kind in ("string", "bool"):
            target["enum"] = [value]
    return required


def build_openapi(
    contracts: Contracts,
    service: ServiceInfo,
    *,
    preserve_proto_field_names: bool = False,
) -> dict[str, Any]:
    """The OpenAPI document of one mesh service (every protobuf service of its package)."""
    builder = _Builder(contracts, preserve_proto_field_names=preserve_proto_field_names)
    routed = [s for s in contracts.routed_services([service])]
    for svc in contracts.routed_services():  # every service's: the component schemas are shared
        for method in svc.methods:
            builder.note_request(contracts.message(method.input_type))
    paths: dict[str, dict[str, Schema]] = {}
    tags: list[Schema] = []
    for svc in routed:
        tags.append({"name": svc.short_name, "description": svc.comment})
        for method in svc.methods:
            for index, binding in enumerate(method.bindings):
                path, op = builder.operation(svc, method, binding, index)
                paths.setdefault(path, {})[binding.verb] = op
    builder.flush()
    version = service.proto_package.rsplit(".", 1)[-1]
    description = "\n\n".join(
        [
            service.title + ".",
            "JSON over HTTP through the gateway's gRPC-JSON transcoder; the same RPCs are served as native "
            "gRPC and grpc-web on the same port (see `x-grpc-method`).",
            "Field names are proto3 JSON lowerCamelCase (requests also accept the proto names); 64-bit "
            "integers are strings; enums are value names; fields at their default value are still written; "
            'a double of an answer that has no value (no samples) is written as "NaN".',
        ]
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"KI Trading Mesh: {service.name}", "version": version, "description": description},
        "servers": [{"url": "/"}],
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {API_KEY_SCHEME: _API_KEY},
        },
        "security": [{API_KEY_SCHEME: []}],
        "x-kitrading": {
            "service": service.name,
            "prefix": service.prefix,
            "grpcServices": [s.full_name for s in routed],
            "health": f"/{service.prefix}/health",
            "docs": f"/{service.prefix}/docs",
        },
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def generate(
    descriptor_set: Path | str, root: Path | str, registry: Sequence[ServiceInfo] = SERVICES
) -> list[Path]:
    """Write `gateway/generated/openapi/<service>.json` for every service with contracts (make generate)."""
    contracts = Contracts.load(descriptor_set)
    out_dir = Path(root) / "gateway" / "generated" / "openapi"
    out_dir.mkdir(parents=True, exist_ok=True)
    present = {s.mesh.name for s in contracts.routed_services(registry)}
    written: list[Path] = []
    for service in registry:
        target = out_dir / f"{service.name}.json"
        if service.name not in present:
            target.unlink(missing_ok=True)
            continue
        target.write_text(dumps(build_openapi(contracts, service)), encoding="utf-8")
        written.append(target)
    return written
