"""Swagger 2.0 documents in protobuf, as gnostic's ``openapi.v2.Document`` (pure).

kubectl before 1.27 asks for ``/openapi/v2`` with ``Accept:
application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` and unmarshals the body into
gnostic's generated ``openapi_v2.Document``. Rather than vendoring that schema and generated code,
we write the protobuf wire format by hand for the subset of the message tree that
``openapi_v2.document`` produces. Field numbers are those of gnostic's ``openapiv2/OpenAPIv2.proto``.
Gnostic's conventions: JSON maps become repeated ``Named*`` (``name`` = 1, ``value`` = 2) messages
in document order, ``x-*`` keys become ``vendor_extension`` entries, and free-form values (``enum``,
``default``, extensions) are ``Any`` messages whose ``yaml`` field (2) holds the value as YAML.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"

_VARINT, _I64, _LEN = 0, 1, 2


class EncodeError(ValueError):
    """A document that this encoder cannot represent."""


# --- wire format ---------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def _string(field: int, value: Any) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"expected a string for field {field}, got {value!r}")
    return _bytes(field, value.encode()) if value else b""


def _strings(field: int, values: Any) -> bytes:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise EncodeError(f"expected a list of strings for field {field}, got {values!r}")
    return b"".join(_bytes(field, v.encode()) for v in values if isinstance(v, str))


def _bool(field: int, value: Any) -> bytes:
    return _key(field, _VARINT) + b"\x01" if value else b""


def _int64(field: int, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"expected an integer for field {field}, got {value!r}")
    return _key(field, _VARINT) + _varint(value) if value else b""


def _double(field: int, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodeError(f"expected a number for field {field}, got {value!r}")
    return _key(field, _I64) + struct.pack("<d", float(value)) if value else b""


def _message(field: int, body: bytes) -> bytes:
    """An embedded message; an empty one is still written so that its presence is kept."""
    return _bytes(field, body)


# --- gnostic messages ----------------------------------------------------------------------------


def _any(value: Any) -> bytes:
    """``Any`` with the value in its ``yaml`` field (2), as gnostic's compiler stores it."""
    return _string(2, yaml.safe_dump(value, default_flow_style=False, sort_keys=False))


def _named(field: int, name: str, value: bytes) -> bytes:
    return _message(field, _string(1, name) + _message(2, value))


def _vendor_extensions(field: int, obj: Mapping[str, Any]) -> bytes:
    return b"".join(_named(field, k, _any(v)) for k, v in obj.items() if k.startswith("x-"))


def _info(info: Mapping[str, Any]) -> bytes:
    return (
        _string(1, info.get("title", ""))
        + _string(2, info.get("version", ""))
        + _string(3, info.get("description", ""))
        + _vendor_extensions(7, info)
    )


# Schema: (JSON key, field number, encoder) for the scalar fields.
_SCHEMA_SCALARS = (
    ("$ref", 1, _string),
    ("format", 2, _string),
    ("title", 3, _string),
    ("description", 4, _string),
    ("multipleOf", 6, _double),
    ("maximum", 7, _double),
    ("exclusiveMaximum", 8, _bool),
    ("minimum", 9, _double),
    ("exclusiveMinimum", 10, _bool),
    ("maxLength", 11, _int64),
    ("minLength", 12, _int64),
    ("pattern", 13, _string),
    ("maxItems", 14, _int64),
    ("minItems", 15, _int64),
    ("uniqueItems", 16, _bool),
    ("maxProperties", 17, _int64),
    ("minProperties", 18, _int64),
    ("required", 19, _strings),
    ("discriminator", 26, _string),
    ("readOnly", 27, _bool),
)


def schema(s: Mapping[str, Any]) -> bytes:
    """``openapi.v2.Schema``."""
    if not isinstance(s, Mapping):
        raise EncodeError(f"a schema must be an object, got {s!r}")
    out = bytearray()
    for key, field, enc in _SCHEMA_SCALARS:
        if key in s:
            out += enc(field, s[key])
    if "default" in s:
        out += _message(5, _any(s["default"]))
    for value in s.get("enum") or ():
        out += _message(20, _any(value))
    extra = s.get("additionalProperties")
    if isinstance(extra, bool):  # AdditionalPropertiesItem.boolean (2): written even when false
        out += _message(21, _key(2, _VARINT) + _varint(int(extra)))
    elif isinstance(extra, Mapping):
        out += _message(21, _message(1, schema(extra)))
    if "type" in s:  # TypeItem { repeated string value = 1 }
        types = [s["type"]] if isinstance(s["type"], str) else s["type"]
        out += _message(22, _strings(1, types))
    if "items" in s:  # ItemsItem { repeated Schema schema = 1 }
        items = s["items"] if isinstance(s["items"], list) else [s["items"]]
        out += _message(23, b"".join(_message(1, schema(i)) for i in items))
    for sub in s.get("allOf") or ():
        out += _message(24, schema(sub))
    if "properties" in s:  # Properties { repeated NamedSchema additional_properties = 1 }
        props = s["properties"]
        out += _message(25, b"".join(_named(1, k, schema(v)) for k, v in props.items()))
    if "example" in s:
        out += _message(30, _any(s["example"]))
    out += _vendor_extensions(31, s)
    return bytes(out)


def _parameter(p: Mapping[str, Any]) -> bytes:
    """``ParametersItem`` -> ``Parameter`` -> body or non-body (query/path/header/formData)."""
    if "$ref" in p:  # ParametersItem.json_reference (2)
        return _message(2, _string(1, p["$ref"]))
    where = p.get("in")
    if where == "body":
        body = (
            _string(1, p.get("description", ""))
            + _string(2, p.get("name", ""))
            + _string(3, "body")
            + _bool(4, p.get("required"))
            + _message(5, schema(p.get("schema") or {}))
            + _vendor_extensions(6, p)
        )
        return _message(1, _message(1, body))
    if where == "query":  # QueryParameterSubSchema: required 1, in 2, description 3, name 4, type 6
        sub, one_of = (
            (
                _bool(1, p.get("required"))
                + _string(2, "query")
                + _string(3, p.get("description", ""))
                + _string(4, p.get("name", ""))
                + _string(6, p.get("type", ""))
                + _bool(20, p.get("uniqueItems"))
                + _vendor_extensions(23, p)
            ),
            3,
        )
    elif where == "path":  # PathParameterSubSchema: required 1, in 2, description 3, name 4, type 5
        sub, one_of = (
            (
                _bool(1, p.get("required"))
                + _string(2, "path")
                + _string(3, p.get("description", ""))
                + _string(4, p.get("name", ""))
                + _string(5, p.get("type", ""))
                + _bool(19, p.get("uniqueItems"))
                + _vendor_extensions(22, p)
            ),
            4,
        )
    else:
        raise EncodeError(f"unsupported parameter location {where!r}")
    return _message(1, _message(2, _message(one_of, sub)))


def _responses(responses: Mapping[str, Any]) -> bytes:
    """``Responses`` { repeated NamedResponseValue response_code = 1 }, each a ``Response``."""
    out = bytearray()
    for code, r in responses.items():
        if code.startswith("x-"):
            continue
        response = _string(1, r.get("description", ""))
        if "schema" in r:  # SchemaItem.schema (1)
            response += _message(2, _message(1, schema(r["schema"])))
        out += _named(1, code, _message(1, response))
    return bytes(out) + _vendor_extensions(2, responses)


def _operation(op: Mapping[str, Any]) -> bytes:
    return (
        _strings(1, op.get("tags") or ())
        + _string(2, op.get("summary", ""))
        + _string(3, op.get("description", ""))
        + _string(5, op.get("operationId", ""))
        + _strings(6, op.get("produces") or ())
        + _strings(7, op.get("consumes") or ())
        + b"".join(_message(8, _parameter(p)) for p in op.get("parameters") or ())
        + _message(9, _responses(op.get("responses") or {}))
        + _strings(10, op.get("schemes") or ())
        + _bool(11, op.get("deprecated"))
        + _vendor_extensions(13, op)
    )


_METHODS = (("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("options", 6), ("head", 7), ("patch", 8))


def _path_item(item: Mapping[str, Any]) -> bytes:
    out = bytearray(_string(1, item.get("$ref", "")))
    for method, field in _METHODS:
        if method in item:
            out += _message(field, _operation(item[method]))
    for p in item.get("parameters") or ():
        out += _message(9, _parameter(p))
    return bytes(out) + _vendor_extensions(10, item)


def document(doc: Mapping[str, Any]) -> bytes:
    """``openapi.v2.Document`` for a Swagger 2.0 document (paths, definitions, info...)."""
    if doc.get("swagger") != "2.0":
        raise EncodeError("not a Swagger 2.0 document")
    out = bytearray(_string(1, "2.0"))
    out += _message(2, _info(doc.get("info") or {}))
    out += _string(3, doc.get("host", ""))
    out += _string(4, doc.get("basePath", ""))
    out += _strings(5, doc.get("schemes") or ())
    out += _strings(6, doc.get("consumes") or ())
    out += _strings(7, doc.get("produces") or ())
    paths = doc.get("paths") or {}
    # Paths { repeated NamedAny vendor_extension = 1; repeated NamedPathItem path = 2 }
    named_paths = b"".join(_named(2, k, _path_item(v)) for k, v in paths.items() if not k.startswith("x-"))
    out += _message(8, _vendor_extensions(1, paths) + named_paths)
    definitions = doc.get("definitions") or {}
    out += _message(9, b"".join(_named(1, k, schema(v)) for k, v in definitions.items()))
    out += _vendor_extensions(16, doc)
    return bytes(out)
