"""A minimal ``/openapi/v2`` (Swagger 2.0) document for kubectl releases before 1.27 (pure).

kubectl up to 1.26 (Debian 12 ships 1.20) fetches ``/openapi/v2`` on every ``apply`` and
``create``: for client-side validation (a kind found in ``definitions`` by its
``x-kubernetes-group-version-kind`` is checked for types, required and unknown fields; a kind
that is absent is not checked), for ``apply``'s strategic merge patches (an absent kind falls back
to kubectl's compiled-in types) and, with ``--dry-run=server``, to learn whether a kind's PATCH
operation takes a ``dryRun`` parameter. A missing document makes those commands fail.

We publish, like upstream, one definition per served custom resource version, derived from the
CRD's ``openAPIV3Schema`` the way the apiextensions server does for v2 (junctors dropped, nullable
and preserve-unknown-fields nodes left untyped), plus paths and operations for every resource.
Built-in kinds get no definition: kubectl then uses its compiled-in types for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandbox.kubeapi.resources import SERVER_VERSION, Registry, ResourceType

Obj = dict[str, Any]

GVK_EXTENSION = "x-kubernetes-group-version-kind"

# Schema keywords that Swagger 2.0 knows; everything else of OpenAPI v3 is dropped.
_V2_KEYWORDS = (
    "description",
    "title",
    "format",
    "default",
    "example",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "enum",
)


def definition_name(group: str, version: str, kind: str) -> str:
    """Upstream's REST-friendly name: the group's domain reversed (``io.liqo.test.v1alpha1.Gadget``)."""
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    return ".".join([*reversed(group.split(".")), version, kind])


def v2_schema(schema: Mapping[str, Any]) -> Obj:
    """An OpenAPI v3 structural schema as Swagger 2.0, as the apiextensions server publishes it.

    kubectl's parser cannot cope with junctors, ``nullable``, typed nodes that allow unknown
    fields, or arrays without items: those nodes are left untyped (kubectl accepts any value).
    """
    out: Obj = {k: schema[k] for k in _V2_KEYWORDS if k in schema}
    out.update({k: v for k, v in schema.items() if k.startswith("x-kubernetes-")})
    nullable = bool(schema.get("nullable"))
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    int_or_string = bool(schema.get("x-kubernetes-int-or-string"))
    typ = schema.get("type")
    if isinstance(typ, str) and typ and not nullable and not int_or_string:
        out["type"] = typ
    props = schema.get("properties")
    items = schema.get("items")
    if not (nullable or preserve):
        if isinstance(props, Mapping) and props:
            out["properties"] = {k: v2_schema(v) for k, v in props.items() if isinstance(v, Mapping)}
            required = [r for r in schema.get("required") or () if not (props.get(r) or {}).get("nullable")]
            if required:
                out["required"] = required
        if isinstance(items, Mapping):
            out["items"] = v2_schema(items)
    if not nullable:
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            out["additionalProperties"] = v2_schema(extra)
        elif isinstance(extra, bool) and not preserve:
            out["additionalProperties"] = extra
    if out.get("type") == "array" and "items" not in out:
        del out["type"]
    return out


def resource_definition(rt: ResourceType, version: str) -> Obj | None:
    schema = rt.schemas.get(version)
    if schema is None:
        return None
    out = v2_schema(schema)
    props = dict(out.get("properties") or {})
    props["apiVersion"] = {
        "description": "APIVersion defines the versioned schema of this representation of an object.",
        "type": "string",
    }
    props["kind"] = {
        "description": "Kind is a string value representing the REST resource this object represents.",
        "type": "string",
    }
    # Upstream refers to ObjectMeta's definition; a plain object keeps kubectl from judging metadata.
    props["metadata"] = {"description": "Standard object's metadata.", "type": "object"}
    out["type"] = "object"
    out["properties"] = props
    out[GVK_EXTENSION] = [{"group": rt.group, "kind": rt.kind, "version": version}]
    return out


def _gv_path(group: str, version: str) -> str:
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


def _query(name: str, description: str) -> Obj:
    return {"name": name, "in": "query", "type": "string", "uniqueItems": True, "description": description}


def _path_param(name: str) -> Obj:
    return {"name": name, "in": "path", "required": True, "type": "string", "uniqueItems": True}


_BODY = {"name": "body", "in": "body", "required": True, "schema": {"type": "object"}}
_DRY_RUN = _query("dryRun", "When present, modifications are not persisted (All).")
_WRITE_PARAMS = (
    _DRY_RUN,
    _query("fieldManager", "A name for the actor making the change."),
    _query("fieldValidation", "Ignore, Warn or Strict handling of unknown fields."),
)
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
# kubectl 1.27+ computes a strategic merge patch only for kinds whose PATCH consumes it: built-ins.
_STRATEGIC = "application/strategic-merge-patch+json"


def _operations(rt: ResourceType, version: str) -> Obj:
    gvk = {"group": rt.group, "kind": rt.kind, "version": version}
    base = _gv_path(rt.group, version)
    common: list[Obj] = []
    if rt.namespaced:
        base += "/namespaces/{namespace}"
        common.append(_path_param("namespace"))

    def op(action: str, verb: str, params: tuple[Obj, ...] = (), **extra: Any) -> Obj:
        return {
            "operationId": f"{verb}{rt.kind}",
            "consumes": ["*/*"],
            "produces": ["application/json", "application/yaml"],
            "schemes": ["http"],
            "parameters": list(params),
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": action,
            GVK_EXTENSION: gvk,
            **extra,
        }

    def item_ops() -> Obj:
        return {
            "get": op("get", "read"),
            "put": op("put", "replace", (_BODY, *_WRITE_PARAMS)),
            "patch": op(
                "patch",
                "patch",
                (_BODY, *_WRITE_PARAMS, _query("force", "Force apply.")),
                consumes=[*_PATCH_TYPES] if rt.custom else [*_PATCH_TYPES, _STRATEGIC],
            ),
        }

    item = {**item_ops(), "delete": op("delete", "delete", (_BODY, _DRY_RUN))}
    named = [*common, _path_param("name")]
    paths: Obj = {
        f"{base}/{rt.plural}": {
            "get": op("list", "list"),
            "post": op("post", "create", (_BODY, *_WRITE_PARAMS)),
            "parameters": common,
        },
        f"{base}/{rt.plural}/{{name}}": {**item, "parameters": named},
    }
    if rt.has_status:
        paths[f"{base}/{rt.plural}/{{name}}/status"] = {**item_ops(), "parameters": named}
    return paths


def document(registry: Registry) -> Obj:
    """The Swagger 2.0 document: every resource's operations, custom resources' definitions."""
    paths: Obj = {}
    definitions: Obj = {}
    for rt in sorted(registry.all(), key=lambda r: r.key):
        for version in rt.versions:
            paths.update(_operations(rt, version))
            definition = resource_definition(rt, version) if rt.custom else None
            if definition is not None:
                definitions[definition_name(rt.group, version, rt.kind)] = definition
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": dict(sorted(paths.items())),
        "definitions": definitions,
    }
