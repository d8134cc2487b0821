"""OpenAPI v3 (structural schema) validation, defaulting and pruning for custom resources.

Pure functions over JSON-like data, as the real apiserver applies a CRD's ``openAPIV3Schema``:
defaults first, then pruning of unknown fields, then validation. Failures are returned as
``Cause`` values whose ``field`` uses Kubernetes' path syntax (``spec.ports[0].port``).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

JSON = Any
Schema = Mapping[str, Any]

# Keys the apiserver always keeps at the root of an object, whatever the schema says.
_ROOT_KEYS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Cause:
    """One validation failure: a ``Status.details.causes[]`` entry."""

    field: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _type_name(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fmt(value: JSON) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return _type_name(value)
    return str(value)


def _is_preserve(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


# ---------------------------------------------------------------------------------------------
# Defaulting


def apply_defaults(value: JSON, schema: Schema) -> JSON:
    """Return a copy of ``value`` with the schema's defaults filled in for absent fields."""
    return _default(copy.deepcopy(value), schema)


def _default(value: JSON, schema: Schema) -> JSON:
    if isinstance(value, dict):
        props: Mapping[str, Schema] = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _default(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in props:
                    value[key] = _default(value[key], extra)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [_default(v, items) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Pruning


def prune(value: JSON, schema: Schema, *, root: bool = True) -> tuple[JSON, list[str]]:
    """Drop fields the schema does not declare; return the pruned copy and the dropped paths."""
    dropped: list[str] = []
    result = _prune(copy.deepcopy(value), schema, "", dropped, root)
    return result, dropped


def _prune(value: JSON, schema: Schema, path: str, dropped: list[str], root: bool) -> JSON:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-embedded-resource"):
            root = True
        props: Mapping[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = _is_preserve(schema) or extra is True
        for key in list(value):
            sub = props.get(key)
            if sub is not None:
                value[key] = _prune(value[key], sub, _child(path, key), dropped, False)
            elif isinstance(extra, dict):
                value[key] = _prune(value[key], extra, _child(path, key), dropped, False)
            elif root and key in _ROOT_KEYS:
                continue
            elif not keep_unknown:
                dropped.append(_child(path, key))
                del value[key]
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [_prune(v, items, _index(path, i), dropped, False) for i, v in enumerate(value)]
    return value


# ---------------------------------------------------------------------------------------------
# Validation


def validate(value: JSON, schema: Schema, path: str = "") -> list[Cause]:
    """Validate ``value`` against ``schema``; an empty list means valid."""
    causes: list[Cause] = []
    _validate(value, schema, path, causes)
    return causes


def _validate(value: JSON, schema: Schema, path: str, causes: list[Cause]) -> None:
    shown = path or "<root>"
    if value is None:
        if schema.get("nullable"):
            return
        if "type" in schema or schema.get("x-kubernetes-int-or-string"):
            causes.append(
                Cause(
                    path,
                    "FieldValueTypeInvalid",
                    f'Invalid value: "null": {shown} in body must be of '
                    f'type {schema.get("type", "integer-or-string")}: "null"',
                )
            )
            return
    if not _check_type(value, schema, path, causes):
        return
    _check_enum(value, schema, path, causes)
    if isinstance(value, str):
        _check_string(value, schema, path, causes)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, causes)
    elif isinstance(value, list):
        _check_array(value, schema, path, causes)
    elif isinstance(value, dict):
        _check_object(value, schema, path, causes)
    _check_combinators(value, schema, path, causes)


def _check_type(value: JSON, schema: Schema, path: str, causes: list[Cause]) -> bool:
    shown = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        if not ok:
            causes.append(
                Cause(
                    path,
                    "FieldValueTypeInvalid",
                    f"Invalid value: {_fmt(value)}: {shown} in body must be of type "
                    f"integer or string: {_fmt(_type_name(value))}",
                )
            )
        return ok
    expected = schema.get("type")
    if not expected:
        return True
    actual = _type_name(value)
    ok = actual == expected or (expected == "number" and actual == "integer")
    # JSON has one number type: 3.0 is a valid integer.
    if expected == "integer" and isinstance(value, float) and value.is_integer():
        ok = True
    if not ok:
        causes.append(
            Cause(
                path,
                "FieldValueTypeInvalid",
                f'Invalid value: {_fmt(value)}: {shown} in body must be of type {expected}: "{actual}"',
            )
        )
    return ok


def _check_enum(value: JSON, schema: Schema, path: str, causes: list[Cause]) -> None:
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        allowed = ", ".join(_fmt(e) for e in enum)
        causes.append(
            Cause(
                path,
                "FieldValueNotSupported",
                f"Unsupported value: {_fmt(value)}: supported values: {allowed}",
            )
        )


def _check_string(value: str, schema: Schema, path: str, causes: list[Cause]) -> None:
    shown = path or "<root>"
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body should be at least "
                f"{schema['minLength']} chars long",
            )
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append(
            Cause(path, "FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes")
        )
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body should match '{pattern}'",
            )
        )
    fmt = schema.get("format")
    if fmt and not format_ok(fmt, value):
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body must be of type {fmt}: {_fmt(value)}",
            )
        )


def _check_number(value: float, schema: Schema, path: str, causes: list[Cause]) -> None:
    shown = path or "<root>"
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") is True and value == low):
            word = "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
            causes.append(
                Cause(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {_fmt(value)}: {shown} in body should be {word} {low}",
                )
            )
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") is True and value == high):
            word = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
            causes.append(
                Cause(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {_fmt(value)}: {shown} in body should be {word} {high}",
                )
            )
    step = schema.get("multipleOf")
    if step and (value / step) != int(value / step):
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body should be a multiple of {step}",
            )
        )
    fmt = schema.get("format")
    if fmt == "int32" and not -(2**31) <= value < 2**31:
        causes.append(Cause(path, "FieldValueInvalid", f"Invalid value: {_fmt(value)}: out of int32 range"))


def _check_array(value: list[JSON], schema: Schema, path: str, causes: list[Cause]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minItems']} items",
            )
        )
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        causes.append(
            Cause(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
        )
    if schema.get("uniqueItems") or schema.get("x-kubernetes-list-type") == "set":
        seen: list[JSON] = []
        for i, item in enumerate(value):
            if item in seen:
                causes.append(Cause(_index(path, i), "FieldValueDuplicate", f"Duplicate value: {_fmt(item)}"))
            seen.append(item)
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, _index(path, i), causes)


def _check_object(value: dict[str, JSON], schema: Schema, path: str, causes: list[Cause]) -> None:
    for key in schema.get("required") or ():
        if key not in value:
            causes.append(Cause(_child(path, key), "FieldValueRequired", "Required value"))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minProperties']} properties",
            )
        )
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        causes.append(
            Cause(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
            )
        )
    props: Mapping[str, Schema] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        sub = props.get(key)
        if sub is not None:
            _validate(item, sub, _child(path, key), causes)
        elif isinstance(extra, dict):
            _validate(item, extra, _child(path, key), causes)


def _check_combinators(value: JSON, schema: Schema, path: str, causes: list[Cause]) -> None:
    shown = path or "<root>"
    for sub in schema.get("allOf") or ():
        _validate(value, sub, path, causes)
    any_of = schema.get("anyOf")
    if any_of and all(validate(value, sub, path) for sub in any_of):
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body must match at least one schema in anyOf",
            )
        )
    one_of = schema.get("oneOf")
    if one_of:
        matches = sum(1 for sub in one_of if not validate(value, sub, path))
        if matches != 1:
            causes.append(
                Cause(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {_fmt(value)}: {shown} in body must match exactly one schema in oneOf",
                )
            )
    negated = schema.get("not")
    if isinstance(negated, dict) and not validate(value, negated, path):
        causes.append(
            Cause(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_fmt(value)}: {shown} in body must not match schema",
            )
        )


_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", re.I)
_MAC = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.I)


def format_ok(fmt: str, value: str) -> bool:
    """Check the string formats the apiserver knows; unknown formats pass, as upstream."""
    try:
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
        elif fmt == "ipv6":
            ipaddress.IPv6Address(value)
        elif fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
        elif fmt in ("uuid", "uuid4", "uuid3", "uuid5"):
            uuid.UUID(value)
        elif fmt == "byte":
            base64.b64decode(value, validate=True)
        elif fmt == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif fmt == "date":
            datetime.strptime(value, "%Y-%m-%d")
        elif fmt == "hostname":
            return len(value) <= 253 and _HOSTNAME.match(value) is not None
        elif fmt == "mac":
            return _MAC.match(value) is not None
        return True
    except ValueError:
        return False


def admit(obj: JSON, schema: Schema) -> tuple[JSON, list[Cause], list[str]]:
    """The apiserver's order for a custom resource: default, prune, default again, validate.

    Returns the admitted object, the validation failures and the pruned (unknown) field paths.
    """
    defaulted = apply_defaults(obj, schema)
    pruned, dropped = prune(defaulted, schema)
    final = apply_defaults(pruned, schema)
    body = {k: v for k, v in final.items() if k not in _ROOT_KEYS} if isinstance(final, dict) else final
    root_schema = dict(schema)
    if isinstance(final, dict):
        # metadata/apiVersion/kind are validated by the generic code, not by the CRD's schema.
        root_schema["required"] = [r for r in schema.get("required") or () if r not in _ROOT_KEYS]
        props = dict(schema.get("properties") or {})
        for key in _ROOT_KEYS:
            props.pop(key, None)
        root_schema["properties"] = props
    return final, validate(body, root_schema), dropped
