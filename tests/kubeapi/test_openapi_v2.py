"""/openapi/v2: the Swagger document (pure), its gnostic protobuf encoding, and the HTTP endpoint.

The protobuf is read back with the ``protobuf`` package's own wire parser (an ``Empty`` message keeps
every field as unknown), so the encoder is checked by an independent decoder, against the field
numbers of gnostic's ``openapiv2/OpenAPIv2.proto``.
"""

from __future__ import annotations

import json
import struct
import urllib.request
from typing import Any

import pytest
import yaml
from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from sandbox.kubeapi import KubeAPIServer, crd, gnostic, openapi_v2
from sandbox.kubeapi.resources import Registry
from sandbox.testkit.kubectl import GADGET_FIXTURES as FIXTURES

Fields = dict[int, list[Any]]


def fields(data: bytes) -> Fields:
    """field number -> values in order (ints for varints, bytes for length-delimited and fixed64)."""
    msg = empty_pb2.Empty()
    msg.ParseFromString(data)
    out: Fields = {}
    unknown = UnknownFieldSet(msg)
    for f in (unknown[i] for i in range(len(unknown))):
        value = f.data
        if f.wire_type == 1:  # fixed64: the protobuf package gives the raw integer
            value = struct.pack("<Q", value)
        out.setdefault(f.field_number, []).append(value)
    return out


def one(msg: Fields, field: int) -> Any:
    values = msg.get(field, [])
    assert len(values) == 1, (field, values)
    return values[0]


def text(msg: Fields, field: int) -> str:
    return bytes(one(msg, field)).decode()


def named(msg: Fields, field: int) -> dict[str, bytes]:
    """A gnostic map: repeated Named* { string name = 1; value = 2 }, in order."""
    out: dict[str, bytes] = {}
    for raw in msg.get(field, []):
        entry = fields(raw)
        out[text(entry, 1)] = one(entry, 2)
    return out


def any_yaml(raw: bytes) -> Any:
    """gnostic Any { google.protobuf.Any value = 1; string yaml = 2 }."""
    return yaml.safe_load(text(fields(raw), 2))


def double(msg: Fields, field: int) -> float:
    value: float = struct.unpack("<d", one(msg, field))[0]
    return value


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.add(crd.resource_type(yaml.safe_load((FIXTURES / "crd-gadgets.yaml").read_text())))
    return reg


# --- the Swagger document (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("v3", "v2"),
    [
        ({"type": "string", "pattern": "^a$"}, {"type": "string", "pattern": "^a$"}),
        # kubectl's parser cannot cope with these: the node is left untyped (anything goes).
        ({"type": "string", "nullable": True, "maxLength": 3}, {"maxLength": 3}),
        ({"type": "object", "nullable": True, "properties": {"a": {"type": "string"}}}, {}),
        (
            {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            {"x-kubernetes-int-or-string": True},
        ),
        (
            {"type": "array", "x-kubernetes-preserve-unknown-fields": True, "items": {"type": "string"}},
            {"x-kubernetes-preserve-unknown-fields": True},
        ),
        (
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        ),
        # Junctors and v3-only keywords are dropped; required keeps only non-nullable properties.
        (
            {
                "type": "object",
                "required": ["a", "b"],
                "oneOf": [{"required": ["a"]}],
                "properties": {
                    "a": {"type": "integer", "minimum": 1},
                    "b": {"type": "string", "nullable": True},
                },
                "x-kubernetes-validations": [{"rule": "self.a > 0"}],
            },
            {
                "type": "object",
                "required": ["a"],
                "properties": {"a": {"type": "integer", "minimum": 1}, "b": {}},
                "x-kubernetes-validations": [{"rule": "self.a > 0"}],
            },
        ),
        (
            {"type": "object", "additionalProperties": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
        (
            {"type": "array", "items": {"type": "integer", "format": "int32"}},
            {"type": "array", "items": {"type": "integer", "format": "int32"}},
        ),
    ],
)
def test_v2_schema(v3: dict[str, Any], v2: dict[str, Any]) -> None:
    assert openapi_v2.v2_schema(v3) == v2


def test_document_has_custom_definitions_and_every_resource_path(registry: Registry) -> None:
    doc = openapi_v2.document(registry)
    assert doc["swagger"] == "2.0"
    assert list(doc["definitions"]) == ["io.liqo.test.v1alpha1.Gadget"]  # built-ins: compiled-in types
    gadget = doc["definitions"]["io.liqo.test.v1alpha1.Gadget"]
    assert gadget["x-kubernetes-group-version-kind"] == [
        {"group": "test.liqo.io", "kind": "Gadget", "version": "v1alpha1"}
    ]
    assert {"apiVersion", "kind", "metadata", "spec", "status"} <= set(gadget["properties"])
    item = doc["paths"]["/apis/test.liqo.io/v1alpha1/namespaces/{namespace}/gadgets/{name}"]
    assert item["patch"]["x-kubernetes-group-version-kind"] == {
        "group": "test.liqo.io",
        "kind": "Gadget",
        "version": "v1alpha1",
    }
    assert "dryRun" in [p["name"] for p in item["patch"]["parameters"]]
    # Strategic merge patch is for built-in kinds only, as upstream advertises it.
    assert "application/strategic-merge-patch+json" not in item["patch"]["consumes"]
    cm = doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]
    assert "application/strategic-merge-patch+json" in cm["patch"]["consumes"]
    assert "/apis/test.liqo.io/v1alpha1/namespaces/{namespace}/gadgets/{name}/status" in doc["paths"]
    assert "/api/v1/namespaces/{name}" in doc["paths"]  # cluster-scoped: no namespace segment


# --- gnostic protobuf ----------------------------------------------------------------------------


def test_wire_primitives() -> None:
    assert gnostic._varint(0) == b"\x00"
    assert gnostic._varint(300) == b"\xac\x02"
    assert gnostic._varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1: ten bytes
    assert fields(gnostic._int64(11, -5)) == {11: [(1 << 64) - 5]}
    assert fields(gnostic._double(7, 65535)) == {7: [struct.pack("<d", 65535.0)]}
    assert gnostic._string(1, "") == b"" and gnostic._bool(8, False) == b""  # proto3 defaults
    with pytest.raises(gnostic.EncodeError):
        gnostic._int64(11, "3")
    with pytest.raises(gnostic.EncodeError):
        gnostic.document({"openapi": "3.0.0"})


def test_document_protobuf_fields(registry: Registry) -> None:
    doc = fields(gnostic.document(openapi_v2.document(registry)))
    assert text(doc, 1) == "2.0"  # swagger
    info = fields(one(doc, 2))
    assert (text(info, 1), text(info, 2)) == ("Kubernetes", "v1.32.0-liqo-kubeapi")

    definitions = named(fields(one(doc, 9)), 1)  # Definitions.additional_properties
    assert list(definitions) == ["io.liqo.test.v1alpha1.Gadget"]
    gadget = fields(definitions["io.liqo.test.v1alpha1.Gadget"])
    assert [bytes(v).decode() for v in fields(one(gadget, 22))[1]] == ["object"]  # TypeItem.value
    extensions = {k: any_yaml(v) for k, v in named(gadget, 31).items()}  # vendor_extension
    assert extensions == {
        "x-kubernetes-group-version-kind": [
            {"group": "test.liqo.io", "kind": "Gadget", "version": "v1alpha1"}
        ]
    }
    props = named(fields(one(gadget, 25)), 1)  # Properties.additional_properties
    assert list(props) == ["spec", "status", "apiVersion", "kind", "metadata"]
    spec = fields(props["spec"])
    assert [bytes(v).decode() for v in spec[19]] == ["cidr"]  # required
    spec_props = {k: fields(v) for k, v in named(fields(one(spec, 25)), 1).items()}
    port = spec_props["port"]
    assert [bytes(v).decode() for v in fields(one(port, 22))[1]] == ["integer"]
    assert (double(port, 9), double(port, 7)) == (1.0, 65535.0)  # minimum, maximum
    assert any_yaml(one(port, 5)) == 51820  # default
    assert [any_yaml(v) for v in spec_props["backend"][20]] == ["wireguard", "none"]  # enum
    assert text(spec_props["cidr"], 13) == r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"  # pattern
    assert 22 not in spec_props["nickname"] and one(spec_props["nickname"], 12) == 2  # untyped, minLength
    labels = fields(one(fields(one(spec_props["labels"], 21)), 1))  # AdditionalPropertiesItem.schema
    assert [bytes(v).decode() for v in fields(one(labels, 22))[1]] == ["string"]
    assert 25 not in spec_props["extra"]  # preserve-unknown-fields: no properties

    paths = named(fields(one(doc, 8)), 2)  # Paths.path
    item = fields(paths["/apis/test.liqo.io/v1alpha1/namespaces/{namespace}/gadgets/{name}"])
    # PathItem.parameters: ParametersItem.parameter -> non_body -> path_parameter_sub_schema (4)
    path_params = [fields(one(fields(one(fields(one(fields(p), 1)), 2)), 4)) for p in item[9]]
    assert [(text(p, 4), text(p, 2), one(p, 1)) for p in path_params] == [
        ("namespace", "path", 1),
        ("name", "path", 1),
    ]
    patch = fields(one(item, 8))  # PathItem.patch
    assert text(patch, 5) == "patchGadget"  # operation_id
    query = []
    for p in patch[8]:  # ParametersItem.parameter -> Parameter
        parameter = fields(one(fields(p), 1))
        if 2 in parameter:  # non_body_parameter -> query_parameter_sub_schema (3)
            sub = fields(one(fields(one(parameter, 2)), 3))
            query.append((text(sub, 4), text(sub, 2), text(sub, 6)))
        else:  # body_parameter
            body = fields(one(parameter, 1))
            assert (text(body, 2), text(body, 3), one(body, 4)) == ("body", "body", 1)
    assert ("dryRun", "query", "string") in query and ("fieldValidation", "query", "string") in query
    gvk = {k: any_yaml(v) for k, v in named(patch, 13).items()}["x-kubernetes-group-version-kind"]
    assert gvk == {"group": "test.liqo.io", "kind": "Gadget", "version": "v1alpha1"}
    responses = named(fields(one(patch, 9)), 1)  # Responses.response_code -> ResponseValue.response
    assert text(fields(one(fields(responses["200"]), 1)), 1) == "OK"


# --- the endpoint --------------------------------------------------------------------------------


def test_endpoint_serves_protobuf_and_json() -> None:
    with KubeAPIServer(crd_dirs=[FIXTURES / "crd-gadgets.yaml"]) as api:
        req = urllib.request.Request(f"{api.url}/openapi/v2", headers={"Accept": gnostic.MEDIA_TYPE})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/octet-stream"
            data = resp.read()
        with urllib.request.urlopen(f"{api.url}/openapi/v2", timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            doc = json.loads(resp.read())
    assert doc == openapi_v2.document(api.store.registry)
    assert data == gnostic.document(doc)
    assert "io.liqo.test.v1alpha1.Gadget" in named(fields(one(fields(data), 9)), 1)
