"""Table tests for the pure OpenAPI v3 validator, defaulting and pruning."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kubeapi.schema import admit, apply_defaults, format_ok, prune, validate

PORT = {"type": "integer", "minimum": 1, "maximum": 65535}

# (schema, value, expected [(field, reason)])
CASES: list[tuple[str, dict[str, Any], Any, list[tuple[str, str]]]] = [
    ("integer ok", PORT, 80, []),
    ("integer as float", PORT, 80.0, []),
    ("integer too big", PORT, 70000, [("", "FieldValueInvalid")]),
    ("integer too small", PORT, 0, [("", "FieldValueInvalid")]),
    ("integer wrong type", PORT, "80", [("", "FieldValueTypeInvalid")]),
    ("bool is not integer", PORT, True, [("", "FieldValueTypeInvalid")]),
    (
        "exclusive max",
        {"type": "number", "maximum": 1, "exclusiveMaximum": True},
        1,
        [("", "FieldValueInvalid")],
    ),
    ("enum ok", {"type": "string", "enum": ["a", "b"]}, "a", []),
    ("enum bad", {"type": "string", "enum": ["a", "b"]}, "c", [("", "FieldValueNotSupported")]),
    ("pattern bad", {"type": "string", "pattern": "^[a-z]+$"}, "A1", [("", "FieldValueInvalid")]),
    ("minLength", {"type": "string", "minLength": 2}, "a", [("", "FieldValueInvalid")]),
    ("maxLength", {"type": "string", "maxLength": 2}, "abc", [("", "FieldValueTooLong")]),
    ("format cidr ok", {"type": "string", "format": "cidr"}, "10.0.0.0/8", []),
    ("format cidr bad", {"type": "string", "format": "cidr"}, "10.0.0.0/33", [("", "FieldValueInvalid")]),
    ("format ipv4 bad", {"type": "string", "format": "ipv4"}, "1.2.3", [("", "FieldValueInvalid")]),
    ("unknown format passes", {"type": "string", "format": "whatever"}, "x", []),
    ("null not allowed", {"type": "string"}, None, [("", "FieldValueTypeInvalid")]),
    ("nullable", {"type": "string", "nullable": True}, None, []),
    (
        "required",
        {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "string"}}},
        {"a": "x"},
        [("b", "FieldValueRequired")],
    ),
    (
        "nested path",
        {"type": "object", "properties": {"spec": {"type": "object", "properties": {"port": PORT}}}},
        {"spec": {"port": 0}},
        [("spec.port", "FieldValueInvalid")],
    ),
    ("array items path", {"type": "array", "items": PORT}, [1, 2, 99999], [("[2]", "FieldValueInvalid")]),
    ("maxItems", {"type": "array", "maxItems": 1}, [1, 2], [("", "FieldValueTooMany")]),
    (
        "set duplicates",
        {"type": "array", "x-kubernetes-list-type": "set"},
        ["a", "a"],
        [("[1]", "FieldValueDuplicate")],
    ),
    (
        "map values",
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"a": "x", "b": 1},
        [("b", "FieldValueTypeInvalid")],
    ),
    ("int-or-string int", {"x-kubernetes-int-or-string": True}, 3, []),
    ("int-or-string str", {"x-kubernetes-int-or-string": True}, "3%", []),
    ("int-or-string bad", {"x-kubernetes-int-or-string": True}, 1.5, [("", "FieldValueTypeInvalid")]),
    ("oneOf none", {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, {}, [("", "FieldValueInvalid")]),
    ("oneOf one", {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"a": 1}, []),
    ("anyOf none", {"anyOf": [{"type": "string"}, {"type": "integer"}]}, [], [("", "FieldValueInvalid")]),
    ("not", {"not": {"required": ["a"]}}, {"a": 1}, [("", "FieldValueInvalid")]),
]


@pytest.mark.parametrize(("schema", "value", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validate(schema: dict[str, Any], value: Any, expected: list[tuple[str, str]]) -> None:
    assert [(c.field, c.reason) for c in validate(value, schema)] == expected


def test_defaults_fill_absent_fields_only_at_existing_parents() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "port": {"type": "integer", "default": 51820},
                    "mode": {"type": "string", "default": "a"},
                },
            },
            "opt": {"type": "object", "properties": {"x": {"type": "integer", "default": 1}}},
        },
    }
    assert apply_defaults({"spec": {"mode": "b"}}, schema) == {"spec": {"port": 51820, "mode": "b"}}
    # A default on a parent object is itself defaulted.
    schema["properties"]["opt"]["default"] = {}
    assert apply_defaults({}, schema) == {"opt": {"x": 1}}


def test_defaults_in_array_items_and_maps() -> None:
    item = {"type": "object", "properties": {"p": {"type": "string", "default": "TCP"}}}
    schema = {
        "type": "object",
        "properties": {
            "ports": {"type": "array", "items": item},
            "byName": {"type": "object", "additionalProperties": item},
        },
    }
    out = apply_defaults({"ports": [{}, {"p": "UDP"}], "byName": {"a": {}}}, schema)
    assert out == {"ports": [{"p": "TCP"}, {"p": "UDP"}], "byName": {"a": {"p": "TCP"}}}


def test_prune_unknown_fields_but_keep_preserved_and_root_metadata() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "a": {"type": "string"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }
        },
    }
    obj = {
        "apiVersion": "v1",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"a": "x", "b": "dropped", "free": {"anything": {"deep": 1}}},
        "junk": 1,
    }
    pruned, dropped = prune(obj, schema)
    assert pruned == {
        "apiVersion": "v1",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"a": "x", "free": {"anything": {"deep": 1}}},
    }
    assert sorted(dropped) == ["junk", "spec.b"]


def test_admit_defaults_prunes_and_validates_without_touching_metadata() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["cidr"],
                "properties": {"cidr": {"type": "string"}, "port": {**PORT, "default": 51820}},
            }
        },
    }
    obj, causes, dropped = admit(
        {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"port": 0, "extra": 1}},
        schema,
    )
    assert obj["spec"] == {"port": 0}
    assert dropped == ["spec.extra"]
    assert [(c.field, c.reason) for c in causes] == [
        ("spec.cidr", "FieldValueRequired"),
        ("spec.port", "FieldValueInvalid"),
    ]


@pytest.mark.parametrize(
    ("fmt", "value", "ok"),
    [
        ("ipv6", "fd00::1", True),
        ("ipv6", "1.2.3.4", False),
        ("uuid", "not-a-uuid", False),
        ("date-time", "2024-01-02T03:04:05Z", True),
        ("date-time", "yesterday", False),
        ("byte", "aGk=", True),
        ("hostname", "a.b-c", True),
        ("hostname", "-bad", False),
    ],
)
def test_formats(fmt: str, value: str, ok: bool) -> None:
    assert format_ok(fmt, value) is ok
