"""Generate `kitrading/client/_generated.py`: typed sync and async clients from the descriptor set.

`protos/generate.py` (`make generate`) calls `generate(descriptor_set_path, root)` after protoc. For every
`kitrading.*` service in the FileDescriptorSet it writes one sync and one async class with a method per
RPC (`ListSymbols` -> `list_symbols`), typed with the generated message classes, and the list of
idempotent methods (unary RPCs whose `google.api.http` binding is GET) that the channel's retry policy
covers. The output depends only on the descriptor set and the service registry, and is written already
formatted the way `ruff format` would, so regenerating gives the same bytes.

Client-streaming and bidirectional RPCs are not generated (the contracts have none).
"""

from __future__ import annotations

import keyword
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from kitrading.mesh import SERVICES as MESH_SERVICES

#: Where the output goes, relative to the repository root.
OUTPUT = Path("clients/kitrading/client/_generated.py")
LINE_LENGTH = 110
_OWN_PACKAGE = "kitrading."
_SERVICE_PATH = 6  # FileDescriptorProto.service
_METHOD_PATH = 2  # ServiceDescriptorProto.method


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message class as the generated code names it: `data_v1_request_response_pb2.ListSymbolsRequest`."""

    module: str
    alias: str
    name: str

    @property
    def expr(self) -> str:
        return f"{self.alias}.{self.name}"


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    python_name: str
    request: MessageRef
    response: MessageRef
    server_streaming: bool
    client_streaming: bool
    http: str
    comment: str

    @property
    def idempotent(self) -> bool:
        return not self.server_streaming and not self.client_streaming and self.http.startswith("GET ")


@dataclass(frozen=True, slots=True)
class Service:
    attribute: str
    full_name: str
    name: str
    comment: str
    methods: tuple[Method, ...]


def snake_case(name: str) -> str:
    """`ListSymbols` -> `list_symbols`, `GetLLMStatus` -> `get_llm_status`."""
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()
    return f"{text}_" if keyword.iskeyword(text) else text


def _module_for(proto_file: str) -> tuple[str, str]:
    """Python module and import alias of a .proto file's `_pb2` module."""
    stem = proto_file.removesuffix(".proto")
    module = stem.replace("/", ".").replace("-", "_") + "_pb2"
    alias = module.removeprefix(_OWN_PACKAGE).replace(".", "_")
    return module, alias


def _message_index(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> dict[str, MessageRef]:
    """`.kitrading.data.v1.ListSymbolsRequest` -> its MessageRef, nested messages included."""
    index: dict[str, MessageRef] = {}

    def walk(
        messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str, module: str, alias: str
    ) -> None:
        for message in messages:
            relative = f"{prefix}{message.name}"
            full = f".{file.package}.{relative}" if file.package else f".{relative}"
            index[full] = MessageRef(module, alias, relative)
            walk(message.nested_type, f"{relative}.", module, alias)

    for file in files:
        module, alias = _module_for(file.name)
        walk(file.message_type, "", module, alias)
    return index


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): location.leading_comments
        for location in file.source_code_info.location
        if location.leading_comments
    }


def _http(method: descriptor_pb2.MethodDescriptorProto) -> str:
    if not method.options.HasExtension(annotations_pb2.http):
        return ""
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None:
        return ""
    if verb == "custom":
        return f"{rule.custom.kind.upper()} {rule.custom.path}"
    return f"{verb.upper()} {getattr(rule, verb)}"


def _attribute_names() -> dict[str, str]:
    return {info.grpc_service: info.name for info in MESH_SERVICES}


def load_services(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[Service]:
    """Every `kitrading.*` service of the set, in registry order (then by name)."""
    files = list(descriptor_set.file)
    messages = _message_index(files)
    registry = _attribute_names()
    order = {info.grpc_service: i for i, info in enumerate(MESH_SERVICES)}
    services: list[Service] = []
    for file in files:
        if not file.package.startswith(_OWN_PACKAGE):
            continue
        comments = _comments(file)
        for s_index, proto_service in enumerate(file.service):
            full_name = f"{file.package}.{proto_service.name}"
            methods = tuple(
                Method(
                    name=m.name,
                    python_name=snake_case(m.name),
                    request=messages[m.input_type],
                    response=messages[m.output_type],
                    server_streaming=m.server_streaming,
                    client_streaming=m.client_streaming,
                    http=_http(m),
                    comment=comments.get((_SERVICE_PATH, s_index, _METHOD_PATH, m_index), ""),
                )
                for m_index, m in enumerate(proto_service.method)
            )
            attribute = registry.get(full_name) or file.package.split(".")[1]
            services.append(
                Service(
                    attribute=snake_case(attribute.replace("-", "_")),
                    full_name=full_name,
                    name=proto_service.name,
                    comment=comments.get((_SERVICE_PATH, s_index), ""),
                    methods=methods,
                )
            )
    services.sort(key=lambda s: (order.get(s.full_name, len(order)), s.full_name))
    seen: set[str] = set()
    for service in services:
        if service.attribute in seen:
            raise ValueError(f"two services would be client.{service.attribute}; add them to kitrading.mesh")
        seen.add(service.attribute)
    return services


# ---- rendering ----


def _docstring(text: str, indent: int, extra: Sequence[str] = ()) -> list[str]:
    """A docstring as `ruff format` writes it, wrapped to the line length."""
    pad = " " * indent
    lines = textwrap.dedent(text).strip("\n").splitlines()
    lines = [line.rstrip().replace("\\", "\\\\").replace('"""', "'''") for line in lines]
    if extra:
        lines += ["", *extra] if lines else list(extra)
    if not lines:
        return []
    wrapped: list[str] = []
    width = LINE_LENGTH - indent
    for line in lines:
        if len(line) + 6 <= width:
            wrapped.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip())]
        wrapped += textwrap.wrap(line, width=width - 6, subsequent_indent=lead, break_on_hyphens=False)
    if wrapped[-1].endswith('"'):
        wrapped[-1] += " "
    if len(wrapped) == 1:
        return [f'{pad}"""{wrapped[0]}"""']
    out = [f'{pad}"""{wrapped[0]}']
    out += [f"{pad}{line}" if line else "" for line in wrapped[1:]]
    out.append(f'{pad}"""')
    return out


def _method_lines(service: Service, method: Method, *, is_async: bool) -> list[str]:
    if method.server_streaming:
        stream = "AsyncServerStream" if is_async else "ServerStream"
        returns = f"{stream}[{method.response.expr}]"
        call = "self._server_stream"
        prefix, keyword_ = "def", "return"
    else:
        returns = method.response.expr
        call = "self._unary"
        prefix, keyword_ = ("async def", "return await") if is_async else ("def", "return")
    notes = []
    if method.http:
        note = f"HTTP: `{method.http}`."
        if method.idempotent:
            note += " Retried on UNAVAILABLE."
        notes.append(note)
    if method.server_streaming:
        notes.append("Server stream: no deadline unless `timeout` is given; `cancel()` ends it.")
    return [
        f"    {prefix} {method.python_name}(",
        "        self,",
        f"        request: {method.request.expr} | None = None,",
        "        /,",
        "        *,",
        "        timeout: float | None = None,",
        "        metadata: Sequence[tuple[str, str]] | None = None,",
        f"    ) -> {returns}:",
        *_docstring(method.comment, 8, notes),
        f"        {keyword_} {call}(",
        f'            "/{service.full_name}/{method.name}",',
        f"            {method.request.expr}() if request is None else request,",
        f"            {method.response.expr},",
        "            timeout=timeout,",
        "            metadata=metadata,",
        "        )",
    ]


def _class_lines(service: Service, *, is_async: bool) -> list[str]:
    name = f"Async{service.name}Client" if is_async else f"{service.name}Client"
    base = "AsyncServiceClient" if is_async else "SyncServiceClient"
    lines = [f"class {name}({base}):"]
    summary = service.comment or f"{service.name}."
    lines += _docstring(summary, 4, [f"`client.{service.attribute}` ({'async' if is_async else 'sync'})."])
    lines += ["", f'    SERVICE = "{service.full_name}"']
    for method in service.methods:
        if method.client_streaming:
            lines += ["", f"    # {method.name}: client-streaming RPCs are not generated."]
            continue
        lines += ["", *_method_lines(service, method, is_async=is_async)]
    return lines


def _services_class(services: Sequence[Service], *, is_async: bool) -> list[str]:
    name = "AsyncServices" if is_async else "SyncServices"
    transport = "AsyncTransport" if is_async else "SyncTransport"
    owner = "AsyncClient" if is_async else "Client"
    lines = [
        f"class {name}:",
        f'    """One attribute per service of the mesh; the base of `kitrading.client.{owner}`."""',
        "",
    ]
    for service in services:
        cls = f"Async{service.name}Client" if is_async else f"{service.name}Client"
        first = textwrap.dedent(service.comment).strip().splitlines()
        if first:
            lines.append("    #: " + textwrap.shorten(first[0], LINE_LENGTH - 7, placeholder="..."))
        lines.append(f"    {service.attribute}: {cls}")
    lines += ["", f"    def __init__(self, transport: {transport}) -> None:"]
    for service in services:
        cls = f"Async{service.name}Client" if is_async else f"{service.name}Client"
        lines.append(f"        self.{service.attribute} = {cls}(transport)")
    if not services:
        lines.append("        del transport")
    return lines


def render(descriptor_set: descriptor_pb2.FileDescriptorSet) -> str:
    """The text of `_generated.py` for this descriptor set."""
    services = load_services(descriptor_set)
    refs = sorted(
        {(m.request.module, m.request.alias) for s in services for m in s.methods if not m.client_streaming}
        | {
            (m.response.module, m.response.alias)
            for s in services
            for m in s.methods
            if not m.client_streaming
        }
    )
    third_party = [(mod, alias) for mod, alias in refs if not mod.startswith(_OWN_PACKAGE)]
    first_party = [(mod, alias) for mod, alias in refs if mod.startswith(_OWN_PACKAGE)]

    def import_line(module: str, alias: str) -> str:
        package, _, leaf = module.rpartition(".")
        return f"from {package} import {leaf} as {alias}"

    lines = [
        "# Code generated by kitrading.client.codegen from the contracts in protos/ (make generate).",
        "# DO NOT EDIT.",
        "# ruff: noqa: ASYNC109 - `timeout` is the SDK's keyword for the call's gRPC deadline",
        '"""Typed sync and async clients for every service of the mesh: one method per RPC."""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Sequence",
        "",
    ]
    if third_party:
        lines += [import_line(mod, alias) for mod, alias in third_party] + [""]
    lines += [
        "from kitrading.client._runtime import (",
        "    AsyncServerStream,",
        "    AsyncServiceClient,",
        "    AsyncTransport,",
        "    ServerStream,",
        "    SyncServiceClient,",
        "    SyncTransport,",
        ")",
    ]
    lines += [import_line(mod, alias) for mod, alias in first_party]
    lines += [
        "",
        "#: Unary RPCs whose HTTP binding is GET: the channel retries them on UNAVAILABLE.",
        "IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (",
    ]
    lines += [f'    ("{s.full_name}", "{m.name}"),' for s in services for m in s.methods if m.idempotent]
    lines += [
        ")",
        "",
        "#: Mesh service name (the client attribute) -> protobuf service.",
        "SERVICES: dict[str, str] = {",
    ]
    lines += [f'    "{s.attribute}": "{s.full_name}",' for s in services]
    lines += ["}", ""]
    for service in services:
        lines += ["", *_class_lines(service, is_async=False), "", ""]
        lines += [*_class_lines(service, is_async=True), ""]
    lines += ["", *_services_class(services, is_async=False), "", ""]
    lines += [*_services_class(services, is_async=True)]
    return "\n".join(lines) + "\n"


def generate(descriptor_set_path: Path, root: Path) -> None:
    """Write `<root>/clients/kitrading/client/_generated.py` from the FileDescriptorSet at the path."""
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_set_path).read_bytes())
    text = render(descriptor_set)
    target = Path(root) / OUTPUT
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m kitrading.client.codegen [DESCRIPTORS] [ROOT]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[1]) if len(args) > 1 else Path.cwd()
    descriptors = Path(args[0]) if args else root / "gateway" / "generated" / "descriptors.binpb"
    generate(descriptors, root)


if __name__ == "__main__":
    main()
