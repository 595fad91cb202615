"""The gateway's view of the contracts: one FileDescriptorSet, read once.

Everything the gateway derives from the protos (the transcoder's service list, the per-method routes and
timeouts, the OpenAPI documents) comes from here, so adding an RPC or a domain to `protos/` needs no
change in the gateway. Custom options (`google.api.http`, `buf.validate.field`) are read with dynamic
message classes from the set's own pool, so this module imports no generated code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from kitrading.mesh import SERVICES, ServiceInfo

#: Where `make generate` writes the descriptor set (`protos/generate.py`).
DEFAULT_DESCRIPTOR_PATH = Path(__file__).resolve().parent / "generated" / "descriptors.binpb"

#: Packages whose services are never routed by the gateway (they are only imported by our contracts).
_FOREIGN_PACKAGES = ("google.", "grpc.", "buf.", "envoy.", "validate.")

#: google.rpc files the transcoder needs to turn `grpc-status-details-bin` into JSON (`convert_grpc_status`).
_ERROR_DETAIL_MODULES = ("google.rpc.status_pb2", "google.rpc.error_details_pb2", "google.rpc.code_pb2")


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """One `google.api.http` binding of an RPC (the primary one or an `additional_bindings` entry)."""

    #: Lower-case HTTP verb: get, post, put, patch, delete (or the custom kind's verb).
    verb: str
    #: Path template as written in the proto (`/api/v1/symbols/{symbol.symbol}`).
    template: str
    #: "" (no body), "*" (the whole request) or a top-level request field name.
    body: str
    #: "" (the whole response) or a top-level response field name.
    response_body: str


@dataclass(frozen=True, slots=True)
class RpcMethod:
    """One RPC of a routed service."""

    service: str
    name: str
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool
    bindings: tuple[HttpBinding, ...]
    comment: str

    @property
    def full_name(self) -> str:
        """`kitrading.data.v1.DataService/ListSymbols`: the key of per-method settings."""
        return f"{self.service}/{self.name}"

    @property
    def grpc_path(self) -> str:
        """The HTTP/2 `:path` of the RPC, which is also what the transcoder rewrites JSON calls to."""
        return f"/{self.service}/{self.name}"


@dataclass(frozen=True, slots=True)
class RoutedService:
    """A protobuf service in the descriptor set together with the mesh service that serves it."""

    mesh: ServiceInfo
    full_name: str
    comment: str
    methods: tuple[RpcMethod, ...]

    @property
    def short_name(self) -> str:
        return self.full_name.rsplit(".", 1)[-1]


def _is_foreign(full_name: str) -> bool:
    return full_name.startswith(_FOREIGN_PACKAGES)


class Contracts:
    """A loaded descriptor set: services, comments, HTTP rules and field rules."""

    def __init__(self, file_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.file_set = file_set
        self.pool = descriptor_pool.DescriptorPool()
        for file_proto in file_set.file:
            self.pool.Add(file_proto)
        self._comments = _collect_comments(file_set.file)

    @classmethod
    def load(cls, path: Path | str = DEFAULT_DESCRIPTOR_PATH) -> Contracts:
        data = Path(path).read_bytes()
        return cls(descriptor_pb2.FileDescriptorSet.FromString(data))

    # ---- services and methods ----

    def service_names(self) -> list[str]:
        """Every service defined in the set, in file order."""
        names: list[str] = []
        for file_proto in self.file_set.file:
            package = f"{file_proto.package}." if file_proto.package else ""
            names.extend(package + service.name for service in file_proto.service)
        return names

    def routed_services(self, registry: Sequence[ServiceInfo] = SERVICES) -> list[RoutedService]:
        """Services of the set that belong to a mesh service (matched by protobuf package).

        A domain may grow a second service in its package (`kitrading.forecast.v1.FooService`); it is
        served by the same process, so it routes to the same cluster.
        """
        by_package = {info.proto_package: info for info in registry}
        routed: list[RoutedService] = []
        for name in self.service_names():
            if _is_foreign(name):
                continue
            info = by_package.get(name.rsplit(".", 1)[0])
            if info is None:
                continue
            descriptor = self.pool.FindServiceByName(name)
            methods = tuple(self._method(descriptor, m) for m in descriptor.methods)
            routed.append(RoutedService(info, name, self.comment(name), methods))
        return routed

    def _method(self, service: ServiceDescriptor, method: MethodDescriptor) -> RpcMethod:
        return RpcMethod(
            service=service.full_name,
            name=method.name,
            input_type=method.input_type.full_name,
            output_type=method.output_type.full_name,
            client_streaming=bool(method.client_streaming),
            server_streaming=bool(method.server_streaming),
            bindings=tuple(self._bindings(method)),
            comment=self.comment(f"{service.full_name}.{method.name}"),
        )

    # ---- custom options ----

    def _options_extension(self, options: Message, options_type: str, extension: str) -> Message | None:
        """Read an extension of an options message with the set's own classes (no generated code)."""
        try:
            # typeshed wants a generated extension handle; a pool's FieldDescriptor works the same.
            ext: Any = self.pool.FindExtensionByName(extension)
        except KeyError:
            return None
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(options_type))
        parsed = cls.FromString(options.SerializeToString())
        if not parsed.HasExtension(ext):
            return None
        value: Message = parsed.Extensions[ext]
        return value

    def _bindings(self, method: MethodDescriptor) -> Iterator[HttpBinding]:
        rule = self._options_extension(
            method.GetOptions(), "google.protobuf.MethodOptions", "google.api.http"
        )
        if rule is None:
            return
        yield from _rule_bindings(rule)
        for extra in rule.additional_bindings:  # type: ignore[attr-defined]
            yield from _rule_bindings(extra)

    def field_rules(self, field: FieldDescriptor) -> Message | None:
        """The field's `buf.validate.field` rules (a dynamic `buf.validate.FieldRules`), if any."""
        return self._options_extension(
            field.GetOptions(), "google.protobuf.FieldOptions", "buf.validate.field"
        )

    # ---- lookups ----

    def message(self, full_name: str) -> Descriptor:
        return self.pool.FindMessageTypeByName(full_name)

    def comment(self, full_name: str) -> str:
        """Leading (else trailing) comment of a message, field, enum, value, service or method."""
        return self._comments.get(full_name, "")

    # ---- the transcoder's copy ----

    @cached_property
    def has_error_details(self) -> bool:
        names = {f.name for f in self.file_set.file}
        return "google/rpc/error_details.proto" in names and "google/rpc/status.proto" in names

    def transcoder_set(self) -> bytes:
        """The set Envoy's transcoder gets: without source info, plus the google.rpc error details.

        `convert_grpc_status` can only render `grpc-status-details-bin` (ErrorInfo, BadRequest) as JSON
        when those types are in the set; they are added from googleapis-common-protos when the contracts
        do not import them.
        """
        out = descriptor_pb2.FileDescriptorSet()
        out.CopyFrom(self.file_set)
        for file_proto in out.file:
            file_proto.ClearField("source_code_info")
        present = {f.name for f in out.file}
        for file_proto in _error_detail_files():
            if file_proto.name not in present:
                out.file.append(file_proto)
                present.add(file_proto.name)
        return out.SerializeToString()


def _rule_bindings(rule: Message) -> Iterator[HttpBinding]:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return
    body = str(getattr(rule, "body", ""))
    response_body = str(getattr(rule, "response_body", ""))
    if pattern == "custom":
        custom = rule.custom  # type: ignore[attr-defined]
        yield HttpBinding(str(custom.kind).lower(), str(custom.path), body, response_body)
    else:
        yield HttpBinding(pattern, str(getattr(rule, pattern)), body, response_body)


def _error_detail_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """google/rpc protos and their imports, in dependency order, from the installed python modules."""
    import importlib

    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(file_descriptor: object) -> None:
        name = str(file_descriptor.name)  # type: ignore[attr-defined]
        if name in seen:
            return
        seen.add(name)
        for dependency in file_descriptor.dependencies:  # type: ignore[attr-defined]
            visit(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)  # type: ignore[attr-defined]
        ordered.append(proto)

    for module_name in _ERROR_DETAIL_MODULES:
        visit(importlib.import_module(module_name).DESCRIPTOR)
    return ordered


# ---- comments from source info ----

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto field numbers.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _collect_comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    comments: dict[str, str] = {}
    for file_proto in files:
        by_path: dict[tuple[int, ...], str] = {}
        for location in file_proto.source_code_info.location:
            text = location.leading_comments or location.trailing_comments
            if text:
                by_path[tuple(location.path)] = _clean_comment(text)
        if not by_path:
            continue
        prefix = f"{file_proto.package}." if file_proto.package else ""

        def add(name: str, path: tuple[int, ...], table: dict[tuple[int, ...], str] = by_path) -> None:
            if path in table:
                comments[name] = table[path]

        def enums(
            scope: str, path: tuple[int, ...], items: Iterable[descriptor_pb2.EnumDescriptorProto]
        ) -> None:
            for i, enum in enumerate(items):
                enum_name, enum_path = f"{scope}{enum.name}", (*path, i)
                add(enum_name, enum_path)
                # Enum values are scoped like siblings of the enum (C++ rules), but keyed here by enum.
                for j, value in enumerate(enum.value):
                    add(f"{enum_name}.{value.name}", (*enum_path, _ENUM_VALUE, j))

        def messages(
            scope: str, path: tuple[int, ...], items: Iterable[descriptor_pb2.DescriptorProto]
        ) -> None:
            for i, message in enumerate(items):
                name, message_path = f"{scope}{message.name}", (*path, i)
                add(name, message_path)
                for j, field in enumerate(message.field):
                    add(f"{name}.{field.name}", (*message_path, _MSG_FIELD, j))
                messages(f"{name}.", (*message_path, _MSG_NESTED), message.nested_type)
                enums(f"{name}.", (*message_path, _MSG_ENUM), message.enum_type)

        messages(prefix, (_FILE_MESSAGE,), file_proto.message_type)
        enums(prefix, (_FILE_ENUM,), file_proto.enum_type)
        for i, service in enumerate(file_proto.service):
            name = f"{prefix}{service.name}"
            add(name, (_FILE_SERVICE, i))
            for j, method in enumerate(service.method):
                add(f"{name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j))
    return comments
