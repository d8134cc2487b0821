"""``meta.k8s.io/v1`` Table rendering (what ``kubectl get`` asks for), with CRD printer columns (pure)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sandbox.kubeapi.resources import ResourceType

Obj = dict[str, Any]

_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace.",
}
_AGE = {
    "name": "Age",
    "type": "date",
    "format": "",
    "priority": 0,
    "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp is the server time when this object was created.",
}

_BUILTIN_COLUMNS: dict[str, tuple[dict[str, Any], ...]] = {
    "/pods": (
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName", "priority": 1},
        {"name": "IP", "type": "string", "jsonPath": ".status.podIP", "priority": 1},
    ),
    "/namespaces": ({"name": "Status", "type": "string", "jsonPath": ".status.phase"},),
    "/services": (
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Cluster-IP", "type": "string", "jsonPath": ".spec.clusterIP"},
    ),
    "coordination.k8s.io/leases": ({"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"},),
    "/secrets": ({"name": "Type", "type": "string", "jsonPath": ".type"},),
}


def evaluate(obj: Any, path: str) -> Any:
    """A JSONPath subset as used by printer columns: ``.a.b``, ``.a[0]``, ``.a[?(@.k=="v")].b``."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    tokens = re.findall(
        r'\.([A-Za-z0-9_\-$]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*["\']([^"\']*)["\']\)\]', path
    )
    cur = obj
    for key, index, fkey, fval in tokens:
        if key:
            if not isinstance(cur, dict) or key not in cur:
                return None
            cur = cur[key]
        elif index:
            if not isinstance(cur, list) or int(index) >= len(cur):
                return None
            cur = cur[int(index)]
        else:
            if not isinstance(cur, list):
                return None
            cur = next((i for i in cur if isinstance(i, dict) and str(evaluate(i, "." + fkey)) == fval), None)
            if cur is None:
                return None
    return cur


def human_age(created: str, now: float) -> str:
    try:
        ts = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return "<unknown>"
    secs = max(0, int(now - ts))
    if secs < 120:
        return f"{secs}s"
    if secs < 3600 * 3:
        return f"{secs // 60}m"
    if secs < 86400 * 2:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def columns(rt: ResourceType, version: str) -> list[dict[str, Any]]:
    extra = rt.printer_columns.get(version) if rt.custom else _BUILTIN_COLUMNS.get(rt.key, ())
    cols = [dict(_NAME)]
    for col in extra or ():
        c = {
            "name": col["name"],
            "type": col.get("type", "string"),
            "format": col.get("format", ""),
            "description": col.get("description", ""),
            "priority": col.get("priority", 0),
            "jsonPath": col.get("jsonPath", ""),
        }
        cols.append(c)
    if not any(str(c["name"]).lower() == "age" for c in cols):
        cols.append(dict(_AGE))
    return cols


def _cell(obj: Obj, col: dict[str, Any], now: float) -> Any:
    if col is _NAME or col.get("format") == "name":
        return obj.get("metadata", {}).get("name", "")
    value = evaluate(obj, col.get("jsonPath", ""))
    if value is None:
        return None
    if col.get("type") == "date":
        return human_age(str(value), now)
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return value


def table_version(accept: str) -> str | None:
    """The ``meta.k8s.io`` version of the first Table clause of an Accept header, or None.

    kubectl asks for ``as=Table;v=v1`` then ``v=v1beta1``; both shapes are the same, only the
    apiVersion differs.
    """
    for clause in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in clause.split(";")[1:])
        version = params.get("v", "v1")
        if params.get("as") == "Table" and params.get("g", "meta.k8s.io") == "meta.k8s.io" and version in (
            "v1",
            "v1beta1",
        ):
            return version
    return None


def row(
    rt: ResourceType,
    version: str,
    obj: Obj,
    now: float,
    include: str = "PartialObjectMetadata",
    meta_version: str = "v1",
) -> Obj:
    cols = columns(rt, version)
    out: Obj = {"cells": [_cell(obj, c, now) for c in cols]}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": f"meta.k8s.io/{meta_version}",
            "metadata": obj.get("metadata", {}),
        }
    return out


def table(
    rt: ResourceType,
    version: str,
    objs: list[Obj],
    now: float,
    *,
    resource_version: str = "",
    continue_token: str = "",
    include: str = "PartialObjectMetadata",
    meta_version: str = "v1",
) -> Obj:
    cols = [{k: v for k, v in c.items() if k != "jsonPath"} for c in columns(rt, version)]
    meta: Obj = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{meta_version}",
        "metadata": meta,
        "columnDefinitions": cols,
        "rows": [row(rt, version, o, now, include, meta_version) for o in objs],
    }
