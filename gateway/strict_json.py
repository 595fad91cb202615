"""Strict JSON request bodies at the gateway: an unknown field, or a bool that is not `true`/`false`,
is 400 INVALID_ARGUMENT naming the field, as an unknown query parameter already is.

Envoy's transcoder drops body fields the request message does not define and takes `"yes"` for a
bool (it has no option against either), so the call would go on without what the client meant to
send. This Lua filter runs just before the transcoder, on JSON bodies of the bound write calls only
(`POST`/`PUT`/`PATCH`/`DELETE` with a `body`), and walks the body against the request message's
fields, generated here from the same descriptor set the transcoder reads: every nested message, map
value and array element is checked; the proto name (`display_name`) and the JSON name
(`displayName`) of a field are both accepted, as proto3 JSON says; `google.protobuf.Struct`,
`Value`, `ListValue` and `Any` hold free JSON. A body that is not valid JSON is left to the
transcoder, whose own 400 says so. gRPC and grpc-web calls carry protobuf and are not touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from envoy_data_plane.envoy.config.core.v3 import DataSource
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.google.protobuf import Any as AnyProto
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.descriptors import Contracts, HttpBinding, RoutedService
from gateway.openapi import is_repeated

#: The filter's name in the chain (a Lua filter; the other one checks headers and content types).
FILTER_NAME = "kitrading.strict_json"

#: Well-known types whose JSON form is free (any keys, any values).
FREE_JSON = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any"}
)
#: Well-known types written as one JSON scalar (a string, a number, a bool).
SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
WRITE_VERBS = ("post", "put", "patch", "delete")


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def _lua_pattern(template: str) -> str:
    """An anchored Lua pattern for a `google.api.http` path template: a variable is one segment."""
    out: list[str] = []
    at = 0
    while at < len(template):
        start = template.find("{", at)
        if start < 0:
            out.append(_escape(template[at:]))
            break
        out.append(_escape(template[at:start]))
        end = template.index("}", start)
        _, _, pattern = template[start + 1 : end].partition("=")
        out.append(".+" if pattern == "**" or "/" in pattern else "[^/?:]+")
        at = end + 1
    return "^" + "".join(out) + "$"


def _escape(literal: str) -> str:
    return "".join("%" + c if c in "^$()%.[]*+-?" else c for c in literal)


class _Schemas:
    """Field specs per message, as Lua table constructors (only messages a body can reach)."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self._pending: list[Descriptor] = []

    def spec(self, field: FieldDescriptor) -> str:
        """`{k=...}`: m (a message, `m` its name), b (bool), f (free JSON), x (any other scalar);
        `r=1` repeated (its elements `e`), `mp=1` a map (its values `v`)."""
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return "{mp=1,v=" + self.spec(message.fields_by_name["value"]) + "}"
        if message is not None:
            kind = self._message_kind(message)
        elif field.type == FieldDescriptor.TYPE_BOOL:
            kind = "k='b'"
        else:
            kind = "k='x'"
        if is_repeated(field):
            return "{" + kind + ",r=1,e={" + kind + "}}"
        return "{" + kind + "}"

    def _message_kind(self, message: Descriptor) -> str:
        if message.full_name in FREE_JSON:
            return "k='f'"
        if message.full_name == "google.protobuf.BoolValue":
            return "k='b'"
        if message.full_name in SCALAR_MESSAGES:
            return "k='x'"
        self.add(message)
        return f"k='m',m={_lua_string(message.full_name)}"

    def add(self, message: Descriptor) -> None:
        if message.full_name in self.messages or message in self._pending:
            return
        self._pending.append(message)
        while self._pending:
            current = self._pending.pop()
            if current.full_name in self.messages:
                continue
            self.messages[current.full_name] = ""  # reserved: a recursive message is added once
            entries: list[str] = []
            for field in current.fields:
                spec = self.spec(field)
                names = dict.fromkeys([field.name, field.json_name])
                entries += [f"[{_lua_string(name)}]={spec}" for name in names]
            self.messages[current.full_name] = "{" + ",".join(entries) + "}"

    def root(self, request: Descriptor, binding: HttpBinding) -> str:
        """The spec of the body: the whole request (`*`) or one of its fields."""
        if binding.body == "*":
            return "{" + self._message_kind(request) + "}"
        return self.spec(request.fields_by_name[binding.body])


def body_bindings(
    contracts: Contracts, services: Sequence[RoutedService]
) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """(verb, Lua path pattern, method, root spec) of every bound call with a JSON body, and the
    message specs they reach."""
    schemas = _Schemas()
    bindings: list[tuple[str, str, str, str]] = []
    for service in services:
        for method in service.methods:
            request = contracts.message(method.input_type)
            for binding in method.bindings:
                if binding.verb not in WRITE_VERBS or not binding.body:
                    continue
                root = schemas.root(request, binding)
                bindings.append(
                    (binding.verb.upper(), _lua_pattern(binding.template), method.full_name, root)
                )
    return bindings, schemas.messages


def _table(rows: Iterable[str]) -> str:
    return "{\n" + ",\n".join(rows) + "\n}"


def strict_json_lua(contracts: Contracts, services: Sequence[RoutedService]) -> str:
    """The filter's Lua source (the schema tables, then `STRICT_JSON_LUA`)."""
    bindings, messages = body_bindings(contracts, services)
    message_rows = [f"[{_lua_string(name)}]={spec}" for name, spec in sorted(messages.items())]
    binding_rows = [
        f"{{{_lua_string(verb)},{_lua_string(pattern)},{_lua_string(method)},{root}}}"
        for verb, pattern, method, root in bindings
    ]
    return f"local M = {_table(message_rows)}\nlocal B = {_table(binding_rows)}\n{STRICT_JSON_LUA}"


#: The walker. `check(body, spec)` returns nil when the body is acceptable (or not JSON at all: the
#: transcoder then answers for it), else the field path and what is wrong with it.
STRICT_JSON_LUA = r"""
-- Byte loops rather than string patterns: LuaJIT compiles them (a pattern search is a call out of
-- the compiled trace), which makes a 2 MB body a few milliseconds instead of a hundred.
local sub, byte, char = string.sub, string.byte, string.char
local MAX_DEPTH = 200
local ESCAPES = {[34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
  [114] = "\r", [116] = "\t"}
local BAD = {}  -- a sentinel: malformed JSON

local function ws(s, i)
  local c = byte(s, i)
  while c == 32 or c == 10 or c == 13 or c == 9 do
    i = i + 1
    c = byte(s, i)
  end
  return i
end

-- the end of a string starting at i (its opening quote): the index after it, and whether it holds
-- an escape
local function skipstr(s, i)
  local escaped = false
  i = i + 1
  while true do
    local c = byte(s, i)
    if c == 34 then return i + 1, escaped end
    if c == nil then return BAD end
    if c == 92 then
      escaped = true
      i = i + 2
    else
      i = i + 1
    end
  end
end

-- a key's text, its escapes decoded (a non-ASCII \u escape becomes "?", which names no field)
local function decode(text)
  local out, i, n = {}, 1, #text
  while i <= n do
    local c = byte(text, i)
    if c == 92 then
      local e = byte(text, i + 1)
      if e == 117 then
        local code = tonumber(sub(text, i + 2, i + 5), 16) or 0
        out[#out + 1] = code < 128 and char(code) or "?"
        i = i + 6
      else
        out[#out + 1] = ESCAPES[e] or "?"
        i = i + 2
      end
    else
      out[#out + 1] = char(c)
      i = i + 1
    end
  end
  return table.concat(out)
end

-- the path of a field inside `name` (relative paths are built only when something is wrong)
local function under(name, rest)
  if rest == "" then return name end
  if byte(rest, 1) == 91 then return name .. rest end
  return name .. "." .. rest
end

local value

local function object(s, i, fields, free, elem, depth)
  -- s[i] == "{"; fields: the message's specs (nil: a map, whose values are `elem`; free: any keys)
  i = ws(s, i + 1)
  if byte(s, i) == 125 then return i + 1 end
  while true do
    if byte(s, i) ~= 34 then return BAD end
    local e, escaped = skipstr(s, i)
    if e == BAD then return BAD end
    local start, spec, key = i, nil, nil
    if fields ~= nil then
      key = sub(s, i + 1, e - 2)
      if escaped then key = decode(key) end
      spec = fields[key]
      if spec == nil then return nil, key, "is not a field of this request" end
    elseif not free then
      spec = elem
    end
    i = ws(s, e)
    if byte(s, i) ~= 58 then return BAD end
    local after, bad, why = value(s, ws(s, i + 1), spec, depth + 1)
    if after == nil then
      if key == nil then
        key = sub(s, start + 1, e - 2)
        if escaped then key = decode(key) end
      end
      return nil, under(key, bad), why
    end
    if after == BAD then return BAD end
    i = ws(s, after)
    local c = byte(s, i)
    if c == 125 then return i + 1 end
    if c ~= 44 then return BAD end
    i = ws(s, i + 1)
  end
end

local function array(s, i, spec, depth)
  i = ws(s, i + 1)
  if byte(s, i) == 93 then return i + 1 end
  local n = 0
  while true do
    local after, bad, why = value(s, i, spec, depth + 1)
    if after == nil then return nil, under("[" .. n .. "]", bad), why end
    if after == BAD then return BAD end
    i = ws(s, after)
    local c = byte(s, i)
    if c == 93 then return i + 1 end
    if c ~= 44 then return BAD end
    i = ws(s, i + 1)
    n = n + 1
  end
end

local function literal(s, i, word)
  return sub(s, i, i + #word - 1) == word
end

-- a value at i against `spec` (nil: anything): the index after it, BAD, or nil + the path of the
-- field that is wrong (relative to this value; "" the value itself) + what is wrong
value = function(s, i, spec, depth)
  if depth > MAX_DEPTH then return BAD end
  local c = byte(s, i)
  if c == nil then return BAD end
  if spec ~= nil and spec.r then
    if c == 91 then return array(s, i, spec.e, depth) end
    if literal(s, i, "null") then return i + 4 end
    if spec.k == "b" then return nil, "", "must be a JSON array of true / false" end
    spec = nil  -- the transcoder says what is wrong with it
  end
  local kind = spec and spec.k
  if spec ~= nil and spec.mp then
    if c == 123 then return object(s, i, nil, false, spec.v, depth) end
    spec, kind = nil, nil
  end
  if kind == "b" then
    if literal(s, i, "true") or literal(s, i, "null") then return i + 4 end
    if literal(s, i, "false") then return i + 5 end
    return nil, "", "must be true or false (a JSON bool, not a string or a number)"
  end
  if c == 123 then
    if kind == "m" then return object(s, i, M[spec.m], false, nil, depth) end
    return object(s, i, nil, true, nil, depth)
  end
  if c == 91 then return array(s, i, nil, depth) end
  if c == 34 then
    local e = skipstr(s, i)
    return e
  end
  -- a number, true, false or null: up to the next delimiter
  local j = i
  while true do
    c = byte(s, j)
    if c == nil or c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9 then break end
    j = j + 1
  end
  if j == i then return BAD end
  return j
end

local function check(body, spec)
  local after, field, why = value(body, ws(body, 1), spec, 0)
  if after == nil then return field, why end
  return nil
end

local find = string.find
local WRITES = {POST = true, PUT = true, PATCH = true, DELETE = true}

function envoy_on_request(handle)
  local headers = handle:headers()
  local verb = headers:get(":method")
  if not WRITES[verb] then return end
  local kind = string.lower(headers:get("content-type") or "")
  if not find(kind, "^application/json") then return end
  local path = string.match(headers:get(":path") or "", "^[^?]*")
  local root, method
  for _, b in ipairs(B) do
    if b[1] == verb and find(path, b[2]) then method, root = b[3], b[4]; break end
  end
  if root == nil then return end
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local field, why = check(body:getBytes(0, body:length()), root)
  if field == nil then return end
  if field == "" then field = "(the body)" end
  -- plain text: the local reply mapper makes it the message of a google.rpc.Status (400)
  local shown = string.gsub(field, "[%c\"\\]", "?")
  handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
    "request body field " .. shown .. " " .. why .. " (" .. method .. "; unknown fields are refused, "
      .. "as unknown query parameters are)")
end
"""


def strict_json_filter(descriptor: bytes | str, services: Sequence[RoutedService]) -> HttpFilter:
    """The Lua filter of `strict_json_lua` for the routed services (`descriptor`: the set's bytes or
    its path, as the transcoder gets it)."""
    if isinstance(descriptor, bytes):
        contracts = Contracts(descriptor_pb2.FileDescriptorSet.FromString(descriptor))
    else:
        contracts = Contracts.load(descriptor)
    lua = Lua(default_source_code=DataSource(inline_string=strict_json_lua(contracts, services)))
    return HttpFilter(name=FILTER_NAME, typed_config=AnyProto.pack(lua))
