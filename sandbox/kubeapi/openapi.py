"""A minimal ``/openapi/v3`` for kubectl (pure).

kubectl (1.27+) reads the OpenAPI v3 document of a group-version to learn whether the server
supports server-side field validation (a ``fieldValidation`` query parameter on the resource's PATCH
operation, tagged with ``x-kubernetes-group-version-kind``). When it does, ``kubectl apply`` sends
``fieldValidation=Strict`` and skips client-side schema validation, which would otherwise need the
full ``/openapi/v2`` document. We therefore publish paths and operations, but no schemas:
strategic-merge-patch bodies are not advertised, so kubectl computes those patches from its
compiled-in types.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sandbox.kubeapi.resources import Registry, ResourceType

Obj = dict[str, Any]


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def group_versions(registry: Registry) -> list[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for rt in registry.all():
        for v in rt.versions:
            out.add((rt.group, v))
    return sorted(out)


def _param(name: str) -> Obj:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _operations(rt: ResourceType, version: str) -> dict[str, Obj]:
    gvk = {"group": rt.group, "version": version, "kind": rt.kind}
    base = f"/{_gv_path(rt.group, version)}"
    if rt.namespaced:
        base += "/namespaces/{namespace}"
    ok = {"200": {"description": "OK"}}
    patch_types = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ]

    def op(action: str, **extra: Any) -> Obj:
        return {
            "operationId": f"{action}{rt.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": ok,
            **extra,
        }

    write_params = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
    item = {
        "get": op("get"),
        "put": op("put", parameters=write_params),
        "patch": op(
            "patch",
            parameters=[*write_params, _param("force")],
            requestBody={"content": {t: {"schema": {"type": "object"}} for t in patch_types}},
        ),
        "delete": op("delete", parameters=[_param("dryRun")]),
    }
    collection = {"get": op("list"), "post": op("post", parameters=write_params)}
    paths = {f"{base}/{rt.plural}": collection, f"{base}/{rt.plural}/{{name}}": item}
    if rt.has_status:
        paths[f"{base}/{rt.plural}/{{name}}/status"] = {
            "get": op("get"),
            "put": op("put", parameters=write_params),
            "patch": op(
                "patch",
                parameters=[*write_params, _param("force")],
                requestBody={"content": {t: {"schema": {"type": "object"}} for t in patch_types}},
            ),
        }
    return paths


def gv_document(registry: Registry, group: str, version: str) -> Obj | None:
    paths: Obj = {}
    for rt in registry.all():
        if rt.group == group and version in rt.versions:
            paths.update(_operations(rt, version))
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root_document(registry: Registry) -> Obj:
    paths: Obj = {}
    for group, version in group_versions(registry):
        doc = gv_document(registry, group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[_gv_path(group, version)] = {
            "serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"
        }
    return {"paths": paths}
